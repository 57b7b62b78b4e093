"""`Storage` on an etcd v3 cluster through its JSON gateway (aiohttp, no gRPC stack).

The mapping is kube-apiserver's (`pkg/storage/etcd3` + `pkg/storage/cacher`; see
docs `reference/etcd.md` and `kubectl-and-api.md` §7):

* **keys**: the registry's logical keys (`/registry/services/specs/default/web`) live
  under `--etcd-prefix`: the logical root (`/registry`) is replaced by the prefix, so the
  default prefix stores exactly kube's layout. Values are the registry's JSON bytes.
  Keys outside the root (tests, tools) are stored as given and served without cache.
* **revisions**: an object's resourceVersion is its `mod_revision`; a list's is the
  revision the read was served at. etcd's store-wide revision plays the role of the
  SQLite store's counter, so resourceVersion semantics are the same on both backends.
* **writes** are etcd transactions: every `Compare` is `MOD(key) == rev` (0 = absent),
  the puts and deletes go in the success branch, and the failure branch reads every key
  involved so a lost race reports the current state (the registry's 409 / retry). A
  Service and its ClusterIP/NodePort allocation keys are one transaction, so two API
  servers on one etcd can never hand out the same value. A write returns once its own
  event has reached the watch cache (read-your-writes for lists and watches).
* **watch cache** (`etcd_cache.WatchCache`): one etcd watch per storage over the whole
  prefix (`prev_kv`, `progress_notify`) feeds the cache that serves every
  `Storage.watch`; consistent ranges read etcd's current revision with a one-key
  request, wait until the cache has applied it and answer from memory (kube's
  consistent list from cache), falling back to an etcd range when it does not catch up
  in time (revisions written outside the prefix). Gets are linearizable etcd reads.
  The stream resumes from the last event's revision + 1; if etcd compacted past it the
  cache relists and ends every watch with `CompactedError` (the API's 410) so clients
  relist too. On start the stream replays the history etcd still holds (down to the
  last compaction svcnet recorded), so watches resume across API server restarts.
* **compaction** is coordinated between API servers as kube's compactor does it: a
  transaction on the version of `compact_rev_key<prefix>` decides who compacts; the
  registry calls `compact(rev)` every 5 minutes with the revision it saw 5 minutes
  before, so at least 5 minutes of history remain.
* **failures** (`etcd_client.EtcdClient`): short per-request timeouts, failover across
  members, immediate 503 when no member can serve, 504 after `deadline` otherwise. A
  guarded write whose first answer was lost is re-sent; if the re-sent compares fail
  because the first attempt landed (our exact values, at one revision), it is reported
  as the success it was, so an acknowledged write is never lost or reported twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from svcnet.common.tasks import cancel_and_wait
from svcnet.controlplane.storage import DEFAULT_ETCD_PREFIX, check_etcd_prefix
from svcnet.controlplane.storage.etcd_cache import WatchCache
from svcnet.controlplane.storage.etcd_client import (
    GRPC_INVALID_ARGUMENT, GRPC_OUT_OF_RANGE, EtcdClient, EtcdError, EtcdTimeoutError, EtcdUnavailableError,
    Json, WatchCompacted, b64, bytes_end, parse_etcd_url, unb64,
)
from svcnet.controlplane.storage.interface import (
    REGISTRY_ROOT, CompactedError, Compare, FutureRevisionError, KeyValue, Op, Put, RangeResult, Storage,
    StorageError, TxnResult, Watch, WatchClosed, WatchEvent,
)

__all__ = ["EtcdStorage", "EtcdTimeoutError", "EtcdUnavailableError", "parse_etcd_url"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = DEFAULT_ETCD_PREFIX
LOGICAL_ROOT = REGISTRY_ROOT  # where the registry's keys start, whatever the etcd prefix
_LIST_PAGE = 500


class EtcdStorage(Storage):
    """`Storage` on etcd; open with `await EtcdStorage.open("etcd://HOST:PORT,…", prefix=…)`."""

    check_name = "etcd"  # kube-apiserver's name for the same check

    #: seconds a consistent read waits for the watch cache before reading etcd instead
    sync_timeout: float = 0.5
    #: seconds a write waits for its own event to reach the cache (read-your-writes)
    write_sync_timeout: float = 2.0

    def __init__(self, endpoints: Sequence[str], *, prefix: str = DEFAULT_PREFIX,
                 root: str = LOGICAL_ROOT, request_timeout: float = 2.0, deadline: float = 5.0,
                 max_history: int = 100_000, max_replay: int = 50_000) -> None:
        check_etcd_prefix(prefix)
        self.client = EtcdClient(endpoints, request_timeout=request_timeout, deadline=deadline)
        self.prefix, self.root = prefix, root.rstrip("/")
        self.max_replay = max_replay
        self._space = (self.prefix + "/").encode()   # every cached key starts so
        self._space_end = bytes_end(self._space)
        self._compact_key = f"compact_rev_key{self.prefix}".encode()
        self._compact_version = 0
        self.cache = WatchCache(max_history)
        self._outside_rev = 0        # our last write outside the cached space
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_resp: aiohttp.ClientResponse | None = None
        self._watch_up = False
        self._watch_index = 0        # the member the cache's watch uses
        self._last_kick = 0.0
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        return self.client.endpoints

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(cls, endpoints: str | Sequence[str], *, prefix: str = DEFAULT_PREFIX,
                   root: str = LOGICAL_ROOT, timeout: float = 30.0, **options: Any) -> "EtcdStorage":
        """Connect, load the cache and start its watch; retries for `timeout` seconds
        while etcd is not reachable yet (an API server may start before its etcd).
        `endpoints`: `etcd://HOST:PORT,…` or a list of HOST:PORT."""
        if isinstance(endpoints, str):
            endpoints = parse_etcd_url(endpoints)
        store = cls(endpoints, prefix=prefix, root=root, **options)
        store.client.open()
        deadline = time.monotonic() + timeout
        next_warning = 0.0
        try:
            while True:
                try:
                    await store._load(relist=False)
                    break
                except (EtcdUnavailableError, EtcdTimeoutError) as err:
                    if time.monotonic() > deadline:
                        raise
                    if time.monotonic() >= next_warning:
                        log.warning("etcd not ready yet, retrying for up to %.0fs: %s", timeout, err.message)
                        next_warning = time.monotonic() + 10
                    await asyncio.sleep(0.5)
        except BaseException:
            await store.client.close()
            raise
        store._watch_index = store.client.current
        store._watch_task = asyncio.create_task(store._watch_loop(), name="etcd-watch-cache")
        log.info("etcd storage opened endpoints=%s prefix=%s revision=%d history-from=%d",
                 ",".join(store.endpoints), store.prefix, store.cache.state_rev, store.cache.floor)
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._watch_task)
        self.cache.close()
        await self.client.close()

    # -- keys --------------------------------------------------------------------------

    def _cached(self, key_or_prefix: str) -> bool:
        """Whether a logical key or prefix lies in the cached space (under the root)."""
        return key_or_prefix.startswith(self.root + "/")

    def _ekey(self, key: str) -> bytes:
        """Logical key -> etcd key: the root becomes the prefix."""
        if self._cached(key):
            return (self.prefix + key[len(self.root):]).encode()
        raw = key.encode()
        if raw.startswith(self._space):
            raise StorageError(f"key {key!r} collides with the etcd prefix {self.prefix}/")
        return raw

    def _lkey(self, ekey: bytes) -> str:
        if ekey.startswith(self._space):
            return self.root + ekey.decode()[len(self.prefix):]
        return ekey.decode()

    def _erange(self, prefix: str) -> tuple[bytes, bytes]:
        """The etcd [key, range_end) of a logical prefix ("" = every key)."""
        if not prefix:
            return b"\x00", b"\x00"
        start = self._ekey(prefix)
        return start, bytes_end(start)

    def _kv(self, d: Json) -> KeyValue:
        return KeyValue(self._lkey(unb64(d.get("key"))), unb64(d.get("value")),
                        int(d.get("create_revision", 0)), int(d.get("mod_revision", 0)),
                        int(d.get("version", 0)))

    def _event(self, e: Json) -> WatchEvent:
        raw = e.get("kv") or {}
        prev = self._kv(e["prev_kv"]) if e.get("prev_kv") else None
        key, rev = self._lkey(unb64(raw.get("key"))), int(raw.get("mod_revision", 0))
        if e.get("type") == "DELETE":
            return WatchEvent("DELETE", key, rev, None, prev)
        return WatchEvent("PUT", key, rev, self._kv(raw), prev)

    # -- reads ---------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return max(self.cache.state_rev, self.cache.progress_rev, self._outside_rev)

    @property
    def compact_revision(self) -> int:
        return self.cache.floor

    @property
    def ready(self) -> bool:
        """Watching, and the last request reached etcd (for /readyz)."""
        return not self._closed and self._watch_up and not self.client.last_error

    @property
    def last_error(self) -> str:
        return self.client.last_error or ("" if self._watch_up else "watch is not connected")

    async def check(self) -> None:
        """Raise unless etcd answers a linearizable read now (kube's /readyz etcd check)."""
        await self._etcd_revision()

    async def _range_call(self, body: Json) -> Json:
        try:
            return (await self.client.call("kv/range", body))[0]
        except EtcdError as err:
            requested = int(body.get("revision", 0))
            if err.code == GRPC_OUT_OF_RANGE and "compacted" in err.etcd_message:
                raise CompactedError(requested, max(self.cache.floor, requested)) from None
            if err.code == GRPC_OUT_OF_RANGE and "future" in err.etcd_message:
                raise FutureRevisionError(requested, self.revision) from None
            raise

    async def _etcd_revision(self) -> int:
        """etcd's current revision by a linearizable one-key read (needs quorum)."""
        payload = await self._range_call({"key": b64(self._compact_key), "count_only": True})
        return int(payload["header"]["revision"])

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        body: Json = {"key": b64(self._ekey(key))}
        if revision:
            body["revision"] = revision
        kvs = (await self._range_call(body)).get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    async def range(self, prefix: str, *, start: str = "", revision: int = 0,
                    limit: int = 0) -> RangeResult:
        start = max(start, prefix)
        if not self._cached(prefix):
            return await self._etcd_range(prefix, start, revision, limit)
        if revision == 0:
            current = await self._etcd_revision()
            if await self.cache.wait(current, self.sync_timeout):
                return self.cache.range(prefix, start, limit)
            log.debug("watch cache at %d behind etcd %d: ranging etcd", self.cache.state_rev, current)
            if self._watch_up and time.monotonic() - self._last_kick > 10:
                # Revisions written outside the prefix, or a stream that silently
                # stalled (a member cut off without a reset): a reconnect costs little.
                self._kick_watch()
        elif revision == self.cache.state_rev:
            return self.cache.range(prefix, start, limit)
        return await self._etcd_range(prefix, start, revision, limit)

    async def _etcd_range(self, prefix: str, start: str, revision: int, limit: int) -> RangeResult:
        first, end = self._erange(prefix)
        body: Json = {"key": b64(self._ekey(start) if start > prefix else first), "range_end": b64(end)}
        if revision:
            body["revision"] = revision
        if limit > 0:
            body["limit"] = limit
        payload = await self._range_call(body)
        kvs = tuple(self._kv(d) for d in payload.get("kvs") or [])
        return RangeResult(kvs, more=bool(payload.get("more")), count=int(payload.get("count", 0)),
                           revision=revision or int(payload["header"]["revision"]))

    # -- writes --------------------------------------------------------------------------

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        keys = [op.key for op in ops]
        if len(set(keys)) != len(keys):
            raise StorageError("duplicate key given in txn request")
        ekeys = {k: self._ekey(k) for k in [*(c.key for c in compares), *keys]}
        success = [
            {"request_put": {"key": b64(ekeys[op.key]), "value": b64(op.value), "prev_kv": True}}
            if isinstance(op, Put) else
            {"request_delete_range": {"key": b64(ekeys[op.key]), "prev_kv": True}}
            for op in ops]
        body: Json = {
            "compare": [{"result": "EQUAL", "target": "MOD", "key": b64(ekeys[c.key]),
                         "mod_revision": c.mod_revision} for c in compares],
            "success": success,
            "failure": [{"request_range": {"key": b64(e)}} for e in dict.fromkeys(ekeys.values())],
        }
        try:
            payload, unknown = await self.client.call("kv/txn", body, guarded=bool(compares))
        except EtcdError as err:
            if err.code == GRPC_INVALID_ARGUMENT:
                raise StorageError(err.etcd_message) from None
            raise
        revision = int(payload["header"]["revision"])
        if not payload.get("succeeded"):
            current: dict[str, KeyValue | None] = {k: None for k in ekeys}
            for r in payload.get("responses") or []:
                for d in (r.get("response_range") or {}).get("kvs") or []:
                    kv = self._kv(d)
                    current[kv.key] = kv
            if unknown:
                mine = await self._landed(ops, current)
                if mine is not None:
                    return mine
            return TxnResult(False, revision, current={c.key: current.get(c.key) for c in compares})
        prev: dict[str, KeyValue | None] = {}
        new: dict[str, KeyValue] = {}
        wrote = False
        for op, r in zip(ops, payload.get("responses") or []):
            if isinstance(op, Put):
                old_d = (r.get("response_put") or {}).get("prev_kv")
                old = self._kv(old_d) if old_d else None
                new[op.key] = KeyValue(op.key, op.value, old.create_revision if old else revision,
                                       revision, old.version + 1 if old else 1)
                wrote = True
            else:
                gone = (r.get("response_delete_range") or {}).get("prev_kvs") or []
                old = self._kv(gone[0]) if gone else None
                wrote = wrote or old is not None
            prev[op.key] = old
        if wrote:
            await self._settle(revision, keys)
        return TxnResult(True, revision, prev=prev, kvs=new)

    async def _settle(self, revision: int, keys: Sequence[str]) -> None:
        """Return only once the cache holds our write (or know that it never will)."""
        if not any(self._cached(k) for k in keys):
            self._outside_rev = max(self._outside_rev, revision)
            self.cache.note_foreign(revision)
        elif not await self.cache.wait(revision, self.write_sync_timeout):
            log.warning("write at revision %d not seen on the watch in %.1fs: reconnecting the watch",
                        revision, self.write_sync_timeout)
            self._kick_watch()

    async def _landed(self, ops: Sequence[Op], current: dict[str, KeyValue | None]) -> TxnResult | None:
        """A re-sent txn failed its compares: did the first attempt land? Yes if every
        put key holds exactly our value, all at one revision, and every deleted key is
        gone (a delete-only txn cannot be told from someone else's delete: it is not)."""
        puts = [op for op in ops if isinstance(op, Put)]
        revs = set()
        for op in ops:
            kv = current.get(op.key)
            if isinstance(op, Put):
                if kv is None or kv.value != op.value:
                    return None
                revs.add(kv.mod_revision)
            elif kv is not None:
                return None
        if len(revs) != 1 or not puts:
            return None
        rev = revs.pop()
        log.info("txn outcome was unknown; it was applied at revision %d", rev)
        prev: dict[str, KeyValue | None] = {}
        for op in ops:  # what each key held before our write (MVCC read)
            try:
                prev[op.key] = await self.get(op.key, rev - 1)
            except CompactedError:
                prev[op.key] = None
        await self._settle(rev, [op.key for op in ops])
        return TxnResult(True, rev, prev=prev, kvs={op.key: current[op.key] for op in puts})  # type: ignore[misc]

    async def compact(self, revision: int) -> None:
        if revision <= self.cache.floor:
            raise CompactedError(revision, self.cache.floor)
        current = await self._etcd_revision()
        if revision > current:
            raise FutureRevisionError(revision, current)
        ck = b64(self._compact_key)
        payload, _ = await self.client.call("kv/txn", {
            "compare": [{"result": "EQUAL", "target": "VERSION", "key": ck, "version": self._compact_version}],
            "success": [{"request_put": {"key": ck, "value": b64(str(revision).encode())}}],
            "failure": [{"request_range": {"key": ck}}],
        })
        if payload.get("succeeded"):
            self.cache.note_foreign(int(payload["header"]["revision"]))
            self._compact_version += 1
            try:
                await self.client.call("kv/compaction", {"revision": revision})
            except EtcdError as err:
                if not (err.code == GRPC_OUT_OF_RANGE and "compacted" in err.etcd_message):
                    raise
            compacted = revision
            log.info("compacted etcd at revision %d", revision)
        else:
            # Another API server compacted since we last looked: skip this round, as kube does.
            kvs = (payload["responses"][0].get("response_range") or {}).get("kvs") or [{}]
            self._compact_version = int(kvs[0].get("version", 0))
            compacted = int(unb64(kvs[0].get("value")) or b"0")
            log.info("etcd compaction done by another API server at revision %d", compacted)
        self.cache.raise_floor(compacted)

    # -- the watch cache's feed -----------------------------------------------------------

    async def _load(self, relist: bool) -> None:
        """List the whole prefix at one revision into the cache. On the first load the
        stream then replays the history etcd still holds (down to the last compaction
        recorded under the compaction key) into the cache's event history."""
        ck = await self._range_call({"key": b64(self._compact_key)})
        compacted = 0
        for d in ck.get("kvs") or []:
            self._compact_version = int(d.get("version", 0))
            compacted = int(unb64(d.get("value")) or b"0")
        kvs: list[KeyValue] = []
        revision = 0
        start = self._space
        while True:
            body: Json = {"key": b64(start), "range_end": b64(self._space_end), "limit": _LIST_PAGE}
            if revision:
                body["revision"] = revision
            payload = await self._range_call(body)
            revision = revision or int(payload["header"]["revision"])
            page = [self._kv(d) for d in payload.get("kvs") or []]
            kvs += page
            if not payload.get("more") or not page:
                break
            start = self._ekey(page[-1].key) + b"\x00"
        history_from = revision if relist else max(compacted, revision - self.max_replay, 0)
        self.cache.load(kvs, revision, history_from, relist=relist)
        log.info("watch cache loaded keys=%d revision=%d history-from=%d", len(kvs), revision, history_from)

    async def _watch_loop(self) -> None:
        backoff = 0.05
        while not self._closed:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except WatchCompacted as err:
                if err.revision <= self.cache.state_rev:
                    log.info("etcd history before revision %d is compacted: cache history starts there",
                             err.revision)
                    self.cache.skip_history(err.revision)
                    continue
                log.warning("etcd compacted past the watch cache (resume %d, compacted %d): relisting",
                            self.cache.event_rev + 1, err.revision)
                try:
                    await self._load(relist=True)
                    backoff = 0.05
                except StorageError as load_err:
                    log.warning("relist failed, retrying: %s", load_err)
            except (StorageError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as err:
                if self._watch_up or backoff <= 0.05:
                    log.warning("etcd watch interrupted at revision %d: %s", self.cache.event_rev, err)
                if self._watch_up:
                    backoff = 0.05
            finally:
                self._watch_up = False
                self._watch_resp = None
            self._watch_index += 1  # try the next member
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _watch_once(self) -> None:
        endpoint = self.endpoints[self._watch_index % len(self.endpoints)]
        create = {"key": b64(self._space), "range_end": b64(self._space_end),
                  "start_revision": self.cache.event_rev + 1, "prev_kv": True, "progress_notify": True}

        def opened(resp: aiohttp.ClientResponse) -> None:
            self._watch_resp = resp

        async for r in self.client.stream(endpoint, create, opened):
            if r.get("created"):
                self._watch_up = True
                log.info("etcd watch open endpoint=%s from revision %d", endpoint, self.cache.event_rev + 1)
            elif r.get("events"):
                self.cache.apply([self._event(e) for e in r["events"]])
            else:  # a progress notification: nothing of ours changed up to here
                self.cache.progress(int((r.get("header") or {}).get("revision", 0)))

    def _kick_watch(self) -> None:
        self._last_kick = time.monotonic()
        if self._watch_resp is not None:
            self._watch_resp.close()

    def watch(self, prefix: str, start_revision: int = 0) -> Watch:
        if self._closed:
            raise StorageError("storage is closed")
        start = start_revision or self.revision + 1
        if not self._cached(prefix):
            return _DirectWatch(self, prefix, start)
        return self.cache.watch(prefix, start)


class _DirectWatch(Watch):
    """A watch on keys outside the cached space: its own etcd watch stream, resumed
    from the last revision + 1 when the connection breaks."""

    def __init__(self, store: EtcdStorage, prefix: str, start: int) -> None:
        self.store, self.prefix = store, prefix
        # None marks a progress notification (an idle moment for bookmarks)
        self._queue: asyncio.Queue[WatchEvent | StorageError | None] = asyncio.Queue()
        self._last = start - 1
        self._next_start = start
        self._progress = self._last
        self._error: StorageError | None = None
        self._task = asyncio.create_task(self._run(), name=f"etcd-watch {prefix}")

    async def _run(self) -> None:
        store = self.store
        key, end = store._erange(self.prefix)
        backoff = 0.05
        index = store.client.current
        while not store._closed:
            endpoint = store.endpoints[index % len(store.endpoints)]
            create = {"key": b64(key), "range_end": b64(end), "start_revision": self._next_start,
                      "prev_kv": True, "progress_notify": True}
            try:
                async for r in store.client.stream(endpoint, create):
                    backoff = 0.05
                    events = r.get("events") or []
                    if not events and not r.get("created"):
                        self._progress = max(self._progress, int((r.get("header") or {}).get("revision", 0)))
                        self._queue.put_nowait(None)
                    for e in events:
                        ev = store._event(e)
                        self._next_start = ev.revision + 1
                        self._queue.put_nowait(ev)
            except asyncio.CancelledError:
                raise
            except WatchCompacted as err:
                self._queue.put_nowait(CompactedError(self._next_start, err.revision))
                return
            except (StorageError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as err:
                log.debug("direct watch %s interrupted: %s", self.prefix, err)
            index += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        self._queue.put_nowait(WatchClosed("storage closed"))

    @property
    def progress_revision(self) -> int:
        return max(self._last, self._progress) if self._queue.empty() else self._last

    async def next(self, timeout: float | None = None) -> WatchEvent | None:
        if self._error is not None:
            raise self._error
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if item is None:
            return None
        if isinstance(item, StorageError):
            self._error = item
            self._task.cancel()
            raise item
        self._last = item.revision
        return item

    def close(self) -> None:
        self._task.cancel()
        if self._error is None:
            self._error = WatchClosed("watch closed")
