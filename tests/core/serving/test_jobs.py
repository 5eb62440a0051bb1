"""Background jobs: a committed 'running' record, then the outcome under the same id."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from core.serving import ApiError, ResultStore, job_status, start_job, wants_async
from core.serving.jobs import drain_jobs


@pytest.mark.parametrize(("header", "expected"), [
    ("respond-async", True), ("wait=5, respond-async", True), ("Respond-Async ", True),
    (None, False), ("", False), ("return=minimal", False), ("respond-asynchronously", False),
])
def test_prefer_header(header, expected):
    assert wants_async(header) is expected


def test_jobs_store_running_then_their_outcome(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path}/jobs.db")

    async def main():
        release = asyncio.Event()

        async def ok():
            await release.wait()
            return {"answer": 42}

        async def refused():
            raise ApiError(422, "bad_input", "what is accepted")

        async def broken():
            raise RuntimeError("4111 1111 1111 1111 leaked into a message")

        ids = [await start_job(store, "app", "thing", "req", "agent", work, heartbeat_s=0.05) for work in (ok, refused, broken)]
        running = store.get_result(ids[0])["payload"]  # committed before start_job returned
        first_beat = running["heartbeat"]
        await asyncio.sleep(0.25)
        beaten = store.get_result(ids[0])["payload"]["heartbeat"]
        release.set()
        await drain_jobs()
        await asyncio.sleep(0.2)  # no heartbeat may land after the outcome
        return ids, running, first_beat, beaten

    ids, running, first_beat, beaten = asyncio.run(main())
    assert running["status"] == "running" and job_status(running) == "running"
    assert beaten > first_beat  # the running job kept its heartbeat fresh
    done, refused, broken = (store.get_result(i)["payload"] for i in ids)
    assert done == {"status": "done", "answer": 42} and job_status(done) == "done"
    assert refused["error"] == {"status": 422, "code": "bad_input", "message": "what is accepted"}
    assert broken["status"] == "failed" and broken["error"]["code"] == "internal_error"
    assert "4111" not in str(broken)  # only the exception's type is kept
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
    assert job_status({"status": "running", "heartbeat": old}) == "interrupted"  # its process stopped
    assert job_status({"status": "running", "heartbeat": old}, stale_after_s=3600) == "running"
    assert job_status({"status": "running"}) == "interrupted"
    assert job_status({"intent": "x"}) is None  # a synchronous result is not a job
    store.close()


def test_update_of_a_missing_result_raises(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path}/jobs.db")
    with pytest.raises(KeyError):
        store.update_result("nope", {"status": "done"})
    with pytest.raises(ValueError):
        store.update_result(store.save_result("a", "k", None, {}), {"x": float("nan")})
    done = store.save_result("a", "k", None, {"status": "done", "answer": 1})
    assert store.update_result(done, {"status": "running"}, only_if_status="running") is False
    assert store.get_result(done)["payload"]["status"] == "done"
    store.close()


def test_an_outcome_being_retried_still_reads_running_and_one_never_stored_undoes_its_files(tmp_path, monkeypatch):
    """The heartbeat used to stop before the retries, so a poller read 'interrupted: send it again' while the
    outcome was still on its way; and a job whose outcome never landed left its files where no erasure reaches."""
    import core.serving.jobs as jobs

    store = ResultStore(f"sqlite:///{tmp_path}/jobs.db")
    monkeypatch.setattr(jobs, "OUTCOME_ATTEMPTS", 2)
    real_update, outcomes = store.aupdate_result, {"tries": 0, "fail": 2}

    async def busy_for_outcomes(result_id, payload, only_if_status=None):
        if only_if_status is None:  # the outcome: the database refuses it `fail` times
            outcomes["tries"] += 1
            if outcomes["tries"] <= outcomes["fail"]:
                await asyncio.sleep(0.3)
                raise RuntimeError("database is locked")
        return await real_update(result_id, payload, only_if_status)

    monkeypatch.setattr(store, "aupdate_result", busy_for_outcomes)
    undone = []

    async def main():
        async def ok():
            return {"answer": 42, "file": "f1"}

        seen = []
        job = await start_job(store, "app", "thing", None, None, ok, heartbeat_s=0.05, on_unstored=undone.append)
        for _ in range(30):  # 1.5 s: both attempts fail, with a 1 s pause between them
            await asyncio.sleep(0.05)
            seen.append(job_status(store.get_result(job)["payload"], stale_after_s=0.15))
        await drain_jobs()
        return job, seen

    job, seen = asyncio.run(main())
    assert set(seen) == {"running"}, seen  # never 'interrupted' while the outcome was being retried
    assert undone == [{"status": "done", "answer": 42, "file": "f1"}]  # never stored: its files undone
    assert store.get_result(job)["payload"]["status"] == "running"

    outcomes.update(tries=0, fail=1)
    undone.clear()
    job, _ = asyncio.run(main())
    assert store.get_result(job)["payload"] == {"status": "done", "answer": 42, "file": "f1"} and undone == []
