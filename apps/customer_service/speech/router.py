"""WebSocket ``/v1/stream``: live call transcription (mount the router under ``/customer-service``).

Protocol
  1. connect ``/customer-service/v1/stream?mode=default&redact=true`` (mode: default | digits |
     amount | digit); the server answers ``{"type": "ready", "sample_rate": 16000, ...}``. When the
     service has API keys, the role ``agent`` (or admin) is needed, as for the REST routes: send
     ``X-API-Key`` / ``Authorization: Bearer`` with the handshake or, from a browser, make the first
     message ``{"type": "auth", "key": "..."}``; otherwise an ``unauthorized`` error and close 1008.
  2. send binary messages of little-endian 16-bit mono PCM at 16 kHz, 100-200 ms each (any size
     up to ``max_chunk_bytes`` works).
  3. receive ``{"type": "partial", "text", "start", "end", "latency_ms"}`` whenever the running
     hypothesis changes and ``{"type": "final", "text", "words": [...], "confidence", "redactions"}``
     at each end of speech. Card, account, phone numbers etc. are redacted in both (``redact``), read
     with the session's earlier finals (a card read out in fours makes one final per group); a
     partial also shows any other run of spoken digits as ``[NUMBER]`` until its final says what it is.
     With ``analyze=true`` (the default once the service's models are loaded: ``ready`` says
     ``"analysis": true``, and ``"store"`` whether the call will be stored), each final is then read as a
     caller segment of ``/v1/calls:analyze`` is: ``{"type": "analysis", "segment_index", "segment":
     {emotion, modality_weights, acts, intent, ...}, "intent", "requests", "emotion", "escalation",
     "latency_ms"}`` with the call so far (its text is the redacted one). It comes after its final, while
     the audio goes on being decoded.
  4. send the text message ``{"type": "end"}`` (or just ``end``): the last final follows, then (with
     analysis) ``{"type": "summary", "segments", "id", "intent", "requests", "emotion", "escalation"}`` with
     the rules only a whole call can decide ("intent unclear") and the ``id`` the call was stored under
     (``GET /v1/results/{id}``; null with ``store=false`` or ``redact=false``: unredacted text is never
     stored), then ``{"type": "end"}`` and the server closes. A session that ends otherwise (the client
     left, an error, idle) is still stored as far as it was read, with a warning saying so.
  Errors come as ``{"type": "error", "code", "message"}`` followed by a close (1003 bad data,
  1008 policy: too long, or no message for ``idle_timeout_s``; 1013 busy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from apps.customer_service.speech.sphinx import SphinxConfig
from apps.customer_service.speech.streaming import DecoderPool, StreamEvent, StreamingRecognizer
from core.serving.auth import authorize_websocket

log = logging.getLogger(__name__)

_MODES = ("default", "digit", "digits", "amount")
# Words of earlier finals that redaction reads with each new hypothesis: a caller reading a card out
# in fours, with pauses, makes one final per group ("card number is" + 16 digits fit in 20 words).
CONTEXT_WORDS = 20


def create_stream_router(*, pool: DecoderPool | None = None, config: SphinxConfig | None = None, pool_size: int = 2,
                         redact: bool = True, max_session_s: float = 600.0, max_chunk_bytes: int = 64_000,
                         idle_timeout_s: float = 60.0, path: str = "/v1/stream",
                         live_call: Callable[[Any], Any] | None = None) -> APIRouter:
    """An APIRouter with the streaming WebSocket. Decoders are built on first use (about 2 s
    each) and shared between sessions through ``pool``. A session that sends nothing for
    ``idle_timeout_s`` is closed: it holds one of the pool's few decoders, and a live call sends
    a chunk (silence included) every 100-200 ms. ``live_call(app, role=, store=)`` gives a new
    :class:`~apps.customer_service.live.LiveCall` for a session (storing the call at its end when
    ``store``), or None while the models load (no ``live_call``: transcription only)."""
    router = APIRouter(tags=["streaming"])
    state = {"pool": pool}

    def get_pool() -> DecoderPool:
        if state["pool"] is None:
            state["pool"] = DecoderPool(config or SphinxConfig.from_name("streaming"), size=pool_size)
        return state["pool"]

    @router.websocket(path)
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        principal = await authorize_websocket(websocket, "agent")  # call audio is PII: same keys as the REST routes
        if principal is None:
            return
        mode = websocket.query_params.get("mode", "default")
        do_redact = _flag(websocket, "redact", redact)
        if not do_redact and principal.authenticated and principal.role != "admin":
            # card numbers in the clear on an agent's screen is what redaction is for: not the agent's call
            await _fail(websocket, 1008, "redaction_required", "Only the admin role may stream without redaction (redact=false).")
            return
        if mode not in _MODES:
            await _fail(websocket, 1003, "bad_mode", f"mode must be one of {', '.join(_MODES)}")
            return
        live = None
        if live_call is not None and _flag(websocket, "analyze", True):
            # stored like an analysed call, unless asked not to or unredacted (PII is never stored)
            live = live_call(websocket.app, role=principal.role, store=do_redact and _flag(websocket, "store", True))
        making = asyncio.ensure_future(asyncio.to_thread(StreamingRecognizer, mode=mode, pool=get_pool(),
                                                         keep_audio=live is not None))
        try:
            # shielded: a client that leaves while a decoder is being acquired must not strand it
            rec = await asyncio.shield(making)
        except asyncio.CancelledError:
            making.add_done_callback(_close_abandoned)
            raise
        except TimeoutError:
            await _fail(websocket, 1013, "busy", "All streaming decoders are busy; retry shortly.")
            return
        await websocket.send_json({"type": "ready", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1,
                                   "mode": mode, "redact": do_redact, "analysis": live is not None,
                                   "store": getattr(live, "save", None) is not None})
        audio_bytes = 0
        heard: list[str] = []  # the last CONTEXT_WORDS words of the session's finals, unredacted
        reader = _Reader(websocket, live)
        try:
            while True:
                try:
                    message = await asyncio.wait_for(websocket.receive(), timeout=idle_timeout_s)
                except TimeoutError:
                    await _release(rec)
                    await reader.fail(1008, "idle",
                                      f"No audio for {idle_timeout_s:g} s; send 16-bit PCM chunks every 100-200 ms "
                                      '(silence included) and {"type": "end"} to finish.')
                    break
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    if _is_end(message.get("text")):
                        for event in await asyncio.to_thread(rec.finish):
                            await reader.send_event(event, _render(event, do_redact, heard))
                        await reader.finish(audio_bytes / 32_000)
                        await websocket.send_json({"type": "end", "audio_s": round(audio_bytes / 32_000, 3)})
                        await websocket.close()
                        break
                    if _message_type(message.get("text")) == "auth":
                        # a browser page sends its key first whether or not the service has keys; a
                        # keyless service sent "ready" without waiting for it, so it arrives here
                        continue
                    await _release(rec)
                    await reader.fail(1003, "bad_message",
                                      'Send binary 16-bit PCM chunks, then the text message {"type": "end"}.')
                    break
                if len(data) > max_chunk_bytes or len(data) % 2:
                    await _release(rec)
                    await reader.fail(1003, "bad_chunk",
                                      f"Chunks must be 16-bit PCM (even byte count), at most {max_chunk_bytes} bytes.")
                    break
                audio_bytes += len(data)
                if audio_bytes / 32_000 > max_session_s:
                    await _release(rec)
                    await reader.fail(1008, "too_long", f"Sessions are limited to {max_session_s:.0f} s of audio.")
                    break
                t0 = time.perf_counter()
                events = await asyncio.to_thread(rec.accept, data)
                latency = (time.perf_counter() - t0) * 1000.0
                for event in events:
                    body = _render(event, do_redact, heard)
                    body["latency_ms"] = round(latency, 2)
                    await reader.send_event(event, body)
        except WebSocketDisconnect:
            pass
        finally:
            reader.cancel()
            # started before anything here is awaited: a handler whose client left is cancelled at its next await
            keeping = reader.keep_unfinished(audio_bytes / 32_000)
            await _release(rec)
            if keeping is not None:
                await asyncio.shield(keeping)

    return router


class _Reader:
    """Sends a session's messages, and reads each final of a live call in a worker thread after it is sent,
    one at a time and in order, while the audio goes on being decoded. Messages leave through one lock: the
    analyses and the hypotheses are sent by two tasks."""

    def __init__(self, websocket: WebSocket, live) -> None:
        self.websocket = websocket
        self.live = live
        self.lock = asyncio.Lock()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.ensure_future(self._read()) if live is not None else None
        self.closed = False

    async def send(self, body: dict) -> None:
        async with self.lock:
            await self.websocket.send_json(body)

    async def send_event(self, event: StreamEvent, body: dict) -> None:
        await self.send(body)
        if self.task is not None and event.type == "final" and body["text"]:
            self.queue.put_nowait((body, event))

    async def _read(self) -> None:
        while (item := await self.queue.get()) is not None:
            body, event = item
            t0 = time.perf_counter()
            try:
                analysis = await asyncio.to_thread(self.live.add, body["text"], event.start, event.end,
                                                   event.confidence, event.samples, event.words,
                                                   body.get("redactions", []))
            except Exception as exc:  # the transcript goes on; this final is not read (its text is not logged)
                log.warning("live analysis failed: %s", type(exc).__name__)
                analysis = {"type": "analysis", "segment_index": None,
                            "error": f"this final could not be read ({type(exc).__name__})"}
            analysis["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
            await self.send(analysis)

    async def finish(self, audio_s: float) -> None:
        """Wait for the finals still being read, then send the call's summary (stored first, when it is)."""
        if self.task is None:
            return
        self.queue.put_nowait(None)
        await self.task
        self.closed = True
        await self.send(await asyncio.to_thread(self.live.close, audio_s))

    def keep_unfinished(self, audio_s: float) -> asyncio.Future | None:
        """A session that ended without its end message (the client left, an error, idle): the call as far as
        it was read is still stored, by a future that runs on whether or not anyone waits for it."""
        if self.task is None or self.closed:
            return None
        self.closed = True
        note = "the stream ended without its end message: the call is stored as far as it was read"
        keeping = asyncio.ensure_future(asyncio.to_thread(self.live.close, audio_s, note))
        keeping.add_done_callback(_log_failure)
        return keeping

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def fail(self, code: int, error: str, message: str) -> None:
        self.cancel()
        async with self.lock:
            await _fail(self.websocket, code, error, message)


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:  # nothing to answer: the client is gone
        log.warning("an unfinished live call could not be stored: %s", type(future.exception()).__name__)


async def _release(rec: StreamingRecognizer) -> None:
    """Return the session's decoder to the pool (idempotent). Called before an error reaches the client, so
    a client that reconnects at once finds it free, and again when the session ends however it ends.

    A plain awaited to_thread would be cancelled with the session (the server cancels a handler whose
    client left): a close still queued for a worker thread would then be dropped and the decoder never
    returned to the pool. Shielded, it always runs."""
    await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(rec.close)))


def _close_abandoned(making: asyncio.Future) -> None:
    if not making.cancelled() and making.exception() is None:
        making.result().close()


def _flag(websocket: WebSocket, name: str, default: bool) -> bool:
    return websocket.query_params.get(name, str(default)).lower() not in ("0", "false", "no")


def _is_end(text: str | None) -> bool:
    if text is None:
        return False
    return text.strip().lower() in ("end", "eos") or _message_type(text) == "end"


def _message_type(text: str | None) -> str | None:
    """The "type" of a JSON object text message, else None."""
    try:
        body = json.loads(text or "")
    except (ValueError, RecursionError):  # "[[[[..." nests past the decoder's recursion limit
        return None
    return body.get("type") if isinstance(body, dict) else None


def _render(event: StreamEvent, do_redact: bool, heard: list[str]) -> dict:
    """The event as sent, redacted when asked with the words ``heard`` before it as context; a final's
    words are then appended to ``heard`` (in place)."""
    body = event.to_dict()
    if event.type == "final":
        context = list(heard)
        heard[:] = (heard + [w.text for w in event.words])[-CONTEXT_WORDS:]
    else:
        context = heard
    if not do_redact:
        return body
    from apps.customer_service.pii import redact_words

    if event.type == "final":
        result, hit = redact_words(event.words, context=context)
        body["text"] = result.text
        body["redactions"] = [{"type": r.type, "start": r.start, "end": r.end} for r in result.redactions]
        for i in hit:
            body["words"][i]["text"] = "[REDACTED]"
    else:
        words = event.text.split()
        result, hit = redact_words([SimpleNamespace(text=w) for w in words], context=context)
        body["text"] = _hide_numbers_being_read(words, result.redactions, hit)
    return body


def _hide_numbers_being_read(words: list[str], redactions: list, hit: list[int]) -> str:
    """A partial's words with its redactions, and every other run of two or more spoken digits shown
    as [NUMBER]: a number still being read out ("four five three", or "four five three and" as the
    recogniser may have it for a moment) is no card number yet, though the next partial may make it
    one; the final, a moment later, shows what it was."""
    from apps.customer_service.speech.textnorm import DIGIT_WORDS, REPEAT

    current = " ".join(words)
    spans = [(r.start, r.end, r.type.upper()) for r in redactions]
    pos, run = 0, []  # run: (start, end) of the digit words in a row so far
    for i, w in enumerate(words + [""]):  # "" closes a run at the end
        if i < len(words) and i not in hit and (w in DIGIT_WORDS or w in REPEAT):
            run.append((pos, pos + len(w)))
        else:
            if len(run) >= 2:
                spans.append((run[0][0], run[-1][1], "NUMBER"))
            run = []
        pos += len(w) + 1
    out, last = [], 0
    for a, b, kind in sorted(spans):
        out += [current[last:a], f"[{kind}]"]
        last = b
    out.append(current[last:])
    return "".join(out)


async def _fail(websocket: WebSocket, code: int, error: str, message: str) -> None:
    await websocket.send_json({"type": "error", "code": error, "message": message})
    await websocket.close(code=code)
