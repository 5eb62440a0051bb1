"""DynamicBatcher: batches form, errors stay per item, back-pressure, no lost or duplicated work."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from core.serving import ApiError, DynamicBatcher, ModelRunner
from tests.core.serving.helpers import DoubleRunner


def run(coro):
    return asyncio.run(coro)


def test_runner_satisfies_protocol():
    assert isinstance(DoubleRunner(), ModelRunner)
    assert not isinstance(object(), ModelRunner)


def test_batches_form_under_concurrency_and_respect_max_batch():
    runner = DoubleRunner(delay_s=0.02)

    async def main():
        batcher = DynamicBatcher(runner, max_batch=8, max_delay_ms=20)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(40)))
        await batcher.stop()
        return batcher, results

    batcher, results = run(main())
    assert results == [2 * i for i in range(40)]
    sizes = [len(b) for b in runner.batches]
    assert max(sizes) == 8 and all(s <= 8 for s in sizes)
    assert len(sizes) < 40  # concurrency actually produced batches
    assert batcher.stats.mean_batch_size > 1


def test_batch_cut_at_max_batch_without_waiting_for_delay():
    runner = DoubleRunner()

    async def main():
        batcher = DynamicBatcher(runner, max_batch=16, max_delay_ms=60_000)
        started = time.perf_counter()
        await asyncio.gather(*(batcher.submit(i) for i in range(32)))
        await batcher.stop()
        return time.perf_counter() - started

    assert run(main()) < 10  # full batches do not wait for the 60 s delay
    assert [len(b) for b in runner.batches] == [16, 16]


def test_lone_request_waits_at_most_max_delay():
    runner = DoubleRunner()

    async def main():
        batcher = DynamicBatcher(runner, max_batch=32, max_delay_ms=30)
        started = time.perf_counter()
        assert await batcher.submit(3) == 6
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed

    elapsed = run(main())
    assert 0.025 <= elapsed < 2.0


def test_errors_are_isolated_per_item():
    runner = DoubleRunner(delay_s=0.01)

    async def main():
        batcher = DynamicBatcher(runner, max_batch=32, max_delay_ms=20)
        out = await asyncio.gather(*(batcher.submit(x) for x in [1, -1, 2, -2, 3]), return_exceptions=True)
        await batcher.stop()
        return out

    out = run(main())
    assert out[0] == 2 and out[2] == 4 and out[4] == 6
    assert isinstance(out[1], ValueError) and "negative" in str(out[1])
    assert isinstance(out[3], ValueError)
    assert len(runner.batches) == 1  # they really shared one batch


def test_whole_batch_exception_only_fails_the_culprit():
    runner = DoubleRunner(raise_on=13)

    async def main():
        batcher = DynamicBatcher(runner, max_batch=32, max_delay_ms=20)
        out = await asyncio.gather(*(batcher.submit(x) for x in [5, 13, 7]), return_exceptions=True)
        await batcher.stop()
        return out

    out = run(main())
    assert out[0] == 10 and out[2] == 14
    assert isinstance(out[1], RuntimeError)


def test_wrong_result_count_is_an_error_not_a_hang():
    class Short(DoubleRunner):
        def predict_batch(self, items):
            return [0] * (len(items) - 1)

    async def main():
        batcher = DynamicBatcher(Short(), max_batch=4, max_delay_ms=5, timeout_s=5)
        out = await asyncio.gather(*(batcher.submit(x) for x in [1, 2]), return_exceptions=True)
        await batcher.stop()
        return out

    out = run(main())
    assert all(isinstance(o, RuntimeError) for o in out)


def test_back_pressure_503_with_retry_after():
    gate = threading.Event()
    runner = DoubleRunner(gate=gate)

    async def main():
        batcher = DynamicBatcher(runner, max_batch=2, max_delay_ms=1, max_queue=4)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.1)  # the worker is now blocked inside predict_batch with item 0
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 11)]
        await asyncio.sleep(0.05)
        gate.set()
        out = await asyncio.gather(first, *tasks, return_exceptions=True)
        await batcher.stop()
        return batcher, out

    batcher, out = run(main())
    rejected = [o for o in out if isinstance(o, ApiError)]
    accepted = [o for o in out if not isinstance(o, Exception)]
    assert len(accepted) == 5 and len(rejected) == 6  # item 0 + a queue of 4
    assert all(r.status_code == 503 and r.code == "overloaded" for r in rejected)
    assert all(int(r.headers["Retry-After"]) >= 1 for r in rejected)
    assert batcher.stats.rejected == 6


def test_thousand_concurrent_submissions_none_lost_or_duplicated():
    runner = DoubleRunner()

    async def main():
        batcher = DynamicBatcher(runner, max_batch=32, max_delay_ms=2, max_queue=2000)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(1000)))
        await batcher.stop()
        return batcher, results

    batcher, results = run(main())
    assert results == [2 * i for i in range(1000)]  # each caller got its own answer
    assert sum(len(b) for b in runner.batches) == 1000
    assert len(runner.seen) == 1000 and set(runner.seen.values()) == {1}  # each item ran exactly once
    assert batcher.stats.completed == 1000 and batcher.stats.failed == 0
    assert max(len(b) for b in runner.batches) == 32


def test_timeout_504_and_queued_item_is_skipped():
    gate = threading.Event()
    runner = DoubleRunner(gate=gate)

    async def main():
        batcher = DynamicBatcher(runner, max_batch=1, max_delay_ms=1, timeout_s=0.2)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as waited:
            await batcher.submit(2)  # queued behind the blocked batch, times out
        gate.set()
        with pytest.raises(ApiError):
            await first  # the blocked one timed out too
        assert await batcher.submit(3) == 6  # the batcher still works afterwards
        await batcher.stop()
        return waited.value, batcher

    error, batcher = run(main())
    assert error.status_code == 504 and error.code == "timeout"
    assert "2" not in runner.seen  # a caller that gave up is not computed for nothing
    assert batcher.stats.timed_out == 2


def test_an_item_with_a_longer_timeout_outlasts_the_default_and_is_not_stalled():
    runner = DoubleRunner(delay_s=0.4)

    async def main():
        batcher = DynamicBatcher(runner, max_batch=1, max_delay_ms=1, timeout_s=0.1)
        long = asyncio.ensure_future(batcher.submit(5, timeout_s=2.0))  # e.g. a long recording
        await asyncio.sleep(0.25)  # running longer than the default timeout, within its own
        stalled_while_running = batcher.stalled
        with pytest.raises(ApiError) as short:
            await batcher.submit(1)  # the default still applies to everyone else
        result = await long
        await batcher.stop()
        return result, stalled_while_running, short.value

    result, stalled, short = run(main())
    assert result == 10 and not stalled
    assert short.status_code == 504 and "0.1 s" in short.message


def test_stop_fails_queued_requests_with_503():
    gate = threading.Event()
    runner = DoubleRunner(gate=gate)

    async def main():
        batcher = DynamicBatcher(runner, max_batch=1, max_delay_ms=1)
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.05)
        await batcher.stop()
        gate.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(ApiError):
            await batcher.submit(9)
        return out

    out = run(main())
    assert all(isinstance(o, ApiError) and o.status_code == 503 for o in out)


def test_event_loop_stays_responsive_while_model_runs():
    runner = DoubleRunner(delay_s=0.3)

    async def main():
        batcher = DynamicBatcher(runner, max_batch=4, max_delay_ms=1)
        task = asyncio.ensure_future(batcher.submit(1))
        ticks = 0
        started = time.perf_counter()
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await batcher.stop()
        return ticks, time.perf_counter() - started

    ticks, elapsed = run(main())
    assert elapsed >= 0.3 and ticks >= 10  # the loop kept running while predict_batch slept
