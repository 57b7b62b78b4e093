"""Garbage collection by ownerReferences: kube-controller-manager's garbage collector,
run inside the registry.

`OwnerIndex` keeps, for every object uid that something names in its
`metadata.ownerReferences`, the keys of those dependents. It is built by one range over
`/registry/` and kept current by one storage watch, the way kube's GC graph builder
feeds on informers; so looking up the dependents of a deleted owner costs a dict
lookup, not a scan. `wait_for(revision)` lets a caller act only once the index has seen
a given write (so a dependent created just before its owner's deletion is not missed).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict

from svcnet.common.tasks import cancel_and_wait
from svcnet.controlplane.registry.codec import KEY_ROOT
from svcnet.controlplane.storage.interface import CompactedError, KeyValue, Storage, WatchClosed

log = logging.getLogger(__name__)


def _owner_uids(value: bytes) -> tuple[str, ...]:
    if b'"ownerReferences"' not in value:
        return ()  # most objects have no owner: skip the JSON parse
    try:
        meta = json.loads(value).get("metadata") or {}
    except (ValueError, AttributeError):
        return ()
    refs = meta.get("ownerReferences") or []
    return tuple(str(r["uid"]) for r in refs if isinstance(r, dict) and r.get("uid"))


class OwnerIndex:
    """owner uid -> keys of the objects that reference it."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._dependents: dict[str, set[str]] = defaultdict(set)
        self._owners_of: dict[str, tuple[str, ...]] = {}
        self._revision = 0
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        start = await self._relist()
        self._task = asyncio.create_task(self._follow(start), name="owner-index")

    async def _relist(self) -> int:
        page = await self.storage.range(KEY_ROOT + "/")
        self._dependents.clear()
        self._owners_of.clear()
        for kv in page.kvs:
            self._put(kv)
        self._revision = max(self._revision, page.revision)
        return page.revision + 1

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def _put(self, kv: KeyValue) -> None:
        self._drop(kv.key)
        owners = _owner_uids(kv.value)
        if owners:
            self._owners_of[kv.key] = owners
            for uid in owners:
                self._dependents[uid].add(kv.key)

    def _drop(self, key: str) -> None:
        for uid in self._owners_of.pop(key, ()):
            deps = self._dependents.get(uid)
            if deps is not None:
                deps.discard(key)
                if not deps:
                    del self._dependents[uid]

    async def _follow(self, start: int) -> None:
        while True:
            watch = self.storage.watch(KEY_ROOT + "/", start)
            try:
                while True:
                    ev = await watch.next(timeout=1.0)
                    if ev is None:
                        rev = watch.progress_revision
                    else:
                        if ev.kv is not None:
                            self._put(ev.kv)
                        else:
                            self._drop(ev.key)
                        rev = ev.revision
                    if rev > self._revision:
                        self._revision = rev
                        start = rev + 1
                        async with self._advanced:
                            self._advanced.notify_all()
            except WatchClosed:
                if getattr(self.storage, "_closed", False):
                    return
                log.warning("owner index watch closed; resuming from revision %d", start)
            except CompactedError:
                log.warning("owner index fell behind compaction; relisting")
                start = await self._relist()
            finally:
                watch.close()

    async def wait_for(self, revision: int, timeout: float = 5.0) -> None:
        async with self._advanced:
            await asyncio.wait_for(self._advanced.wait_for(lambda: self._revision >= revision), timeout)

    def dependents(self, uid: str) -> list[str]:
        return sorted(self._dependents.get(uid, ()))
