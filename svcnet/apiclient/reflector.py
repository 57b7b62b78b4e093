"""Reflector: keeps one `Informer` equal to the API's view of one resource.

Contract (after client-go's `tools/cache.Reflector`):

* **List, then watch from the list's resourceVersion.** The first list asks for
  `resourceVersion=0` (any recent state, cheap for the server); the watch then
  starts *exactly* after the list, so nothing between them is missed.
* **Resume, do not relist, after a disconnect.** Every delivered event and every
  BOOKMARK moves `last_resource_version`; when a watch ends (the server's
  `timeoutSeconds`, a dropped connection, an apiserver restart) the next watch
  starts from there, so no event is lost and none is delivered twice.
* **410 Gone → relist.** When the server no longer has history back to
  `last_resource_version` (HTTP 410, or an ERROR event with code 410), the
  reflector lists again at `last_resource_version` ("not older than"), or, if that
  is refused too, at the latest state, and hands the list to `Informer.replace()`,
  which delivers only the differences as add/update/delete.
* **Back off, with jitter, on trouble; reset after sustained health.** Failed lists
  and watches that cannot start wait 0.8 s, 1.6 s, ... up to 30 s, each stretched by
  up to 100 % random jitter, and the sequence restarts after two minutes without a
  failure (client-go's `NewExponentialBackoffManager(800ms, 30s, 2m, 2.0, 1.0)`).
* `run()` never returns and never raises, except `CancelledError`: every failure is
  logged and retried. Time comes from an injectable `Clock`, so tests need no sleep.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from svcnet.apiclient import errors
from svcnet.apiclient.client import RestClient, Selector
from svcnet.apiclient.informer import Informer
from svcnet.apiclient.objects import Obj, resource_version_of
from svcnet.apiclient.resources import Resource

log = logging.getLogger(__name__)


class Clock(Protocol):
    def monotonic(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Backoff:
    """Exponential backoff with jitter that starts over after `reset_after` quiet seconds."""

    def __init__(self, clock: Clock, *, initial: float = 0.8, maximum: float = 30.0,
                 factor: float = 2.0, jitter: float = 1.0, reset_after: float = 120.0,
                 rand: Callable[[], float] = random.random) -> None:
        self._clock, self._rand = clock, rand
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self.jitter, self.reset_after = jitter, reset_after
        self._next = initial
        self._last: float | None = None

    def next(self) -> float:
        """How long to wait now; each call without a quiet period doubles the base."""
        now = self._clock.monotonic()
        if self._last is None or now - self._last > self.reset_after:
            self._next = self.initial
        self._last = now
        base = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return base + self._rand() * self.jitter * base


@dataclass
class ReflectorStats:
    """Counters for logs, metrics and tests."""

    lists: int = 0
    relists_after_expired: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    disconnects: int = 0
    failures: int = 0


class Reflector:
    """Feeds `informer` from `client` for one resource; see the module docstring."""

    def __init__(self, client: RestClient, resource: Resource, informer: Informer, *,
                 namespace: str | None = None, label_selector: Selector = None,
                 field_selector: Selector = None, page_size: int = 500,
                 min_watch_timeout: float = 300.0, clock: Clock | None = None,
                 backoff: Backoff | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        self.client, self.resource, self.informer = client, resource, informer
        self.namespace = namespace
        self.label_selector, self.field_selector = label_selector, field_selector
        self.page_size = page_size
        self.min_watch_timeout = min_watch_timeout
        self._clock: Clock = clock or SystemClock()
        self._backoff = backoff or Backoff(self._clock, rand=rand)
        self._rand = rand
        self.last_resource_version = ""
        # After a list at last_resource_version was refused (410, or "too large"), list
        # at the latest state instead (client-go isLastSyncResourceVersionUnavailable).
        self._last_rv_unavailable = False
        self.stats = ReflectorStats()
        self.name = resource.plural + (f" namespace={namespace}" if namespace else "")

    async def run(self) -> None:
        """List and watch until cancelled; never raises anything else."""
        while True:
            try:
                await self._list_and_watch()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop must survive anything
                self.stats.failures += 1
                log.warning("list/watch failed resource=%s rv=%s error=%s", self.name,
                            self.last_resource_version, _brief(e),
                            exc_info=not isinstance(e, (errors.ApiError, errors.TransportError)))
            await self._clock.sleep(self._backoff.next())

    # -- list ------------------------------------------------------------------

    def _relist_resource_version(self) -> str:
        if self._last_rv_unavailable:
            return ""  # the latest state, read consistently
        return self.last_resource_version or "0"

    async def _list(self) -> None:
        rv = self._relist_resource_version()
        try:
            result = await self._list_at(rv)
        except (errors.Gone, errors.ServerTimeout) as e:
            if isinstance(e, errors.ServerTimeout) and not _too_large_rv(e):
                raise
            log.info("list at rv=%s refused resource=%s error=%s; listing the latest state",
                     rv, self.name, _brief(e))
            self._last_rv_unavailable = True
            result = await self._list_at("")
        self._last_rv_unavailable = False
        items: list[Obj] = list(result.get("items") or [])
        list_rv = str((result.get("metadata") or {}).get("resourceVersion") or "")
        self.stats.lists += 1
        self.informer.replace(items, list_rv)
        self.last_resource_version = list_rv
        log.info("listed resource=%s items=%d rv=%s", self.name, len(items), list_rv)

    async def _list_at(self, rv: str) -> Obj:
        # A list at a specific resourceVersion is unpaginated so a server with a watch
        # cache can answer it from there ("not older than"); with a limit it would mean
        # "exactly", which compaction can make impossible (client-go reflector.list).
        paginate = rv in ("", "0")
        return await self.client.list_all(
            self.resource, self.namespace, label_selector=self.label_selector,
            field_selector=self.field_selector, page_size=self.page_size if paginate else None,
            resource_version=rv or None)

    # -- watch -----------------------------------------------------------------

    async def _list_and_watch(self) -> None:
        await self._list()
        while True:
            outcome = await self._watch_once()
            if outcome == "relist":
                return  # run() backs off, then lists again at last_resource_version
            if outcome == "backoff":
                await self._clock.sleep(self._backoff.next())

    async def _watch_once(self) -> str:
        """One watch from last_resource_version: 'again', 'backoff' or 'relist'."""
        timeout = int(self.min_watch_timeout * (1.0 + self._rand()))
        opened, received = False, 0
        try:
            async with self.client.watch(
                    self.resource, self.namespace, resource_version=self.last_resource_version,
                    label_selector=self.label_selector, field_selector=self.field_selector,
                    timeout_seconds=timeout, allow_watch_bookmarks=True) as stream:
                opened = True
                self.stats.watches += 1
                log.debug("watching resource=%s rv=%s timeout=%ds", self.name,
                          self.last_resource_version, timeout)
                async for event_type, obj in stream:
                    received += 1
                    self._handle(event_type, obj)
        except errors.Gone as e:
            self.stats.relists_after_expired += 1
            log.info("watch expired resource=%s rv=%s (%s): relisting", self.name,
                     self.last_resource_version, e.message)
            return "relist"
        except errors.TransportError as e:
            self.stats.disconnects += 1
            if opened and received:
                log.info("watch broke resource=%s rv=%s error=%s: resuming", self.name,
                         self.last_resource_version, _brief(e))
                return "again"
            log.info("watch failed resource=%s rv=%s error=%s: backing off", self.name,
                     self.last_resource_version, _brief(e))
            return "backoff"
        except errors.ServerTimeout as e:
            if _too_large_rv(e):
                # The server is behind our resourceVersion (restored from a backup, or a
                # lagging replica): start over from what it has now.
                log.warning("watch rv=%s is newer than the server resource=%s: relisting at the "
                            "latest state", self.last_resource_version, self.name)
                self._last_rv_unavailable = True
                return "relist"
            log.info("watch refused resource=%s error=%s: backing off", self.name, _brief(e))
            return "backoff"
        except (errors.TooManyRequests, errors.ServiceUnavailable, errors.InternalError) as e:
            log.info("watch refused resource=%s error=%s: backing off", self.name, _brief(e))
            return "backoff"
        if received == 0:
            # A server that ends watches at once, with nothing in them, must not be
            # hammered; a normal timeout after a quiet period lands here too, rarely.
            log.debug("watch ended with no events resource=%s", self.name)
            return "backoff"
        return "again"

    def _handle(self, event_type: str, obj: Obj) -> None:
        rv = resource_version_of(obj)
        kind = obj.get("kind")
        if kind and kind != self.resource.kind:
            log.error("watch of %s delivered a %s; ignoring it", self.name, kind)
            return
        if event_type == "BOOKMARK":
            self.stats.bookmarks += 1
        else:
            self.stats.events += 1
            self.informer.apply(event_type, obj)
        if rv:
            self.last_resource_version = rv


def _too_large_rv(e: errors.ApiError) -> bool:
    causes = (e.details.get("causes") or []) if isinstance(e.details, dict) else []
    return "Too large resource version" in e.message or any(
        isinstance(c, dict) and c.get("reason") == "ResourceVersionTooLarge" for c in causes)


def _brief(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
