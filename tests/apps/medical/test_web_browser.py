"""The radiology page in a real headless Chromium against the app on a loopback port, with API keys
on (opt-in like the contact centre's: needs ``playwright`` and a Chromium; skipped otherwise)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.core.serving.pages import wait_status

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("TRIPTYCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")]


@pytest.mark.timeout(240)
def test_page_shows_probability_heat_maps_and_capture(tiny_bundle, tiny_bert_dir, toy_studies, tmp_path):
    from apps.medical.api import create_app
    from apps.medical.settings import MedicalSettings
    from core.serving.bench import LoopbackServer

    settings = MedicalSettings(bundle_dir=tiny_bundle[0], bert_path=str(tiny_bert_dir), database_url=f"sqlite:///{tmp_path}/t.db",
                               artefact_dir=tmp_path / "art", api_keys={"rad-key": "radiologist"})
    ct = toy_studies / "volumes" / "LIDC-IDRI-0002-s0.nii.gz"
    with LoopbackServer(create_app(settings)) as server, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(accept_downloads=True)
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(server.url + "/ui/")

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
        assert open(download.value.path(), "rb").read(2) == b"PK"
        assert not problems, problems  # no script errors, no CSP violations
        browser.close()
