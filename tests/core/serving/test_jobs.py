"""Background jobs: a committed 'running' record, then the outcome under the same id."""

from __future__ import annotations

import asyncio

import pytest

from core.serving import ApiError, ResultStore, job_status, start_job, wants_async
from core.serving.jobs import PROCESS_ID, drain_jobs


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

        ids = [await start_job(store, "app", "thing", "req", "agent", work) for work in (ok, refused, broken)]
        running = store.get_result(ids[0])["payload"]  # committed before start_job returned
        release.set()
        await drain_jobs()
        return ids, running

    ids, running = asyncio.run(main())
    assert running == {"status": "running", "process": PROCESS_ID} and job_status(running) == "running"
    done, refused, broken = (store.get_result(i)["payload"] for i in ids)
    assert done == {"status": "done", "answer": 42} and job_status(done) == "done"
    assert refused["error"] == {"status": 422, "code": "bad_input", "message": "what is accepted"}
    assert broken["status"] == "failed" and broken["error"]["code"] == "internal_error"
    assert "4111" not in str(broken)  # only the exception's type is kept
    assert job_status({"status": "running", "process": "another"}) == "interrupted"
    assert job_status({"intent": "x"}) is None  # a synchronous result is not a job
    store.close()


def test_update_of_a_missing_result_raises(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path}/jobs.db")
    with pytest.raises(KeyError):
        store.update_result("nope", {"status": "done"})
    with pytest.raises(ValueError):
        store.update_result(store.save_result("a", "k", None, {}), {"x": float("nan")})
    store.close()
