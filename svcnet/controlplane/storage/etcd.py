"""`Storage` on an etcd v3 cluster through its JSON gateway (aiohttp, no gRPC stack).

The mapping is kube-apiserver's (`pkg/storage/etcd3` + `pkg/storage/cacher`; see
docs `reference/etcd.md` and `kubectl-and-api.md` §7):

* **keys**: the registry's logical keys (`/registry/services/specs/default/web`) live
  under `--etcd-prefix`: the logical root (`/registry`) is replaced by the prefix, so the
  default prefix stores exactly kube's layout. Values are the registry's JSON bytes.
* **revisions**: an object's resourceVersion is its `mod_revision`; a list's is the
  revision the read was served at. etcd's store-wide revision plays the role of the
  SQLite store's counter, so resourceVersion semantics are the same on both backends.
* **writes** are etcd transactions: every `Compare` is `MOD(key) == rev` (0 = absent),
  the puts and deletes go in the success branch, and the failure branch reads every key
  involved so a lost race reports the current state (the registry's 409 / retry). A
  Service and its ClusterIP/NodePort allocation keys are one transaction, so two API
  servers on one etcd can never hand out the same value.
* **watch cache**: one etcd watch per storage over the whole prefix (`prev_kv`,
  `progress_notify`) feeds an in-memory copy of every key and a bounded history of
  events. All `Storage.watch` calls are served from it (100 API watchers cost one etcd
  watch); consistent ranges read etcd's current revision with a one-key request, wait
  until the cache has applied it and answer from memory (kube's consistent list from
  cache), falling back to an etcd range when the cache does not catch up in time
  (revisions written outside the prefix). Gets are linearizable etcd reads.
  The stream reconnects from the last event's revision + 1; if etcd compacted past it
  the cache relists and ends every watch with `CompactedError` (the API's 410), so
  clients relist too. On start the cache replays the history etcd still holds (down
  to the last compaction svcnet recorded), so watches resume across API server restarts.
* **compaction** is coordinated between API servers the way kube's compactor does it:
  a transaction on the version of `compact_rev_key<prefix>` decides who compacts; the
  registry calls `compact(rev)` every 5 minutes with the revision it saw 5 minutes
  before, so at least 5 minutes of history remain.
* **failures**: every request has a short timeout and moves on to the next endpoint
  (members are tried in turn; `Grpc-Metadata-hasleader` makes a member without a leader
  refuse at once instead of hanging for etcd's 7 s request timeout). When no member
  answers, calls fail within `deadline` seconds with `EtcdUnavailableError` (503) or
  `EtcdTimeoutError` (504); both are `APIError`s, so the HTTP layer answers with a
  Status without knowing about etcd. A write whose outcome is unknown (timeout after
  sending) is retried only when guarded by compares; if the retry's compares fail
  because the first attempt did land, the stored values are ours and it is reported as
  succeeded, so an acknowledged write is never reported twice or lost.

etcd 3.4.23 (Debian 12) predates the progress-notification fix etcd#15220 that
kube-apiserver requires (3.4.31) before it trusts progress notifications for consistent
reads; here they only advance bookmarks, never what a consistent read waits for.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.storage.interface import (
    CompactedError, Compare, Delete, FutureRevisionError, KeyValue, Op, Put, RangeResult, Storage,
    StorageError, TxnResult, Watch, WatchClosed, WatchEvent, prefix_end,
)

log = logging.getLogger(__name__)

Json = dict[str, Any]

DEFAULT_PREFIX = "/registry"
LOGICAL_ROOT = "/registry"
# gRPC metadata through the gateway: a member that has lost its leader answers at once
# with "no leader" (and cancels watches) instead of waiting out its request timeout.
_HEADERS = {"Grpc-Metadata-hasleader": "true", "Content-Type": "application/json"}
_LIST_PAGE = 500
MAX_WATCH_BACKLOG = 100_000

_GRPC_INVALID_ARGUMENT, _GRPC_DEADLINE, _GRPC_OUT_OF_RANGE, _GRPC_UNAVAILABLE = 3, 4, 11, 14


class EtcdUnavailableError(StorageError, APIError):
    """No etcd member could be reached: the API answers 503 (retry shortly)."""

    def __init__(self, detail: str) -> None:
        APIError.__init__(self, 503, "ServiceUnavailable",
                          f"storage is unavailable: etcd cluster is unreachable ({detail})",
                          {"retryAfterSeconds": 1})


class EtcdTimeoutError(StorageError, APIError):
    """etcd did not answer in time (no quorum, partition): 504, outcome maybe unknown."""

    def __init__(self, detail: str) -> None:
        APIError.__init__(self, 504, "Timeout",
                          f"Timeout: request did not complete within the allotted timeout: etcd: {detail}",
                          {"retryAfterSeconds": 1})


class _EtcdError(StorageError):
    """An error answer from etcd (gRPC code and message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd: {message} (code {code})")
        self.code, self.etcd_message = code, message


class _Compacted(Exception):
    def __init__(self, revision: int) -> None:
        super().__init__(f"watch start compacted at {revision}")
        self.revision = revision


def parse_etcd_url(url: str) -> list[str]:
    """`etcd://HOST:PORT[,HOST:PORT…]` → ["http://HOST:PORT", …] (IPv6 as [ADDR]:PORT).
    `http://` is accepted for etcd:// (and `etcds://`/`https://` give https URLs)."""
    scheme, sep, rest = url.partition("://")
    schemes = {"etcd": "http", "http": "http", "etcds": "https", "https": "https"}
    if not sep or scheme not in schemes:
        raise ValueError(f"invalid etcd storage {url!r}: want etcd://HOST:PORT[,HOST:PORT…]")
    out = []
    for part in rest.split(","):
        part = part.strip().rstrip("/")
        host, colon, port = part.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"invalid etcd endpoint {part!r} in {url!r}: want HOST:PORT")
        out.append(f"{schemes[scheme]}://{part}")
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _bytes_end(prefix: bytes) -> bytes:
    """etcd's range_end for a prefix: the prefix with its last byte incremented."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\x00"  # the whole keyspace


class EtcdStorage(Storage):
    """`Storage` on etcd; open with `await EtcdStorage.open(endpoints, prefix=...)`."""

    #: seconds a consistent read waits for the watch cache before reading etcd instead
    sync_timeout: float = 0.5
    #: seconds a write waits for its own event to reach the cache (read-your-writes)
    write_sync_timeout: float = 2.0
    #: seconds requests keep trying while no member has a leader (an election takes ~1 s)
    election_grace: float = 2.0

    def __init__(self, endpoints: Sequence[str], *, prefix: str = DEFAULT_PREFIX,
                 root: str = LOGICAL_ROOT, request_timeout: float = 2.0, deadline: float = 5.0,
                 max_history: int = 100_000, max_replay: int = 50_000) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if not prefix.startswith("/") or prefix.endswith("/") and prefix != "/":
            raise ValueError(f"invalid etcd prefix {prefix!r}: want /NAME (no trailing slash)")
        self.endpoints = [e if "://" in e else f"http://{e}" for e in endpoints]
        self.prefix = prefix.rstrip("/")
        self.root = root.rstrip("/")
        self.request_timeout, self.deadline = request_timeout, deadline
        self.max_history, self.max_replay = max_history, max_replay
        self._space = (self.prefix + "/").encode()           # every key of ours starts so
        self._space_end = _bytes_end(self._space)
        self._compact_key = f"compact_rev_key{self.prefix}".encode()
        self._session: aiohttp.ClientSession | None = None
        self._current = 0                                    # preferred endpoint index
        # watch cache
        self._keys: list[str] = []                           # sorted logical keys
        self._kvs: dict[str, KeyValue] = {}
        self._state_rev = 0          # the revision `_kvs` reflects
        self._event_rev = 0          # last event revision received (the resume point)
        self._progress_rev = 0       # ... or announced by a progress notification
        self._floor = 0              # no cache history at or below this revision
        self._history: collections.deque[WatchEvent] = collections.deque()
        self._watchers: set[_CacheWatch] = set()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._outside_rev = 0        # last write of ours outside the cached space
        self._foreign: set[int] = set()  # recent revisions of ours with no event in the space
        self._compact_version = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_resp: aiohttp.ClientResponse | None = None
        self._watch_up = False
        self._watch_index = 0        # the member the cache's watch uses
        self._last_kick = 0.0
        self._last_error = ""
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(cls, endpoints: str | Sequence[str], *, prefix: str = DEFAULT_PREFIX,
                   root: str = LOGICAL_ROOT, timeout: float = 30.0, **options: Any) -> "EtcdStorage":
        """Connect, load the cache and start the watch; retries until `timeout` while
        etcd is not reachable yet (an API server may start before its etcd).
        `endpoints`: `etcd://HOST:PORT,…` or a list of HOST:PORT."""
        if isinstance(endpoints, str):
            endpoints = parse_etcd_url(endpoints)
        store = cls(endpoints, prefix=prefix, root=root, **options)
        store._session = aiohttp.ClientSession(
            headers=_HEADERS, connector=aiohttp.TCPConnector(limit=256, force_close=False))
        deadline = time.monotonic() + timeout
        next_warning = 0.0
        try:
            while True:
                try:
                    await store._load(initial=True)
                    break
                except (EtcdUnavailableError, EtcdTimeoutError) as err:
                    if time.monotonic() > deadline:
                        raise
                    if time.monotonic() >= next_warning:
                        log.warning("etcd not ready yet, retrying for up to %.0fs: %s", timeout, err.message)
                        next_warning = time.monotonic() + 10
                    await asyncio.sleep(0.5)
        except BaseException:
            await store._session.close()
            raise
        store._watch_index = store._current
        store._watch_task = asyncio.create_task(store._watch_loop(), name="etcd-watch-cache")
        log.info("etcd storage opened endpoints=%s prefix=%s revision=%d history-from=%d",
                 ",".join(store.endpoints), store.prefix, store._state_rev, store._floor)
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except (asyncio.CancelledError, Exception):
                pass
        for w in list(self._watchers):
            w.shut(WatchClosed("storage closed"))
        self._watchers.clear()
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
        if self._session is not None:
            await self._session.close()

    # -- keys --------------------------------------------------------------------------

    def _cached(self, key_or_prefix: str) -> bool:
        """Whether a logical key or prefix lies in the cached space (under the root)."""
        return key_or_prefix.startswith(self.root + "/")

    def _ekey(self, key: str) -> bytes:
        """Logical key -> etcd key: the root becomes the prefix. Keys outside the root
        (tests, tools) are stored as they are and served without the cache."""
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
        """The etcd [key, range_end) of a logical prefix."""
        if self._cached(prefix) and len(prefix) == len(self.root) + 1:
            return self._space, self._space_end
        start = self._ekey(prefix) if prefix else b"\x00"
        return start, _bytes_end(start) if prefix else b"\x00"

    def _kv(self, d: Json) -> KeyValue:
        return KeyValue(self._lkey(_unb64(d.get("key"))), _unb64(d.get("value")),
                        int(d.get("create_revision", 0)), int(d.get("mod_revision", 0)),
                        int(d.get("version", 0)))

    # -- the client ----------------------------------------------------------------------

    async def _call(self, method: str, body: Json, *, guarded: bool = True) -> tuple[Json, bool]:
        """POST /v3/<method> to the first member that answers. Returns the response and
        whether an earlier attempt may have been applied (sent, then no answer).
        Unguarded writes are not re-sent after such an attempt."""
        if self._closed or self._session is None:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        data = json.dumps(body, separators=(",", ":"))
        n = len(self.endpoints)
        first = self._current % n
        started = loop.time()
        unknown = False
        refused: set[int] = set()      # members that refused the connection
        leaderless: set[int] = set()   # members that answered "no leader" (nothing applied)
        errors: list[str] = []
        for attempt in itertools.count():
            remaining = deadline - loop.time()
            if remaining <= 0.05:
                break
            index = (first + attempt) % n
            endpoint = self.endpoints[index]
            try:
                async with self._session.post(
                        f"{endpoint}/v3/{method}", data=data,
                        timeout=aiohttp.ClientTimeout(total=min(self.request_timeout, remaining))) as resp:
                    payload = json.loads(await resp.read() or b"{}")
                if resp.status == 200 and "error" not in payload:
                    self._current = index  # stay with a member that answers
                    self._last_error = ""
                    return payload, unknown
                code = int(payload.get("code", 2))
                message = str(payload.get("message") or payload.get("error") or resp.reason)
                if code not in (_GRPC_UNAVAILABLE, _GRPC_DEADLINE):
                    raise _EtcdError(code, message)
                errors.append(f"{endpoint}: {message}")
                refused.discard(index)
                if "no leader" in message:  # refused before proposing: not applied
                    leaderless.add(index)
                else:  # leader changed, request timed out: the write may still land
                    leaderless.discard(index)
                    unknown = unknown or method != "kv/range"
            except aiohttp.ClientConnectorError as err:
                errors.append(f"{endpoint}: {err.os_error or err}")
                refused.add(index)
                leaderless.discard(index)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError) as err:
                errors.append(f"{endpoint}: {type(err).__name__} {err}".strip())
                unknown = unknown or method != "kv/range"
                refused.discard(index)
                leaderless.discard(index)
            down = refused | leaderless
            if len(refused) == n or (len(down) == n and loop.time() - started > self.election_grace):
                break  # every member refused, or none has had a leader for longer than an election
            if unknown and not guarded:
                break
            (log.info if attempt == 0 else log.debug)(
                "etcd %s via %s failed (%s)%s; trying the next member", method, endpoint, errors[-1],
                ", outcome unknown" if unknown else "")
            if index == (first + n - 1) % n:
                await asyncio.sleep(0.05)  # a full round failed: let an election finish
        detail = "; ".join(errors[-n:]) or "no answer"
        self._last_error = detail
        if len(refused | leaderless) == n and not unknown:
            raise EtcdUnavailableError(detail)
        raise EtcdTimeoutError(detail)

    async def _range_call(self, body: Json) -> Json:
        try:
            return (await self._call("kv/range", body))[0]
        except _EtcdError as err:
            raise self._revision_error(err, int(body.get("revision", 0))) from None

    def _revision_error(self, err: _EtcdError, requested: int) -> StorageError:
        if err.code == _GRPC_OUT_OF_RANGE and "compacted" in err.etcd_message:
            return CompactedError(requested, max(self._floor, requested))
        if err.code == _GRPC_OUT_OF_RANGE and "future" in err.etcd_message:
            return FutureRevisionError(requested, self._state_rev)
        return err

    async def _etcd_revision(self) -> int:
        """etcd's current revision by a linearizable one-key read (needs quorum)."""
        payload = await self._range_call({"key": _b64(self._compact_key), "count_only": True})
        return int(payload["header"]["revision"])

    # -- reads ---------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return max(self._state_rev, self._progress_rev, self._outside_rev)

    @property
    def _delivered(self) -> int:
        """Every event of the cached space up to here has reached the watches (while the
        start-up replay runs this is below the loaded revision)."""
        return max(self._event_rev, self._progress_rev)

    @property
    def compact_revision(self) -> int:
        return self._floor

    @property
    def ready(self) -> bool:
        """Loaded, watching and the last request reached etcd."""
        return not self._closed and self._watch_up and not self._last_error

    @property
    def last_error(self) -> str:
        return self._last_error or ("" if self._watch_up else "watch is not connected")

    async def check(self) -> None:
        """Raise unless etcd answers a linearizable read now (kube's /readyz etcd check)."""
        await self._etcd_revision()

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        body: Json = {"key": _b64(self._ekey(key))}
        if revision:
            body["revision"] = revision
        payload = await self._range_call(body)
        kvs = payload.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    async def range(self, prefix: str, *, start: str = "", revision: int = 0,
                    limit: int = 0) -> RangeResult:
        start = max(start, prefix)
        if not self._cached(prefix):
            return await self._etcd_range(prefix, start, revision, limit)
        if revision == 0:
            current = await self._etcd_revision()
            if await self._wait_state(current, self.sync_timeout):
                return self._cache_range(prefix, start, limit)
            log.debug("watch cache at %d behind etcd %d: ranging etcd", self._state_rev, current)
            if self._watch_up and time.monotonic() - self._last_kick > 10:
                # Revisions written outside the prefix, or a stream that silently
                # stalled (a member cut off without a reset): a reconnect costs little.
                self._kick_watch()
        elif revision == self._state_rev:
            return self._cache_range(prefix, start, limit)
        return await self._etcd_range(prefix, start, revision, limit)

    def _cache_range(self, prefix: str, start: str, limit: int) -> RangeResult:
        i = bisect.bisect_left(self._keys, start)
        j = bisect.bisect_left(self._keys, prefix_end(prefix))
        count = max(0, j - i)
        stop = j if limit <= 0 else min(j, i + limit)
        kvs = tuple(self._kvs[k] for k in self._keys[i:stop])
        return RangeResult(kvs, more=len(kvs) < count, count=count, revision=self._state_rev)

    async def _etcd_range(self, prefix: str, start: str, revision: int, limit: int) -> RangeResult:
        first, end = self._erange(prefix)
        key = self._ekey(start) if start > prefix else first
        body: Json = {"key": _b64(key), "range_end": _b64(end)}
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
        success: list[Json] = []
        for op in ops:
            if isinstance(op, Put):
                success.append({"request_put": {"key": _b64(ekeys[op.key]), "value": _b64(op.value),
                                                "prev_kv": True}})
            else:
                success.append({"request_delete_range": {"key": _b64(ekeys[op.key]), "prev_kv": True}})
        involved = list(dict.fromkeys(ekeys))  # unique, in order
        body: Json = {
            "compare": [{"result": "EQUAL", "target": "MOD", "key": _b64(ekeys[c.key]),
                         "mod_revision": c.mod_revision} for c in compares],
            "success": success,
            "failure": [{"request_range": {"key": _b64(ekeys[k])}} for k in involved],
        }
        try:
            payload, unknown = await self._call("kv/txn", body, guarded=bool(compares))
        except _EtcdError as err:
            if err.code == _GRPC_INVALID_ARGUMENT:
                raise StorageError(err.etcd_message) from None
            raise
        revision = int(payload["header"]["revision"])
        if not payload.get("succeeded"):
            current: dict[str, KeyValue | None] = {k: None for k in involved}
            for r in payload.get("responses") or []:
                for d in (r.get("response_range") or {}).get("kvs") or []:
                    kv = self._kv(d)
                    current[kv.key] = kv
            if unknown:
                mine = self._landed(ops, current)
                if mine is not None:
                    log.info("txn outcome was unknown; it was applied at revision %d", mine.revision)
                    for op in ops:  # what each key held before our write (MVCC read)
                        try:
                            mine.prev[op.key] = await self.get(op.key, mine.revision - 1)
                        except CompactedError:
                            mine.prev[op.key] = None
                    if any(self._cached(op.key) for op in ops):
                        await self._wait_state(mine.revision, self.write_sync_timeout)
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
        if wrote and not any(self._cached(k) for k in keys):
            self._outside_rev = max(self._outside_rev, revision)
            self._note_foreign(revision)
        elif wrote and not await self._wait_state(revision, self.write_sync_timeout):
            log.warning("write at revision %d not seen on the watch in %.1fs: reconnecting the watch",
                        revision, self.write_sync_timeout)
            self._kick_watch()
        return TxnResult(True, revision, prev=prev, kvs=new)

    @staticmethod
    def _landed(ops: Sequence[Op], current: dict[str, KeyValue | None]) -> TxnResult | None:
        """When a re-sent txn fails its compares, did the first attempt land? Yes if every
        put key holds exactly our value, all at one revision, and every deleted key is gone."""
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
        if len(revs) > 1 or not puts:
            return None  # a delete-only txn cannot be told from someone else's delete
        rev = revs.pop()
        return TxnResult(True, rev, prev={op.key: None for op in ops},
                         kvs={op.key: current[op.key] for op in puts})  # type: ignore[misc]

    async def compact(self, revision: int) -> None:
        if revision <= self._floor:
            raise CompactedError(revision, self._floor)
        current = await self._etcd_revision()
        if revision > current:
            raise FutureRevisionError(revision, current)
        ck = _b64(self._compact_key)
        payload, _ = await self._call("kv/txn", {
            "compare": [{"result": "EQUAL", "target": "VERSION", "key": ck, "version": self._compact_version}],
            "success": [{"request_put": {"key": ck, "value": _b64(str(revision).encode())}}],
            "failure": [{"request_range": {"key": ck}}],
        })
        if payload.get("succeeded"):
            self._note_foreign(int(payload["header"]["revision"]))
            self._compact_version += 1
            try:
                await self._call("kv/compaction", {"revision": revision})
            except _EtcdError as err:
                if not (err.code == _GRPC_OUT_OF_RANGE and "compacted" in err.etcd_message):
                    raise
            compacted = revision
            log.info("compacted etcd at revision %d", revision)
        else:
            # Another API server compacted since we last looked: skip this round, as kube does.
            kvs = (payload["responses"][0].get("response_range") or {}).get("kvs") or [{}]
            self._compact_version = int(kvs[0].get("version", 0))
            compacted = int(_unb64(kvs[0].get("value")) or b"0")
            log.info("etcd compaction done by another API server at revision %d", compacted)
        self._raise_floor(compacted)

    def _raise_floor(self, revision: int) -> None:
        if revision <= self._floor:
            return
        self._floor = revision
        while self._history and self._history[0].revision <= revision:
            self._history.popleft()

    # -- the watch cache -------------------------------------------------------------------

    async def _load(self, initial: bool) -> None:
        """List the whole prefix at one revision into the cache. On the first load the
        stream then replays the history etcd still holds (down to the last recorded
        compaction) into the event history; after a compaction-forced relist history
        starts afresh and every open watch ends with CompactedError."""
        ck = await self._range_call({"key": _b64(self._compact_key)})
        compacted = 0
        for d in ck.get("kvs") or []:
            self._compact_version = int(d.get("version", 0))
            compacted = int(_unb64(d.get("value")) or b"0")
        keys: list[str] = []
        kvs: dict[str, KeyValue] = {}
        revision = 0
        start = self._space
        while True:
            body: Json = {"key": _b64(start), "range_end": _b64(self._space_end), "limit": _LIST_PAGE}
            if revision:
                body["revision"] = revision
            payload = await self._range_call(body)
            revision = revision or int(payload["header"]["revision"])
            page = [self._kv(d) for d in payload.get("kvs") or []]
            for kv in page:
                keys.append(kv.key)
                kvs[kv.key] = kv
            if not payload.get("more") or not page:
                break
            start = self._ekey(page[-1].key) + b"\x00"
        replay_from = max(compacted, revision - self.max_replay, 0) if initial else revision
        if not initial:
            for w in list(self._watchers):
                w.shut(CompactedError(w.position + 1, revision))
            self._history.clear()
        self._keys, self._kvs = keys, kvs
        self._state_rev = revision
        self._event_rev = self._progress_rev = replay_from
        self._floor = replay_from
        self._notify()
        log.info("watch cache loaded keys=%d revision=%d history-from=%d", len(keys), revision, replay_from)

    async def _watch_loop(self) -> None:
        backoff = 0.05
        while not self._closed:
            try:
                await self._watch_once()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except _Compacted as err:
                if err.revision <= self._state_rev:
                    self._skip_history(err.revision)
                    continue
                log.warning("etcd compacted past the watch cache (resume %d, compacted %d): relisting",
                            self._event_rev + 1, err.revision)
                try:
                    await self._load(initial=False)
                except StorageError as load_err:
                    log.warning("relist failed: %s", load_err)
                    # resume from before the hole so the next attempt relists again
            except (StorageError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as err:
                if self._watch_up or backoff <= 0.05:
                    log.warning("etcd watch interrupted at revision %d: %s", self._event_rev, err)
            finally:
                self._watch_up = False
                self._watch_resp = None
            self._watch_index += 1  # try the next member
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _stream(self, endpoint: str, key: bytes, end: bytes, start_revision: int
                      ) -> AsyncIterator[Json]:
        """One etcd watch over HTTP: the `result` objects of its newline-delimited JSON
        stream. Raises _Compacted when the start was compacted, StorageError when etcd
        cancels the watch or the stream ends."""
        assert self._session is not None
        body = {"create_request": {"key": _b64(key), "range_end": _b64(end),
                                   "start_revision": start_revision, "prev_kv": True,
                                   "progress_notify": True}}
        timeout = aiohttp.ClientTimeout(total=None, connect=self.request_timeout,
                                        sock_connect=self.request_timeout, sock_read=None)
        async with self._session.post(f"{endpoint}/v3/watch", json=body, timeout=timeout) as resp:
            if resp.status != 200:
                raise StorageError(f"watch refused: {resp.status} {(await resp.read())[:200]!r}")
            if key == self._space:
                self._watch_resp = resp
            buf = bytearray()
            async for chunk in resp.content.iter_any():
                buf += chunk
                start = 0
                while (nl := buf.find(b"\n", start)) >= 0:
                    line = bytes(buf[start:nl])
                    start = nl + 1
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        err = msg["error"]
                        raise StorageError(f"watch error: {err.get('message') if isinstance(err, dict) else err}")
                    r = msg.get("result") or {}
                    if r.get("canceled"):
                        compacted = int(r.get("compact_revision", 0))
                        if compacted:
                            raise _Compacted(compacted)
                        raise StorageError(f"watch canceled: {r.get('cancel_reason') or 'no reason given'}")
                    yield r
                del buf[:start]
        raise StorageError(f"watch stream from {endpoint} ended")

    async def _watch_once(self) -> None:
        endpoint = self.endpoints[self._watch_index % len(self.endpoints)]
        async for r in self._stream(endpoint, self._space, self._space_end, self._event_rev + 1):
            self._on_message(r, endpoint)

    def _skip_history(self, compacted: int) -> None:
        """The start-up replay hit etcd's compaction: the loaded state is still whole
        (it is newer), only history before `compacted` is gone. Watches that still
        needed some of it end with CompactedError; the stream resumes after it."""
        log.info("etcd history before revision %d is compacted: watch cache history starts there",
                 compacted)
        for w in list(self._watchers):
            if w.position < compacted:
                w.shut(CompactedError(w.position + 1, compacted))
        self._raise_floor(compacted)
        self._event_rev = max(self._event_rev, compacted)
        self._progress_rev = max(self._progress_rev, compacted)

    def _kick_watch(self) -> None:
        self._last_kick = time.monotonic()
        if self._watch_resp is not None:
            self._watch_resp.close()

    def _on_message(self, r: Json, endpoint: str) -> None:
        if r.get("created"):
            self._watch_up = True
            self._last_error = ""
            log.info("etcd watch open endpoint=%s from revision %d", endpoint, self._event_rev + 1)
            return
        events = r.get("events") or []
        if not events:  # a progress notification: nothing of ours changed up to here
            rev = int((r.get("header") or {}).get("revision", 0))
            if rev > self._progress_rev:
                self._progress_rev = rev
                for w in self._watchers:
                    w.wake()
            return
        self._apply(events)

    def _apply(self, events: list[Json]) -> None:
        """One watch response: update the cache state (for revisions after the loaded
        one), append to history and hand every event to the watches of its prefix."""
        seen_upto, state_upto = self._event_rev, self._state_rev
        batch: list[WatchEvent] = []
        for e in events:
            raw = e.get("kv") or {}
            rev = int(raw.get("mod_revision", 0))
            if rev <= seen_upto:
                continue  # already had it (a reconnect never re-sends, but be sure)
            key = self._lkey(_unb64(raw.get("key")))
            prev_d = e.get("prev_kv")
            prev = self._kv(prev_d) if prev_d else None
            if e.get("type") == "DELETE":
                ev = WatchEvent("DELETE", key, rev, None, prev or self._kvs.get(key))
            else:
                ev = WatchEvent("PUT", key, rev, self._kv(raw), prev)
            if rev > state_upto:
                self._set(key, ev.kv)
            batch.append(ev)
        if not batch:
            return
        last = batch[-1].revision
        self._event_rev = last
        self._state_rev = max(self._state_rev, last)
        self._progress_rev = max(self._progress_rev, last)
        self._history.extend(batch)
        while len(self._history) > self.max_history:
            self._raise_floor(self._history[0].revision)
        for w in list(self._watchers):
            w.push(batch)
        self._notify()

    def _set(self, key: str, kv: KeyValue | None) -> None:
        if kv is None:
            if self._kvs.pop(key, None) is not None:
                i = bisect.bisect_left(self._keys, key)
                del self._keys[i]
        else:
            if key not in self._kvs:
                bisect.insort(self._keys, key)
            self._kvs[key] = kv

    def _notify(self) -> None:
        keep = []
        for rev, fut in self._waiters:
            if fut.done():
                continue
            if self._caught_up(rev):
                fut.set_result(None)
            else:
                keep.append((rev, fut))
        self._waiters = keep

    def _note_foreign(self, revision: int) -> None:
        self._foreign.add(revision)
        if len(self._foreign) > 1024:
            self._foreign = {r for r in self._foreign if r > self._state_rev}

    def _caught_up(self, revision: int) -> bool:
        """The cache reflects `revision`: it has applied it, or every revision in between
        is one of our own writes outside the cached space (compaction bookkeeping)."""
        if self._state_rev >= revision:
            return True
        return all(r in self._foreign for r in range(self._state_rev + 1, revision + 1)) \
            if revision - self._state_rev <= 16 else False

    async def _wait_state(self, revision: int, timeout: float) -> bool:
        """Until the cache state reflects `revision` (from events, not progress)."""
        return await self._wait(revision, timeout, lambda: self._caught_up(revision))

    async def _wait(self, revision: int, timeout: float, done: Any) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._closed:
                return False
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((revision, fut))
            try:
                await asyncio.wait_for(asyncio.shield(fut), remaining)
            except asyncio.TimeoutError:
                return done()  # type: ignore[no-any-return]
            except asyncio.CancelledError:
                if self._closed:
                    return False
                raise
            # woken by a state change; the loop re-checks (event_rev may lag state_rev)
            if not done():
                await asyncio.sleep(0.005)
        return True

    def watch(self, prefix: str, start_revision: int = 0) -> Watch:
        if self._closed:
            raise StorageError("storage is closed")
        start = start_revision or self.revision + 1
        if not self._cached(prefix):
            return _DirectWatch(self, prefix, start)
        w = _CacheWatch(self, prefix, start)
        if start - 1 < self._floor:
            w.shut(CompactedError(start, self._floor))
            return w
        replay = []
        for ev in reversed(self._history):
            if ev.revision < start:
                break
            if ev.key.startswith(prefix):
                replay.append(ev)
        replay.reverse()
        w.push(replay)
        self._watchers.add(w)
        return w


class _CacheWatch(Watch):
    """One `Storage.watch`: events from the cache's history, then live ones."""

    def __init__(self, store: EtcdStorage, prefix: str, start: int) -> None:
        self.store, self.prefix, self.start = store, prefix, start
        self._queue: collections.deque[WatchEvent] = collections.deque()
        self._wake = asyncio.Event()
        self._error: StorageError | None = None
        self._last = start - 1

    @property
    def position(self) -> int:
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
        if self._error is None:
            self._error = error
        self.store._watchers.discard(self)
        self._wake.set()

    def close(self) -> None:
        self.shut(WatchClosed("watch closed"))

    @property
    def progress_revision(self) -> int:
        if self._queue:
            return self._last
        return max(self._last, self.store._delivered)

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
                return None  # a progress notification: report idle so bookmarks advance


class _DirectWatch(Watch):
    """A watch on keys outside the cached space: its own etcd watch stream, resumed
    from the last revision + 1 when the connection breaks."""

    def __init__(self, store: EtcdStorage, prefix: str, start: int) -> None:
        self.store, self.prefix = store, prefix
        # None marks a progress notification (an idle moment for bookmarks)
        self._queue: asyncio.Queue[WatchEvent | StorageError | None] = asyncio.Queue()
        start = start or store.revision + 1
        self._last = start - 1
        self._next_start = start
        self._progress = self._last
        self._error: StorageError | None = None
        self._task = asyncio.create_task(self._run(), name=f"etcd-watch {prefix}")

    async def _run(self) -> None:
        store = self.store
        key, end = store._erange(self.prefix)
        backoff = 0.05
        while not store._closed:
            endpoint = store.endpoints[store._current % len(store.endpoints)]
            try:
                async for r in store._stream(endpoint, key, end, self._next_start):
                    backoff = 0.05
                    events = r.get("events") or []
                    if not events and not r.get("created"):
                        self._progress = max(self._progress, int((r.get("header") or {}).get("revision", 0)))
                        self._queue.put_nowait(None)
                    for e in events:
                        raw = e.get("kv") or {}
                        rev = int(raw.get("mod_revision", 0))
                        k = store._lkey(_unb64(raw.get("key")))
                        prev = store._kv(e["prev_kv"]) if e.get("prev_kv") else None
                        ev = (WatchEvent("DELETE", k, rev, None, prev) if e.get("type") == "DELETE"
                              else WatchEvent("PUT", k, rev, store._kv(raw), prev))
                        self._next_start = rev + 1
                        self._queue.put_nowait(ev)
            except asyncio.CancelledError:
                raise
            except _Compacted as err:
                self._queue.put_nowait(CompactedError(self._next_start, err.revision))
                return
            except (StorageError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as err:
                log.debug("direct watch %s interrupted: %s", self.prefix, err)
            store._current += 1
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
