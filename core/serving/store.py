"""Results and audit records through SQLAlchemy 2: SQLite (WAL) by default, any URL (PostgreSQL)
unchanged. Every write commits before it returns, so a route that saves and then answers never
acknowledges a result that is not on disk. A result and its audit record, or a batch's results, commit
together or not at all. Errors never carry the rows' values (``hide_parameters``): a failed write is
logged, and its payload holds a transcript or a board id.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, create_engine, event, inspect, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

# a payload key for list_results: a top-level name, or a path of names into nested objects
PayloadKey = str | tuple[str, ...]


def _utc(moment: dt.datetime) -> dt.datetime:
    # rows are stored in UTC; SQLite keeps no offset, so a bound value must be UTC as well to compare right,
    # and a time read back gets its offset again (a browser reads an ISO time without one as local time)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def csv_lines(columns: tuple[str, ...], rows: Iterable[list[Any]]) -> Iterator[str]:
    """CSV text line by line (a header, then one line per row) for a streamed export of stored results."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for values in itertools.chain([list(columns)], rows):
        writer.writerow(values)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def summary_period(since: dt.datetime | None, until: dt.datetime | None,
                   default: dt.timedelta = dt.timedelta(hours=24)) -> tuple[dt.datetime, dt.datetime]:
    """A summary route's ``[since, until)`` in UTC: times without an offset are UTC, ``until`` defaults to
    now and ``since`` to ``default`` before it. ValueError (a 422 from the apps) when it is empty."""
    try:
        until = _utc(until) if until else dt.datetime.now(dt.UTC)
        since = _utc(since) if since else until - default
    except OverflowError:  # e.g. until=0001-01-01: the default start would fall before year 1
        raise ValueError("since and until must be dates between the years 1 and 9999, since before until") from None
    if since >= until:
        raise ValueError(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    return since, until


class _Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ResultRow(_Base):
    __tablename__ = "results"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    role: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    payload: Mapped[dict] = mapped_column(JSON)


class AuditRow(_Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    app: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(32))
    subject_hash: Mapped[str | None] = mapped_column(String(128))  # a hash, never the subject itself
    model_version: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[dict] = mapped_column(JSON)
    # which API key acted (auth.Principal.key_id: 12 hex of its sha256), so two radiologists are told apart;
    # added after the first installations (_add_missing_columns)
    key_id: Mapped[str | None] = mapped_column(String(16), nullable=True)


def _make_engine(database_url: str, busy_timeout_s: float = 30.0) -> Engine:
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1] if "///" in database_url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
                               hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed result survives power loss, not only a process crash
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cursor.close()

        return engine
    return create_engine(database_url, pool_pre_ping=True, hide_parameters=True)


def _create_tables(engine: Engine, attempts: int = 20) -> None:
    """``create_all`` and the columns added since, retried: two processes starting on a new database both
    see no tables, and the second CREATE fails ("already exists"), or finds the file locked by the first."""
    for attempt in range(attempts):
        try:
            _Base.metadata.create_all(engine)
            _add_missing_columns(engine)
            return
        except (OperationalError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _add_missing_columns(engine: Engine) -> None:
    """Nullable columns added to a table after databases were made with it (``create_all`` makes missing
    tables, never missing columns)."""
    for table in _Base.metadata.sorted_tables:
        present = {column["name"] for column in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.nullable and not column.primary_key:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as connection:
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}'))


def is_storage_error(exc: BaseException) -> bool:
    """The database could not be written or read (locked, full, gone): the client can retry later."""
    return isinstance(exc, OperationalError)


class ResultStore:
    """Persist results and audit records; methods are synchronous (call them from ``def`` routes or
    through the ``a*`` coroutine versions, which run them in a thread)."""

    def __init__(self, database_url: str, busy_timeout_s: float = 30.0) -> None:
        self.database_url = database_url
        self.engine = _make_engine(database_url, busy_timeout_s)
        _create_tables(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def save_result(
        self, app: str, kind: str, request_id: str | None, payload: dict[str, Any], role: str | None = None,
        audit: dict[str, Any] | None = None,
    ) -> str:
        """Store one result; returns its id once committed. ``audit`` (``action``, ``subject_hash``,
        ``model_version``, ``outcome``, ``key_id``) is the record of the call that made it, committed in the same
        transaction, its outcome naming the result (``result_id``): no result without its record."""
        return self.save_results(app, kind, [(request_id, payload)], role, audit=[audit] if audit else None)[0]

    def save_results(
        self, app: str, kind: str, items: list[tuple[str | None, dict[str, Any]]], role: str | None = None,
        audit: list[dict[str, Any]] | None = None,
    ) -> list[str]:
        """Store several results (``(request_id, payload)`` each) and their audit records (one per result, or
        None) in one transaction: a batch is stored whole or not at all. Returns their ids."""
        for _, payload in items:
            # fail here, not half-way through a commit; NaN/Infinity are not JSON and PostgreSQL refuses them
            json.dumps(payload, allow_nan=False)
        if audit is not None and len(audit) != len(items):
            raise ValueError(f"{len(audit)} audit records for {len(items)} results")
        ids = [uuid.uuid4().hex for _ in items]
        with self._sessions.begin() as session:
            for result_id, (request_id, payload) in zip(ids, items, strict=True):
                session.add(ResultRow(id=result_id, app=app, kind=kind, request_id=request_id, role=role, payload=payload))
            for result_id, entry in zip(ids, audit or [], strict=False):
                session.add(AuditRow(app=app, action=entry["action"], role=role, subject_hash=entry.get("subject_hash"),
                                     model_version=entry.get("model_version"), key_id=entry.get("key_id"),
                                     outcome={"result_id": result_id, **entry.get("outcome", {})}))
        return ids

    def update_result(self, result_id: str, payload: dict[str, Any], only_if_status: str | None = None) -> bool:
        """Replace a stored result's payload (a background job's outcome replacing its 'running' record).
        ``only_if_status``: replace only while the stored payload's ``status`` is that (a late heartbeat
        must not overwrite an outcome); returns whether it replaced. One conditional UPDATE: a read, a check
        and a write would let a heartbeat read 'running' just before the outcome lands, then overwrite it."""
        json.dumps(payload, allow_nan=False)
        query = update(ResultRow).where(ResultRow.id == result_id)
        if only_if_status is not None:
            query = query.where(ResultRow.payload["status"].as_string() == only_if_status)
        with self._sessions.begin() as session:
            if session.execute(query.values(payload=payload)).rowcount:
                return True
            if session.get(ResultRow, result_id) is None:
                raise KeyError(result_id)
            return False

    def get_result(self, result_id: str) -> dict[str, Any] | None:
        with self._sessions() as session:
            row = session.get(ResultRow, result_id)
            return None if row is None else _result_dict(row)

    def list_results(self, app: str, kind: str | tuple[str, ...] | None = None, limit: int = 50,
                     payload_equals: dict[PayloadKey, str] | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` results of ``app`` (of a kind, or of any of several kinds), optionally only
        those whose payload has each ``payload_equals`` key at that string value (filtered by the database).
        A key is a top-level name or a path into nested objects: ``("risk", "band")`` is ``payload["risk"]["band"]``."""
        query = select(ResultRow).where(ResultRow.app == app)
        if isinstance(kind, tuple):
            query = query.where(ResultRow.kind.in_(kind))
        elif kind is not None:
            query = query.where(ResultRow.kind == kind)
        for key, value in (payload_equals or {}).items():
            if isinstance(key, tuple) and not (key and all(isinstance(part, str) for part in key)):
                raise ValueError(f"a payload path is a non-empty tuple of names, not {key!r}")
            # a tuple is a JSON path (SQLite JSON_EXTRACT '$."risk"."band"', PostgreSQL #>>), not a key named "(...)"
            query = query.where(ResultRow.payload[key].as_string() == value)
        with self._sessions() as session:
            rows = session.scalars(query.order_by(ResultRow.created_at.desc()).limit(limit)).all()
            return [_result_dict(row) for row in rows]

    def payload_fields(self, app: str, kind: str | tuple[str, ...] | None, fields: dict[str, PayloadKey],
                       since: dt.datetime | None = None, until: dt.datetime | None = None,
                       limit: int = 100_000, with_ids: bool = False) -> list[dict[str, Any]]:
        """Only the named payload values (``{name: key or path}``, each read as JSON) of ``app``'s results
        stored in ``[since, until)``, newest first, at most ``limit``: what a summary over a shift reads
        without loading every payload whole. Naive datetimes are taken as UTC. ``with_ids``: each row
        also has its result's ``id`` and ``created_at`` (ISO 8601, UTC)."""
        columns = [ResultRow.payload[key].label(name) for name, key in fields.items()]
        if with_ids:
            columns += [ResultRow.id.label("id"), ResultRow.created_at.label("created_at")]
        query = select(*columns).where(ResultRow.app == app)
        if isinstance(kind, tuple):
            query = query.where(ResultRow.kind.in_(kind))
        elif kind is not None:
            query = query.where(ResultRow.kind == kind)
        if since is not None:
            query = query.where(ResultRow.created_at >= _utc(since))
        if until is not None:
            query = query.where(ResultRow.created_at < _utc(until))
        with self._sessions() as session:
            rows = [dict(row._mapping) for row in session.execute(query.order_by(ResultRow.created_at.desc()).limit(limit))]
        if with_ids:
            for row in rows:
                row["created_at"] = _utc(row["created_at"]).isoformat()
        return rows

    def iter_payload_values(self, app: str, keys: tuple[PayloadKey, ...] | None = None,
                            batch: int = 2000) -> Iterator[tuple[Any, ...]]:
        """Every one of ``app``'s results as the tuple of its payload values at ``keys`` (each read as JSON,
        None where absent), or as ``(payload,)`` when ``keys`` is None, streamed ``batch`` rows at a time:
        a pass over all results (the orphaned-files sweep) without holding them in memory."""
        columns = [ResultRow.payload] if keys is None else [ResultRow.payload[key] for key in keys]
        with self.engine.connect() as connection:
            yield from connection.execution_options(yield_per=batch).execute(select(*columns).where(ResultRow.app == app))

    def results_before(self, app: str, before: dt.datetime, limit: int = 500, offset: int = 0) -> list[dict[str, Any]]:
        """``app``'s results stored before ``before`` (naive: UTC), oldest first, at most ``limit`` after the
        first ``offset``."""
        query = (select(ResultRow).where(ResultRow.app == app, ResultRow.created_at < _utc(before))
                 .order_by(ResultRow.created_at, ResultRow.id).offset(offset).limit(limit))
        with self._sessions() as session:
            return [_result_dict(row) for row in session.scalars(query).all()]

    def delete_result(self, result_id: str) -> bool:
        """Erase one result (committed before returning); whether it existed."""
        with self._sessions.begin() as session:
            row = session.get(ResultRow, result_id)
            if row is None:
                return False
            session.delete(row)
            return True

    def audit(
        self,
        app: str,
        action: str,
        role: str | None,
        subject_hash: str | None,
        model_version: str | None,
        outcome: dict[str, Any],
        key_id: str | None = None,
    ) -> int:
        """Append one audit record (committed before returning); returns its id. ``key_id``: the acting API
        key's id (``Principal.key_id``), never the key."""
        with self._sessions.begin() as session:
            row = AuditRow(
                app=app, action=action, role=role, subject_hash=subject_hash, model_version=model_version, outcome=outcome,
                key_id=key_id,
            )
            session.add(row)
            session.flush()
            return row.id

    def list_audit(self, app: str, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` audit records of ``app``, optionally of one ``action`` only (filtered by the database)."""
        query = select(AuditRow).where(AuditRow.app == app)
        if action is not None:
            query = query.where(AuditRow.action == action)
        with self._sessions() as session:
            rows = session.scalars(query.order_by(AuditRow.id.desc()).limit(limit)).all()
            return [
                {
                    "id": r.id, "created_at": _utc(r.created_at).isoformat(), "app": r.app, "action": r.action, "role": r.role,
                    "subject_hash": r.subject_hash, "model_version": r.model_version, "outcome": r.outcome,
                    "key_id": r.key_id,
                }
                for r in rows
            ]

    async def asave_result(self, *args: Any, **kwargs: Any) -> str:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.save_result, *args, **kwargs)

    async def asave_results(self, *args: Any, **kwargs: Any) -> list[str]:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.save_results, *args, **kwargs)

    async def aupdate_result(self, result_id: str, payload: dict[str, Any], only_if_status: str | None = None) -> bool:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.update_result, result_id, payload, only_if_status)

    async def aget_result(self, result_id: str) -> dict[str, Any] | None:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.get_result, result_id)

    async def alist_results(self, app: str, kind: str | tuple[str, ...] | None = None, limit: int = 50,
                            payload_equals: dict[PayloadKey, str] | None = None) -> list[dict[str, Any]]:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.list_results, app, kind, limit, payload_equals)

    async def apayload_fields(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.payload_fields, *args, **kwargs)

    async def alist_audit(self, app: str, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.list_audit, app, limit, action)

    async def aaudit(self, *args: Any, **kwargs: Any) -> int:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.audit, *args, **kwargs)

    def close(self) -> None:
        self.engine.dispose()


def _result_dict(row: ResultRow) -> dict[str, Any]:
    return {
        "id": row.id, "app": row.app, "kind": row.kind, "request_id": row.request_id, "role": row.role,
        "created_at": _utc(row.created_at).isoformat() if row.created_at else None, "payload": row.payload,
    }
