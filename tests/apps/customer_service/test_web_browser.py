"""The staff page in a real headless Chromium against the app on a loopback port (opt-in: needs the
``playwright`` package and a Chromium; skipped otherwise). Run it with
``.venv/bin/pip install playwright && .venv/bin/python -m pytest -m browser`` (Debian: ``apt-get install chromium``;
or point ``TRIPTYCH_CHROMIUM`` at another Chromium binary)."""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from tests.core.serving.pages import wait_status

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("TRIPTYCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")]


@pytest.mark.timeout(240)
def test_page_analyses_an_upload_and_streams_the_microphone(cs_settings, tmp_path):
    from apps.customer_service.api import create_app
    from apps.customer_service.speech.tts import synthesize
    from core.serving.bench import LoopbackServer

    wav = tmp_path / "call.wav"
    wav.write_bytes(synthesize("Hello. I lost my card yesterday. The number is four one one one, one one one one, "
                               "one one one one, one one one one. Please block it.", voice="en-us", speed_wpm=150))
    with LoopbackServer(create_app(cs_settings)) as server, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop"])
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(server.url + "/ui")
        assert page.url.endswith("/ui/") and page.title().startswith("triptych")

        page.set_input_files("#audio", str(wav))
        page.click("#analyse-button")
        status = wait_status(page, "#call-status", lambda t, c: t.startswith("Done") or "error" in c, 120)
        assert status.startswith("Done"), status
        assert page.is_visible("#call-result") and page.locator("#segments tbody tr").count() >= 1
        assert page.text_content("#escalation") and page.locator("#timeline div").count() >= 1
        assert not problems, problems  # no script errors, no CSP violations, no failed requests

        page.set_input_files("#audio", {"name": "notes.wav", "mimeType": "audio/wav", "buffer": b"not audio at all"})
        page.click("#analyse-button")
        assert "accepted kinds" in wait_status(page, "#call-status", lambda t, c: "error" in c, 30)

        page.click("#start")
        wait_status(page, "#stream-status", lambda t, c: t.startswith("Listening") or "error" in c, 30)
        time.sleep(6)
        page.click("#stop")
        ended = wait_status(page, "#stream-status", lambda t, c: t.startswith("Ended") or "error" in c, 60)
        seconds = float(re.search(r"([0-9.]+) s of audio", ended).group(1))
        assert seconds >= 4.0, ended  # chunks kept flowing from the worklet for the whole session
        browser.close()
