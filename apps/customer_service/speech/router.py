"""WebSocket ``/v1/stream``: live call transcription (mount the router under ``/customer-service``).

Protocol
  1. connect ``/customer-service/v1/stream?mode=default&redact=true`` (mode: default | digits |
     amount | digit); the server answers ``{"type": "ready", "sample_rate": 16000, ...}`` once one of
     its decoders is free (``busy`` after ``decoder_wait_s``, 10 s). When the service has API keys, the
     role ``agent`` (or admin) is needed, as for the REST routes: send ``X-API-Key`` /
     ``Authorization: Bearer`` with the handshake or, from a browser, make the first message
     ``{"type": "auth", "key": "..."}`` (never in the URL); otherwise an ``unauthorized`` error and close 1008.
     The query takes ``mode``, the flags ``redact``, ``analyze``, ``store`` (true/false, 1/0, yes/no, any
     case) and, to declare the audio, ``sample_rate=16000``, ``encoding=pcm_s16le``, ``channels=1``; an
     unknown or repeated parameter, another flag value or another format is refused (``unknown_parameter``,
     ``repeated_parameter``, ``bad_flag``, ``unsupported_audio``; close 1003) before any audio is read.
  2. send binary messages of little-endian 16-bit mono PCM at 16 kHz, 100-200 ms each (any size
     up to ``max_chunk_bytes`` works).
  3. receive ``{"type": "partial", "text", "start", "end", "latency_ms"}`` whenever the running
     hypothesis changes and ``{"type": "final", "final_index", "text", "normalised", "words": [...],
     "confidence", "redactions"}`` at each end of speech (``final_index``: 0, 1, 2... over the session's
     finals, empty ones included); ``normalised`` is ``text`` in written form ("£12.50" for
     "twelve pounds fifty", placeholders kept), while ``redactions`` keep pointing into the final's words
     joined by spaces. Card, account, phone numbers etc. are redacted in both (``redact``), read
     with the session's earlier finals (a card read out in fours makes one final per group); a
     partial also shows any other run of spoken digits as ``[NUMBER]`` until its final says what it is.
     With ``analyze=true`` (the default once the service's models are loaded: ``ready`` says
     ``"analysis": true``, and ``"store"`` whether the call will be stored), each final is then read as a
     caller segment of ``/v1/calls:analyze`` is: ``{"type": "analysis", "final_index", "segment_index",
     "segment": {emotion, modality_weights, acts, intent, ...}, "intent", "requests", "emotion",
     "escalation", "latency_ms"}`` with the call so far (its text is the redacted one). It comes after its
     final, while the audio goes on being decoded, and names that final by its ``final_index`` (a final
     without words gets no reading; ``segment_index`` is its place among the call's stored segments). A
     reading that fails comes as ``{"type": "analysis", "final_index", "segment_index": null, "error"}`` for
     its own final, and the stream goes on: match readings to finals by ``final_index``, never by counting.
  4. send the text message ``{"type": "end"}`` (or just ``end``): the last final follows, then (with
     analysis) ``{"type": "summary", "segments", "id", "intent", "requests", "emotion", "escalation"}`` with
     the rules only a whole call can decide ("intent unclear") and the ``id`` the call was stored under
     (``GET /v1/results/{id}``; null with ``store=false`` or ``redact=false``: unredacted text is never
     stored), then ``{"type": "end"}`` and the server closes. Once the end message has arrived the call is
     finished and stored even if the client leaves without reading the summary. A session that ends
     otherwise (the client left, an error, idle) is still stored, with a warning saying so: every final it
     was sent, and the utterance that was under way closed as a last final (sent before an error's close;
     a dropped line cuts a caller mid-sentence).
  Errors come as ``{"type": "error", "code", "message"}`` followed by a close whose reason says the same in
  short (1003 bad data, 1008 policy: too long, or no audio for ``idle_timeout_s``: empty frames and other
  messages do not count; 1013 busy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketDisconnected

from apps.customer_service.speech.sphinx import SphinxConfig
from apps.customer_service.speech.streaming import DecoderPool, StreamEvent, StreamingRecognizer
from core.serving.auth import authorize_websocket

log = logging.getLogger(__name__)

# What a send to a client that has left raises: uvicorn's ClientDisconnected (an OSError) comes as
# WebSocketDisconnect, and every later send as WebSocketDisconnected; servers built on anyio streams
# (Starlette's TestClient among them) raise their closed-stream errors
_CLIENT_GONE = (WebSocketDisconnect, WebSocketDisconnected, OSError, anyio.ClosedResourceError,
                anyio.BrokenResourceError)

_MODES = ("default", "digit", "digits", "amount")
# Words of earlier finals that redaction reads with each new hypothesis: a caller reading a card out
# in fours, with pauses, makes one final per group ("card number is" + 16 digits fit in 20 words).
CONTEXT_WORDS = 20


def create_stream_router(*, pool: DecoderPool | None = None, config: SphinxConfig | None = None, pool_size: int = 2,
                         redact: bool = True, max_session_s: float = 600.0, max_chunk_bytes: int = 64_000,
                         idle_timeout_s: float = 60.0, decoder_wait_s: float = 10.0, path: str = "/v1/stream",
                         live_call: Callable[[Any], Any] | None = None) -> APIRouter:
    """An APIRouter with the streaming WebSocket. Decoders are built on first use (about 2 s
    each) and shared between sessions through ``pool``; a session waits up to ``decoder_wait_s`` for
    one (then ``busy``). A session that sends no audio for ``idle_timeout_s`` is closed: it holds one
    of the pool's few decoders, and a live call sends a chunk (silence included) every 100-200 ms.
    ``live_call(app, role=, store=)`` gives a new :class:`~apps.customer_service.live.LiveCall` for a
    session (storing the call at its end when ``store``), or None while the models load (no
    ``live_call``: transcription only)."""
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
        problem = _query_problem(websocket.query_params)
        if problem is not None:
            await _fail(websocket, 1003, *problem)
            return
        mode = websocket.query_params.get("mode", "default")
        do_redact = _flag(websocket, "redact", redact)
        if not do_redact and principal.authenticated and principal.role != "admin":
            # card numbers in the clear on an agent's screen is what redaction is for: not the agent's call
            await _fail(websocket, 1008, "redaction_required", "Only the admin role may stream without redaction (redact=false).")
            return
        live = None
        if live_call is not None and _flag(websocket, "analyze", True):
            # stored like an analysed call, unless asked not to or unredacted (PII is never stored)
            live = live_call(websocket.app, role=principal.role, store=do_redact and _flag(websocket, "store", True))
        try:
            decoder = await get_pool().acquire_async(timeout_s=decoder_wait_s)
        except TimeoutError:
            await _fail(websocket, 1013, "busy", "All streaming decoders are busy; retry shortly.")
            return
        making = asyncio.ensure_future(asyncio.to_thread(_recognizer_on, decoder, get_pool(), mode, live is not None))
        try:
            # shielded: a client that leaves while the recogniser is being made must not strand its decoder
            rec = await asyncio.shield(making)
        except asyncio.CancelledError:
            making.add_done_callback(_close_abandoned)
            raise
        reader = _Reader(websocket, live)
        audio_bytes = 0
        heard: list[str] = []  # the last CONTEXT_WORDS words of the session's finals, unredacted

        def render(event: StreamEvent) -> dict:
            return _render(event, do_redact, heard)

        loop = asyncio.get_running_loop()
        last_audio = loop.time()
        ended = False
        try:
            await reader.send({"type": "ready", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1,
                               "mode": mode, "redact": do_redact, "analysis": live is not None,
                               "store": getattr(live, "save", None) is not None})
            while True:
                try:
                    # only audio keeps a session (and its decoder): empty frames and auth messages do not
                    left_s = idle_timeout_s - (loop.time() - last_audio)
                    if left_s <= 0:
                        raise TimeoutError
                    message = await asyncio.wait_for(websocket.receive(), timeout=left_s)
                except TimeoutError:
                    await reader.flush(rec, render)
                    await reader.fail(1008, "idle",
                                      f"No audio for {idle_timeout_s:g} s; send 16-bit PCM chunks every 100-200 ms "
                                      '(silence included) and {"type": "end"} to finish.')
                    break
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    if _is_end(message.get("text")):
                        ended = True  # from here rec.finish gives the decoder back, after the last final
                        await reader.finish_call(rec, render, audio_bytes / 32_000)
                        break
                    if _message_type(message.get("text")) == "auth":
                        # a browser page sends its key first whether or not the service has keys; a
                        # keyless service sent "ready" without waiting for it, so it arrives here
                        continue
                    await reader.flush(rec, render)
                    await reader.fail(1003, "bad_message",
                                      'Send binary 16-bit PCM chunks, then the text message {"type": "end"}.')
                    break
                if len(data) > max_chunk_bytes or len(data) % 2:
                    await reader.flush(rec, render)
                    await reader.fail(1003, "bad_chunk",
                                      f"Chunks must be 16-bit PCM (even byte count), at most {max_chunk_bytes} bytes.")
                    break
                if data:
                    last_audio = loop.time()
                audio_bytes += len(data)
                if audio_bytes / 32_000 > max_session_s:
                    await reader.flush(rec, render)
                    await reader.fail(1008, "too_long", f"Sessions are limited to {max_session_s:.0f} s of audio.")
                    break
                t0 = time.perf_counter()
                events = await asyncio.to_thread(rec.accept, data)
                latency = (time.perf_counter() - t0) * 1000.0
                for event in events:
                    body = render(event)
                    body["latency_ms"] = round(latency, 2)
                    await reader.send_event(event, body)
        finally:
            # started before anything here is awaited: a handler whose client left is cancelled at its next await.
            # It closes the utterance under way and gives the decoder back; without a live call, _release does.
            keeping = reader.keep_unfinished(rec, render, audio_bytes / 32_000)
            if keeping is not None:
                await asyncio.shield(keeping)
            elif not ended:
                await _release(rec)

    return router


# The query parameters /v1/stream reads. sample_rate, encoding and channels only declare the audio: the one
# format the stream takes, which "ready" repeats.
QUERY_PARAMETERS = ("mode", "redact", "analyze", "store", "sample_rate", "encoding", "channels")
_FLAG_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_AUDIO_FORMAT = "16-bit little-endian PCM, mono, at 16 kHz (sample_rate=16000, encoding=pcm_s16le, channels=1)"

# The reason of each error's close frame: what a browser's onclose sees (it never sees the error message).
# Fixed texts, ASCII and within a close frame's 123 bytes: no user data.
CLOSE_REASONS = {
    "busy": "all streaming decoders are busy; retry shortly",
    "idle": "no audio within the idle limit",
    "too_long": "the session's audio limit was reached",
    "bad_chunk": "chunks must be 16-bit PCM: an even byte count within the size limit",
    "bad_message": 'send binary PCM chunks, then the text message {"type": "end"}',
    "bad_mode": "mode must be one of " + ", ".join(_MODES),
    "redaction_required": "only the admin role may stream with redact=false",
    "unknown_parameter": "unknown query parameter; accepted: " + ", ".join(QUERY_PARAMETERS),
    "repeated_parameter": "a query parameter is given more than once",
    "bad_flag": "redact, analyze and store take true, false, 1, 0, yes or no",
    "unsupported_audio": "the stream takes 16-bit little-endian PCM, mono, at 16 kHz",
}


def _query_problem(query) -> tuple[str, str] | None:
    """(error code, message) for a query the stream cannot honour, else None. Refused rather than ignored: a
    client that declared 8 kHz audio had it decoded as 16 kHz (and stored), and "store=maybe" read as true."""
    unknown = sorted(name for name in query.keys() if name not in QUERY_PARAMETERS)
    if unknown:
        named = ", ".join(repr(name[:40]) for name in unknown[:5])
        return ("unknown_parameter", f"Unknown query parameter {named}; /v1/stream accepts "
                f"{', '.join(QUERY_PARAMETERS)} (an API key goes in the X-API-Key header or the first message, "
                "never in the URL).")
    repeated = sorted({name for name in query.keys() if len(query.getlist(name)) > 1})
    if repeated:  # "redact=true&redact=false": which one the client meant is not ours to guess
        return ("repeated_parameter", f"Query parameter {', '.join(repr(name) for name in repeated)} is given more "
                "than once; give each parameter once.")
    if query.get("mode", "default") not in _MODES:
        return "bad_mode", f"mode must be one of {', '.join(_MODES)}"
    for name in ("redact", "analyze", "store"):
        if name in query and query[name].strip().lower() not in _FLAG_VALUES:
            return "bad_flag", f"{name} must be one of true, false, 1, 0, yes, no."
    declared = (_number(query.get("sample_rate", "16000")) == 16_000 and _number(query.get("channels", "1")) == 1
                and query.get("encoding", "pcm_s16le").strip().lower() == "pcm_s16le")
    if not declared:
        return "unsupported_audio", f"The stream takes {_AUDIO_FORMAT}; convert the audio before sending it."
    return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _recognizer_on(decoder, pool: DecoderPool, mode: str, keep_audio: bool) -> StreamingRecognizer:
    try:
        return StreamingRecognizer(mode=mode, pool=pool, decoder=decoder, keep_audio=keep_audio)
    except BaseException:
        pool.release(decoder)
        raise


class _Reader:
    """Sends a session's messages, and reads each final of a live call in a worker thread after it is sent,
    one at a time and in order, while the audio goes on being decoded. Messages leave through one lock: the
    analyses and the hypotheses are sent by two tasks.

    A send to a client that has gone is dropped, and the session goes on with what it was sent (the server
    may hold the rest of the call, its end message included): the call is then stored as it would have been."""

    def __init__(self, websocket: WebSocket, live) -> None:
        self.websocket = websocket
        self.live = live
        self.lock = asyncio.Lock()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.ensure_future(self._read()) if live is not None else None
        self.closed = False  # the call's close is under way (its end message came, or it is kept unfinished)
        self.gone = False  # a send failed: the client left
        self.finals = 0  # finals sent so far: the next one's final_index

    async def send(self, body: dict) -> None:
        async with self.lock:
            if self.gone:
                return
            try:
                await self.websocket.send_json(body)
            except _CLIENT_GONE:
                self.gone = True

    async def send_event(self, event: StreamEvent, body: dict) -> None:
        if event.type == "final":
            # the final's reading names it by this index: a client counting finals was misled by a reading that
            # failed (it names no stored segment), and every later reading landed on the sentence before its own
            body = {"type": "final", "final_index": self.finals} | body
            self.finals += 1
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
            analysis = {"type": "analysis", "final_index": body["final_index"]} | analysis
            analysis["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
            await self.send(analysis)

    async def finish_call(self, rec: StreamingRecognizer, render: Callable[[StreamEvent], dict],
                          audio_s: float) -> None:
        """After the end message: the last final, the summary (the call stored first), ``end``, the close. The
        server holds the whole call by now, so this runs to its end whether or not the client stays to read it
        (shielded: a handler whose client left is cancelled at its next await)."""
        self.closed = True
        finishing = asyncio.ensure_future(self._finish_call(rec, render, audio_s))
        try:
            await asyncio.shield(finishing)
        except asyncio.CancelledError:
            finishing.add_done_callback(_log_failure)
            raise

    async def _finish_call(self, rec: StreamingRecognizer, render: Callable[[StreamEvent], dict],
                           audio_s: float) -> None:
        for event in await asyncio.to_thread(rec.finish):
            await self.send_event(event, render(event))
        if self.task is not None:
            self.queue.put_nowait(None)  # the finals still being read, then the summary
            await self.task
            await self.send(await asyncio.to_thread(self.live.close, audio_s))
        await self.send({"type": "end", "audio_s": round(audio_s, 3)})
        async with self.lock:
            if not self.gone:
                try:
                    await self.websocket.close()
                except _CLIENT_GONE:
                    pass

    async def flush(self, rec: StreamingRecognizer, render: Callable[[StreamEvent], dict]) -> None:
        """Before an error closes the session: the utterance under way becomes a final (sent, and read into the
        call) and the decoder goes back to the pool, so a client that reconnects at once finds it free.
        Shielded, as ``_release`` is."""
        for event in await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(rec.finish))):
            await self.send_event(event, render(event))

    def keep_unfinished(self, rec: StreamingRecognizer, render: Callable[[StreamEvent], dict],
                        audio_s: float) -> asyncio.Future | None:
        """A session that ended without its end message (the client left, an error, idle): the call is still
        stored, by a future that runs on whether or not anyone waits for it, with every final the client was
        sent and the utterance that was under way (a dropped line cuts a caller mid-sentence). None when there
        is no live call or its end message came (``finish_call`` stores it)."""
        if self.task is None or self.closed:
            return None
        self.closed = True
        keeping = asyncio.ensure_future(self._keep_unfinished(rec, render, audio_s))
        keeping.add_done_callback(_log_failure)
        return keeping

    async def _keep_unfinished(self, rec: StreamingRecognizer, render: Callable[[StreamEvent], dict],
                               audio_s: float) -> None:
        try:  # finish gives the decoder back however it ends; [] once flush or _release did
            for event in await asyncio.to_thread(rec.finish):
                await self.send_event(event, render(event))
        finally:
            self.queue.put_nowait(None)  # the finals still being read, then the call is stored
        await self.task
        note = "the stream ended without its end message: the call is stored as far as it was heard"
        await asyncio.to_thread(self.live.close, audio_s, note)

    async def fail(self, code: int, error: str, message: str) -> None:
        async with self.lock:
            if not self.gone:
                await _fail(self.websocket, code, error, message)
                self.gone = True  # closed: the finals still being read are stored, not sent


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:  # nothing to answer: the client is gone
        log.warning("a live call whose client left could not be finished: %s", type(future.exception()).__name__)


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
    """A flag of the query, its value checked by :func:`_query_problem`."""
    value = websocket.query_params.get(name)
    return default if value is None else _FLAG_VALUES[value.strip().lower()]


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
        if event.type == "final":
            from apps.customer_service.speech.textnorm import normalise

            body["normalised"] = normalise(body["text"])
        return body
    from apps.customer_service.pii import normalise_redacted, redact_words

    if event.type == "final":
        result, hit = redact_words(event.words, context=context)
        body["text"] = result.text
        body["normalised"] = normalise_redacted(result.text)
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
    """The error message, then a close with that error's reason; a client already gone is no error."""
    try:
        await websocket.send_json({"type": "error", "code": error, "message": message})
        await websocket.close(code=code, reason=CLOSE_REASONS[error])
    except _CLIENT_GONE:
        pass
