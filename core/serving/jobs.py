"""Background jobs: answer 202 at once, persist the outcome under the same id when it is ready.

For work that takes minutes (a long call recording), a client sends ``Prefer: respond-async``
(RFC 7240) and gets ``202 Accepted`` with the id; ``GET .../results/{id}`` then says ``running``,
``done`` (with the result), ``failed`` (with the error a synchronous call would have answered) or
``interrupted``. The job's record is committed before the 202 goes out, so an acknowledged job is
never silently lost: while the work runs its record gets a heartbeat every ``HEARTBEAT_S``; if the
process stops before the work ends (the upload lives only in memory, and raw call audio is not
written to disk), the heartbeat stops and the record reads ``interrupted`` with a request to send it
again. Heartbeats, not process ids, so replicas sharing one database read each other's jobs right.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from core.serving.errors import ApiError
from core.serving.store import ResultStore

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
STALE_AFTER_S = 3 * HEARTBEAT_S  # a running record without a heartbeat for this long was interrupted
_LIVE: set[asyncio.Task] = set()  # strong references: the event loop keeps only weak ones


def _running() -> dict[str, Any]:
    return {"status": "running", "heartbeat": dt.datetime.now(dt.UTC).isoformat()}


def wants_async(prefer: str | None) -> bool:
    """True when a ``Prefer`` header asks for ``respond-async``."""
    return any(p.strip().split("=", 1)[0].strip().lower() == "respond-async" for p in (prefer or "").split(","))


OUTCOME_ATTEMPTS = 5


async def start_job(store: ResultStore, app: str, kind: str, request_id: str | None, role: str | None,
                    work: Callable[[], Awaitable[dict[str, Any]]], heartbeat_s: float = HEARTBEAT_S,
                    on_unstored: Callable[[dict[str, Any]], None] | None = None) -> str:
    """Commit a ``running`` record, start ``work`` in the background, return the record's id.

    ``work`` returns the payload to store (what the synchronous route would persist); an
    :class:`ApiError` it raises is stored as the job's error, anything else as an internal error
    (its type only: messages can carry the caller's data). The record keeps beating until the outcome is
    stored, retries included, so a client polling meanwhile reads ``running``, not ``interrupted``.
    ``on_unstored(payload)``: what to undo when the outcome could not be stored at all (files the work
    wrote for it, which no stored record would name, so nothing could erase them)."""
    job_id = await store.asave_result(app, kind, request_id, _running(), role=role)

    async def beat() -> None:
        while True:
            await asyncio.sleep(heartbeat_s)
            try:
                await store.aupdate_result(job_id, _running(), only_if_status="running")
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried, the work goes on
                log.warning("job %s: heartbeat not stored: %s", job_id, type(exc).__name__)

    async def run() -> None:
        beating = asyncio.get_running_loop().create_task(beat())
        try:
            try:
                payload = {"status": "done", **(await work())}
            except ApiError as exc:
                payload = {"status": "failed", "error": {"status": exc.status_code, "code": exc.code, "message": exc.message}}
            except Exception as exc:  # noqa: BLE001 - a job must always end with a stored outcome
                log.error("job %s (%s/%s) failed: %s", job_id, app, kind, type(exc).__name__)
                payload = {"status": "failed", "error": {"status": 500, "code": "internal_error",
                                                         "message": f"the job failed ({type(exc).__name__}); send it again"}}
            if not await _store_outcome(store, job_id, payload) and on_unstored is not None:
                try:
                    await asyncio.to_thread(on_unstored, payload)
                except Exception as exc:  # noqa: BLE001
                    log.error("job %s: its unstored outcome's files could not be removed: %s", job_id, type(exc).__name__)
        finally:
            beating.cancel()

    task = asyncio.get_running_loop().create_task(run(), name=f"job-{job_id}")
    _LIVE.add(task)
    task.add_done_callback(_LIVE.discard)
    return job_id


async def _store_outcome(store: ResultStore, job_id: str, payload: dict[str, Any]) -> bool:
    """The outcome over the running record, retried with growing pauses: a database busy for a while must not
    cost a finished job. Whether it was stored."""
    for attempt in range(OUTCOME_ATTEMPTS):
        try:
            await store.aupdate_result(job_id, payload)
            return True
        except Exception as exc:  # noqa: BLE001
            log.error("job %s: could not store its outcome (attempt %d of %d): %s", job_id, attempt + 1,
                      OUTCOME_ATTEMPTS, type(exc).__name__)
            if attempt + 1 < OUTCOME_ATTEMPTS:
                await asyncio.sleep(min(2.0 ** attempt, 30.0))
    return False


def job_status(payload: dict[str, Any], stale_after_s: float = STALE_AFTER_S) -> str | None:
    """``running`` | ``done`` | ``failed`` | ``interrupted`` for a job's stored payload; None for a
    result stored synchronously (not a job)."""
    status = payload.get("status") if isinstance(payload, dict) else None
    if status == "running":
        try:
            age = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(payload["heartbeat"])).total_seconds()
        except (KeyError, TypeError, ValueError):
            return "interrupted"
        return "running" if age <= stale_after_s else "interrupted"
    return status if status in ("running", "done", "failed") else None


def job_response(row: dict[str, Any], what: str = "job") -> dict[str, Any] | Any:
    """What ``GET .../results/{id}`` answers for a stored row: a 202 ``{"id", "status": "running"}``
    (with Retry-After) while its job runs; the row with an ``interrupted`` payload and a request to
    send ``what`` again when its heartbeat stopped; otherwise the row as stored."""
    from fastapi.responses import JSONResponse

    status = job_status(row["payload"])
    if status == "running":
        return JSONResponse({"id": row["id"], "status": "running"}, status_code=202, headers={"Retry-After": "5"})
    if status == "interrupted":
        return {**row, "payload": {"status": "interrupted", "error": {
            "status": 503, "code": "interrupted",
            "message": f"the service stopped before this {what} was finished; send it again"}}}
    return row


async def drain_jobs(timeout_s: float = 5.0) -> None:
    """Wait (briefly) for running jobs, e.g. before the store closes at shutdown."""
    if _LIVE:
        await asyncio.wait(list(_LIVE), timeout=timeout_s)
