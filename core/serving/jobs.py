"""Background jobs: answer 202 at once, persist the outcome under the same id when it is ready.

For work that takes minutes (a long call recording), a client sends ``Prefer: respond-async``
(RFC 7240) and gets ``202 Accepted`` with the id; ``GET .../results/{id}`` then says ``running``,
``done`` (with the result), ``failed`` (with the error a synchronous call would have answered) or
``interrupted``. The job's record is committed before the 202 goes out, so an acknowledged job is
never silently lost: if the process stops before the work ends (the upload lives only in memory,
and raw call audio is not written to disk), its record reads ``interrupted`` with a request to send
it again, since the running record names the process that owned it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from core.serving.errors import ApiError
from core.serving.store import ResultStore

log = logging.getLogger(__name__)

PROCESS_ID = uuid.uuid4().hex  # this server process: a running job of another one can no longer finish
_LIVE: set[asyncio.Task] = set()  # strong references: the event loop keeps only weak ones


def wants_async(prefer: str | None) -> bool:
    """True when a ``Prefer`` header asks for ``respond-async``."""
    return any(p.strip().split("=", 1)[0].strip().lower() == "respond-async" for p in (prefer or "").split(","))


async def start_job(store: ResultStore, app: str, kind: str, request_id: str | None, role: str | None,
                    work: Callable[[], Awaitable[dict[str, Any]]]) -> str:
    """Commit a ``running`` record, start ``work`` in the background, return the record's id.

    ``work`` returns the payload to store (what the synchronous route would persist); an
    :class:`ApiError` it raises is stored as the job's error, anything else as an internal error
    (its type only: messages can carry the caller's data)."""
    job_id = await store.asave_result(app, kind, request_id, {"status": "running", "process": PROCESS_ID}, role=role)

    async def run() -> None:
        try:
            payload = {"status": "done", **(await work())}
        except ApiError as exc:
            payload = {"status": "failed", "error": {"status": exc.status_code, "code": exc.code, "message": exc.message}}
        except Exception as exc:  # noqa: BLE001 - a job must always end with a stored outcome
            log.error("job %s (%s/%s) failed: %s", job_id, app, kind, type(exc).__name__)
            payload = {"status": "failed", "error": {"status": 500, "code": "internal_error",
                                                     "message": f"the job failed ({type(exc).__name__}); send it again"}}
        try:
            await store.aupdate_result(job_id, payload)
        except Exception as exc:  # noqa: BLE001
            log.error("job %s: could not store its outcome: %s", job_id, type(exc).__name__)

    task = asyncio.get_running_loop().create_task(run(), name=f"job-{job_id}")
    _LIVE.add(task)
    task.add_done_callback(_LIVE.discard)
    return job_id


def job_status(payload: dict[str, Any]) -> str | None:
    """``running`` | ``done`` | ``failed`` | ``interrupted`` for a job's stored payload; None for a
    result stored synchronously (not a job)."""
    status = payload.get("status") if isinstance(payload, dict) else None
    if status == "running" and payload.get("process") != PROCESS_ID:
        return "interrupted"
    return status if status in ("running", "done", "failed") else None


async def drain_jobs(timeout_s: float = 5.0) -> None:
    """Wait (briefly) for running jobs, e.g. before the store closes at shutdown."""
    if _LIVE:
        await asyncio.wait(list(_LIVE), timeout=timeout_s)
