"""The radiology page in a real headless Chromium against the app on a loopback port, with API keys
on (like the other pages' browser tests: needs ``playwright`` and a Chromium, skipped otherwise)."""

from __future__ import annotations

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
