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


def _written(folder, seconds_ago: float) -> None:
    """Date a folder and what is in it ``seconds_ago``."""
    import os

    moment = time.time() - seconds_ago
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (moment, moment), follow_symlinks=False)


def _folder(root, name: str, seconds_ago: float | None = None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "slice_0.png").write_bytes(b"png")
    if seconds_ago is not None:
        _written(folder, seconds_ago)
    return folder


def _hex(n: int) -> str:
    return f"{n:032x}"


def test_orphaned_artefact_folders_past_the_grace_period_are_swept(tmp_path):
    """A process killed between writing a result's files and storing its row left a folder no row names:
    retention and erasure never reached it, personal data on disk for ever."""
    from core.serving.retention import ArtefactFolder, sweep_orphans

    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    root = tmp_path / "art" / "app"
    folder = ArtefactFolder(root, lambda p: [root / p["artefact_id"]] if p.get("artefact_id") else [],
                            fields=("artefact_id",))
    store.save_result("app", "study", None, {"artefact_id": _hex(1), "other": "x"})
    store.save_result("other-app", "study", None, {"artefact_id": _hex(2)})  # another app's row names nothing here
    stored = _folder(root, _hex(1), 7200)
    orphans = [_folder(root, _hex(2), 7200), _folder(root, _hex(3), 3 * 86400)]
    fresh = _folder(root, _hex(4), 60)  # a request's, its row about to be stored
    not_ours = [_folder(root, "notes", 7200), _folder(root, _hex(0xABC5).upper(), 7200)]
    outside = _folder(tmp_path / "outside", _hex(6), 7200)
    (root / _hex(6)).symlink_to(outside, target_is_directory=True)  # never followed out of the folder
    (root / _hex(7)).write_bytes(b"a loose file")
    assert sweep_orphans(store, "app", folder) == 2
    assert not any(o.exists() for o in orphans)
    assert stored.is_dir() and fresh.is_dir() and all(f.is_dir() for f in not_ours)
    assert (outside / "slice_0.png").exists() and (root / _hex(6)).is_symlink() and (root / _hex(7)).is_file()
    assert sweep_orphans(store, "app", folder, now=time.time() + 3600) == 1 and not fresh.exists()
    assert stored.is_dir()
    assert sweep_orphans(store, "app", ArtefactFolder(tmp_path / "none", folder.paths)) == 0  # no folder yet
    store.close()


def test_a_sweep_reads_nested_fields_and_whole_payloads_and_spares_running_jobs(tmp_path):
    """A background job's row is stored before its files are written, and names them only once its outcome
    is: folders written since a job still running started stay; an interrupted job's do not."""
    import re

    from core.serving.retention import ArtefactFolder, sweep_orphans

    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    root = tmp_path / "art"

    def paths(payload):
        match = re.search(r"/v1/audio/([0-9a-f]{32})/", str((payload.get("audio") or {}).get("url") or ""))
        return [root / match.group(1)] if match else []

    store.save_result("app", "call", None, {"audio": {"url": f"/x/v1/audio/{_hex(1)}/a.wav"}, "transcript": "t"})
    job = store.save_result("app", "call", None, {"status": "running", "heartbeat": dt.datetime.now(dt.UTC).isoformat()})
    _age(store, job, 3 / 24)  # started 3 h ago, still beating
    named = _folder(root, _hex(1), 5 * 3600)
    the_jobs = _folder(root, _hex(2), 2 * 3600)  # written since the job started: its outcome will name it
    orphan = _folder(root, _hex(3), 4 * 3600)  # written before it
    for fields in ((("audio", "url"),), None):  # only the naming field, or whole payloads
        assert sweep_orphans(store, "app", ArtefactFolder(root, paths, fields=fields)) == (1 if fields else 0)
        assert named.is_dir() and the_jobs.is_dir() and not orphan.exists()
    store.update_result(job, {"status": "running", "heartbeat": (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()})
    assert sweep_orphans(store, "app", ArtefactFolder(root, paths, fields=(("audio", "url"),))) == 1  # interrupted
    assert named.is_dir() and not the_jobs.exists()
    store.close()


@pytest.mark.parametrize("retention_days", [None, 30])
def test_the_retention_loop_sweeps_orphans_with_or_without_a_retention_period(tmp_path, retention_days):
    """Orphans were never acknowledged results: they go whether or not results expire."""
    import asyncio

    from core.serving.retention import ArtefactFolder, retention_loop

    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    root = tmp_path / "art"
    orphan, kept = _folder(root, _hex(1), 7200), _folder(root, _hex(2), 7200)
    store.save_result("app", "study", None, {"artefact_id": _hex(2)})
    folder = ArtefactFolder(root, lambda p: [root / p["artefact_id"]] if p.get("artefact_id") else [],
                            fields=("artefact_id",))

    async def run() -> None:
        task = asyncio.create_task(retention_loop(store, "app", retention_days, folder, every_s=0.05))
        for _ in range(100):
            if not orphan.exists():
                break
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(run())
    assert not orphan.exists() and kept.is_dir()
    store.close()


@pytest.mark.parametrize("retention_days", [None, 1])
def test_an_app_sweeps_orphaned_artefact_folders_by_itself(tmp_path, retention_days):
    from core.serving.retention import ArtefactFolder

    url = f"sqlite:///{tmp_path / 'r.db'}"
    root = tmp_path / "toy"
    orphan = _folder(root, _hex(1), 7200)
    settings = AppSettings(database_url=url, artefact_dir=tmp_path, retention_days=retention_days, retention_check_s=0.05)
    app = create_service_app(name="toy", settings=settings, artefacts=ArtefactFolder(
        root, lambda p: [root / p["artefact_id"]] if p.get("artefact_id") else [], fields=("artefact_id",)))
    with TestClient(app):
        for _ in range(100):
            if not orphan.exists():
                break
            time.sleep(0.05)
    assert not orphan.exists()
