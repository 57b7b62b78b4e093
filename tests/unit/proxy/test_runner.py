"""BoundedFrequencyRunner on a fake clock: no real sleeping."""

from __future__ import annotations

import asyncio

from svcnet.proxy.runner import BoundedFrequencyRunner, FakeClock


async def start(min_i: float, max_i: float) -> tuple[BoundedFrequencyRunner, FakeClock, list[float], asyncio.Task[None]]:
    clock = FakeClock()
    calls: list[float] = []

    async def fn() -> None:
        calls.append(clock.now())

    r = BoundedFrequencyRunner("t", fn, min_i, max_i, clock)
    task = asyncio.create_task(r.loop())
    await asyncio.sleep(0)
    return r, clock, calls, task


async def test_requests_are_rate_limited_and_coalesced() -> None:
    r, clock, calls, task = await start(1.0, 30.0)
    try:
        r.run()
        await clock.advance(0)
        assert calls == [1000.0]
        for _ in range(5):  # a burst inside the min interval
            r.run()
            await clock.advance(0.125)
        assert calls == [1000.0]
        await clock.advance(0.375)
        assert calls == [1000.0, 1001.0], "one coalesced run at last + min interval"
    finally:
        task.cancel()


async def test_periodic_run_without_requests() -> None:
    r, clock, calls, task = await start(1.0, 30.0)
    try:
        r.run()
        await clock.advance(0)
        await clock.advance(29.0)
        assert len(calls) == 1
        await clock.advance(1.0)
        assert calls == [1000.0, 1030.0]
    finally:
        task.cancel()


async def test_retry_after() -> None:
    r, clock, calls, task = await start(1.0, 30.0)
    try:
        r.run()
        await clock.advance(0)
        r.retry_after(4.0)
        await clock.advance(3.0)
        assert len(calls) == 1
        await clock.advance(1.0)
        assert calls == [1000.0, 1004.0]
    finally:
        task.cancel()
