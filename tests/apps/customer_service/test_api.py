from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from apps.customer_service.api import create_app
from tests.apps.customer_service.conftest import tone, wav_bytes

CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def client(cs_tiny_bundles, tmp_path_factory):
    from apps.customer_service.settings import CustomerServiceSettings

    tmp = tmp_path_factory.mktemp("cs_api")
    settings = CustomerServiceSettings(
        intent_bundle=cs_tiny_bundles["intent"], text_emotion_bundle=cs_tiny_bundles["text_emotion"],
        voice_emotion_bundle=cs_tiny_bundles["voice"], fusion_bundle=cs_tiny_bundles["fusion"],
        dialogue_acts_bundle=cs_tiny_bundles["dialogue_acts"],
        database_url=f"sqlite:///{tmp}/cs.db", artefact_dir=tmp / "artefacts", max_audio_seconds=20.0,
        asr_lm="generic",
    )
    app = create_app(settings)
    with TestClient(app) as c:
        for _ in range(600):
            if c.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        assert c.get("/ready").status_code == 200, c.get("/ready").json()
        yield c


def test_text_analysis_is_persisted_and_redacted(client):
    r = client.post("/v1/calls:analyze", data={"text": f"I lost my card {CARD}. Please block it!"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert CARD not in r.text and "[CARD]" in body["transcript"]["text"]
    assert body["intent"]["label"] and body["segments"][0]["modality_weights"]["text"] == 1.0
    assert r.headers["X-Model-Version"] and "dialogue_acts=" in r.headers["X-Model-Version"]
    assert isinstance(body["requests"], list)  # the tiny act model decides which sentences are requests
    assert all(isinstance(s["acts"], list) for s in body["segments"])
    stored = client.get(f"/v1/results/{body['id']}")
    assert stored.status_code == 200 and CARD not in stored.text and stored.json()["payload"]["requests"] == body["requests"]


def test_the_answer_and_the_stored_call_carry_the_written_form(client):
    """transcript.normalised and each segment's normalised are part of the answer's schema (a field the response
    model lacks would be dropped), stored with the call, and what the recent calls preview; typed text is written
    already and is kept as typed."""
    typed = f"Oh, oh no. I paid £12.50 on 3 March 1985, ok? My card {CARD}."
    r = client.post("/v1/calls:analyze", data={"text": typed})
    assert r.status_code == 200, r.text
    transcript = r.json()["transcript"]
    assert transcript["normalised"] == transcript["text"] == "Oh, oh no. I paid £12.50 on 3 March 1985, ok? My card [CARD]."
    assert [s["normalised"] for s in r.json()["segments"]] == [s["text"] for s in r.json()["segments"]]
    stored = client.get(f"/v1/results/{r.json()['id']}").json()["payload"]
    assert stored["transcript"]["normalised"] == transcript["normalised"]
    listed = client.get("/v1/results", params={"limit": 1}).json()["results"][0]
    assert listed["id"] == r.json()["id"] and listed["preview"] == transcript["normalised"]


def test_a_call_stored_before_the_written_form_is_previewed_from_its_words():
    from apps.customer_service.api import call_summary

    row = {"id": "x", "created_at": None, "payload": {
        "transcript": {"text": "my card is [CARD]", "duration_s": 1.0}, "escalation": {"escalate": False, "reasons": []}}}
    assert call_summary(row).preview == "my card is [CARD]"


def test_audio_upload(client):
    r = client.post("/v1/calls:analyze", files={"audio": ("call.wav", wav_bytes(tone(1.5)), "audio/wav")},
                    data={"output_mode": "text"})
    assert r.status_code == 200, r.text
    assert r.json()["transcript"]["duration_s"] == pytest.approx(1.5, abs=0.01)


@pytest.mark.parametrize(("files", "data", "status"), [
    ({"audio": ("x.wav", b"not audio at all", "audio/wav")}, {}, 415),
    ({"audio": ("x.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100, "image/png")}, {}, 415),
    ({"audio": ("x.wav", b"", "audio/wav")}, {}, 422),
    (None, {}, 422),
    (None, {"text": "   "}, 422),
    (None, {"text": "hello", "output_mode": "fax"}, 422),
])
def test_bad_input_is_4xx_with_a_message(client, files, data, status):
    r = client.post("/v1/calls:analyze", files=files, data=data)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


@pytest.mark.parametrize(("kwargs", "declared"), [
    ({"json": {"text": "my card was stolen"}}, "application/json"),
    ({"content": wav_bytes(tone(0.2)), "headers": {"Content-Type": "audio/wav"}}, "audio/wav"),
])
def test_a_body_that_is_not_a_form_is_told_how_to_send_one(client, kwargs, declared):
    r = client.post("/v1/calls:analyze", **kwargs)
    assert r.status_code == 415, r.text
    message = r.json()["error"]["message"]
    assert declared in message and "multipart/form-data" in message


def test_too_long_audio(client):
    r = client.post("/v1/calls:analyze", files={"audio": ("long.wav", wav_bytes(np.zeros(16000 * 25, np.float32)), "audio/wav")})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_absurd_sample_rate_is_a_422(client):
    r = client.post("/v1/calls:analyze", files={"audio": ("x.wav", wav_bytes(np.zeros(100, np.float32), sr=1), "audio/wav")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_sample_rate", r.text


def test_a_long_recording_waits_in_proportion_to_its_length(client, monkeypatch):
    """A 10-minute call takes minutes to decode; the 30 s meant for short requests must not cut it off."""
    seen = {}
    batcher = client.app.state.batchers["calls"]
    submit = batcher.submit

    async def spy(item, timeout_s=None):
        seen["timeout_s"] = timeout_s
        return await submit(item, timeout_s=timeout_s)

    monkeypatch.setattr(batcher, "submit", spy)
    settings = client.app.state.settings
    r = client.post("/v1/calls:analyze", files={"audio": ("c.wav", wav_bytes(np.zeros((16000 * 5, 2), np.float32)), "audio/wav")})
    assert r.status_code == 200, r.text
    assert seen["timeout_s"] == pytest.approx(settings.request_timeout_s + settings.seconds_per_audio_second * 10.0)
    # typed text: every sentence is read by the emotion ensemble, every request by the intent ensemble
    text = "My card has not arrived. " * 200  # 5,000 characters, 200 sentences
    assert client.post("/v1/calls:analyze", data={"text": text}).status_code == 200
    assert seen["timeout_s"] == pytest.approx(settings.request_timeout_s + settings.seconds_per_thousand_text_chars * 5.0
                                              + settings.seconds_per_text_segment * 200)


def test_call_timeout_adds_audio_and_text_work():
    from apps.customer_service.api import call_timeout_s
    from apps.customer_service.settings import CustomerServiceSettings

    s = CustomerServiceSettings(request_timeout_s=30.0, seconds_per_audio_second=0.5, seconds_per_thousand_text_chars=2.0,
                                seconds_per_text_segment=0.1)
    assert call_timeout_s(s, None, None) is None and call_timeout_s(s, None, "  ") is None  # the batcher's default
    assert call_timeout_s(s, 60.0, None) == pytest.approx(60.0)
    assert call_timeout_s(s, None, "x" * 20000) == pytest.approx(70.1)
    assert call_timeout_s(s, 60.0, "x" * 20000) == pytest.approx(100.1)
    # the same characters as 1,000 lines are 1,000 reads of each text model
    assert call_timeout_s(s, None, "x" * 19 + "\n" + ("x" * 19 + "\n") * 999) == pytest.approx(30.0 + 40.0 + 100.0)


def _poll(client, url, seconds=60.0):
    for _ in range(int(seconds / 0.1)):
        r = client.get(url)
        if r.status_code != 202:
            return r
        assert r.json()["status"] == "running" and r.headers["Retry-After"]
        time.sleep(0.1)
    raise AssertionError(f"{url} still running after {seconds} s")


def test_a_background_job_is_acknowledged_then_stored(client):
    r = client.post("/v1/calls:analyze", data={"text": f"Someone used my card {CARD}!", "output_mode": "voice"},
                    headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "running" and r.headers["Location"] == body["result_url"] == f"/v1/results/{body['id']}"
    assert r.headers["Preference-Applied"] == "respond-async"
    done = _poll(client, body["result_url"])
    assert done.status_code == 200, done.text
    payload = done.json()["payload"]
    assert payload["status"] == "done" and payload["intent"]["label"] and CARD not in done.text
    assert payload["reply"]["mode"] == "voice" and payload["reply"]["audio_wav_base64"]  # the job's only copy


def test_a_failed_background_job_stores_the_error_a_synchronous_call_would_get(client):
    r = client.post("/v1/calls:analyze", files={"audio": ("x.wav", wav_bytes(np.zeros(100, np.float32), sr=1), "audio/wav")},
                    headers={"Prefer": "wait=10, respond-async"})
    assert r.status_code == 202, r.text
    payload = _poll(client, r.json()["result_url"]).json()["payload"]
    assert payload["status"] == "failed"
    assert payload["error"]["status"] == 422 and payload["error"]["code"] == "bad_sample_rate"


@pytest.mark.parametrize(("files", "data", "code"), [
    ({"audio": ("long.wav", wav_bytes(np.zeros(16000 * 25, np.float32)), "audio/wav")}, {}, "too_long"),
    (None, {"text": "a" * 20001}, "text_too_long"),
])
def test_a_background_job_bound_to_fail_is_refused_at_once(client, files, data, code):
    """What the header or the text length already says is refused with the 4xx, not acknowledged with a 202."""
    r = client.post("/v1/calls:analyze", files=files, data=data, headers={"Prefer": "respond-async"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == code and "limit" in r.json()["error"]["message"]


@pytest.mark.parametrize("files", [None, {"audio": ("a.wav", wav_bytes(tone(0.5)), "audio/wav")}])
def test_typed_text_over_the_form_limit_is_413_with_the_text_limit(client, files):
    """Over 1 MB a text field never reached the service's own check (20000 characters, 413 text_too_long):
    Starlette's form parser answered 400 "Part exceeded maximum size of 1024KB."."""
    r = client.post("/v1/calls:analyze", files=files, data={"text": "my card is 4111 " * 70_000})
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "too_large" and "1024 KB" in error["message"]
    assert "'text' takes at most 20000 characters" in error["message"]
    assert "4111" not in r.text


def test_a_full_queue_refuses_a_background_job_instead_of_acknowledging_it(client, monkeypatch):
    batcher = client.app.state.batchers["calls"]
    monkeypatch.setattr(batcher, "max_queue", 0)
    r = client.post("/v1/calls:analyze", data={"text": "hello"}, headers={"Prefer": "respond-async"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded" and r.headers["Retry-After"]


def test_a_job_another_process_was_running_reads_interrupted(client):
    store = client.app.state.store
    job_id = store.save_result("customer-service", "call", None,
                               {"status": "running", "heartbeat": "2026-01-01T00:00:00+00:00"})  # its process stopped
    r = client.get(f"/v1/results/{job_id}")
    assert r.status_code == 200 and r.json()["payload"]["status"] == "interrupted"
    assert "send it again" in r.json()["payload"]["error"]["message"]


def test_recent_calls_are_listed_newest_first_and_summarised(client):
    store = client.app.state.store
    stale = store.save_result("customer-service", "call", None, {"status": "running", "heartbeat": "2026-01-01T00:00:00+00:00"})
    failed = store.save_result("customer-service", "call", None, {"status": "failed", "error": {
        "status": 422, "code": "bad_sample_rate", "message": "sample rate 1 Hz is outside 4000-384000 Hz"}})
    r = client.post("/v1/calls:analyze", data={"text": f"I lost my card {CARD}, this is outrageous, I want a manager!"})
    assert r.status_code == 200
    calls = client.get("/v1/results", params={"limit": 3}).json()["results"]
    assert [c["id"] for c in calls] == [r.json()["id"], failed, stale]
    newest = calls[0]
    assert newest["status"] == "done" and newest["escalate"] == r.json()["escalation"]["escalate"]
    assert newest["source"] == "upload"
    assert "[CARD]" in newest["preview"] and CARD not in str(calls) and newest["intent"] == r.json()["intent"]["label"]
    assert calls[1]["status"] == "failed" and "1 Hz" in calls[1]["preview"] and calls[1]["escalate"] is None
    assert calls[2]["status"] == "interrupted"
    flagged = client.get("/v1/results", params={"escalated": True, "limit": 500}).json()["results"]
    assert all(c["escalate"] for c in flagged)
    assert (newest["id"] in {c["id"] for c in flagged}) == newest["escalate"]
    assert client.get("/v1/results", params={"limit": 0}).status_code == 422


def test_unknown_result_is_404(client):
    assert client.get("/v1/results/doesnotexist").status_code == 404


def test_streaming_router_is_mounted(client):
    """The speech side's WebSocket is served by this app (its protocol is tested there)."""
    with client.websocket_connect("/v1/stream") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text('{"type": "end"}')
        summary = ws.receive_json()  # the models are loaded: the call is read (nothing said, nothing stored)
        assert summary["type"] == "summary" and summary["segments"] == 0 and summary["id"] is None
        assert ws.receive_json()["type"] == "end"


def test_redacted_audio_is_a_link_to_a_wav_kept_with_the_result(client):
    import io

    import soundfile as sf

    r = client.post("/v1/calls:analyze", files={"audio": ("call.wav", wav_bytes(tone(1.5)), "audio/wav")},
                    data={"redact_audio": "true", "output_mode": "text"})
    assert r.status_code == 200, r.text
    link = r.json()["redacted_audio"]
    assert link["url"].startswith("/v1/audio/") and link["channels"] == 1 and link["seconds"] == pytest.approx(1.5, abs=0.01)
    wav = client.get(link["url"])
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    samples, rate = sf.read(io.BytesIO(wav.content))
    assert rate == 16000 and len(samples) == 24000
    assert client.get(f"/v1/results/{r.json()['id']}").json()["payload"]["redacted_audio"]["url"] == link["url"]
    assert client.get("/v1/audio/" + "0" * 32 + "/redacted.wav").status_code == 404
    assert client.get("/v1/audio/..%2f..%2fcs.db/redacted.wav").status_code == 404


def test_a_call_the_database_cannot_take_is_a_503_and_leaves_no_recording(client, monkeypatch):
    from sqlalchemy.exc import OperationalError

    store = client.app.state.store
    recordings = set(client.app.state.settings.artefact_dir.rglob("*.wav"))

    def locked(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(store, "save_results", locked)
    r = client.post("/v1/calls:analyze", files={"audio": ("call.wav", wav_bytes(tone(1.5)), "audio/wav")},
                    data={"redact_audio": "true", "output_mode": "text"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
    assert set(client.app.state.settings.artefact_dir.rglob("*.wav")) == recordings  # its recording went with it
    monkeypatch.undo()
    r = client.post("/v1/calls:analyze", files={"audio": ("call.wav", wav_bytes(tone(1.5)), "audio/wav")},
                    data={"redact_audio": "true", "output_mode": "text"})
    assert len(set(client.app.state.settings.artefact_dir.rglob("*.wav")) - recordings) == 1  # stored: it stays
    r = client.post("/v1/calls:analyze", data={"text": "hello", "redact_audio": "true"})
    assert r.status_code == 422 and "audio file" in r.json()["error"]["message"]


def test_a_recording_cut_short_is_analysed_with_a_warning(client):
    """An upload interrupted half-way still holds a readable start: it is analysed, and the answer says
    that it is not the whole call."""
    whole = wav_bytes(tone(4.0))
    r = client.post("/v1/calls:analyze", files={"audio": ("call.wav", whole[: len(whole) // 2], "audio/wav")},
                    data={"output_mode": "text"})
    assert r.status_code == 200, r.text
    (warning,) = r.json()["warnings"]
    assert "cut short" in warning and "4.0 s" in warning and "2.0 s" in warning
    r = client.post("/v1/calls:analyze", files={"audio": ("call.wav", whole, "audio/wav")}, data={"output_mode": "text"})
    assert r.json()["warnings"] == []


def test_a_text_of_too_many_lines_is_refused_at_once_with_the_limit(client):
    """20,000 characters of "a\\n" (within max_text_chars) were 10,000 reads of each text model: a 504 after 90 s,
    and the worker stalled for every other caller."""
    started = time.perf_counter()
    r = client.post("/v1/calls:analyze", data={"text": "a\n" * 10000})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "too_many_segments"
    assert "10000 sentences or lines; the limit is 1000" in r.json()["error"]["message"]
    assert time.perf_counter() - started < 5.0
    r = client.post("/v1/calls:analyze", data={"text": "a\n" * 10000}, headers={"Prefer": "respond-async"})
    assert r.status_code == 413, r.text  # refused before a background job is acknowledged


def test_a_wav_whose_header_understates_its_audio_is_analysed_whole_with_a_warning(client):
    wav = wav_bytes(tone(2.0))
    at = wav.find(b"data")
    lying = wav[:at + 4] + (10).to_bytes(4, "little") + wav[at + 8:]
    r = client.post("/v1/calls:analyze", files={"audio": ("call.wav", lying, "audio/wav")}, data={"output_mode": "text"})
    assert r.status_code == 200, r.text
    assert r.json()["transcript"]["duration_s"] == pytest.approx(2.0, abs=0.01)
    (warning,) = r.json()["warnings"]
    assert "header" in warning and "2.0 s follow" in warning


def test_a_one_sample_wav_is_no_call(client):
    r = client.post("/v1/calls:analyze", files={"audio": ("x.wav", wav_bytes(tone(1.0)[:1]), "audio/wav")},
                    headers={"Prefer": "respond-async"})
    assert r.status_code == 422, r.text  # refused before a background job is acknowledged
    assert r.json()["error"]["code"] == "too_short" and "at least 0.25 s" in r.json()["error"]["message"]


def test_the_period_summary_counts_what_was_answered(client):
    import datetime as dt

    from apps.customer_service.escalation import reason_kind

    since = dt.datetime.now(dt.UTC)
    texts = [f"I lost my card {CARD}, the security code is 123. This is outrageous!",
             "my pin is 4 8 2 9 and I want to know when my new card arrives",
             "thank you, that was helpful"]
    answered = []
    for text in texts:
        r = client.post("/v1/calls:analyze", data={"text": text})
        assert r.status_code == 200, r.text
        answered.append(r.json())
    r = client.get("/v1/results:summary", params={"since": since.isoformat()})
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["complete"] and s["calls"] == 3 and s["statuses"]["done"] == 3
    flagged = [a for a in answered if a["escalation"]["escalate"]]
    assert s["escalated"] == len(flagged) and s["escalation_rate"] == round(len(flagged) / 3, 4)
    kinds = [k for a in flagged for k in {reason_kind(x) for x in a["escalation"]["reasons"]}]
    assert s["escalation_reasons"] == {k: kinds.count(k) for k in set(kinds)}
    intents = [a["intent"]["label"] for a in answered]
    assert {i["intent"]: i["calls"] for i in s["top_intents"]} == {i: intents.count(i) for i in set(intents)}
    assert sum(s["caller_emotions"].values()) == sum(a["emotion"] is not None for a in answered)
    types = [x["type"] for a in answered for x in a["transcript"]["redactions"]]
    assert s["redactions"] == {t: types.count(t) for t in set(types)} and {"card", "cvv", "credential"} <= set(types)
    assert s["audio_calls"] == 0 and s["mean_call_seconds"] is None  # typed chats
    earlier = client.get("/v1/results:summary", params={"until": since.isoformat()}).json()["calls"]
    whole_day = client.get("/v1/results:summary").json()["calls"]
    assert whole_day - earlier == 3  # the period is honoured: the module's earlier calls fall before it
    assert client.get("/v1/results:summary", params={"since": since.isoformat(), "until": since.isoformat()}).status_code == 422


def test_an_erased_call_goes_with_its_redacted_audio_and_the_erasure_is_audited(client):
    import datetime as dt

    r = client.post("/v1/calls:analyze", files={"audio": ("call.wav", wav_bytes(tone(1.0)), "audio/wav")},
                    data={"redact_audio": "true", "output_mode": "text"})
    assert r.status_code == 200, r.text
    call, url = r.json()["id"], r.json()["redacted_audio"]["url"]
    folder = client.app.state.settings.artefact_dir / "customer-service" / url.split("/")[3]
    assert folder.is_dir()
    assert client.delete(f"/v1/results/{call}").status_code == 204
    assert client.get(f"/v1/results/{call}").status_code == 404 and client.get(url).status_code == 404
    assert not folder.exists()  # the recording went with the analysis
    erased = client.app.state.store.list_audit("customer-service", action="results:erase")[0]
    assert erased["outcome"] == {"result_id": call, "kind": "call", "reason": "request", "files": 1}
    assert client.delete(f"/v1/results/{call}").status_code == 404
    now = dt.datetime.now(dt.UTC).isoformat()
    job = client.app.state.store.save_result("customer-service", "call", None, {"status": "running", "heartbeat": now})
    r = client.delete(f"/v1/results/{job}")
    assert r.status_code == 409 and "still being analysed" in r.json()["error"]["message"]


def test_a_period_exports_as_csv_without_transcripts(client):
    import csv
    import datetime as dt
    import io

    since = dt.datetime.now(dt.UTC)
    r = client.post("/v1/calls:analyze", data={"text": f"my card {CARD} was stolen and my pin is 4 8 2 9"})
    assert r.status_code == 200, r.text
    call = r.json()
    r = client.get("/v1/results.csv", params={"since": since.isoformat()})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["id"] for row in table] == [call["id"]]
    row = table[0]
    assert row["intent"] == call["intent"]["label"] and row["escalate"] == ("yes" if call["escalation"]["escalate"] else "no")
    assert row["redacted_card"] == "1" and row["redacted_credential"] == "1"
    assert "stolen" not in r.text and "4111" not in r.text  # labels and counts, never the words
