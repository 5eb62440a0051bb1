"""A call read while it is streamed: each final's reading, the call so far, the summary; the WebSocket's
analysis messages."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from apps.customer_service.live import LiveCall, bench_live
from apps.customer_service.service import CustomerServiceEngine, MemoizedTexts
from tests.apps.customer_service.conftest import tone
from tests.apps.customer_service.test_service import KeywordActs, scripted_intents

CHUNK = 16_000 * 160 // 1000 * 2  # bytes in 160 ms


class CountingModel:
    def __init__(self, as_tensor: bool):
        self.as_tensor = as_tensor
        self.read: list[str] = []
        self.config = "its config"

    def predict_proba(self, texts):
        self.read.extend(texts)
        rows = np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
        return torch.from_numpy(rows) if self.as_tensor else rows


@pytest.mark.parametrize("as_tensor", [False, True])
def test_memoized_texts_reads_each_text_once_and_answers_as_the_model_does(as_tensor):
    model = CountingModel(as_tensor)
    memo = MemoizedTexts(model)
    first = memo.predict_proba(["a", "bb", "a"])
    second = memo.predict_proba(["bb", "ccc"])
    assert model.read == ["a", "bb", "ccc"]
    assert isinstance(first, torch.Tensor) == as_tensor and isinstance(second, torch.Tensor) == as_tensor
    assert np.asarray(first)[:, 0].tolist() == [1, 2, 1] and np.asarray(second)[:, 0].tolist() == [2, 3]
    assert memo.config == "its config"


@pytest.fixture()
def engine(cs_settings):
    from apps.customer_service.model import load_fusion, load_text_classifier, load_voice_model

    engine = CustomerServiceEngine(
        cs_settings,
        intent=load_text_classifier(cs_settings.intent_bundle),
        text_emotion=load_text_classifier(cs_settings.text_emotion_bundle),
        voice=load_voice_model(cs_settings.voice_emotion_bundle),
        fusion=load_fusion(cs_settings.fusion_bundle),
    )
    engine.dialogue_acts = KeywordActs()
    asked: list[str] = []

    def read(text: str) -> dict[str, float]:
        asked.append(text)
        low = text.lower()
        if "stolen" in low:
            return {"lost_or_stolen_card": 0.9}
        if "fee" in low:
            return {"transfer_fee_charged": 0.8}
        return {}

    scripted_intents(engine, read)
    engine.asked = asked
    return engine


def test_each_final_is_read_with_the_call_so_far(engine):
    live = LiveCall(engine)
    hello = live.add("hello there", 0.5, 1.2, 0.9, None)
    assert hello["type"] == "analysis" and hello["segment_index"] == 0
    assert hello["segment"]["acts"] == ["greet"] and hello["segment"]["intent"] is None
    assert hello["segment"]["emotion"] and hello["segment"]["modality_weights"]["voice"] == 0.0
    assert hello["requests"] == []
    # no request yet is not an unclear one while the caller is still talking
    assert not any(r.startswith("intent unclear") for r in hello["escalation"]["reasons"])

    stolen = live.add("my card was stolen", 2.0, 3.5, 0.8, tone(1.5))
    assert stolen["segment_index"] == 1 and stolen["segment"]["intent"]["label"] == "lost_or_stolen_card"
    assert stolen["segment"]["modality_weights"]["voice"] > 0  # the final's audio was heard
    assert [r["label"] for r in stolen["requests"]] == ["lost_or_stolen_card"]
    assert "urgent intent lost_or_stolen_card" in stolen["escalation"]["reasons"]

    # 0.5 s after the last final, yet its own utterance: the endpointer heard the caller stop
    person = live.add("put me through to a person", 4.0, 5.0, 0.8, None)
    assert [r["label"] for r in person["requests"]] == ["lost_or_stolen_card"]
    assert "caller asked for a person" in person["escalation"]["reasons"]
    fee = live.add("and what is the fee", 6.0, 7.0, 0.8, None)
    assert [r["label"] for r in fee["requests"]] == ["lost_or_stolen_card", "transfer_fee_charged"]
    assert fee["intent"]["label"] in ("lost_or_stolen_card", "transfer_fee_charged")

    summary = live.close()
    assert summary["type"] == "summary" and summary["segments"] == 4 and "segment" not in summary
    assert summary["id"] is None  # nowhere to store it
    assert summary["requests"] == fee["requests"] and summary["escalation"] == fee["escalation"]
    # the call was read whole at every final, but each text by each model once
    assert sorted(engine.asked) == sorted(set(engine.asked))
    assert sorted(engine.dialogue_acts.seen) == sorted(set(engine.dialogue_acts.seen))


class Rewriter:
    """The configured recogniser's place (Whisper, CTC): fixed words for each clip it is given."""

    name = "whisper"

    def __init__(self, *texts: str):
        self.texts = list(texts)
        self.clips: list[int] = []

    def transcribe(self, samples, sample_rate):
        from apps.customer_service.speech.asr import Transcript, Word

        self.clips.append(len(samples))
        words = [Word(w, 0.1 + 0.3 * i, 0.35 + 0.3 * i, 0.9) for i, w in enumerate(self.texts.pop(0).split())]
        return Transcript(words, 0.9 if words else 0.0, "whisper")


def test_a_configured_recogniser_writes_each_final_again_from_its_audio(engine):
    engine.recognizer = Rewriter("my card was stolen", "the card number is four five three nine",
                                 "one four eight eight zero three four three six four six seven", "")
    live = LiveCall(engine, save=lambda payload: "id")
    first = live.add("my cart was stone", 2.0, 3.5, 0.4, tone(1.5))
    assert first["segment"]["text"] == "my card was stolen" and first["segment"]["asr"] == "whisper"
    assert first["segment"]["asr_confidence"] == 0.9 and first["segment"]["intent"]["label"] == "lost_or_stolen_card"
    assert engine.recognizer.clips == [len(tone(1.5))]
    # a card read out over two finals is redacted in the words written again, read with the final before
    live.add("the cart number is for five three nine", 4.0, 6.0, 0.5, tone(2.0))
    third = live.add("one for eight eight zero three for three six for six seven", 6.5, 9.0, 0.5, tone(2.5))
    assert "[CARD]" in third["segment"]["text"] and "eight" not in third["segment"]["text"]
    assert live.redactions and live.redactions[-1]["type"] == "card"
    assert live.redactions[-1]["start_s"] >= 6.5  # the words' times are the stream's
    # nothing heard again (or no audio): the stream's own words stay
    kept = live.add("thank you", 10.0, 10.5, 0.7, tone(0.5))
    assert kept["segment"]["text"] == "thank you" and kept["segment"]["asr"] == "stream"
    assert live.add("bye", 11.0, 11.3, 0.7, None)["segment"]["asr"] == "stream"


def test_an_unclear_call_is_judged_at_its_end(engine):
    live = LiveCall(engine)
    live.engine.dialogue_acts.predict_proba = lambda texts: np.ones((len(texts), 5), dtype=np.float32) * [1, 0, 0, 0, 0]
    during = live.add("hmm well about the thing", 0.0, 1.0, 0.9, None)
    assert during["requests"] == [] and not any("unclear" in r for r in during["escalation"]["reasons"])
    assert any(r.startswith("intent unclear") for r in live.close()["escalation"]["reasons"])


def test_an_empty_call_has_an_empty_summary(engine):
    summary = LiveCall(engine).close()
    assert summary == {"type": "summary", "segments": 0, "id": None, "intent": None, "requests": [], "emotion": None,
                       "escalation": {"escalate": False, "reasons": []}}


# ---- over the WebSocket ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stream_pool():
    from apps.customer_service.speech.streaming import DecoderPool

    pool = DecoderPool(size=1)
    pool.release(pool.acquire())
    return pool


@pytest.fixture(scope="module")
def call_pcm() -> bytes:
    from tests.apps.customer_service.speech.conftest import speak

    gap = np.zeros(8_000, dtype=np.float32)
    audio = np.concatenate([gap, speak("Hello, my card has not arrived yet."), gap,
                            speak("My card number is four five three nine one four eight eight zero three four three six "
                                  "four six seven."), gap])
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def _stream(app: FastAPI, pcm: bytes, query: str = "") -> list[dict]:
    with TestClient(app) as client:
        return _stream_with(client, pcm, query, "/customer-service")


def _stream_with(client: TestClient, pcm: bytes, query: str = "", prefix: str = "") -> list[dict]:
    with client.websocket_connect(f"{prefix}/v1/stream{query}") as ws:
        messages = [ws.receive_json()]
        for off in range(0, len(pcm), CHUNK):
            ws.send_bytes(pcm[off:off + CHUNK])
        ws.send_text(json.dumps({"type": "end"}))
        while messages[-1]["type"] != "end":
            messages.append(ws.receive_json())
    return messages


def _app(stream_pool, live_call) -> FastAPI:
    from apps.customer_service.speech.router import create_stream_router

    app = FastAPI()
    app.include_router(create_stream_router(pool=stream_pool, max_session_s=30, live_call=live_call),
                       prefix="/customer-service")
    return app


@pytest.mark.timeout(180)
def test_the_stream_reads_each_final_after_sending_it(stream_pool, call_pcm, engine):
    messages = _stream(_app(stream_pool, lambda app, **kw: LiveCall(engine)), call_pcm)
    assert messages[0]["type"] == "ready" and messages[0]["analysis"] is True
    finals = [m for m in messages if m["type"] == "final" and m["text"]]
    analyses = [m for m in messages if m["type"] == "analysis"]
    assert len(finals) >= 2 and len(analyses) == len(finals)
    assert [a["segment_index"] for a in analyses] == list(range(len(finals)))
    assert [a["segment"]["text"] for a in analyses] == [f["text"] for f in finals]  # the redacted text
    assert "[CARD]" in analyses[-1]["segment"]["text"]
    for a in analyses:
        assert messages.index(a) > messages.index(finals[a["segment_index"]])
        assert a["segment"]["modality_weights"]["voice"] > 0 and a["latency_ms"] > 0
    assert [m["type"] for m in messages[-2:]] == ["summary", "end"]
    assert messages[-2]["segments"] == len(finals)


@pytest.mark.timeout(180)
def test_analysis_can_be_turned_off_and_a_failed_reading_does_not_end_the_stream(stream_pool, call_pcm, engine):
    made = []
    quiet = _stream(_app(stream_pool, lambda app, **kw: made.append(1) or LiveCall(engine)), call_pcm, "?analyze=false")
    assert quiet[0]["analysis"] is False and not made
    assert not any(m["type"] in ("analysis", "summary") for m in quiet)

    class Broken(LiveCall):
        def add(self, *args):
            raise RuntimeError("model exploded")

    messages = _stream(_app(stream_pool, lambda app, **kw: Broken(engine)), call_pcm)
    analyses = [m for m in messages if m["type"] == "analysis"]
    assert analyses and all(a["error"] == "this final could not be read (RuntimeError)" for a in analyses)
    assert [m["type"] for m in messages[-2:]] == ["summary", "end"]


@pytest.mark.timeout(180)
def test_each_reading_names_its_final_even_after_a_reading_failed(stream_pool, call_pcm, engine):
    # the first final's reading fails before it is stored (as read_emotions raising does): the readings after it
    # must still name their own finals, not the one before (a page counting finals labelled the wrong sentence)
    class FirstFails(LiveCall):
        tried = 0

        def add(self, *args):
            self.tried += 1
            if self.tried == 1:
                raise RuntimeError("model exploded")
            return super().add(*args)

    messages = _stream(_app(stream_pool, lambda app, **kw: FirstFails(engine)), call_pcm)
    finals = {m["final_index"]: m for m in messages if m["type"] == "final"}
    assert sorted(finals) == list(range(len(finals)))  # every final numbered, in order
    spoken = [i for i, f in sorted(finals.items()) if f["text"]]
    analyses = [m for m in messages if m["type"] == "analysis"]
    assert len(spoken) >= 2 and [a["final_index"] for a in analyses] == spoken  # one reading per final, its own
    failed, *read = analyses
    assert failed["final_index"] == spoken[0] and failed["segment_index"] is None
    assert failed["error"] == "this final could not be read (RuntimeError)" and "segment" not in failed
    for a in read:
        assert "error" not in a and a["segment"]["text"] == finals[a["final_index"]]["text"]
        assert messages.index(a) > messages.index(finals[a["final_index"]])
    assert messages[-2]["type"] == "summary" and messages[-2]["segments"] == len(spoken) - 1


@pytest.mark.timeout(180)
def test_a_final_whose_reading_fails_is_still_in_the_stored_call(stream_pool, call_pcm, engine, monkeypatch):
    """The agent saw the final: its emotion model failing must not drop it from the stored call."""
    real, calls = engine.read_emotions, []

    def first_fails(segments):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return real(segments)

    monkeypatch.setattr(engine, "read_emotions", first_fails)
    messages = _stream(_app(stream_pool, lambda app, **kw: LiveCall(engine)), call_pcm)
    spoken = [m for m in messages if m["type"] == "final" and m["text"]]
    analyses = [m for m in messages if m["type"] == "analysis"]
    assert len(spoken) >= 2 and analyses[0]["error"] == "this final could not be read (RuntimeError)"
    assert analyses[0]["final_index"] == spoken[0]["final_index"]
    summary = messages[-2]
    assert summary["type"] == "summary" and summary["segments"] == len(spoken)  # the unread one included
    assert [a["segment"]["text"] for a in analyses[1:]] == [f["text"] for f in spoken[1:]]


@pytest.mark.timeout(120)
def test_the_live_bench_reads_every_final_beside_the_recogniser(engine):
    from tests.apps.customer_service.speech.conftest import speak

    gap = np.zeros(8_000, dtype=np.float32)
    audio = np.concatenate([gap, speak("My card was stolen yesterday."), gap, speak("Thank you."), gap])
    out = bench_live(engine, [audio])
    assert out["finals"] >= 2 and len(engine.dialogue_acts.seen) >= out["finals"]  # every final was read
    assert 0 < out["analysis_p50_ms"] <= out["analysis_p95_ms"] <= out["analysis_max_ms"]
    assert out["chunk_p50_ms"] <= out["chunk_p95_ms"] <= out["chunk_max_ms"]
    assert out["audio_s"] == pytest.approx(len(audio) / 16_000)


def test_a_stored_live_call_is_the_call_an_analysis_would_store(engine):
    from apps.customer_service.speech.asr import Word

    saved: list[dict] = []
    live = LiveCall(engine, save=lambda payload: saved.append(payload) or "id-1")
    words = [Word(w, 1.0 + 0.3 * i, 1.2 + 0.3 * i, 0.9) for i, w in enumerate("my phone is 07700 900123".split())]
    live.add("my phone is [PHONE]", 1.0, 2.5, 0.9, None, words, [{"type": "phone", "start": 12, "end": 24}])
    words = [Word(w, 3.0 + 0.3 * i, 3.2 + 0.3 * i, 0.9) for i, w in enumerate("and my card was stolen".split())]
    live.add("and my card was stolen", 3.0, 4.5, 0.9, None, words, [])
    summary = live.close(audio_s=6.0)
    assert summary["id"] == "id-1" and len(saved) == 1
    payload = saved[0]
    assert payload["source"] == "stream" and payload["transcript"]["duration_s"] == 6.0
    assert payload["transcript"]["text"] == "my phone is [PHONE] and my card was stolen"
    # offsets point into the unredacted transcript, times are those of the number's own words
    assert payload["transcript"]["redactions"] == [{"type": "phone", "start": 12, "end": 24, "start_s": 1.9,
                                                    "end_s": 2.4, "speaker": "caller"}]
    assert [s["text"] for s in payload["segments"]] == ["my phone is [PHONE]", "and my card was stolen"]
    assert not any("_samples" in s or "endpointed" in s for s in payload["segments"])
    assert payload["escalation"] == summary["escalation"] and payload["reply"]["mode"] == "text"
    assert payload["reply"]["text"] and payload["model_versions"]["intent"]
    from apps.customer_service.api import CallAnalysis

    CallAnalysis(id="id-1", **payload)  # the schema of an analysed call
    assert LiveCall(engine, save=saved.append).close()["id"] is None and len(saved) == 1  # no final: nothing stored


def test_each_final_and_the_stored_call_come_in_written_form_too(engine):
    from apps.customer_service.api import CallAnalysis

    saved: list[dict] = []
    live = LiveCall(engine, save=lambda payload: saved.append(payload) or "id-1")
    first = live.add("my card number is [CARD] and i paid twelve pounds fifty", 1.0, 6.0, 0.9, None)
    assert first["segment"]["text"] == "my card number is [CARD] and i paid twelve pounds fifty"
    assert first["segment"]["normalised"] == "my card number is [CARD] and i paid £12.50"
    live.add("on the third of march", 7.0, 8.0, 0.9, None)
    live.close()
    payload = saved[0]
    assert payload["transcript"]["text"] == "my card number is [CARD] and i paid twelve pounds fifty on the third of march"
    assert payload["transcript"]["normalised"] == "my card number is [CARD] and i paid £12.50 on 3 March"
    assert [s["normalised"] for s in payload["segments"]] == ["my card number is [CARD] and i paid £12.50", "on 3 March"]
    assert CallAnalysis(id="id-1", **payload).transcript.normalised == payload["transcript"]["normalised"]


@pytest.mark.timeout(240)
def test_the_service_stores_a_streamed_call_with_its_analysis(cs_settings, call_pcm):
    from apps.customer_service.api import create_app

    app = create_app(cs_settings)
    with TestClient(app) as client:
        for _ in range(600):
            if client.get("/ready").json().get("ready"):
                break
            time.sleep(0.1)
        messages = _stream_with(client, call_pcm)
        assert messages[0]["analysis"] is True and messages[0]["store"] is True
        summary = messages[-2]
        assert summary["type"] == "summary" and summary["id"]
        row = client.get(f"/v1/results/{summary['id']}").json()
        payload = row["payload"]
        assert payload["source"] == "stream" and payload["escalation"] == summary["escalation"]
        assert "[CARD]" in payload["transcript"]["text"] and payload["transcript"]["redactions"][0]["type"] == "card"
        spoken_digits = r"\b(four|five|three|nine|one|eight|zero|six|seven)( (four|five|three|nine|one|eight|zero|six|seven)){5,}"
        assert not re.search(spoken_digits, json.dumps(payload))  # the spoken card number is stored nowhere
        listed = client.get("/v1/results").json()["results"]
        assert [c["id"] for c in listed] == [summary["id"]] and listed[0]["source"] == "stream"
        day = client.get("/v1/results:summary").json()
        assert day["calls"] == 1 and day["live_calls"] == 1  # counted in the day's numbers
        assert ",stream," in client.get("/v1/results.csv").text
        # not stored when asked not to, nor without redaction
        for query in ("?store=false", "?redact=false"):
            messages = _stream_with(client, call_pcm, query)
            assert messages[0]["store"] is False and messages[-2]["id"] is None
        assert len(client.get("/v1/results").json()["results"]) == 1

        # a client that leaves without the end message: the call is kept as far as it was read
        with client.websocket_connect("/v1/stream") as ws:
            assert ws.receive_json()["store"] is True
            for off in range(0, len(call_pcm), CHUNK):
                ws.send_bytes(call_pcm[off:off + CHUNK])
            while ws.receive_json()["type"] != "analysis":
                pass
        for _ in range(300):
            calls = client.get("/v1/results").json()["results"]
            if len(calls) == 2:
                break
            time.sleep(0.1)
        kept = client.get(f"/v1/results/{calls[0]['id']}").json()["payload"]
        assert kept["source"] == "stream" and kept["segments"] and "without its end message" in kept["warnings"][0]
