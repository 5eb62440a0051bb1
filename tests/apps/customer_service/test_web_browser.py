"""The staff page in a real headless Chromium against the app on a loopback port (needs the
``playwright`` package, a dev extra, and a Chromium: ``apt-get install chromium`` or ``TRIPTYCH_CHROMIUM``;
skipped otherwise). The browser tests alone: ``.venv/bin/python -m pytest -m browser``."""

from __future__ import annotations

import re
import time

import pytest

from tests.core.serving.pages import BROWSER, open_page, wait_status

pytestmark = BROWSER


@pytest.mark.timeout(240)
def test_page_analyses_an_upload_and_streams_the_microphone(cs_settings, tmp_path):
    from apps.customer_service.api import create_app
    from apps.customer_service.speech.tts import synthesize
    from core.serving.bench import LoopbackServer

    wav = tmp_path / "call.wav"
    wav.write_bytes(synthesize("Hello. I lost my card yesterday. The number is four one one one, one one one one, "
                               "one one one one, one one one one. Please block it.", voice="en-us", speed_wpm=150))
    microphone = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={wav}%noloop")
    settings = cs_settings.model_copy(update={"api_keys": {"agent-key": "agent"}})  # the page sends the key
    with LoopbackServer(create_app(settings)) as server, open_page(server.url + "/ui", microphone) as (page, problems):
        assert page.url.endswith("/ui/") and page.title().startswith("triptych")
        # opened without a key, the calls' numbers say what they need (the browser logs the refused request)
        assert wait_status(page, "#summary-status", lambda t, c: "API key" in t, 30).startswith("Enter the API key")
        assert problems and all("401" in p for p in problems), problems
        problems.clear()
        page.fill("#api-key", "agent-key")  # REST: X-API-Key; the WebSocket: its first message

        page.set_input_files("#audio", str(wav))
        page.check("#redact-audio")
        page.click("#analyse-button")
        status = wait_status(page, "#call-status", lambda t, c: t.startswith("Done") or "error" in c, 120)
        assert status.startswith("Done"), status
        note = wait_status(page, "#redacted-note", lambda t, c: "silenced" in t or "error" in t.lower(), 30)
        assert re.fullmatch(r"[0-9.]+ s silenced of [0-9.]+ s", note), note  # fetched with the key, playable
        assert page.locator("#redacted-audio").evaluate("a => a.src.startsWith('blob:')")
        assert page.is_visible("#call-result") and page.locator("#segments tbody tr").count() >= 1
        assert page.text_content("#escalation") and page.locator("#timeline div").count() >= 1
        assert not problems, problems  # no script errors, no CSP violations, no failed requests

        # the analysed call heads the recent calls; clicking it shows the stored analysis again
        assert wait_status(page, "#recent-status", lambda t, c: t.endswith("call") or "error" in c, 30) == "1 call"
        # and is counted in the calls' numbers, refreshed after it
        assert wait_status(page, "#summary-status", lambda t, c: t.startswith("1 call") or "error" in c, 30) == "1 call"
        assert page.text_content("#escalation-rate").endswith("of 1") and page.locator("#summary-intents .bar").count() == 1
        assert page.text_content("#summary-redactions") != "nothing"  # the spoken card number, redacted
        with page.expect_download() as download:
            page.click("#export")
        lines = open(download.value.path()).read().splitlines()
        assert download.value.suggested_filename == "calls-last-24h.csv" and len(lines) == 2
        assert lines[0].startswith("created_at,id,status,escalate") and "block" not in lines[1]  # no transcript words
        page.click("#calls tbody tr")
        assert wait_status(page, "#call-status", lambda t, c: t.startswith("Result") or "error" in c, 30).startswith("Result")
        assert page.locator("#segments tbody tr").count() >= 1

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
        # each sentence was read as the call went on (its emotion after its text), and the call so far
        assert page.is_visible("#live-escalation") and page.text_content("#live-escalation")
        assert any(" · " in line for line in page.locator("#finals p").all_text_contents())
        assert page.is_visible("#live-call") and page.text_content("#live-emotion") != "—"
        # stored at its end like an analysed call: the recent calls now hold both
        assert wait_status(page, "#recent-status", lambda t, c: t == "2 calls" or "error" in c, 30) == "2 calls"
