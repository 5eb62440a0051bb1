"""Streaming: partial then final hypotheses from 160 ms PCM chunks, the WebSocket protocol, the bench."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from apps.customer_service.speech.router import CLOSE_REASONS, create_stream_router
from apps.customer_service.speech.streaming import StreamingRecognizer, bench_streaming

from .conftest import speak

CHUNK = 16_000 * 160 // 1000 * 2  # bytes in 160 ms


def _pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def call_audio() -> np.ndarray:
    gap = np.zeros(8_000, dtype=np.float32)
    return np.concatenate([gap, speak("Hello, my card has not arrived yet."), gap,
                           speak("My card number is four five three nine one four eight eight zero three four three six four six seven."), gap])


def test_partials_then_finals_with_stream_times(stream_pool, call_audio):
    rec = StreamingRecognizer(pool=stream_pool)
    pcm = _pcm(call_audio)
    events = []
    for off in range(0, len(pcm), CHUNK):
        events += rec.accept(pcm[off:off + CHUNK])
    events += rec.finish()
    kinds = [e.type for e in events]
    assert "partial" in kinds and kinds.count("final") >= 2
    assert kinds.index("partial") < kinds.index("final")
    finals = [e for e in events if e.type == "final"]
    assert "card" in finals[0].text.split()
    digits = sum(w in ("four", "five", "three", "nine", "one", "eight", "zero", "six", "seven") for w in finals[-1].text.split())
    assert digits >= 12
    duration = len(call_audio) / 16_000
    for e in finals:
        for w in e.words:
            assert e.start - 0.05 <= w.start < w.end <= duration + 0.05
    assert finals[1].start > finals[0].end - 0.05  # the second utterance starts after the first
    assert rec.finish() == [] and len(rec.chunk_latencies_ms) == math.ceil(len(pcm) / CHUNK)


def test_chunks_must_be_whole_samples(stream_pool):
    rec = StreamingRecognizer(pool=stream_pool)
    try:
        with pytest.raises(ValueError, match="even number"):
            rec.accept(b"\x00\x01\x02")
    finally:
        rec.close()


def test_bench_reports_latency_percentiles(stream_pool, call_audio):
    out = bench_streaming([call_audio[:16_000 * 4]], chunk_ms=160)
    for key in ("chunk_p50_ms", "chunk_p95_ms", "chunk_max_ms", "rtf", "chunks", "audio_s"):
        assert isinstance(out[key], float) and out[key] == out[key]
    assert out["chunk_p50_ms"] <= out["chunk_p95_ms"] <= out["chunk_max_ms"]
    assert out["chunks"] == math.ceil(16_000 * 4 / 2560)


@pytest.fixture(scope="module")
def client(stream_pool):
    app = FastAPI()
    app.include_router(create_stream_router(pool=stream_pool, max_session_s=30), prefix="/customer-service")
    with TestClient(app) as c:
        yield c


@pytest.mark.timeout(120)
def test_websocket_streams_redacted_hypotheses(client, call_audio):
    pcm = _pcm(call_audio)
    with client.websocket_connect("/customer-service/v1/stream") as ws:
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["sample_rate"] == 16000
        for off in range(0, len(pcm), CHUNK):
            ws.send_bytes(pcm[off:off + CHUNK])
        ws.send_text(json.dumps({"type": "end"}))
        messages = []
        while True:
            msg = ws.receive_json()
            messages.append(msg)
            if msg["type"] == "end":
                break
    finals = [m for m in messages if m["type"] == "final"]
    assert any(m["type"] == "partial" for m in messages) and len(finals) >= 2
    last = finals[-1]
    assert "[CARD]" in last["text"] and last["redactions"][0]["type"] == "card"
    spoken_digits = r"\b(four|five|three|nine|one|eight|zero|six|seven)( (four|five|three|nine|one|eight|zero|six|seven)){5,}"
    assert not re.search(spoken_digits, " ".join(m.get("text", "") for m in messages))  # no partial leaks either
    assert any(w["text"] == "[REDACTED]" for w in last["words"])
    assert all("latency_ms" in m for m in messages if m["type"] == "partial")
    assert messages[-1]["audio_s"] == pytest.approx(len(call_audio) / 16_000, abs=0.01)


@pytest.mark.parametrize("url,send,code,close_code", [
    ("/customer-service/v1/stream?mode=poetry", None, "bad_mode", 1003),
    ("/customer-service/v1/stream", ("bytes", b"\x00\x01\x02"), "bad_chunk", 1003),
    ("/customer-service/v1/stream", ("text", "hello"), "bad_message", 1003),
    ("/customer-service/v1/stream", ("text", "[" * 100_000), "bad_message", 1003),  # JSON nested too deep to parse
    # audio the stream cannot take is refused before any of it is decoded as 16 kHz PCM (and stored)
    ("/customer-service/v1/stream?sample_rate=8000", None, "unsupported_audio", 1003),
    ("/customer-service/v1/stream?sample_rate=nan", None, "unsupported_audio", 1003),
    ("/customer-service/v1/stream?sample_rate=1e309", None, "unsupported_audio", 1003),
    ("/customer-service/v1/stream?encoding=mulaw", None, "unsupported_audio", 1003),
    ("/customer-service/v1/stream?channels=2", None, "unsupported_audio", 1003),
    ("/customer-service/v1/stream?rate=16000", None, "unknown_parameter", 1003),
    ("/customer-service/v1/stream?key=secret", None, "unknown_parameter", 1003),  # keys never go in the URL
    ("/customer-service/v1/stream?analyze=garbage", None, "bad_flag", 1003),
    ("/customer-service/v1/stream?store=maybe", None, "bad_flag", 1003),
    ("/customer-service/v1/stream?redact=", None, "bad_flag", 1003),
])
def test_websocket_refuses_bad_input(client, url, send, code, close_code):
    with client.websocket_connect(url) as ws:
        first = ws.receive_json()
        if send is not None:
            assert first["type"] == "ready"
            getattr(ws, f"send_{send[0]}")(send[1])
            first = ws.receive_json()
        assert first["type"] == "error" and first["code"] == code and first["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    # the close frame says it too, for a browser's onclose, which sees nothing else
    assert closed.value.code == close_code and closed.value.reason == CLOSE_REASONS[code]


def test_refusals_of_query_parameters_say_what_is_accepted(client):
    with client.websocket_connect("/customer-service/v1/stream?rate=16000") as ws:
        unknown = ws.receive_json()["message"]
    assert "'rate'" in unknown and all(name in unknown for name in ("mode", "redact", "analyze", "store", "sample_rate"))
    with client.websocket_connect("/customer-service/v1/stream?sample_rate=8000") as ws:
        assert "16-bit little-endian PCM" in ws.receive_json()["message"]
    with client.websocket_connect("/customer-service/v1/stream?analyze=garbage") as ws:
        assert "true, false, 1, 0, yes, no" in ws.receive_json()["message"]
    with client.websocket_connect("/customer-service/v1/stream?redact=true&mode=digit&redact=false") as ws:
        repeated = ws.receive_json()
    assert repeated["code"] == "repeated_parameter" and "'redact'" in repeated["message"]


def test_declared_audio_format_and_flags_in_any_case_are_accepted(client):
    url = "/customer-service/v1/stream?sample_rate=16000&encoding=PCM_S16LE&channels=1&redact=YES&analyze=0&store=False"
    with client.websocket_connect(url) as ws:
        ready = ws.receive_json()
        ws.send_text('{"type": "end"}')
        assert ready["type"] == "ready" and ready["redact"] is True and ws.receive_json()["type"] == "end"


def test_close_reasons_fit_a_close_frame():
    # fixed texts (no user data); a close frame's reason holds at most 123 bytes
    for code, reason in CLOSE_REASONS.items():
        assert reason and reason.isascii() and len(reason.encode()) <= 120, code


@pytest.mark.timeout(60)
def test_websocket_session_limit(stream_pool):
    app = FastAPI()
    app.include_router(create_stream_router(pool=stream_pool, max_session_s=0.5))
    with TestClient(app) as c, c.websocket_connect("/v1/stream") as ws:
        assert ws.receive_json()["type"] == "ready"
        for _ in range(8):  # 0.8 s of audio against a 0.5 s limit
            ws.send_bytes(b"\x00\x00" * 1600)
        msgs = []
        while True:
            m = ws.receive_json()
            msgs.append(m)
            if m["type"] == "error":
                break
        assert msgs[-1]["code"] == "too_long"
        # the decoder went back to the pool before the error was sent: a client retrying at once gets it
        stream_pool.release(stream_pool.acquire(timeout_s=5.0))


@pytest.mark.parametrize("cut_s", [0.6, 0.62, 1.0])
def test_stream_ending_mid_speech_finishes_cleanly(stream_pool, cut_s):
    # Regression: a stream cut while the caller is still talking, on a frame boundary, left the
    # endpointer an empty tail and pocketsphinx raised IndexError from end_stream.
    pcm = _pcm(speak("My card number is four five three nine and I want to block it"))[: int(cut_s * 16_000) * 2]
    rec = StreamingRecognizer(pool=stream_pool)
    events = []
    for off in range(0, len(pcm), 3_200):  # 100 ms chunks
        events += rec.accept(pcm[off:off + 3_200])
    events += rec.finish()
    finals = [e for e in events if e.type == "final"]
    assert len(finals) == 1 and finals[0].text
    assert finals[0].end <= cut_s + 0.05


def test_digit_mode_finals_come_from_the_learned_digit_recogniser(stream_pool, monkeypatch):
    """In digit mode each final is re-decided by the shipped digit CNN on the utterance's audio."""
    from apps.customer_service.speech import digits

    calls = []
    real = digits.shared_digit_recognizer

    def spy(bundle=None):
        calls.append(bundle)
        return real(bundle)

    monkeypatch.setattr(digits, "shared_digit_recognizer", spy)
    gap = np.zeros(8_000, dtype=np.float32)
    pcm = _pcm(np.concatenate([gap, speak("seven"), gap, gap, speak("two"), gap]))
    rec = StreamingRecognizer(pool=stream_pool, mode="digit")
    events = []
    for off in range(0, len(pcm), CHUNK):
        events += rec.accept(pcm[off:off + CHUNK])
    events += rec.finish()
    finals = [e for e in events if e.type == "final" and e.text]
    assert [e.text for e in finals] == ["seven", "two"]
    assert len(calls) >= 2
    for e in finals:
        assert len(e.words) == 1 and e.start - 0.05 <= e.words[0].start < e.words[0].end <= e.end + 0.05


@pytest.mark.timeout(60)
def test_sessions_whose_client_leaves_return_their_decoder(stream_pool, call_audio):
    """A client that drops the socket mid-call (no "end") must not strand the pool's only decoder."""
    app = FastAPI()
    app.include_router(create_stream_router(pool=stream_pool, max_session_s=30))
    pcm = _pcm(call_audio)
    with TestClient(app) as c:
        for _ in range(3):
            with c.websocket_connect("/v1/stream") as ws:
                assert ws.receive_json()["type"] == "ready"
                for off in range(0, 8 * CHUNK, CHUNK):
                    ws.send_bytes(pcm[off:off + CHUNK])
        # while the server runs (leaving the client shuts its event loop down, and with it any session
        # still decoding the chunks it was sent: a server stop, not a client leaving)
        decoder = stream_pool.acquire(timeout_s=10.0)
        stream_pool.release(decoder)


def test_partials_name_words_not_lexicon_variants():
    """The digit grammar's "sixnarrow" (a six for 8 kHz audio) reads "six" in partials as in finals; raw,
    it also split a spoken card number so that the redactor left its end in the clear."""
    from types import SimpleNamespace

    from apps.customer_service.speech.router import _render
    from apps.customer_service.speech.streaming import DecoderPool

    class Decoder:  # what pocketsphinx answers mid-utterance
        def activate_search(self, name: str) -> None:
            pass

        def hyp(self):
            return SimpleNamespace(hypstr="four five three nine one four eight eight zero three four three "
                                          "sixnarrow four sixnarrow seven")

    class Pool(DecoderPool):
        def acquire(self, timeout_s: float = 10.0):
            return Decoder()

    rec = StreamingRecognizer(pool=Pool(size=1), mode="digits")
    partial = rec._partial()
    assert partial.text == "four five three nine one four eight eight zero three four three six four six seven"
    assert _render(partial, True, [])["text"] == "[CARD]"


@pytest.mark.timeout(60)
def test_an_idle_session_gives_its_decoder_back(stream_pool):
    """A client that connects and then sends nothing must not hold one of the pool's few decoders for ever."""
    app = FastAPI()
    app.include_router(create_stream_router(pool=stream_pool, idle_timeout_s=0.3))
    with TestClient(app) as c, c.websocket_connect("/v1/stream") as ws:
        assert ws.receive_json()["type"] == "ready"
        error = ws.receive_json()
        assert error["type"] == "error" and error["code"] == "idle" and "PCM" in error["message"]
        stream_pool.release(stream_pool.acquire(timeout_s=5.0))


def test_a_key_sent_to_a_service_without_keys_is_ignored(client, call_audio):
    """The web page sends {"type": "auth"} first whenever its key field is filled in; a service without
    keys has already said "ready" and must not refuse the session for it."""
    pcm = _pcm(call_audio[:16_000])
    with client.websocket_connect("/customer-service/v1/stream") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text(json.dumps({"type": "auth", "key": "a-key"}))
        ws.send_bytes(pcm)
        ws.send_text(json.dumps({"type": "end"}))
        messages = []
        while not messages or messages[-1]["type"] not in ("end", "error"):
            messages.append(ws.receive_json())
    assert messages[-1]["type"] == "end", messages


def test_a_card_read_out_in_fours_is_redacted_across_finals():
    """With a pause after each group of four digits the endpointer makes one final per group: each
    group alone is no card number, but the session's earlier words say it is one."""
    from apps.customer_service.speech.asr import Word
    from apps.customer_service.speech.router import _render
    from apps.customer_service.speech.streaming import StreamEvent

    heard: list[str] = []
    texts = []
    for i, said in enumerate(["my card number is", "four five three nine", "one four eight eight",
                              "zero three four three", "six four six seven", "thank you"]):
        words = [Word(w, 2.0 * i + 0.3 * k, 2.0 * i + 0.3 * k + 0.25, 0.9) for k, w in enumerate(said.split())]
        partial = _render(StreamEvent("partial", said, 2.0 * i, 2.0 * i + 1), True, heard)
        final = _render(StreamEvent("final", said, 2.0 * i, 2.0 * i + 1, words, 0.9), True, heard)
        texts += [partial["text"], final["text"], *(w["text"] for w in final["words"])]
    assert not any(re.search(r"\b(four|five|three|nine|one|eight|zero|six|seven)\b", t) for t in texts), texts
    assert "thank you" in texts and "my card number is" in texts


def test_a_final_comes_in_written_form_too_without_the_redacted_number():
    from apps.customer_service.speech.asr import Word
    from apps.customer_service.speech.router import _render
    from apps.customer_service.speech.streaming import StreamEvent
    from tests.apps.customer_service.test_pii import SPOKEN_CARD_AND_AMOUNT

    words = [Word(w, 0.3 * k, 0.3 * k + 0.25, 0.9) for k, w in enumerate(SPOKEN_CARD_AND_AMOUNT.split())]
    event = StreamEvent("final", SPOKEN_CARD_AND_AMOUNT, 0.0, 9.3, words, 0.9)
    final = _render(event, True, [])
    assert final["text"] == "my card number is [CARD] and i paid twelve pounds fifty on the third of march"
    assert final["normalised"] == "my card number is [CARD] and i paid £12.50 on 3 March"
    # the redactions and the words are those of the words as heard, as before
    assert final["redactions"] == [{"type": "card", "start": 18, "end": 98}]
    assert [w["text"] for w in final["words"]][3:6] == ["is", "[REDACTED]", "[REDACTED]"]
    assert final["words"][-1] == {"text": "march", "start": 9.0, "end": 9.25, "confidence": 0.9}
    assert _render(event, False, [])["normalised"] == "my card number is 4539148803436467 and i paid £12.50 on 3 March"
    partial = _render(StreamEvent("partial", "i paid twelve pounds", 0.0, 1.0), True, [])
    assert "normalised" not in partial  # a partial is gone a moment later: its final is written out


@pytest.mark.parametrize(("heard", "partial", "shown"), [
    (["my", "card", "number", "is"], "four five three", "[NUMBER]"),  # the first digits of a card being read
    ([], "it is zero three", "it is [NUMBER]"),
    (["my", "card", "number", "is"], "four five three and", "[NUMBER] and"),  # a word the recogniser will drop
    ([], "i have two", "i have two"),  # one digit word is no number being read out
    (["my", "card", "number", "is"], "four five three nine", "[CARD]"),
])
def test_partials_hide_numbers_still_being_read_out(heard, partial, shown):
    from apps.customer_service.speech.router import _render
    from apps.customer_service.speech.streaming import StreamEvent

    assert _render(StreamEvent("partial", partial, 0.0, 1.0), True, heard)["text"] == shown


@pytest.mark.timeout(60)
def test_only_an_admin_streams_without_redaction(stream_pool):
    from types import SimpleNamespace

    app = FastAPI()
    app.state.settings = SimpleNamespace(api_keys={"ag": "agent", "ad": "admin"})
    app.include_router(create_stream_router(pool=stream_pool), prefix="/customer-service")
    with TestClient(app) as c:
        with c.websocket_connect("/customer-service/v1/stream?redact=false", headers={"X-API-Key": "ag"}) as ws:
            refused = ws.receive_json()
        assert refused["type"] == "error" and refused["code"] == "redaction_required"
        with c.websocket_connect("/customer-service/v1/stream?redact=false", headers={"X-API-Key": "ad"}) as ws:
            ready = ws.receive_json()
            ws.send_text('{"type": "end"}')
            # the session's "end" is read before leaving: a client gone at once left the handler's finish pending
            # when the test's event loop stopped, and the shared pool's one decoder was never given back
            assert ws.receive_json()["type"] == "end"
        assert ready["type"] == "ready" and ready["redact"] is False
        with c.websocket_connect("/customer-service/v1/stream", headers={"X-API-Key": "ag"}) as ws:
            assert ws.receive_json()["redact"] is True
            ws.send_text('{"type": "end"}')
            assert ws.receive_json()["type"] == "end"


@pytest.mark.timeout(60)
def test_clients_waiting_for_a_decoder_hold_no_worker_thread(stream_pool):
    """Waiting for a busy pool's decoder used to block a worker thread for the whole wait: a few such clients held
    every thread of the default executor, and every asyncio.to_thread in the process (the live calls' decoding,
    the other apps' uploads) waited behind them. The waiters still get "busy" at the limit."""
    import asyncio
    import time
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import ExitStack, asynccontextmanager

    threads = 2

    @asynccontextmanager
    async def few_threads(app):
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=threads))
        yield

    app = FastAPI(lifespan=few_threads)
    app.include_router(create_stream_router(pool=stream_pool, decoder_wait_s=2.0))

    @app.get("/elsewhere")
    async def elsewhere() -> dict:
        t0 = time.perf_counter()
        await asyncio.to_thread(time.sleep, 0.01)
        return {"took_s": time.perf_counter() - t0}

    held = stream_pool.acquire(timeout_s=10.0)  # the pool's only decoder is in use
    try:
        with TestClient(app) as c, ExitStack() as sessions:
            t0 = time.perf_counter()
            waiting = [sessions.enter_context(c.websocket_connect("/v1/stream")) for _ in range(threads + 1)]
            time.sleep(0.3)  # every one of them is waiting for the decoder now
            took_s = c.get("/elsewhere").json()["took_s"]
            for ws in waiting:
                error = ws.receive_json()
                assert error["type"] == "error" and error["code"] == "busy"
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                assert closed.value.code == 1013 and closed.value.reason
            waited_s = time.perf_counter() - t0
    finally:
        stream_pool.release(held)
    assert took_s < 0.5, took_s  # 2 s (the waiters' limit) before
    assert waited_s >= 2.0


@pytest.mark.timeout(60)
def test_only_audio_keeps_a_session_and_its_decoder(stream_pool):
    """Empty frames and auth messages used to restart the idle timer: a client could hold a decoder for ever
    without sending audio. Silence is audio: a live call sends it between sentences."""
    import time

    app = FastAPI()
    app.include_router(create_stream_router(pool=stream_pool, idle_timeout_s=0.6))
    with TestClient(app) as c:
        with c.websocket_connect("/v1/stream") as ws:
            assert ws.receive_json()["type"] == "ready"
            for _ in range(12):  # 1.2 s of messages, none of them audio
                ws.send_bytes(b"")
                ws.send_text(json.dumps({"type": "auth", "key": "a-key"}))
                time.sleep(0.1)
            ws.send_text(json.dumps({"type": "end"}))
            error = ws.receive_json()
            assert error["type"] == "error" and error["code"] == "idle", error
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008 and closed.value.reason == CLOSE_REASONS["idle"]
        with c.websocket_connect("/v1/stream") as ws:
            assert ws.receive_json()["type"] == "ready"
            for _ in range(12):  # 1.2 s of silence, 100 ms at a time
                ws.send_bytes(bytes(3_200))
                time.sleep(0.1)
            ws.send_text(json.dumps({"type": "end"}))
            messages = [ws.receive_json()]
            while messages[-1]["type"] not in ("end", "error"):
                messages.append(ws.receive_json())
            assert messages[-1]["type"] == "end", messages


class RecordedCall:
    """A live call that records what it was given (``live_call``'s contract) instead of reading it."""

    def __init__(self) -> None:
        self.save = lambda payload: "call-1"
        self.finals: list[str] = []
        self.closed: list[tuple[float, str | None]] = []

    def add(self, text, start, end, confidence, samples, words, redactions) -> dict:
        self.finals.append(text)
        return {"type": "analysis", "segment_index": len(self.finals) - 1}

    def close(self, audio_s: float | None = None, warning: str | None = None) -> dict:
        self.closed.append((audio_s, warning))
        return {"type": "summary", "segments": len(self.finals), "id": "call-1"}


def _session_whose_client_left(stream_pool, pcm: bytes, *, end: bool) -> tuple[RecordedCall, list[dict]]:
    """Runs the WebSocket handler on a socket whose client sent ``pcm`` (and the end message, with ``end``) and then
    left before reading anything after "ready": every later send fails, as uvicorn's do once the peer is gone."""
    import asyncio

    from starlette.websockets import WebSocket

    call = RecordedCall()
    router = create_stream_router(pool=stream_pool, live_call=lambda app, **kw: call)
    incoming = [{"type": "websocket.connect"}]
    incoming += [{"type": "websocket.receive", "bytes": pcm[off:off + CHUNK]} for off in range(0, len(pcm), CHUNK)]
    if end:
        incoming.append({"type": "websocket.receive", "text": json.dumps({"type": "end"})})
    incoming.append({"type": "websocket.disconnect", "code": 1006})
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0)

    async def send(message: dict) -> None:
        if message["type"] == "websocket.send" and any(m["type"] == "websocket.send" for m in sent):
            raise OSError("the client has gone")  # uvicorn's ClientDisconnected is an OSError
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/stream", "query_string": b"", "headers": [], "app": FastAPI()}
    asyncio.run(router.routes[0].endpoint(WebSocket(scope, receive, send)))
    return call, sent


def _cut_sentence() -> bytes:
    """2 s of PCM that stop mid-sentence: a line dropped while the caller speaks."""
    gap = np.zeros(8_000, dtype=np.float32)
    return _pcm(np.concatenate([gap, speak("My card was stolen yesterday")]))[: 2 * 16_000 * 2]


def _send(ws, pcm: bytes) -> None:
    for off in range(0, len(pcm), CHUNK):
        ws.send_bytes(pcm[off:off + CHUNK])


def _wait_stored(call, seconds: float = 5.0) -> None:
    import time

    for _ in range(int(seconds / 0.05)):
        if call.closed:
            return
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_a_call_whose_end_arrived_is_stored_though_its_client_left(stream_pool, call_audio):
    """The server held the whole call and its end message; it used to stop at the first send that failed
    and store nothing."""
    call, sent = _session_whose_client_left(stream_pool, _pcm(call_audio), end=True)
    assert json.loads(sent[1]["text"])["type"] == "ready"
    assert len(call.finals) >= 2 and "[CARD]" in call.finals[-1]
    assert call.closed == [(pytest.approx(len(call_audio) / 16_000, abs=0.01), None)]  # a whole call: no warning
    stream_pool.release(stream_pool.acquire(timeout_s=5.0))  # and its decoder is back


@pytest.mark.timeout(60)
def test_a_call_whose_client_left_without_its_end_is_stored_with_a_warning(stream_pool, call_audio):
    call, _ = _session_whose_client_left(stream_pool, _pcm(call_audio), end=False)
    assert call.finals and len(call.closed) == 1
    assert "without its end message" in call.closed[0][1]
    stream_pool.release(stream_pool.acquire(timeout_s=5.0))


@pytest.mark.timeout(60)
def test_a_call_cut_mid_sentence_keeps_that_sentence(stream_pool):
    """A dropped line cuts the caller mid-sentence: the utterance under way used to be lost with the decoder, so
    the stored call held nothing of it. It is closed as a last final and read into the call."""
    call, _ = _session_whose_client_left(stream_pool, _cut_sentence(), end=False)
    assert len(call.finals) == 1 and call.finals[0].strip()
    assert call.closed[0][0] == pytest.approx(2.0)
    assert "without its end message" in call.closed[0][1]
    stream_pool.release(stream_pool.acquire(timeout_s=5.0))


@pytest.mark.timeout(60)
def test_a_session_closed_for_idling_sends_and_keeps_the_sentence_under_way(stream_pool):
    call = RecordedCall()
    app = FastAPI()
    app.include_router(create_stream_router(pool=stream_pool, idle_timeout_s=0.8,
                                            live_call=lambda app, **kw: call))
    with TestClient(app) as c:
        with c.websocket_connect("/v1/stream") as ws:
            assert ws.receive_json()["type"] == "ready"
            _send(ws, _cut_sentence())
            messages = [ws.receive_json()]
            while messages[-1]["type"] != "error":
                messages.append(ws.receive_json())
            finals = [m for m in messages if m["type"] == "final"]
            assert len(finals) == 1 and finals[0]["text"].strip(), messages
            assert messages[-1]["code"] == "idle"
        _wait_stored(call)
    assert call.finals == [finals[0]["text"]] and "without its end message" in call.closed[0][1]
    stream_pool.release(stream_pool.acquire(timeout_s=5.0))


@pytest.mark.timeout(60)
def test_a_call_whose_end_arrived_is_stored_though_its_handler_is_cancelled(stream_pool):
    """Leaving a TestClient session cancels the handler, as a server stopping would: a call whose end message
    was read is still finished (its last final read) and stored without the "without its end message" warning."""
    import time

    class SlowCall(RecordedCall):
        def add(self, *args) -> dict:
            time.sleep(0.5)  # still reading the last final when the client leaves
            return super().add(*args)

    call = SlowCall()
    app = FastAPI()
    app.include_router(create_stream_router(pool=stream_pool, live_call=lambda app, **kw: call))
    with TestClient(app) as c:
        with c.websocket_connect("/v1/stream") as ws:
            assert ws.receive_json()["type"] == "ready"
            _send(ws, _cut_sentence())
            ws.send_text(json.dumps({"type": "end"}))
            while ws.receive_json()["type"] != "final":  # the only final: the end message was read
                pass
        _wait_stored(call)
    assert len(call.finals) == 1 and call.closed == [(pytest.approx(2.0), None)]
    stream_pool.release(stream_pool.acquire(timeout_s=5.0))
