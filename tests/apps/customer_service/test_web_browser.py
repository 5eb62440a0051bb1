"""The staff page in a real headless Chromium against the app on a loopback port (needs the
``playwright`` package, a dev extra, and a Chromium: ``apt-get install chromium`` or ``TRIPTYCH_CHROMIUM``;
skipped otherwise). The browser tests alone: ``.venv/bin/python -m pytest -m browser``."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.core.serving.pages import BROWSER, open_page, wait_status

pytestmark = BROWSER


def _call_wav(tmp_path):
    from apps.customer_service.speech.tts import synthesize

    wav = tmp_path / "call.wav"
    wav.write_bytes(synthesize("Hello. I lost my card yesterday. The number is four one one one, one one one one, "
                               "one one one one, one one one one. Please block it.", voice="en-us", speed_wpm=150))
    return wav


def _sentences_wav(tmp_path, *sentences: str):
    """The sentences spoken with 1.5 s of silence around each: the streaming recogniser ends an utterance at each."""
    import io

    import numpy as np
    import soundfile as sf

    from apps.customer_service.speech.tts import synthesize

    parts = [sf.read(io.BytesIO(synthesize(s, voice="en-us", speed_wpm=150)), dtype="float32") for s in sentences]
    rate = parts[0][1]
    gap = np.zeros(int(1.5 * rate), dtype=np.float32)
    audio = np.concatenate([gap] + [x for clip, _ in parts for x in (clip, gap)])
    wav = tmp_path / "sentences.wav"
    sf.write(wav, audio, rate, subtype="PCM_16")
    return wav, len(audio) / rate


def _microphone(wav) -> tuple[str, ...]:
    """Chromium's flags for a microphone that plays ``wav`` once (then silence), allowed without asking."""
    return ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop")


@pytest.mark.timeout(240)
def test_page_analyses_an_upload_and_streams_the_microphone(cs_settings, tmp_path):
    from apps.customer_service.api import create_app
    from core.serving.bench import LoopbackServer

    wav = _call_wav(tmp_path)
    microphone = _microphone(wav)
    settings = cs_settings.model_copy(update={"api_keys": {"agent-key": "agent"}})  # the page sends the key
    with LoopbackServer(create_app(settings)) as server, open_page(server.url + "/ui", microphone) as (page, problems):
        assert page.url.endswith("/ui/") and page.title().startswith("triptych")
        # opened without a key, the calls' numbers and the recent calls (both asked for on open) say what they
        # need (the browser logs the refused requests)
        assert wait_status(page, "#summary-status", lambda t, c: "API key" in t, 30).startswith("Enter the API key")
        assert wait_status(page, "#recent-status", lambda t, c: "API key" in t, 30).startswith("Enter the API key")
        assert len(problems) == 2 and all("401" in p for p in problems), problems
        problems.clear()
        page.fill("#api-key", "agent-key")  # REST: X-API-Key; the WebSocket: its first message
        page.dispatch_event("#api-key", "change")  # a changed key loads the recent calls with it
        assert wait_status(page, "#recent-status", lambda t, c: t.endswith("calls") or "error" in c, 30) == "0 calls"

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
        # opened again with the key known (kept for the tab), the recent calls are there without a refresh
        page.reload()
        assert wait_status(page, "#recent-status", lambda t, c: t.endswith("call") or "error" in c, 30) == "1 call"
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


_UNAVAILABLE = json.dumps({"error": {"code": "storage_unavailable", "message": "The result store is unavailable."}})


@pytest.mark.timeout(240)
def test_a_new_call_never_shows_the_last_ones_recording_and_polling_outlasts_a_dropped_network(cs_settings, tmp_path):
    from apps.customer_service.api import create_app
    from core.serving.bench import LoopbackServer

    wav = _call_wav(tmp_path)
    with LoopbackServer(create_app(cs_settings)) as server, open_page(server.url + "/ui") as (page, problems):
        # a service without keys: the recent calls are loaded as the page opens
        assert wait_status(page, "#recent-status", lambda t, c: t.endswith("calls") or "error" in c, 30) == "0 calls"
        page.set_input_files("#audio", str(wav))
        page.check("#redact-audio")
        page.click("#analyse-button")
        assert wait_status(page, "#call-status", lambda t, c: t.startswith("Done") or "error" in c, 120).startswith("Done")
        assert "silenced" in wait_status(page, "#redacted-note", lambda t, c: "silenced" in t or "error" in t.lower(), 30)
        first = page.locator("#redacted-audio").evaluate("a => a.src")
        assert first.startswith("blob:") and page.is_visible("#redacted-download")
        assert not problems, problems

        # the next call's redacted copy cannot be fetched (the store is down)
        page.route(re.compile(r".*/v1/audio/.*"), lambda route: route.fulfill(
            status=503, content_type="application/json", body=_UNAVAILABLE))
        page.click("#analyse-button")
        assert wait_status(page, "#call-status", lambda t, c: t.startswith("Done") or "error" in c, 120).startswith("Done")
        note = wait_status(page, "#redacted-note", lambda t, c: "storage_unavailable" in t, 30)
        assert note == "The result store is unavailable. (503 storage_unavailable)", note
        # no player nor download of the previous call's recording; its memory given back
        assert page.locator("#redacted-audio").evaluate("a => !a.getAttribute('src')")
        assert not page.is_visible("#redacted-audio") and not page.is_visible("#redacted-download")
        assert page.evaluate("u => fetch(u).then(() => 'kept', () => 'revoked')", first) == "revoked"
        page.unroute(re.compile(r".*/v1/audio/.*"))

        # the network drops twice while the next job is polled: the page polls again and gets its result
        dropped: list[str] = []

        def drop_twice(route):
            if len(dropped) < 2:
                dropped.append(route.request.url)
                route.abort("internetdisconnected")
            else:
                route.fallback()

        page.route(re.compile(r".*/v1/results/[^/?]+$"), drop_twice)
        page.click("#analyse-button")
        assert wait_status(page, "#call-status", lambda t, c: t.startswith("Done") or "error" in c, 120).startswith("Done")
        assert len(dropped) == 2
        assert "silenced" in wait_status(page, "#redacted-note", lambda t, c: "silenced" in t, 30)
        assert page.is_visible("#redacted-audio") and page.is_visible("#redacted-download")
        page.unroute(re.compile(r".*/v1/results/[^/?]+$"))

        # a network that stays down: the page stops waiting but says the job goes on, and which one it is
        page.route(re.compile(r".*/v1/results/[^/?]+$"), lambda route: route.abort("internetdisconnected"))
        page.click("#analyse-button")
        status = wait_status(page, "#call-status", lambda t, c: "error" in c, 90)
        job = re.search(r"job ([0-9a-f]{32})", status)
        assert "still running" in status and job, status
        page.unroute(re.compile(r".*/v1/results/[^/?]+$"))
        for _ in range(100):  # it did carry on, under the id the page named
            row = page.evaluate("u => fetch(u).then((r) => r.json())", f"{server.url}/v1/results/{job.group(1)}")
            if row.get("payload", {}).get("status") == "done":
                break
            time.sleep(0.5)
        assert row["id"] == job.group(1) and row["payload"]["status"] == "done", row


@pytest.mark.timeout(240)
def test_a_live_reading_that_fails_is_shown_on_its_own_sentence(cs_settings, tmp_path, monkeypatch):
    from apps.customer_service.api import create_app
    from apps.customer_service.live import LiveCall
    from core.serving.bench import LoopbackServer

    add, tried = LiveCall.add, []

    def first_fails(self, text, *args, **kwargs):  # the first final's reading fails before it is stored
        tried.append(text)
        if len(tried) == 1:
            raise RuntimeError("model exploded")
        return add(self, text, *args, **kwargs)

    monkeypatch.setattr(LiveCall, "add", first_fails)
    wav, seconds = _sentences_wav(tmp_path, "Hello there.", "My card was stolen yesterday.",
                                  "Please put me through to a person.")
    with LoopbackServer(create_app(cs_settings)) as server, open_page(server.url + "/ui", _microphone(wav)) as (page, _):
        page.click("#start")
        wait_status(page, "#stream-status", lambda t, c: t.startswith("Listening") or "error" in c, 30)
        time.sleep(seconds + 1)  # the whole recording
        page.click("#stop")
        assert wait_status(page, "#stream-status", lambda t, c: t.startswith("Ended") or "error" in c, 60).startswith("Ended")
        lines = [t for t in page.locator("#finals p").all_text_contents() if t.split(" ", 1)[1].strip()]
        assert len(lines) >= 2 and len(lines) == len(tried), (lines, tried)
        # the failed reading on its own sentence; every other sentence has its own reading
        first, *rest = lines
        assert first.endswith(" · this final could not be read (RuntimeError)"), lines
        assert all(" · " in line and "could not be read" not in line for line in rest), lines
