"""The storage contract on a real etcd cluster, through etcd's v3 JSON gateway.

Why the gateway and not gRPC: it needs nothing beyond aiohttp, and it did everything
svcnet needs in the measurements of `reference/etcd.md` (range, txn, watch with
prev_kv and progress notifications, compaction). What it costs: one HTTP stream per
watch, fixed at creation (etcd 3.4's gateway is not full duplex), so each `Watch` here
is its own `POST /v3/watch`.

The mapping is direct (`reference/etcd.md` §3-§4): keys and values are base64 in
JSON, int64s are strings and proto3 defaults are omitted; compare-and-swap is a txn
on `MOD` (`mod_revision` 0 means absent); the failure branch ranges the compared keys
so a failed txn reports their current state; watches start at `start_revision`
(inclusive) with `prev_kv`, and a compacted start comes back as a `canceled` result
with `compact_revision`, which becomes `CompactedError`. Requests go to the first
endpoint that answers; a connection failure moves to the next.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

from svcnet.controlplane.storage.interface import (
    CompactedError, Compare, FutureRevisionError, KeyValue, Op, Put, RangeResult, Storage,
    StorageError, TxnResult, Watch, WatchClosed, WatchEvent, prefix_end,
)

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(_unb64(raw.get("key")).decode(), _unb64(raw.get("value")),
                    int(raw.get("create_revision", 0)), int(raw.get("mod_revision", 0)),
                    int(raw.get("version", 0)))


def parse_endpoints(url: str) -> list[str]:
    """`etcd://h1:2379,h2:2379` (or https://...) -> base URLs."""
    scheme = "http"
    rest = url
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme == "etcd":
            scheme = "http"
        elif scheme == "etcds":
            scheme = "https"
    hosts = [h.strip().rstrip("/") for h in rest.split(",") if h.strip()]
    if not hosts:
        raise ValueError(f"no etcd endpoints in {url!r}")
    return [f"{scheme}://{h}" for h in hosts]


class EtcdStorage(Storage):
    """`Storage` on etcd; open with `await EtcdStorage.open("etcd://127.0.0.1:2379")`."""

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self._session: aiohttp.ClientSession | None = None
        self._revision = 0
        self._compact_revision = 0
        self._watches: set[_EtcdWatch] = set()
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> "EtcdStorage":
        store = cls(parse_endpoints(url))
        store._session = aiohttp.ClientSession()
        try:
            header = (await store._call("/v3/kv/range", {"key": _b64("/"), "count_only": True}))
        except BaseException:
            await store._session.close()
            raise
        store._seen(header)
        log.info("storage opened etcd=%s revision=%d", ",".join(store.endpoints), store._revision)
        return store

    # -- plumbing ----------------------------------------------------------------------

    def _seen(self, body: dict[str, Any]) -> None:
        rev = int((body.get("header") or {}).get("revision", 0))
        if rev > self._revision:
            self._revision = rev

    async def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self._closed or self._session is None:
            raise StorageError("storage is closed")
        last: Exception | None = None
        for base in self.endpoints:
            try:
                async with self._session.post(base + path, json=payload,
                                              timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as resp:
                    body: dict[str, Any] = await resp.json(content_type=None)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as err:
                last = err
                continue
            if resp.status != 200 or "error" in body:
                raise self._error(body, path)
            self._seen(body)
            return body
        raise StorageError(f"no etcd endpoint answered ({', '.join(self.endpoints)}): {last}")

    def _error(self, body: dict[str, Any], path: str) -> StorageError:
        message = str(body.get("message") or body.get("error") or body)
        if "compacted" in message:
            return CompactedError(0, self._compact_revision)
        if "future revision" in message:
            return FutureRevisionError(0, self._revision)
        return StorageError(f"etcd {path}: {message}")

    # -- reads -------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact_revision

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        payload: dict[str, Any] = {"key": _b64(key)}
        if revision:
            payload["revision"] = revision
        body = await self._call("/v3/kv/range", payload)
        kvs = body.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def range(self, prefix: str, *, start: str = "", revision: int = 0,
                    limit: int = 0) -> RangeResult:
        payload: dict[str, Any] = {"key": _b64(max(start, prefix)), "range_end": _b64(prefix_end(prefix))}
        if limit > 0:
            payload["limit"] = limit
        if revision:
            payload["revision"] = revision
        try:
            body = await self._call("/v3/kv/range", payload)
        except CompactedError:
            raise CompactedError(revision, self._compact_revision) from None
        except FutureRevisionError:
            raise FutureRevisionError(revision, self._revision) from None
        kvs = tuple(_kv(kv) for kv in body.get("kvs") or [])
        at = revision or int(body["header"]["revision"])
        return RangeResult(kvs, bool(body.get("more")), int(body.get("count", 0)), at)

    # -- writes ------------------------------------------------------------------------

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        keys = [op.key for op in ops]
        if len(set(keys)) != len(keys):
            raise StorageError("duplicate key given in txn request")
        success = []
        for op in ops:
            if isinstance(op, Put):
                success.append({"request_put": {"key": _b64(op.key), "value": _b64(op.value),
                                                "prev_kv": True}})
            else:
                success.append({"request_delete_range": {"key": _b64(op.key), "prev_kv": True}})
        payload = {
            "compare": [{"result": "EQUAL", "target": "MOD", "key": _b64(c.key),
                         "mod_revision": c.mod_revision} for c in compares],
            "success": success,
            "failure": [{"request_range": {"key": _b64(c.key)}} for c in compares],
        }
        body = await self._call("/v3/kv/txn", payload)
        rev = int(body["header"]["revision"])
        responses = body.get("responses") or []
        if not body.get("succeeded"):
            current: dict[str, KeyValue | None] = {}
            for c, resp in zip(compares, responses):
                kvs = (resp.get("response_range") or {}).get("kvs") or []
                current[c.key] = _kv(kvs[0]) if kvs else None
            return TxnResult(False, rev, current=current)
        prev: dict[str, KeyValue | None] = {}
        new: dict[str, KeyValue] = {}
        for op, resp in zip(ops, responses):
            inner = resp.get("response_put") or resp.get("response_delete_range") or {}
            prev_raw = inner.get("prev_kv") or (inner.get("prev_kvs") or [None])[0]
            old = _kv(prev_raw) if prev_raw else None
            prev[op.key] = old
            if isinstance(op, Put):
                new[op.key] = KeyValue(op.key, op.value, old.create_revision if old else rev, rev,
                                       old.version + 1 if old else 1)
        return TxnResult(True, rev, current={c.key: None for c in compares}, prev=prev, kvs=new)

    async def compact(self, revision: int) -> None:
        try:
            await self._call("/v3/kv/compaction", {"revision": revision, "physical": True})
        except CompactedError:
            raise CompactedError(revision, self._compact_revision) from None
        self._compact_revision = max(self._compact_revision, revision)

    # -- watch -------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int = 0) -> Watch:
        if self._closed or self._session is None:
            raise StorageError("storage is closed")
        w = _EtcdWatch(self, prefix, start_revision or self._revision + 1)
        self._watches.add(w)
        return w

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in list(self._watches):
            w.close()
        if self._session is not None:
            await self._session.close()


class _EtcdWatch(Watch):
    """One `POST /v3/watch` stream, read by a task into a queue."""

    def __init__(self, store: EtcdStorage, prefix: str, start: int) -> None:
        self.store, self.prefix, self.start = store, prefix, start
        self._queue: asyncio.Queue[WatchEvent | BaseException] = asyncio.Queue()
        self._last = start - 1
        self._progress = start - 1
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def progress_revision(self) -> int:
        return max(self._last, self._progress) if self._queue.empty() else self._last

    def close(self) -> None:
        self._closed = True
        self.store._watches.discard(self)
        if self._task is not None:
            self._task.cancel()
        self._queue.put_nowait(WatchClosed("watch closed"))

    async def next(self, timeout: float | None = None) -> WatchEvent | None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._read(), name=f"etcd-watch {self.prefix}")
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # stays terminal for later calls
            raise item
        self._last = item.revision
        return item

    async def _read(self) -> None:
        session = self.store._session
        assert session is not None
        request = {"create_request": {"key": _b64(self.prefix), "range_end": _b64(prefix_end(self.prefix)),
                                      "start_revision": self.start, "prev_kv": True,
                                      "progress_notify": True}}
        error: BaseException = WatchClosed("etcd watch stream ended")
        try:
            for base in self.store.endpoints:
                try:
                    async with session.post(base + "/v3/watch", json=request,
                                            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as resp:
                        if resp.status != 200:
                            error = StorageError(f"etcd watch: HTTP {resp.status}")
                            break
                        async for line in resp.content:
                            if line.strip():
                                self._handle(json.loads(line).get("result") or {})
                    break
                except aiohttp.ClientConnectionError as err:
                    error = WatchClosed(f"etcd watch connection failed: {err}")
                    continue
        except _Canceled as canceled:
            error = canceled.error
        except asyncio.CancelledError:
            return
        except Exception as err:  # a broken stream ends the watch; the caller resumes
            error = WatchClosed(f"etcd watch failed: {err}")
        self._queue.put_nowait(error)

    def _handle(self, result: dict[str, Any]) -> None:
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0))
            if compact:
                self.store._compact_revision = max(self.store._compact_revision, compact)
                raise _Canceled(CompactedError(self.start, compact))
            raise _Canceled(WatchClosed(f"etcd canceled the watch: {result.get('cancel_reason', '')}"))
        header_rev = int((result.get("header") or {}).get("revision", 0))
        events = result.get("events") or []
        for raw in events:
            kv = raw.get("kv") or {}
            key = _unb64(kv.get("key")).decode()
            rev = int(kv.get("mod_revision", 0))
            prev = _kv(raw["prev_kv"]) if raw.get("prev_kv") else None
            if raw.get("type") == "DELETE":
                self._queue.put_nowait(WatchEvent("DELETE", key, rev, None, prev))
            else:
                self._queue.put_nowait(WatchEvent("PUT", key, rev, _kv(kv), prev))
        if not events and header_rev and not result.get("created"):
            # A progress notification: etcd sends them only to watchers that have caught
            # up, so every event up to header_rev has been delivered. (The "created"
            # answer carries the current revision before any history replay: skip it.)
            self._progress = max(self._progress, header_rev)
        if header_rev > self.store._revision:
            self.store._revision = header_rev


class _Canceled(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
