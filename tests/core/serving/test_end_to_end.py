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
