import asyncio

import pytest

from core.serving import ApiError, WorkGate


def test_slots_bound_the_work_and_a_full_queue_is_a_503():
    async def scenario():
        gate = WorkGate("CT decodes", slots=2, queue=1)
        running, peak = 0, 0
        release = asyncio.Event()

        async def job():
            nonlocal running, peak
            async with gate.slot():
                running += 1
                peak = max(peak, running)
                await release.wait()
                running -= 1

        tasks = [asyncio.create_task(job()) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert gate.busy == 2 and gate.waiting == 1
        with pytest.raises(ApiError) as refused:
            async with gate.slot():
                pass
        release.set()
        await asyncio.gather(*tasks)
        assert peak == 2 and gate.busy == 0 and gate.waiting == 0
        return refused.value

    err = asyncio.run(scenario())
    assert err.status_code == 503 and err.code == "busy" and err.headers["Retry-After"] == "5"
    assert "2 CT decodes in progress and 1 waiting" in err.message


def test_a_failing_holder_gives_its_slot_back():
    async def scenario():
        gate = WorkGate("jobs", slots=1, queue=0)
        with pytest.raises(RuntimeError):
            async with gate.slot():
                raise RuntimeError("decoder crashed")
        async with gate.slot():
            return gate.busy

    assert asyncio.run(scenario()) == 1


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        WorkGate("x", slots=0, queue=1)
