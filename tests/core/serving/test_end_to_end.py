"""Hundreds of concurrent HTTP requests through a real uvicorn server: each caller gets its own
answer, each result is stored exactly once, and batches formed. (The 1,000-submission count is
tested at the batcher in test_batching; here every request also commits a row, so fewer.)"""

from __future__ import annotations

import asyncio

import httpx

from core.serving import ResultStore
from core.serving.bench import LoopbackServer
from tests.core.serving.helpers import DoubleRunner, make_app

N = 300


def test_concurrent_http_requests_none_lost_or_duplicated(tmp_path):
    runner = DoubleRunner()
    app = make_app(tmp_path, runner=runner, max_queue=2 * N)

    async def fire(url: str) -> list[tuple[int, dict]]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            async def one(i: int) -> tuple[int, dict]:
                response = await client.post(url + "/double", json={"x": i}, headers={"X-Request-ID": f"r{i}"})
                return response.status_code, response.json()

            return await asyncio.gather(*(one(i) for i in range(N)))

    with LoopbackServer(app) as server:
        answers = asyncio.run(fire(server.url))
    assert all(status == 200 for status, _ in answers)
    assert [body["y"] for _, body in answers] == [2.0 * i for i in range(N)]
    ids = [body["id"] for _, body in answers]
    assert len(set(ids)) == N
    store = ResultStore(app.state.settings.database_url)
    rows = store.list_results("test", limit=2 * N)
    assert len(rows) == N
    assert sorted(r["request_id"] for r in rows) == sorted(f"r{i}" for i in range(N))
    assert all(r["payload"]["y"] == 2 * r["payload"]["x"] for r in rows)
    assert sum(len(b) for b in runner.batches) == N and len(runner.seen) == N
    assert max(len(b) for b in runner.batches) > 1


def test_full_queue_answers_503_with_retry_after_over_http(tmp_path):
    import threading

    gate = threading.Event()
    runner = DoubleRunner(gate=gate)
    app = make_app(tmp_path, runner=runner, max_batch=1, max_queue=2)

    async def fire(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            first = asyncio.ensure_future(client.post(url + "/double", json={"x": 0}))
            for _ in range(200):  # until item 0 is inside the (blocked) model call
                if runner.batches:
                    break
                await asyncio.sleep(0.02)
            rest = [asyncio.ensure_future(client.post(url + "/double", json={"x": i})) for i in range(1, 9)]
            done_early = []
            for _ in range(100):  # wait until the refusals have come back, then let the model go
                await asyncio.sleep(0.05)
                done_early = [t for t in rest if t.done()]
                if len(done_early) >= 6:
                    break
            gate.set()
            return [await first] + [await t for t in rest]

    with LoopbackServer(app) as server:
        responses = asyncio.run(fire(server.url))
    refused = [r for r in responses if r.status_code == 503]
    served = [r for r in responses if r.status_code == 200]
    assert len(refused) == 6 and len(served) == 3  # one running + a queue of two
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "overloaded"
