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
        assert not problems, problems  # no script errors, no CSP violations
