"""BoundedFrequencyRunner: one rate-limited sync loop (kube-proxy's async runner).

* `run()` asks for a sync soon: it happens at once unless the previous one started
  less than `min_interval` ago, in which case requests are coalesced into one run
  at `last + min_interval`.
* Without requests, the function still runs every `max_interval` (the periodic
  resync that repairs rules someone else removed).
* `retry_after(delay)` schedules a run after `delay` (a failed sync's backoff),
  unless one is due earlier anyway.

The clock is injectable: `FakeClock` lets tests step time forward and see exactly
which runs happen, with no real sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Protocol

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> float: ...
    async def wait(self, event: asyncio.Event, timeout: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


class FakeClock:
    """A clock that only moves when a test calls `advance()`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self.t + timeout, fut))
        ev_task: asyncio.Future[bool] = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([fut, ev_task], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        finally:
            ev_task.cancel()
            self._waiters = [(d, f) for d, f in self._waiters if f is not fut]

    async def advance(self, seconds: float) -> None:
        self.t += seconds
        for deadline, fut in list(self._waiters):
            if deadline <= self.t and not fut.done():
                fut.set_result(None)
        for _ in range(5):  # let woken loops run to their next wait
            await asyncio.sleep(0)


class BoundedFrequencyRunner:
    def __init__(
        self,
        name: str,
        fn: Callable[[], Awaitable[None]],
        min_interval: float,
        max_interval: float,
        clock: Clock | None = None,
    ) -> None:
        if min_interval > max_interval:
            raise ValueError(f"{name}: min interval {min_interval}s exceeds max interval {max_interval}s")
        self.name = name
        self.fn = fn
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.clock = clock or MonotonicClock()
        self._wakeup = asyncio.Event()
        self._requested = False
        self._retry_at: float | None = None
        self._last_run: float | None = None
        self.runs = 0

    def run(self) -> None:
        """Request a run as soon as the minimum interval allows."""
        self._requested = True
        self._wakeup.set()

    def retry_after(self, delay: float) -> None:
        at = self.clock.now() + delay
        if self._retry_at is None or at < self._retry_at:
            self._retry_at = at
        self._wakeup.set()

    def next_run_at(self, now: float | None = None) -> float:
        now = self.clock.now() if now is None else now
        if self._last_run is None:
            return now if self._requested else now + self.max_interval
        due = self._last_run + self.max_interval
        earliest = self._last_run + self.min_interval
        if self._requested:
            due = min(due, max(earliest, now))
        if self._retry_at is not None:
            due = min(due, max(earliest, self._retry_at))
        return due

    async def loop(self) -> None:
        """Run forever (until cancelled)."""
        while True:
            self._wakeup.clear()
            now = self.clock.now()
            due = self.next_run_at(now)
            if due > now:
                await self.clock.wait(self._wakeup, due - now)
                continue
            self._requested = False
            self._retry_at = None
            self._last_run = now
            self.runs += 1
            try:
                await self.fn()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive a broken sync; the sync logs and retries
                log.exception("%s: run failed", self.name)
