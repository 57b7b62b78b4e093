"""A work queue of object keys, with client-go's `workqueue` guarantees, on asyncio.

Contract (after `k8s.io/client-go/util/workqueue`):

* A key is queued at most once: adding a queued key again does nothing, so a burst of
  events for one object becomes one sync.
* A key is processed by one worker at a time. Adding a key while it is being processed
  marks it dirty; it is queued again when the worker calls `done()`, so no change is
  missed and no two workers sync the same object concurrently.
* `add_rate_limited(key)` re-adds after a per-key exponential back-off (5 ms doubling
  to `max_delay`, `ItemExponentialFailureRateLimiter`); `forget(key)` resets it after a
  success. `add_after(key, delay)` schedules a later look (keeping the earliest).
* `shutdown()` wakes every waiting `get()` with `QueueShutDown`.
"""

from __future__ import annotations

import asyncio
from collections import deque


class QueueShutDown(Exception):
    """The queue was shut down; workers should return."""


class RateLimitingQueue:
    def __init__(self, name: str, base_delay: float = 0.005, max_delay: float = 300.0) -> None:
        self.name = name
        self.base_delay, self.max_delay = base_delay, max_delay
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._wakeup = asyncio.Event()
        self._shut = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: str) -> None:
        if self._shut or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._wakeup.set()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        current = self._timers.get(key)
        if current is not None:
            if current[0] <= when:
                return
            current[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: str) -> float:
        """Re-add after this key's back-off; returns the delay used."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self.base_delay * 2.0 ** failures, self.max_delay)
        self.add_after(key, delay)
        return delay

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    async def get(self) -> str:
        while not self._queue:
            if self._shut:
                raise QueueShutDown(self.name)
            self._wakeup.clear()
            await self._wakeup.wait()
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wakeup.set()

    def shutdown(self) -> None:
        self._shut = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._wakeup.set()
