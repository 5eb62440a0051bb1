"""ResultStore: SQLite in WAL mode, results and audit records, commits visible to other connections."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from core.serving import ResultStore, subject_hash


def test_results_round_trip_and_wal(tmp_path):
    url = f"sqlite:///{tmp_path / 'nested' / 'r.db'}"
    store = ResultStore(url)
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    result_id = store.save_result("industrial", "inspection", "req-7", {"pass": False, "defects": [{"cls": "short"}]}, role="line")
    row = store.get_result(result_id)
    assert row["payload"] == {"pass": False, "defects": [{"cls": "short"}]}
    assert row["app"] == "industrial" and row["role"] == "line" and row["request_id"] == "req-7"
    assert store.get_result("0" * 32) is None
    assert [r["id"] for r in store.list_results("industrial")] == [result_id]
    assert store.list_results("medical") == []
    other = ResultStore(url)  # a second engine sees the committed row
    assert other.get_result(result_id)["kind"] == "inspection"
    other.close()
    store.close()


def test_audit_records(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'a.db'}")
    subject = subject_hash("patient-123", b"k" * 32)
    assert "patient-123" not in subject and subject == subject_hash("patient-123", b"k" * 32)
    first = store.audit("medical", "predict", "radiologist", subject, "1.0.0", {"probability": 0.7})
    second = store.audit("medical", "view", None, None, None, {})
    assert second > first
    records = store.list_audit("medical")
    assert [r["action"] for r in records] == ["view", "predict"]
    assert records[1]["subject_hash"] == subject and records[1]["outcome"] == {"probability": 0.7}


def test_concurrent_writers_lose_nothing(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'c.db'}")
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: store.save_result("a", "k", f"r{i}", {"i": i}), range(200)))
    assert len(set(ids)) == 200
    assert sorted(store.get_result(i)["payload"]["i"] for i in ids) == list(range(200))


def test_non_json_payload_refused_before_commit(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'n.db'}")
    with pytest.raises(ValueError):
        store.save_result("a", "k", None, {"p": float("nan")})
    with pytest.raises(TypeError):
        store.save_result("a", "k", None, {"p": object()})
    assert store.list_results("a") == []


def test_schema_compiles_for_postgresql():
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    from core.serving.store import AuditRow, ResultRow

    for table in (ResultRow.__table__, AuditRow.__table__):
        ddl = str(CreateTable(table).compile(dialect=postgresql.dialect()))
        assert "JSON" in ddl and "TIMESTAMP WITH TIME ZONE" in ddl


def test_subject_hashes_are_keyed_by_a_secret_made_once_per_installation(tmp_path):
    import os

    from core.serving import audit_key
    from core.serving.settings import AppSettings

    settings = AppSettings(audit_key_file=tmp_path / "state" / "audit.key")
    key = audit_key(settings)
    assert len(key) == 32 and (tmp_path / "state" / "audit.key").read_bytes() == key
    assert os.stat(tmp_path / "state" / "audit.key").st_mode & 0o077 == 0  # the owner's alone
    assert audit_key(AppSettings(audit_key_file=tmp_path / "state" / "audit.key")) == key  # kept across restarts
    other = audit_key(AppSettings(audit_key_file=tmp_path / "elsewhere.key"))
    assert other != key and subject_hash("1.2.840.1", key) != subject_hash("1.2.840.1", other)
    assert audit_key(AppSettings(audit_key="shared by the replicas")) == b"shared by the replicas"
    with pytest.raises(ValueError, match="secret key"):
        subject_hash("1.2.840.1", b"")


def test_list_results_filters_by_kinds_and_payload_values_in_the_database(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'f.db'}")
    a = store.save_result("industrial", "inspect", "r1", {"board_id": "SN-1", "decision": "fail"})
    b = store.save_result("industrial", "inspect_batch", "r2", {"board_id": "SN-2", "decision": "pass"})
    c = store.save_result("industrial", "inspect_batch", "r3", {"board_id": "SN-1", "decision": "pass"})
    store.save_result("industrial", "other", "r4", {"board_id": "SN-1"})
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert ids(store.list_results("industrial", ("inspect", "inspect_batch"))) == [c, b, a]
    assert ids(store.list_results("industrial", ("inspect", "inspect_batch"), payload_equals={"board_id": "SN-1"})) == [c, a]
    assert ids(store.list_results("industrial", None, payload_equals={"board_id": "SN-1", "decision": "pass"})) == [c]
    assert ids(store.list_results("industrial", ("inspect", "inspect_batch"), limit=1)) == [c]


def test_list_results_filters_by_nested_payload_paths_in_the_database(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'p.db'}")
    low = store.save_result("medical", "study", "r1", {"risk": {"band": "low"}, "band": "high"})
    store.save_result("medical", "study", "r2", {"risk": {"band": "high"}})
    newer_low = store.save_result("medical", "study", "r3", {"risk": {"band": "low", "meaning": "below 10 %"}})
    store.save_result("medical", "study", "r4", {"risk": "low"})
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert ids(store.list_results("medical", "study", payload_equals={("risk", "band"): "low"})) == [newer_low, low]
    assert ids(store.list_results("medical", "study", payload_equals={("risk", "band"): "low"}, limit=1)) == [newer_low]
    assert ids(store.list_results("medical", "study", payload_equals={("band",): "high"})) == [low]  # a one-name path
    assert store.list_results("medical", "study", payload_equals={("risk", "band", "x"): "low"}) == []
    with pytest.raises(ValueError, match="non-empty tuple"):
        store.list_results("medical", "study", payload_equals={(): "low"})
    from sqlalchemy.dialects import postgresql

    from core.serving.store import ResultRow

    where = str((ResultRow.payload[("risk", "band")].as_string() == "low").compile(dialect=postgresql.dialect()))
    assert "#>>" in where  # the same filter on PostgreSQL is its JSON path operator


def test_audit_records_filtered_by_action_in_the_database(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'aa.db'}")
    first = store.audit("medical", "studies:analyze", "radiologist", "h1", "1.0", {})
    store.audit("medical", "studies:read", "radiologist", "h1", "1.0", {})
    second = store.audit("medical", "studies:analyze", "radiologist", "h2", "1.0", {})
    store.audit("industrial", "studies:analyze", "line", None, None, {})
    assert [r["id"] for r in store.list_audit("medical", action="studies:analyze")] == [second, first]
    assert [r["id"] for r in store.list_audit("medical", limit=1, action="studies:analyze")] == [second]
    assert len(store.list_audit("medical")) == 3 and store.list_audit("medical", action="nothing") == []


def test_payload_fields_reads_only_named_values_in_a_period(tmp_path):
    import datetime as dt

    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    old = store.save_result("industrial", "inspect", None, {"decision": "pass", "machine_state": {"label": "normal"}})
    with store.engine.begin() as connection:  # stored two days ago
        connection.execute(text("UPDATE results SET created_at = :t WHERE id = :i"),
                           {"t": dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=2), "i": old})
    store.save_result("industrial", "inspect", None, {"decision": "fail", "machine_state": None, "defects": [{"class": "open"}]})
    store.save_result("industrial", "other", None, {"decision": "review"})
    fields = {"decision": "decision", "machine": ("machine_state", "label"), "defects": "defects"}
    assert store.payload_fields("industrial", "inspect", fields) == [
        {"decision": "fail", "machine": None, "defects": [{"class": "open"}]},  # newest first, JSON values as stored
        {"decision": "pass", "machine": "normal", "defects": None},
    ]
    now = dt.datetime.now(dt.UTC)
    day_ago = now - dt.timedelta(days=1)
    assert [r["decision"] for r in store.payload_fields("industrial", "inspect", fields, since=day_ago)] == ["fail"]
    # the same moment at another offset, and naive UTC, select the same rows
    east = (now - dt.timedelta(minutes=1)).astimezone(dt.timezone(dt.timedelta(hours=9)))  # its wall clock is 9 h ahead
    assert [r["decision"] for r in store.payload_fields("industrial", "inspect", fields, until=east)] == ["pass"]
    naive = (now - dt.timedelta(minutes=1)).replace(tzinfo=None)
    assert [r["decision"] for r in store.payload_fields("industrial", "inspect", fields, until=naive)] == ["pass"]
    assert len(store.payload_fields("industrial", ("inspect", "other"), fields, limit=2)) == 2
    with_ids = store.payload_fields("industrial", "inspect", {"decision": "decision"}, with_ids=True)
    assert [r["id"] for r in with_ids][1] == old and dt.datetime.fromisoformat(with_ids[1]["created_at"]).utcoffset() == dt.timedelta(0)
    store.close()


def test_times_read_back_carry_their_utc_offset(tmp_path):
    import datetime as dt

    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")  # SQLite keeps no offset: the store gives it back
    result_id = store.save_result("industrial", "inspect", None, {"decision": "pass"})
    store.audit("medical", "studies:analyze", "radiologist", "h", "v1", {})
    for when in (store.get_result(result_id)["created_at"], store.list_results("industrial")[0]["created_at"],
                 store.list_audit("medical")[0]["created_at"]):
        moment = dt.datetime.fromisoformat(when)
        assert moment.utcoffset() == dt.timedelta(0)  # what a browser's Date() reads as UTC, not local time
        assert abs(moment - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    store.close()


def test_a_summary_period_out_of_the_calendar_is_a_value_error_not_a_crash():
    import datetime as dt

    from core.serving.store import summary_period

    for since, until in ((None, dt.datetime(1, 1, 1)), (dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5))), None)):
        with pytest.raises(ValueError, match="between the years 1 and 9999"):
            summary_period(since, until)


def _locked(path):
    """Another process's open write transaction on the SQLite file (what a long writer or a backup holds)."""
    import sqlite3

    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_write_that_fails_does_not_quote_the_row_it_was_writing(tmp_path):
    from sqlalchemy.exc import OperationalError

    from core.serving.store import is_storage_error

    store = ResultStore(f"sqlite:///{tmp_path / 'l.db'}", busy_timeout_s=0.1)
    holder = _locked(tmp_path / "l.db")
    with pytest.raises(OperationalError) as failed:
        store.save_result("customer-service", "call", "req-1", {"transcript": "this is Margaret Thornton of 14 Elm Street"})
    holder.rollback()
    assert is_storage_error(failed.value)
    assert "Thornton" not in str(failed.value) and "req-1" not in str(failed.value)  # hide_parameters
    assert store.list_results("customer-service") == []


def test_a_batch_and_a_result_with_its_audit_record_commit_whole_or_not_at_all(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'b.db'}")
    ids = store.save_results("industrial", "inspect_batch", [("r-0", {"board": 0}), ("r-1", {"board": 1})], role="line")
    assert [store.get_result(i)["payload"]["board"] for i in ids] == [0, 1]
    with store.engine.begin() as connection:  # the third board's insert fails inside the transaction
        connection.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON results WHEN NEW.request_id = 'bad' "
                                "BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    with pytest.raises(Exception, match="refused"):
        store.save_results("industrial", "inspect_batch", [("ok-0", {"board": 0}), ("ok-1", {"board": 1}), ("bad", {})])
    assert len(store.list_results("industrial")) == 2  # none of the failed batch's boards

    result_id = store.save_result("medical", "study", "s", {"p": 0.4}, role="radiologist",
                                  audit={"action": "studies:analyze", "subject_hash": "h", "model_version": "v",
                                         "outcome": {"probability": 0.4}})
    record = store.list_audit("medical")[0]
    assert record["outcome"] == {"result_id": result_id, "probability": 0.4} and record["role"] == "radiologist"
    with store.engine.begin() as connection:
        connection.execute(text("CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit down'); END"))
    with pytest.raises(Exception, match="audit down"):
        store.save_result("medical", "study", "t", {"p": 0.9}, audit={"action": "studies:analyze", "outcome": {}})
    assert [r["id"] for r in store.list_results("medical")] == [result_id]  # no result without its record


def test_a_conditional_update_is_one_statement(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'u.db'}")
    job = store.save_result("a", "job", None, {"status": "running", "heartbeat": "t0"})
    assert store.update_result(job, {"status": "running", "heartbeat": "t1"}, only_if_status="running")
    assert store.update_result(job, {"status": "done", "y": 2})
    assert not store.update_result(job, {"status": "running", "heartbeat": "t2"}, only_if_status="running")
    assert store.get_result(job)["payload"] == {"status": "done", "y": 2}
    with pytest.raises(KeyError):
        store.update_result("0" * 32, {"status": "done"}, only_if_status="running")
    statements = []
    from sqlalchemy import event

    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2].split()[0].upper()))
    store.update_result(job, {"status": "done", "y": 3}, only_if_status="done")
    assert statements == ["UPDATE"]  # no read before the write for a heartbeat to slip between


def test_stores_opened_together_on_a_new_database_all_start(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    for trial in range(5):
        url = f"sqlite:///{tmp_path / f'new{trial}.db'}"
        with ThreadPoolExecutor(4) as pool:
            stores = list(pool.map(ResultStore, [url] * 4))
        assert all(s.list_results("a") == [] for s in stores)


def test_workers_making_the_audit_key_together_read_the_same_whole_key(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from core.serving.auth import _key_file

    for trial in range(10):
        path = tmp_path / f"k{trial}" / "audit.key"
        with ThreadPoolExecutor(6) as pool:
            keys = list(pool.map(_key_file, [path] * 6))
        assert len(set(keys)) == 1 and len(keys[0]) == 32
        assert [p.name for p in path.parent.iterdir()] == ["audit.key"]  # no drafts left behind


def test_audit_records_name_the_acting_key_and_old_databases_gain_the_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # the audit table as the first installations made it
        old.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at DATETIME, app VARCHAR(64), "
                    "action VARCHAR(64), role VARCHAR(32), subject_hash VARCHAR(128), model_version VARCHAR(128), "
                    "outcome JSON)")
        old.execute("INSERT INTO audit (created_at, app, action, role, outcome) VALUES "
                    "('2026-11-01 10:00:00', 'medical', 'studies:read', 'radiologist', '{}')")
    store = ResultStore(f"sqlite:///{path}")
    store.audit("medical", "studies:read", "radiologist", "h", "v", {}, key_id="0123456789ab")
    store.save_result("medical", "study", None, {}, audit={"action": "studies:analyze", "key_id": "ba9876543210"})
    assert [r["key_id"] for r in store.list_audit("medical")] == ["ba9876543210", "0123456789ab", None]
    ResultStore(f"sqlite:///{path}")  # opening it again changes nothing
