"""How long results are kept, and how one is erased.

A stored result is personal data: a call's redacted transcript and its recording with the PII
silenced, a patient's malignancy estimate and heat maps, an operator's inspection record. An
installation keeps them ``retention_days`` (unset: for ever) and an admin erases one on request (the
GDPR's right to erasure). Either way a result goes with its files (``ArtefactPaths``, given by its
app), and the audit trail records the erasure: which result, why, by which role. The audit trail
itself is never erased; it holds no personal data (subjects are keyed hashes).

An app writes a result's files before it stores the row that names them; a process that dies in between
(kill -9, a power cut) leaves a folder no row names, out of reach of both. An app whose files live one
folder per result (:class:`ArtefactFolder`) has those folders swept (:func:`sweep_orphans`) once they are
older than a grace period, so that a request's files, written moments before its row, are never touched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.serving.errors import ApiError
from core.serving.jobs import job_status
from core.serving.store import PayloadKey, ResultStore

log = logging.getLogger("triptych.serving.retention")

# a stored payload -> the files and folders that belong to it (under the app's artefact folder)
ArtefactPaths = Callable[[dict[str, Any]], list[Path]]
ERASE_ACTION = "results:erase"
ARTEFACT_ID = re.compile(r"[0-9a-f]{32}")  # a result's folder: uuid4().hex
# an unnamed folder younger than this may be a request's whose row is about to be stored: it stays
ORPHAN_GRACE_S = 3600.0


@dataclass(frozen=True)
class ArtefactFolder:
    """An app whose results' files live one folder per result, ``root/<artefact id>/...``. Called with a
    stored payload it gives that result's files, as any :data:`ArtefactPaths`; it also tells
    :func:`sweep_orphans` where to look for folders no stored result names."""

    root: Path
    paths: ArtefactPaths  # a stored payload -> its files (under root)
    # the payload values that name a result's files (a key, or a path into nested objects): the sweep reads
    # only these, and hands ``paths`` a payload made of them; None: whole payloads are read
    fields: Sequence[PayloadKey] | None = None
    pattern: re.Pattern[str] = ARTEFACT_ID  # only folders so named are the app's (anything else is left alone)
    grace_s: float = ORPHAN_GRACE_S

    def __call__(self, payload: dict[str, Any]) -> list[Path]:
        return self.paths(payload)


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


def _sparse_payload(fields: Sequence[PayloadKey], values: Sequence[Any]) -> dict[str, Any]:
    """A payload holding only ``fields`` (keys or paths) at ``values`` (None: absent)."""
    payload: dict[str, Any] = {}
    for key, value in zip(fields, values, strict=True):
        if value is None:
            continue
        *parents, last = (key,) if isinstance(key, str) else key
        node = payload
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return payload


def _named_folders(store: ResultStore, app: str, folder: ArtefactFolder) -> set[str]:
    """The names of the folders under ``folder.root`` that ``app``'s stored results own (what their erasure
    would remove), reading only the fields that name them."""
    fields = None if folder.fields is None else tuple(folder.fields)
    root, names = Path(folder.root), set()
    for values in store.iter_payload_values(app, fields):
        payload = (values[0] or {}) if fields is None else _sparse_payload(fields, values)
        for path in folder.paths(payload):
            try:
                parts = Path(path).relative_to(root).parts
            except ValueError:  # not under the app's folder: not one the sweep would look at
                continue
            if parts:
                names.add(parts[0])
    return names


def _running_since(store: ResultStore, app: str, limit: int = 10_000) -> float | None:
    """When the oldest of ``app``'s background jobs still running started (a POSIX time), or None: such a
    job's files are written before its outcome, the first row to name them, is stored."""
    rows = store.list_results(app, None, limit=limit, payload_equals={"status": "running"})
    started = [dt.datetime.fromisoformat(r["created_at"]).timestamp() for r in rows
               if r["created_at"] and job_status(r["payload"] or {}) == "running"]  # not interrupted
    return min(started) if started else None


def _last_written(folder: Path) -> float:
    """The newest modification time of a folder and of its entries (links not followed)."""
    newest = folder.lstat().st_mtime
    with os.scandir(folder) as entries:
        for entry in entries:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def sweep_orphans(store: ResultStore, app: str, folder: ArtefactFolder, now: float | None = None) -> int:
    """Remove the folders under ``folder.root`` that no stored result of ``app`` names, last written more
    than ``folder.grace_s`` ago and before the oldest running background job started; returns how many.
    They are what a process that died between writing a result's files and storing its row left: never
    acknowledged, out of reach of retention and erasure. Only real folders named by ``folder.pattern``
    go (symbolic links and other names are left alone, nothing is followed out of the folder)."""
    root = Path(folder.root)
    if not root.is_dir():
        return 0
    before = (time.time() if now is None else now) - folder.grace_s
    running = _running_since(store, app)  # before the names: a job that ends meanwhile is among them
    if running is not None:
        before = min(before, running)
    named = _named_folders(store, app, folder)
    with os.scandir(root) as entries:
        unnamed = [Path(e.path) for e in entries
                   if folder.pattern.fullmatch(e.name) and e.name not in named and e.is_dir(follow_symlinks=False)]
    removed, failed = 0, 0
    for path in unnamed:
        try:
            if _last_written(path) >= before:
                continue
            shutil.rmtree(path)  # refuses a link put in its place meanwhile; never follows links inside
        except FileNotFoundError:  # erased meanwhile
            continue
        except OSError:
            failed += 1
            continue
        removed += 1
    if failed:  # counts only: the folders' names are results' ids
        log.warning("orphaned artefact folders could not be removed", extra={"app": app, "failed": failed})
    return removed


async def retention_loop(store: ResultStore, app: str, retention_days: float | None, artefacts: ArtefactPaths | None,
                         every_s: float) -> None:
    """Now and every ``every_s`` seconds, off the event loop, until cancelled: ``purge_expired`` (unless
    ``retention_days`` is None: results kept) and, for an :class:`ArtefactFolder`, ``sweep_orphans`` (always
    due: an orphaned folder was never an acknowledged result)."""
    while True:
        if retention_days is not None:
            try:
                erased = await asyncio.to_thread(purge_expired, store, app, retention_days, artefacts)
                if erased:
                    log.info("expired results erased", extra={"app": app, "erased": erased, "retention_days": retention_days})
            except Exception:  # a database hiccup must not end the policy: the next pass retries
                log.exception("retention pass failed", extra={"app": app})
        if isinstance(artefacts, ArtefactFolder):
            try:
                removed = await asyncio.to_thread(sweep_orphans, store, app, artefacts)
                if removed:
                    log.info("orphaned artefact folders removed", extra={"app": app, "removed": removed})
            except Exception:
                log.exception("orphaned artefact sweep failed", extra={"app": app})
        await asyncio.sleep(every_s)
