"""Work queue guarantees: dedup, one worker per key, dirty re-queue, back-off."""

from __future__ import annotations

import asyncio
import argparse

import pytest

from svcnet.controlplane.controllers.command import parse_controllers, parse_duration
from svcnet.controlplane.controllers.workqueue import QueueShutDown, RateLimitingQueue


async def test_dedup_and_dirty_requeue() -> None:
    q = RateLimitingQueue("t")
    q.add("a")
    q.add("a")
    q.add("b")
    assert len(q) == 2
    key = await q.get()
    assert key == "a"
    q.add("a")  # changed while being processed: not handed to a second worker
    assert await q.get() == "b"
    assert len(q) == 0
    q.done("a")  # ...but queued again once the first worker is done
    assert await q.get() == "a"


async def test_backoff_grows_and_forget_resets() -> None:
    q = RateLimitingQueue("t", base_delay=0.01, max_delay=0.04)
    assert [q.add_rate_limited("k") for _ in range(4)] == [0.01, 0.02, 0.04, 0.04]
    assert q.num_requeues("k") == 4
    q.forget("k")
    assert q.add_rate_limited("k") == 0.01
    assert await asyncio.wait_for(q.get(), 1) == "k"


async def test_add_after_keeps_earliest() -> None:
    q = RateLimitingQueue("t")
    q.add_after("k", 5.0)
    q.add_after("k", 0.01)
    assert await asyncio.wait_for(q.get(), 1) == "k"


async def test_shutdown_wakes_waiters() -> None:
    q = RateLimitingQueue("t")
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.shutdown()
    with pytest.raises(QueueShutDown):
        await waiter


@pytest.mark.parametrize("text, seconds", [("40s", 40), ("1m30s", 90), ("500ms", 0.5), ("2", 2), ("1h", 3600)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "4x", "s", "-3s", "1m-2s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_controllers_flag() -> None:
    assert parse_controllers("*,-deployment") == ("endpointslice", "scheduler", "node-lifecycle")
    assert parse_controllers("scheduler") == ("scheduler",)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown controller 'foo'"):
        parse_controllers("foo")
