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
     at each end of speech. Card, account, phone numbers etc. are redacted in both (``redact``).
  4. send the text message ``{"type": "end"}`` (or just ``end``): the last final follows, then
     ``{"type": "end"}`` and the server closes.
  Errors come as ``{"type": "error", "code", "message"}`` followed by a close (1003 bad data,
  1008 policy: too long, 1013 busy).
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from apps.customer_service.speech.sphinx import SphinxConfig
from apps.customer_service.speech.streaming import DecoderPool, StreamEvent, StreamingRecognizer
from core.serving.auth import authorize_websocket

_MODES = ("default", "digit", "digits", "amount")


def create_stream_router(*, pool: DecoderPool | None = None, config: SphinxConfig | None = None, pool_size: int = 2,
                         redact: bool = True, max_session_s: float = 600.0, max_chunk_bytes: int = 64_000,
                         path: str = "/v1/stream") -> APIRouter:
    """An APIRouter with the streaming WebSocket. Decoders are built on first use (about 2 s
    each) and shared between sessions through ``pool``."""
    router = APIRouter(tags=["streaming"])
    state = {"pool": pool}

    def get_pool() -> DecoderPool:
        if state["pool"] is None:
            state["pool"] = DecoderPool(config or SphinxConfig.from_name("streaming"), size=pool_size)
        return state["pool"]

    @router.websocket(path)
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        if await authorize_websocket(websocket, "agent") is None:  # call audio is PII: same keys as the REST routes
            return
        mode = websocket.query_params.get("mode", "default")
        do_redact = websocket.query_params.get("redact", str(redact)).lower() not in ("0", "false", "no")
        if mode not in _MODES:
            await _fail(websocket, 1003, "bad_mode", f"mode must be one of {', '.join(_MODES)}")
            return
        making = asyncio.ensure_future(asyncio.to_thread(StreamingRecognizer, mode=mode, pool=get_pool()))
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
                                   "mode": mode, "redact": do_redact})
        audio_bytes = 0
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    if _is_end(message.get("text")):
                        for event in await asyncio.to_thread(rec.finish):
                            await websocket.send_json(_render(event, do_redact))
                        await websocket.send_json({"type": "end", "audio_s": round(audio_bytes / 32_000, 3)})
                        await websocket.close()
                        break
                    await _release(rec)
                    await _fail(websocket, 1003, "bad_message",
                                'Send binary 16-bit PCM chunks, then the text message {"type": "end"}.')
                    break
                if len(data) > max_chunk_bytes or len(data) % 2:
                    await _release(rec)
                    await _fail(websocket, 1003, "bad_chunk",
                                f"Chunks must be 16-bit PCM (even byte count), at most {max_chunk_bytes} bytes.")
                    break
                audio_bytes += len(data)
                if audio_bytes / 32_000 > max_session_s:
                    await _release(rec)
                    await _fail(websocket, 1008, "too_long", f"Sessions are limited to {max_session_s:.0f} s of audio.")
                    break
                t0 = time.perf_counter()
                events = await asyncio.to_thread(rec.accept, data)
                latency = (time.perf_counter() - t0) * 1000.0
                for event in events:
                    body = _render(event, do_redact)
                    body["latency_ms"] = round(latency, 2)
                    await websocket.send_json(body)
        except WebSocketDisconnect:
            pass
        finally:
            await _release(rec)

    return router


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


def _is_end(text: str | None) -> bool:
    if text is None:
        return False
    if text.strip().lower() in ("end", "eos"):
        return True
    try:
        return json.loads(text).get("type") == "end"
    except (ValueError, AttributeError):
        return False


def _render(event: StreamEvent, do_redact: bool) -> dict:
    body = event.to_dict()
    if not do_redact:
        return body
    from apps.customer_service.pii import redact, redact_words

    if event.type == "final":
        result, hit = redact_words(event.words)
        body["text"] = result.text
        body["redactions"] = [{"type": r.type, "start": r.start, "end": r.end} for r in result.redactions]
        for i in hit:
            body["words"][i]["text"] = "[REDACTED]"
    else:
        body["text"] = redact(event.text).text
    return body


async def _fail(websocket: WebSocket, code: int, error: str, message: str) -> None:
    await websocket.send_json({"type": "error", "code": error, "message": message})
    await websocket.close(code=code)
