"""What every controller shares: a work queue, workers that call `sync(key)`, and the
bookkeeping that protects against acting on a cache that lags behind our own writes.

A controller subclasses `Controller`, registers informer handlers that only map events
to keys and `enqueue()` them, and implements `sync(key)`, which reads the caches,
computes the plan with a pure function and writes it. A `sync` that raises is retried
with per-key back-off; one that returns is forgotten by the rate limiter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from svcnet.apiclient import errors
from svcnet.controlplane.controllers import metrics
from svcnet.controlplane.controllers.workqueue import QueueShutDown, RateLimitingQueue

log = logging.getLogger(__name__)


class Controller:
    """A named work queue and its workers; subclasses implement `sync`."""

    name = "controller"
    stale_recheck = 1.0  # seconds; see StaleCache

    def __init__(self) -> None:
        self.queue = RateLimitingQueue(self.name)
        self.syncs = 0
        self.failures = 0
        self._adds = metrics.WORKQUEUE_ADDS.labels(self.name)
        self._retries = metrics.WORKQUEUE_RETRIES.labels(self.name)
        self._duration = metrics.WORKQUEUE_WORK_DURATION.labels(self.name)
        metrics.WORKQUEUE_DEPTH.labels(self.name).set_function(lambda: len(self.queue))

    def enqueue(self, key: str) -> None:
        if key:
            self._adds.inc()
            self.queue.add(key)

    async def sync(self, key: str) -> None:
        raise NotImplementedError

    async def run(self, workers: int) -> None:
        try:
            await asyncio.gather(*(self._worker(i) for i in range(workers)))
        finally:
            self.queue.shutdown()

    async def _worker(self, n: int) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueShutDown:
                return
            started = time.monotonic()
            try:
                await self.sync(key)
                self.queue.forget(key)
                self.syncs += 1
            except asyncio.CancelledError:
                raise
            except StaleCache as e:
                # Our own write's watch event is on its way and enqueues the key again;
                # the timer only covers a lost event.
                self.queue.add_after(key, self.stale_recheck)
                self._retries.inc()
                log.debug("%s: waiting for the cache key=%s: %s", self.name, key, e)
            except (errors.Conflict, errors.AlreadyExists, errors.NotFound) as e:
                # Someone wrote in between, or our cache is behind: read again and retry.
                delay = self.queue.add_rate_limited(key)
                self._retries.inc()
                log.info("%s: retrying key=%s in %.3fs: %s", self.name, key, delay, e)
            except Exception as e:
                self.failures += 1
                delay = self.queue.add_rate_limited(key)
                self._retries.inc()
                log.warning("%s: sync failed key=%s retry_in=%.3fs: %s", self.name, key, delay, e,
                            exc_info=not isinstance(e, (errors.ApiError, errors.TransportError)))
            finally:
                self._duration.observe(time.monotonic() - started)
                self.queue.done(key)
                log.debug("%s: synced key=%s in %.1f ms", self.name, key,
                          (time.monotonic() - started) * 1000)


class StaleCache(Exception):
    """The informer has not yet delivered our own last writes for this key."""


@dataclass
class _Expected:
    adds: int = 0
    deletes: set[str] = field(default_factory=set)
    since: float = 0.0


class Expectations:
    """client-go's ControllerExpectations: creations counted, deletions by name.

    Raised *before* writing, lowered when the informer shows the result (or when the
    write fails). Until a key's expectations are met, its cache is known to be behind
    our writes and a sync must not plan from it. They expire after `ttl` seconds so a
    lost event cannot wedge a controller.
    """

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._by_key: dict[str, _Expected] = {}

    def expect(self, key: str, adds: int = 0, deletes: set[str] | None = None) -> None:
        e = self._by_key.setdefault(key, _Expected())
        e.adds += adds
        e.deletes |= deletes or set()
        e.since = time.monotonic()

    def observed_add(self, key: str) -> None:
        e = self._by_key.get(key)
        if e is not None and e.adds > 0:
            e.adds -= 1

    def observed_delete(self, key: str, name: str) -> None:
        e = self._by_key.get(key)
        if e is not None:
            e.deletes.discard(name)

    def satisfied(self, key: str) -> bool:
        e = self._by_key.get(key)
        if e is None or (e.adds <= 0 and not e.deletes):
            self._by_key.pop(key, None)
            return True
        if time.monotonic() - e.since > self.ttl:
            log.warning("expectations expired key=%s adds=%d deletes=%d", key, e.adds, len(e.deletes))
            self._by_key.pop(key, None)
            return True
        return False

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)


def rv_at_least(have: object, want: str) -> bool:
    """resourceVersions are opaque, but every server we talk to uses integers; compare
    them as such, and fall back to equality for anything else."""
    try:
        return int(str(have)) >= int(want)
    except ValueError:
        return str(have) == want


class WriteTracker:
    """Our own writes per key until the informer shows them (the EndpointSliceTracker
    idea): `wrote(key, name, rv)` after a create/update (rv None after a delete);
    informer handlers call `observed(key, name, rv)` (rv None for a deletion); `check`
    raises StaleCache while a write is not reflected in the cache. Entries expire after
    `ttl` seconds, so an event lost for good cannot wedge a key."""

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._by_key: dict[str, dict[str, tuple[str | None, float]]] = {}

    def wrote(self, key: str, name: str, rv: str | None) -> None:
        self._by_key.setdefault(key, {})[name] = (rv, time.monotonic())

    def observed(self, key: str, name: str, rv: str | None) -> None:
        entries = self._by_key.get(key)
        if not entries or name not in entries:
            return
        want = entries[name][0]
        # A deletion settles any write; a version at least ours settles a write.
        if rv is None or (want is not None and rv_at_least(rv, want)):
            del entries[name]

    def check(self, key: str, cached: dict[str, object]) -> None:
        """`cached`: name -> resourceVersion of what the cache holds now."""
        entries = self._by_key.get(key)
        if not entries:
            self._by_key.pop(key, None)
            return
        now = time.monotonic()
        for name, (want, when) in list(entries.items()):
            have = cached.get(name)
            if (want is None and have is None) or (want is not None and have is not None
                                                   and rv_at_least(have, want)) or now - when > self.ttl:
                del entries[name]
        if entries:
            raise StaleCache(f"the cache has not shown {len(entries)} of our writes for {key} yet")
        del self._by_key[key]

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)
