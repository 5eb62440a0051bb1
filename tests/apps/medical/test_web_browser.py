"""The radiology page in a real headless Chromium against the app on a loopback port, with API keys
on (like the other pages' browser tests: needs ``playwright`` and a Chromium, skipped otherwise)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.core.serving.pages import BROWSER, open_page, wait_status

pytestmark = BROWSER


@pytest.mark.timeout(240)
def test_page_shows_probability_heat_maps_and_capture(tiny_bundle, tiny_bert_dir, toy_studies, tmp_path):
    from apps.medical.api import create_app
    from apps.medical.settings import MedicalSettings
    from core.serving.bench import LoopbackServer

    settings = MedicalSettings(bundle_dir=tiny_bundle[0], bert_path=str(tiny_bert_dir), database_url=f"sqlite:///{tmp_path}/t.db",
                               artefact_dir=tmp_path / "art", api_keys={"rad-key": "radiologist"})
    ct = toy_studies / "volumes" / "LIDC-IDRI-0002-s0.nii.gz"
    with LoopbackServer(create_app(settings)) as server, \
            open_page(server.url + "/ui/", accept_downloads=True) as (page, problems):
        page.set_input_files("#ct", str(ct))
        page.fill("#report", "67-year-old former smoker, 40 pack-years. Nodule in the right upper lobe.")
        page.click("#analyse-button")
        assert "401 unauthorized" in wait_status(page, "#study-status", lambda t, c: "error" in c or t.startswith("Done"), 60)
        problems.clear()  # the refused request is logged by the browser: expected

        page.fill("#api-key", "rad-key")
        page.click("#analyse-button")
        status = wait_status(page, "#study-status", lambda t, c: "error" in c or t.startswith("Done"), 120)
        assert status.startswith("Done"), status
        assert page.text_content("#probability").endswith("%") and page.text_content("#band")
        images = page.locator("#heatmaps img")
        assert images.count() == 3
        assert all(w > 0 for w in images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)"))  # decoded PNGs
        with page.expect_download() as download:
            page.click("#capture")
        assert download.value.suggested_filename == "secondary-capture.zip"
        assert Path(download.value.path()).read_bytes()[:2] == b"PK"
        with page.expect_download() as download:
            page.click("#structured-report")
        assert download.value.suggested_filename.startswith("report-") and download.value.suggested_filename.endswith(".dcm")
        assert Path(download.value.path()).read_bytes()[128:132] == b"DICM"
        assert wait_status(page, "#recent-status", lambda t, c: "error" in c or t == "1 study", 30) == "1 study"
        probability = page.text_content("#probability")

        page.reload()  # the browser closed: the stored result is opened from the recent studies
        assert wait_status(page, "#recent-status", lambda t, c: "error" in c or t == "1 study", 30) == "1 study"
        assert page.is_hidden("#study-result")
        page.click("#studies tbody tr")
        status = wait_status(page, "#study-status", lambda t, c: "error" in c or t.startswith("Stored result"), 30)
        assert status.startswith("Stored result"), status
        assert page.text_content("#probability") == probability and page.locator("#heatmaps img").count() == 3
        page.select_option("#band-filter", "high" if page.text_content("#band").startswith("low") else "low")
        assert wait_status(page, "#recent-status", lambda t, c: "error" in c or t == "0 studies", 30) == "0 studies"
        assert page.text_content("#audit-status").startswith("Not allowed") and page.is_hidden("#erase-box")
        assert not problems, problems  # no script errors, no CSP violations, no refused request (v1/me, not the trail)


@pytest.mark.timeout(240)
def test_admin_reads_the_audit_trail_and_erases_a_study_a_radiologist_may_not(tiny_bundle, tiny_bert_dir, toy_studies,
                                                                            tmp_path):
    import httpx

    from apps.medical.api import create_app
    from apps.medical.settings import MedicalSettings
    from core.serving.bench import LoopbackServer

    settings = MedicalSettings(bundle_dir=tiny_bundle[0], bert_path=str(tiny_bert_dir), database_url=f"sqlite:///{tmp_path}/t.db",
                               artefact_dir=tmp_path / "art", api_keys={"rad-key": "radiologist", "admin-key": "admin"})
    ct = toy_studies / "volumes" / "LIDC-IDRI-0002-s0.nii.gz"
    report = "Mr Jonathan Testperson, 67-year-old former smoker. Nodule in the right upper lobe."
    with LoopbackServer(create_app(settings)) as server, open_page(server.url + "/ui/") as (page, problems):
        assert wait_status(page, "#audit-status", lambda t, c: t != "Loading…", 30) == "Enter the API key to see the audit trail."
        page.fill("#api-key", "rad-key")
        page.dispatch_event("#api-key", "change")
        status = wait_status(page, "#audit-status", lambda t, c: t.startswith("Not allowed") or "error" in c, 30)
        assert status.startswith("Not allowed: only the admin role"), status  # a message, not a broken table
        assert page.is_hidden("#audit-records")
        page.set_input_files("#ct", str(ct))
        page.fill("#report", report)
        page.click("#analyse-button")
        assert wait_status(page, "#study-status", lambda t, c: "error" in c or t.startswith("Done"), 120).startswith("Done")
        assert page.is_hidden("#erase-box")  # a radiologist is not offered erasure
        result_id = page.text_content("#record").split()[1]
        assert not [p for p in problems if "403" in p], problems  # the radiologist's page asked v1/me, not the trail
        problems.clear()  # the requests refused for want of a key are logged: expected

        page.fill("#api-key", "admin-key")
        page.dispatch_event("#api-key", "change")
        status = wait_status(page, "#audit-status", lambda t, c: "error" in c or t.endswith("records"), 30)
        assert status.endswith("records"), status  # the analysis and the worklist's reads (studies:list)
        page.select_option("#audit-action", "studies:analyze")
        assert wait_status(page, "#audit-status", lambda t, c: "error" in c or t == "1 record", 30) == "1 record"
        row = page.locator("#audit-records tbody tr").first.locator("td").all_text_contents()
        assert row[1:3] == ["radiologist", "studies:analyze"] and len(row[3]) == 32  # the study as its keyed hash
        assert f"result id {result_id}" in row[5] and "Testperson" not in page.text_content("#audit")
        assert page.is_visible("#erase") and page.is_hidden("#erase-confirm")

        page.click("#erase")  # asked first; cancelling keeps the study
        assert page.is_visible("#erase-confirm") and page.text_content("#erase-id") == result_id
        page.click("#erase-no")
        assert page.is_hidden("#erase-confirm") and page.is_visible("#study-result")
        page.click("#erase")
        page.click("#erase-yes")
        status = wait_status(page, "#study-status", lambda t, c: "error" in c or t.startswith("Erased"), 30)
        assert status == f"Erased result {result_id} and its heat maps", status
        assert page.is_hidden("#study-result") and page.locator("#heatmaps img").count() == 0
        assert wait_status(page, "#recent-status", lambda t, c: "error" in c or t == "0 studies", 30) == "0 studies"
        page.select_option("#audit-action", "results:erase")
        assert wait_status(page, "#audit-status", lambda t, c: "error" in c or t == "1 record", 30) == "1 record"
        assert page.locator("#audit-records tbody tr td").nth(2).text_content() == "results:erase"
        admin = {"X-API-Key": "admin-key"}
        assert httpx.get(f"{server.url}/v1/studies/{result_id}", headers=admin).status_code == 404
        assert not problems, problems

        # a failed erasure shows the API's message: the study went (another admin) after it was opened
        page.fill("#report", "No nodules or masses.")
        page.click("#analyse-button")
        assert wait_status(page, "#study-status", lambda t, c: "error" in c or t.startswith("Done"), 60).startswith("Done")
        other = page.text_content("#record").split()[1]
        assert httpx.delete(f"{server.url}/v1/studies/{other}", headers=admin).status_code == 204
        page.click("#erase")
        page.click("#erase-yes")
        status = wait_status(page, "#study-status", lambda t, c: "error" in c, 30)
        assert status.startswith("Not erased: no stored study analysis") and "(404 not_found)" in status, status
        assert page.is_visible("#study-result")  # nothing was erased by the page: the view stays


def _analysed(url: str, key: str, ct: Path | None, report: str) -> dict:
    """One study analysed through the API (not the page): its answer."""
    import httpx

    files = {"ct": (ct.name, ct.read_bytes(), "application/gzip")} if ct else None
    r = httpx.post(f"{url}/v1/studies:analyze", files=files, data={"report": report}, headers={"X-API-Key": key},
                   timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _open(page, result_id: str) -> str:
    """Click a study in the recent list; the page's status once it has opened (or failed to)."""
    page.click(f'#studies tbody tr[title="open result {result_id}"]')
    return wait_status(page, "#study-status", lambda t, c: "error" in c or t.startswith("Stored result"), 30)


def _downloads_from(page, link: str) -> str:
    """The URL the page fetches when ``link`` is clicked (the download itself is the browser's)."""
    with page.expect_download(), page.expect_response(lambda r: "/v1/" in r.url) as response:
        page.click(link)
    return response.value.url


@pytest.fixture()
def two_studies(tiny_bundle, tiny_bert_dir, toy_studies, tmp_path):
    """A server with API keys on, two CT studies analysed (the older one A, the newer one B) and a page
    that shows the recent studies."""
    from apps.medical.api import create_app
    from apps.medical.settings import MedicalSettings
    from core.serving.bench import LoopbackServer

    settings = MedicalSettings(bundle_dir=tiny_bundle[0], bert_path=str(tiny_bert_dir), database_url=f"sqlite:///{tmp_path}/t.db",
                               artefact_dir=tmp_path / "art", api_keys={"rad-key": "radiologist"})
    volumes = sorted((toy_studies / "volumes").glob("*.nii.gz"))
    with LoopbackServer(create_app(settings)) as server:
        a = _analysed(server.url, "rad-key", volumes[0], "Former smoker. Nodule in the right upper lobe.")
        b = _analysed(server.url, "rad-key", volumes[1], "Never smoker. Small nodule in the left lower lobe.")
        with open_page(server.url + "/ui/", accept_downloads=True) as (page, problems):
            page.fill("#api-key", "rad-key")
            page.dispatch_event("#api-key", "change")
            assert wait_status(page, "#recent-status", lambda t, c: "error" in c or t == "2 studies", 30) == "2 studies"
            problems.clear()  # the page's first requests, before the key was typed, were refused: expected
            yield server, page, problems, a, b


@pytest.mark.timeout(240)
def test_a_study_opened_after_another_shows_nothing_of_the_first_when_its_heat_maps_arrive_late(two_studies):
    """A opened, B opened before A's heat maps came: B's view has B's probability, B's slices only and B's
    links, and A's heat maps arriving afterwards change nothing (another patient's images under B)."""
    server, page, problems, a, b = two_studies
    held = []  # A's heat-map requests, answered only once B is on screen
    page.route(lambda url: any(url.endswith(h) for h in a["heatmaps"]), lambda route: held.append(route))
    page.click(f'#studies tbody tr[title="open result {a["id"]}"]')
    for _ in range(50):  # A is on its way: its heat maps were asked for
        if held:
            break
        page.wait_for_timeout(100)
    assert held
    assert _open(page, b["id"]) == f"Stored result {b['id']}"
    for route in held:
        with contextlib.suppress(Exception):  # the page may have dropped them already
            route.continue_()
    page.wait_for_timeout(1500)  # A's heat maps land now, if they are going to

    assert page.text_content("#study-status") == f"Stored result {b['id']}"
    assert page.text_content("#record").split()[1] == b["id"]
    assert page.text_content("#probability") == f"{round(100 * b['probability'])} %"
    images = page.locator("#heatmaps img")
    assert images.count() == len(b["heatmaps"]) and page.locator("#heatmaps figure").count() == len(b["heatmaps"])
    assert all(w > 0 for w in images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)"))
    assert _downloads_from(page, "#structured-report").endswith(b["structured_report"])
    assert _downloads_from(page, "#capture").endswith(b["secondary_capture"])
    assert not problems, problems


@pytest.mark.timeout(240)
def test_a_failed_heat_map_or_study_leaves_nothing_of_the_study_shown_before(two_studies):
    """B's heat map that cannot be fetched says so in its place, B's links replace A's; a study that cannot
    be opened empties the result area; a CT without a location is not called "no CT"."""
    server, page, problems, a, b = two_studies
    assert _open(page, a["id"]) == f"Stored result {a['id']}" and page.locator("#heatmaps img").count() == len(a["heatmaps"])

    failing = b["heatmaps"][0]
    page.route(lambda url: url.endswith(failing), lambda route: route.fulfill(
        status=503, content_type="application/json", json={"error": {"code": "busy", "message": "try again"}}))
    status = _open(page, b["id"])
    assert page.text_content("#record").split()[1] == b["id"]
    assert _downloads_from(page, "#structured-report").endswith(b["structured_report"])  # not A's
    assert _downloads_from(page, "#capture").endswith(b["secondary_capture"])
    assert status.startswith(f"Stored result {b['id']}") and "1 heat map not loaded" in status, status
    assert page.locator("#heatmaps figure").count() == len(b["heatmaps"])
    assert page.locator("#heatmaps img").count() == len(b["heatmaps"]) - 1
    assert page.locator("#heatmaps figure").first.text_content().startswith("heat map not loaded: try again (503 busy)")
    assert [p for p in problems if "503" not in p] == [], problems  # the refused PNG is logged: expected
    problems.clear()

    # a stored study that cannot be opened: no trace of the study shown before, the error instead
    page.route(f"**/v1/studies/{a['id']}", lambda route: route.fulfill(
        status=404, content_type="application/json", json={"error": {"code": "not_found", "message": "erased"}}))
    status = _open(page, a["id"])
    assert "error" in page.locator("#study-status").get_attribute("class") and "erased (404 not_found)" in status, status
    assert page.is_hidden("#study-result") and page.locator("#heatmaps figure").count() == 0
    page.unroute(f"**/v1/studies/{a['id']}")
    problems.clear()

    # a CT in which no candidate was found is not "no CT sent" (the tiny model always locates: the answer
    # is made so); a report alone is
    page.route(f"**/v1/studies/{b['id']}", lambda route: route.fulfill(json={
        **b, "location": None, "findings": [], "heatmaps": [], "heatmap_z_mm": None, "secondary_capture": None}))
    assert _open(page, b["id"]) == f"Stored result {b['id']}"
    assert page.text_content("#location") == "no nodule candidate found in the CT"
    assert "no CT" not in page.text_content("#study-result") and page.is_hidden("#capture")
    report_only = _analysed(server.url, "rad-key", None, "67-year-old former smoker, 40 pack-years. No nodules.")
    assert report_only["inputs"] == {"ct": False, "report": True} and b["inputs"] == {"ct": True, "report": True}
    page.click("#refresh")
    assert wait_status(page, "#recent-status", lambda t, c: "error" in c or t == "3 studies", 30) == "3 studies"
    assert _open(page, report_only["id"]) == f"Stored result {report_only['id']}"
    assert page.text_content("#location") == "no CT sent" and page.is_hidden("#capture")
    assert "not a Lung-RADS category" in page.text_content("#studies thead")
    assert not problems, problems


@pytest.mark.timeout(120)
def test_a_refused_api_key_is_shown_as_refused_in_the_worklist_and_audit_trail(tiny_bundle, tiny_bert_dir, tmp_path):
    """Without a key the recent studies and the audit trail ask for one; a key sent and refused shows the API's
    message as an error (it used to read "Enter the API key", as if none had been typed)."""
    from apps.medical.api import create_app
    from apps.medical.settings import MedicalSettings
    from core.serving.bench import LoopbackServer

    settings = MedicalSettings(bundle_dir=tiny_bundle[0], bert_path=str(tiny_bert_dir), database_url=f"sqlite:///{tmp_path}/t.db",
                               artefact_dir=tmp_path / "art", api_keys={"rad-key": "radiologist"})
    with LoopbackServer(create_app(settings)) as server, open_page(server.url + "/ui/") as (page, problems):
        loaded = lambda t, c: t not in ("", "Loading…")  # noqa: E731
        assert wait_status(page, "#recent-status", loaded, 30) == "Enter the API key to see the recent studies."
        assert wait_status(page, "#audit-status", loaded, 30) == "Enter the API key to see the audit trail."
        page.fill("#api-key", "not-a-key")
        page.dispatch_event("#api-key", "change")
        refused = lambda t, c: loaded(t, c) and "Enter" not in t  # noqa: E731
        assert wait_status(page, "#recent-status", refused, 30) == "the API key is not recognised (401 unauthorized)"
        assert "error" in page.locator("#recent-status").get_attribute("class")
        assert wait_status(page, "#audit-status", refused, 30) == "the API key is not recognised (401 unauthorized)"
        problems[:] = [p for p in problems if "401" not in p]  # the browser logs the refused requests: expected
        assert not problems, problems
