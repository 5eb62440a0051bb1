"""How long results are kept, and how one is erased.

A stored result is personal data: a call's redacted transcript and its recording with the PII
silenced, a patient's malignancy estimate and heat maps, an operator's inspection record. An
installation keeps them ``retention_days`` (unset: for ever) and an admin erases one on request (the
GDPR's right to erasure). Either way a result goes with its files (``ArtefactPaths``, given by its
app), and the audit trail records the erasure: which result, why, by which role. The audit trail
itself is never erased; it holds no personal data (subjects are keyed hashes).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.serving.errors import ApiError
from core.serving.jobs import job_status
from core.serving.store import ResultStore

log = logging.getLogger("triptych.serving.retention")

# a stored payload -> the files and folders that belong to it (under the app's artefact folder)
ArtefactPaths = Callable[[dict[str, Any]], list[Path]]
ERASE_ACTION = "results:erase"


class ErasureIncomplete(ApiError):
    """Some of a result's files could not be removed: the result is kept (and says so), to be erased again."""

    def __init__(self, left: int) -> None:
        super().__init__(503, "erasure_incomplete", f"{left} of the result's files could not be removed (storage "
                         "read-only or busy); the result is kept, nothing was erased: retry", headers={"Retry-After": "30"})


def remove_unstored(artefacts: ArtefactPaths | None, payload: dict[str, Any]) -> None:
    """The files written for a result that could not be stored, so was never acknowledged: no stored row
    names them, so no erasure would ever reach them."""
    for path in artefacts(payload) if artefacts else []:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def erase_result(store: ResultStore, app: str, row: dict[str, Any], artefacts: ArtefactPaths | None, *,
                 reason: str, role: str | None, key_id: str | None = None) -> int:
    """Erase one stored result (``store.get_result``'s row) and its files; returns how many files or
    folders went. Files first: a crash before the row goes leaves a row whose links answer 404 (the
    next pass or request finishes it), never files no row points at any more. A file that will not go
    (a read-only or failing disk) stops the erasure: :class:`ErasureIncomplete`, the row kept, no
    "erased" record for files that are still there and still served."""
    payload = row.get("payload") or {}
    removed, left = 0, 0
    for path in artefacts(payload) if artefacts else []:
        if not path.exists():
            continue
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another erasure of the same result (a retention pass, a second DELETE) took it
            pass
        except OSError as exc:
            log.warning("a result's file could not be removed: %s", type(exc).__name__, extra={"app": app})
        if path.exists():
            left += 1
        else:
            removed += 1
    if left:
        raise ErasureIncomplete(left)
    if store.delete_result(row["id"]):
        store.audit(app, ERASE_ACTION, role, payload.get("subject_hash"), payload.get("model_version"),
                    {"result_id": row["id"], "kind": row.get("kind"), "reason": reason, "files": removed}, key_id=key_id)
    return removed


def purge_expired(store: ResultStore, app: str, retention_days: float, artefacts: ArtefactPaths | None,
                  now: dt.datetime | None = None, batch: int = 500) -> int:
    """Erase ``app``'s results older than ``retention_days``; returns how many. A background job still
    running is left alone (its outcome has not been stored yet)."""
    before = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=retention_days)
    erased, kept, seen = 0, 0, set()
    while True:
        # the rows kept (running jobs, files that would not go) stay at the head of the oldest: page past them
        rows = [r for r in store.results_before(app, before, limit=batch, offset=kept) if r["id"] not in seen]
        if not rows:
            return erased
        for row in rows:
            seen.add(row["id"])
            if job_status(row["payload"] or {}) == "running":
                kept += 1
                continue
            try:
                erase_result(store, app, row, artefacts, reason="retention", role=None)
            except ErasureIncomplete:  # logged; the next pass tries again, the other results go on
                kept += 1
                continue
            erased += 1


async def retention_loop(store: ResultStore, app: str, retention_days: float, artefacts: ArtefactPaths | None,
                         every_s: float) -> None:
    """``purge_expired`` now and every ``every_s`` seconds, off the event loop, until cancelled."""
    while True:
        try:
            erased = await asyncio.to_thread(purge_expired, store, app, retention_days, artefacts)
            if erased:
                log.info("expired results erased", extra={"app": app, "erased": erased, "retention_days": retention_days})
        except Exception:  # a database hiccup must not end the policy: the next pass retries
            log.exception("retention pass failed", extra={"app": app})
        await asyncio.sleep(every_s)
