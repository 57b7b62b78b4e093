"""The watch cache behind `EtcdStorage`: kube-apiserver's Cacher, in memory, no I/O.

One etcd watch over the storage's whole prefix feeds it (`apply`); it keeps

* the **current state** of every key (a dict plus a sorted key list for prefix ranges)
  as of `state_rev`, which serves consistent lists once etcd's current revision is
  known to be applied (`caught_up` / `wait`);
* a bounded **history** of events (at most `max_history`, never at or below `floor`),
  from which every `Storage.watch` is served: a watch replays the history from its
  start revision, then receives live events. 100 API watchers cost one etcd watch;
* the watches themselves, which it ends with `CompactedError` (the API's 410) when the
  cache had to relist and with `WatchClosed` when one falls too far behind.

Revisions it tracks: `state_rev` (what the state reflects), `event_rev` (last event
received: the stream's resume point), `progress_rev` (last progress notification). On
start the state is loaded at the current revision while the stream replays older
history into the event log only, so `event_rev` may trail `state_rev` for a moment.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging

from svcnet.controlplane.storage.interface import (
    CompactedError, KeyValue, RangeResult, StorageError, Watch, WatchClosed, WatchEvent, prefix_end,
)

log = logging.getLogger(__name__)

MAX_WATCH_BACKLOG = 100_000


class WatchCache:
    """State, history and watches of one prefix; see the module docstring."""

    def __init__(self, max_history: int = 100_000) -> None:
        self.max_history = max_history
        self.keys: list[str] = []            # sorted
        self.kvs: dict[str, KeyValue] = {}
        self.state_rev = 0
        self.event_rev = 0
        self.progress_rev = 0
        self.floor = 0
        self.history: collections.deque[WatchEvent] = collections.deque()
        self.watchers: set[CacheWatch] = set()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._foreign: set[int] = set()      # our own revisions outside the prefix
        self.closed = False

    @property
    def delivered(self) -> int:
        """Every event up to here has reached the watches."""
        return max(self.event_rev, self.progress_rev)

    # -- loading and events ------------------------------------------------------------

    def load(self, kvs: list[KeyValue], revision: int, history_from: int, *, relist: bool) -> None:
        """Replace the state with a list taken at `revision`; the stream then resumes
        at `history_from` + 1. A relist (etcd compacted past the stream) ends every
        watch with CompactedError: they may have missed events, so their clients relist."""
        if relist:
            for w in list(self.watchers):
                w.shut(CompactedError(w.position + 1, revision))
            self.history.clear()
        self.kvs = {kv.key: kv for kv in kvs}
        self.keys = sorted(self.kvs)
        self.state_rev = revision
        self.event_rev = self.progress_rev = self.floor = history_from
        self._notify()

    def apply(self, events: list[WatchEvent]) -> None:
        """Events of one watch response, in revision order: update the state (events
        after the loaded revision), append to history and hand them to the watches."""
        seen_upto, state_upto = self.event_rev, self.state_rev
        batch: list[WatchEvent] = []
        for ev in events:
            if ev.revision <= seen_upto:
                continue  # a resumed stream starts after the last event; be sure anyway
            if ev.type == "DELETE" and ev.prev_kv is None and ev.key in self.kvs:
                ev = WatchEvent("DELETE", ev.key, ev.revision, None, self.kvs[ev.key])
            if ev.revision > state_upto:
                self._set(ev.key, ev.kv)
            batch.append(ev)
        if not batch:
            return
        last = batch[-1].revision
        self.event_rev = last
        self.state_rev = max(self.state_rev, last)
        self.progress_rev = max(self.progress_rev, last)
        self.history.extend(batch)
        while len(self.history) > self.max_history:
            self.raise_floor(self.history[0].revision)
        for w in list(self.watchers):
            w.push(batch)
        self._notify()

    def progress(self, revision: int) -> None:
        """A progress notification: nothing in the prefix changed up to `revision`."""
        if revision > self.progress_rev:
            self.progress_rev = revision
            for w in self.watchers:
                w.wake()

    def raise_floor(self, revision: int) -> None:
        """History at or below `revision` is gone (compacted, or over the bound)."""
        if revision <= self.floor:
            return
        self.floor = revision
        while self.history and self.history[0].revision <= revision:
            self.history.popleft()

    def skip_history(self, compacted: int) -> None:
        """The stream's start was compacted while the state is newer than that (the
        start-up replay): only history is lost. Watches still needing it end."""
        for w in list(self.watchers):
            if w.position < compacted:
                w.shut(CompactedError(w.position + 1, compacted))
        self.raise_floor(compacted)
        self.event_rev = max(self.event_rev, compacted)
        self.progress_rev = max(self.progress_rev, compacted)

    def _set(self, key: str, kv: KeyValue | None) -> None:
        if kv is None:
            if self.kvs.pop(key, None) is not None:
                del self.keys[bisect.bisect_left(self.keys, key)]
        else:
            if key not in self.kvs:
                bisect.insort(self.keys, key)
            self.kvs[key] = kv

    # -- consistent reads ------------------------------------------------------------------

    def note_foreign(self, revision: int) -> None:
        """`revision` was our own write outside the prefix: no event will come for it."""
        self._foreign.add(revision)
        if len(self._foreign) > 1024:
            self._foreign = {r for r in self._foreign if r > self.state_rev}
        self._notify()

    def caught_up(self, revision: int) -> bool:
        """The state reflects `revision`: applied, or every revision in between is one
        of our own writes outside the prefix (compaction bookkeeping)."""
        if self.state_rev >= revision:
            return True
        if revision - self.state_rev > 16:
            return False
        return all(r in self._foreign for r in range(self.state_rev + 1, revision + 1))

    async def wait(self, revision: int, timeout: float) -> bool:
        """Until the state reflects `revision` (from events, never from progress
        notifications: etcd 3.4.23 predates their ordering fix etcd#15220)."""
        if self.caught_up(revision):
            return True
        if self.closed or timeout <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        return self.caught_up(revision)

    def _notify(self) -> None:
        keep = []
        for rev, fut in self._waiters:
            if fut.done():
                continue
            if self.caught_up(rev):
                fut.set_result(None)
            else:
                keep.append((rev, fut))
        self._waiters = keep

    def range(self, prefix: str, start: str, limit: int) -> RangeResult:
        i = bisect.bisect_left(self.keys, max(start, prefix))
        j = bisect.bisect_left(self.keys, prefix_end(prefix))
        count = max(0, j - i)
        stop = j if limit <= 0 else min(j, i + limit)
        kvs = tuple(self.kvs[k] for k in self.keys[i:stop])
        return RangeResult(kvs, more=len(kvs) < count, count=count, revision=self.state_rev)

    # -- watches ---------------------------------------------------------------------------

    def watch(self, prefix: str, start: int) -> "CacheWatch":
        w = CacheWatch(self, prefix, start)
        if self.closed:
            w.shut(WatchClosed("storage closed"))
            return w
        if start - 1 < self.floor:
            w.shut(CompactedError(start, self.floor))
            return w
        replay = []
        for ev in reversed(self.history):
            if ev.revision < start:
                break
            if ev.key.startswith(prefix):
                replay.append(ev)
        replay.reverse()
        w.push(replay)
        self.watchers.add(w)
        return w

    def close(self) -> None:
        self.closed = True
        for w in list(self.watchers):
            w.shut(WatchClosed("storage closed"))
        self.watchers.clear()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()


class CacheWatch(Watch):
    """One `Storage.watch`: events from the cache's history, then live ones."""

    def __init__(self, cache: WatchCache, prefix: str, start: int) -> None:
        self.cache, self.prefix, self.start = cache, prefix, start
        self._queue: collections.deque[WatchEvent] = collections.deque()
        self._wake = asyncio.Event()
        self._error: StorageError | None = None
        self._last = start - 1

    @property
    def position(self) -> int:
        """The revision of the last event handed out (start − 1 before any)."""
        return self._last

    def push(self, events: list[WatchEvent]) -> None:
        if self._error is not None:
            return
        added = False
        for ev in events:
            if ev.revision >= self.start and ev.key.startswith(self.prefix):
                self._queue.append(ev)
                added = True
        if len(self._queue) > MAX_WATCH_BACKLOG:
            log.warning("closing watch prefix=%s: more than %d events behind", self.prefix,
                        MAX_WATCH_BACKLOG)
            self.shut(WatchClosed("watch fell behind"))
        if added:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def shut(self, error: StorageError) -> None:
        """End the watch: queued events are still handed out, then `error` is raised."""
        if self._error is None:
            self._error = error
        self.cache.watchers.discard(self)
        self._wake.set()

    def close(self) -> None:
        self.shut(WatchClosed("watch closed"))
        self._queue.clear()

    @property
    def progress_revision(self) -> int:
        if self._queue:
            return self._last
        return max(self._last, self.cache.delivered)

    async def next(self, timeout: float | None = None) -> WatchEvent | None:
        while True:
            if self._queue:
                ev = self._queue.popleft()
                self._last = ev.revision
                return ev
            if self._error is not None:
                raise self._error
            self._wake.clear()
            if timeout is None:
                await self._wake.wait()
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                return None
            if not self._queue and self._error is None:
                return None  # a progress notification: idle, so bookmarks may advance
