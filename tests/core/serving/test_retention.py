"""Retention and erasure: a result goes with its files, the erasure is audited, old results expire,
running jobs are left alone, and an app enforces its retention period by itself."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from core.serving import AppSettings, ResultStore, create_service_app
from core.serving.retention import ERASE_ACTION, erase_result, purge_expired


def _age(store: ResultStore, result_id: str, days: float) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE results SET created_at = :t WHERE id = :i"),
                           {"t": dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=days), "i": result_id})


def test_an_erased_result_goes_with_its_files_and_the_erasure_is_audited(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    folder, loose = tmp_path / "art" / "a1", tmp_path / "art" / "b.wav"
    folder.mkdir(parents=True)
    (folder / "slice_0.png").write_bytes(b"png")
    loose.write_bytes(b"wav")
    result_id = store.save_result("medical", "study", None, {"artefact_id": "a1", "subject_hash": "h1", "model_version": "v"})
    row = store.get_result(result_id)
    removed = erase_result(store, "medical", row, lambda p: [tmp_path / "art" / p["artefact_id"], loose, tmp_path / "gone"],
                           reason="request", role="admin")
    assert removed == 2 and not folder.exists() and not loose.exists()
    assert store.get_result(result_id) is None
    audit = store.list_audit("medical", action=ERASE_ACTION)
    assert len(audit) == 1 and audit[0]["role"] == "admin" and audit[0]["subject_hash"] == "h1"
    assert audit[0]["outcome"] == {"result_id": result_id, "kind": "study", "reason": "request", "files": 2}
    assert erase_result(store, "medical", row, None, reason="request", role="admin") == 0  # gone already: no record
    assert len(store.list_audit("medical", action=ERASE_ACTION)) == 1
    store.close()


def test_results_past_the_retention_period_expire_but_running_jobs_stay(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    now = dt.datetime.now(dt.UTC)
    old = store.save_result("industrial", "inspect", None, {"decision": "pass"})
    fresh = store.save_result("industrial", "inspect", None, {"decision": "fail"})
    running = store.save_result("industrial", "job", None, {"status": "running", "heartbeat": now.isoformat()})
    stale = store.save_result("industrial", "job", None, {"status": "running", "heartbeat": (now - dt.timedelta(days=9)).isoformat()})
    other_app = store.save_result("medical", "study", None, {"probability": 0.5})
    for result_id, days in ((old, 10), (fresh, 2), (running, 10), (stale, 10), (other_app, 10)):
        _age(store, result_id, days)
    assert purge_expired(store, "industrial", retention_days=7, artefacts=None, batch=2) == 2
    assert store.get_result(old) is None and store.get_result(stale) is None  # a job whose worker died expires too
    assert all(store.get_result(i) for i in (fresh, running, other_app))
    reasons = [a["outcome"]["reason"] for a in store.list_audit("industrial")]
    assert reasons == ["retention", "retention"] and all(a["role"] is None for a in store.list_audit("industrial"))
    store.close()


def test_an_app_erases_its_expired_results_by_itself(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = ResultStore(url)
    old = store.save_result("toy", "thing", None, {"artefact_id": "x"})
    kept = store.save_result("toy", "thing", None, {})
    _age(store, old, 3)
    (tmp_path / "x").mkdir()
    settings = AppSettings(database_url=url, artefact_dir=tmp_path, retention_days=1, retention_check_s=0.05)
    app = create_service_app(name="toy", settings=settings,
                             artefacts=lambda payload: [tmp_path / payload["artefact_id"]] if "artefact_id" in payload else [])
    with TestClient(app):
        for _ in range(100):
            if store.get_result(old) is None:
                break
            time.sleep(0.05)
    assert store.get_result(old) is None and not (tmp_path / "x").exists() and store.get_result(kept)
    store.close()


@pytest.mark.parametrize("days", [0, -1])
def test_a_retention_period_must_be_positive(days):
    with pytest.raises(ValueError, match="retention_days unset"):
        AppSettings(retention_days=days)


def test_an_erasure_whose_files_will_not_go_keeps_the_result_and_says_so(tmp_path, monkeypatch):
    """A read-only or failing disk: the row used to go and the erasure be recorded while the heat maps stayed
    on disk and were still served."""
    import shutil

    from core.serving.retention import ErasureIncomplete

    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    folder = tmp_path / "art" / "a1"
    folder.mkdir(parents=True)
    (folder / "slice_0.png").write_bytes(b"png")
    result_id = store.save_result("medical", "study", None, {"artefact_id": "a1"})

    def refuse(path, *args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(shutil, "rmtree", refuse)
    with pytest.raises(ErasureIncomplete) as failed:
        erase_result(store, "medical", store.get_result(result_id), lambda p: [folder], reason="request", role="admin")
    assert failed.value.status_code == 503 and failed.value.code == "erasure_incomplete"
    assert store.get_result(result_id) is not None and folder.exists()
    assert store.list_audit("medical", action=ERASE_ACTION) == []
    _age(store, result_id, 40)
    assert purge_expired(store, "medical", 30, lambda p: [folder]) == 0  # retried by the next pass, not recorded
    monkeypatch.undo()
    assert purge_expired(store, "medical", 30, lambda p: [folder]) == 1 and not folder.exists()


def test_a_file_another_erasure_took_first_counts_as_removed(tmp_path, monkeypatch):
    """Two erasures of one result at once (a DELETE during a retention pass): the second used to answer 503
    'nothing was erased' for a result that was gone."""
    import shutil

    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    folder = tmp_path / "art" / "a1"
    folder.mkdir(parents=True)
    (folder / "slice_0.png").write_bytes(b"png")
    result_id = store.save_result("medical", "study", None, {"artefact_id": "a1"})
    real_rmtree = shutil.rmtree

    def raced(path, *args, **kwargs):  # the other erasure removes the folder just before this one does
        real_rmtree(path)
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(shutil, "rmtree", raced)
    assert erase_result(store, "medical", store.get_result(result_id), lambda p: [folder], reason="request",
                        role="admin") == 1
    assert store.get_result(result_id) is None and len(store.list_audit("medical", action=ERASE_ACTION)) == 1


def test_a_retention_pass_pages_past_results_it_must_keep(tmp_path):
    """Kept rows (running jobs, files that would not go) at the head of the oldest stopped the pass: with a
    batch of two, two kept rows hid every expired result behind them, pass after pass."""
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    now = dt.datetime.now(dt.UTC).isoformat()
    ids = [store.save_result("a", "k", None, {"status": "running", "heartbeat": now}) for _ in range(2)]
    ids += [store.save_result("a", "k", None, {"n": n}) for n in range(3)]
    for age, result_id in zip((50, 49, 48, 47, 46), ids, strict=True):
        _age(store, result_id, age)
    assert purge_expired(store, "a", 30, None, batch=2) == 3
    assert sorted(r["id"] for r in store.list_results("a")) == sorted(ids[:2])
