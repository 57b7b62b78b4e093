"""A test double: a store that lags behind the writes made through it."""

from __future__ import annotations

from collections.abc import Sequence

from svcnet.controlplane.storage.interface import (
    Compare, KeyValue, Op, RangeResult, Storage, TxnResult, Watch,
)


class LaggingStorage(Storage):
    """A store whose `revision` (what this API server has caught up to) stays where
    `hold()` froze it until `release()`; reads and writes go to the real store, except
    that ranges under `stale_prefix` (if set) are served at the held revision, as a
    watch cache that has not applied the latest writes serves them."""

    def __init__(self, inner: Storage, stale_prefix: str = "") -> None:
        self.inner = inner
        self.stale_prefix = stale_prefix
        self._held: int | None = None

    def hold(self) -> None:
        self._held = self.inner.revision

    def release(self) -> None:
        self._held = None

    @property
    def revision(self) -> int:
        return self.inner.revision if self._held is None else min(self._held, self.inner.revision)

    @property
    def compact_revision(self) -> int:
        return self.inner.compact_revision

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        return await self.inner.get(key, revision)

    async def range(self, prefix: str, *, start: str = "", revision: int = 0,
                    limit: int = 0) -> RangeResult:
        page = await self.inner.range(prefix, start=start, revision=revision, limit=limit)
        if self.stale_prefix and prefix.startswith(self.stale_prefix) and self._held is not None:
            # a cache that has not applied the writes after the hold: it serves the old state
            if self._held == 0:  # (revision 0 would mean "now"; the empty store had nothing)
                return RangeResult((), more=False, count=0, revision=0)
            return await self.inner.range(prefix, start=start, revision=self._held, limit=limit)
        return page

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        return await self.inner.txn(compares, ops)

    def watch(self, prefix: str, start_revision: int = 0) -> Watch:
        return self.inner.watch(prefix, start_revision)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()
