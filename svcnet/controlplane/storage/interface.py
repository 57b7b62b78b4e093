"""The storage contract the registry is written against: a revisioned key-value store.

This is etcd's v3 model cut down to what kube-apiserver uses (see
docs `reference/etcd.md` §7-§8), so that the embedded SQLite store and an etcd
backend are interchangeable:

* one store-wide **revision** counter; every successful write transaction bumps it by
  exactly one, and every key it touches gets that revision as its `mod_revision`;
* each key carries `create_revision`, `mod_revision` and `version` (writes since
  creation); an object's resourceVersion is its `mod_revision`, a list's is the
  revision the read was served at;
* writes are **transactions**: a list of compares on keys' `mod_revision` (0 meaning
  "absent") and, if all hold, a list of puts and deletes applied atomically. This gives
  compare-and-swap create/update/delete on one object, and allocation of ClusterIPs
  and NodePorts in the same commit as the Service that holds them;
* reads and ranges may ask for a past revision (MVCC), and **watch** replays history
  from a start revision, then streams live events. History before the **compact
  revision** is gone: asking for it raises `CompactedError` (the apiserver's 410).

Keys are text (`/registry/services/specs/default/web`); values are bytes.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class KeyValue:
    """One key's state at some revision."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


@dataclass(frozen=True)
class WatchEvent:
    """A change to one key. `revision` is the write's revision; a DELETE has no `kv`
    and carries the deleted state in `prev_kv` (etcd's watch with prev_kv)."""

    type: Literal["PUT", "DELETE"]
    key: str
    revision: int
    kv: KeyValue | None
    prev_kv: KeyValue | None

    @property
    def is_create(self) -> bool:
        return self.type == "PUT" and self.kv is not None and self.kv.version == 1


@dataclass(frozen=True)
class Compare:
    """Holds when `key`'s mod_revision equals `mod_revision` (0: the key is absent)."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True)
class Delete:
    key: str


Op = Put | Delete


@dataclass(frozen=True)
class TxnResult:
    """`succeeded` False means a compare failed and nothing was written; `current` then
    holds the compared keys' present state (None = absent), like etcd's failure branch.
    On success `prev` holds the previous state of every written key and `kvs` the new
    state of every put key."""

    succeeded: bool
    revision: int
    current: dict[str, KeyValue | None] = field(default_factory=dict)
    prev: dict[str, KeyValue | None] = field(default_factory=dict)
    kvs: dict[str, KeyValue] = field(default_factory=dict)


@dataclass(frozen=True)
class RangeResult:
    """Keys in order from the range start. `count` is how many keys the whole range
    (from `start` to the prefix end) holds, `more` whether `limit` cut it short."""

    kvs: tuple[KeyValue, ...]
    more: bool
    count: int
    revision: int


class StorageError(Exception):
    """Any storage failure."""


class CompactedError(StorageError):
    """The requested revision is at or before the compact revision."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(f"mvcc: required revision {requested} has been compacted "
                         f"(compact revision {compact_revision})")
        self.requested, self.compact_revision = requested, compact_revision


class FutureRevisionError(StorageError):
    """The requested revision is newer than the store's current revision."""

    def __init__(self, requested: int, current: int) -> None:
        super().__init__(f"mvcc: required revision {requested} is a future revision "
                         f"(current {current})")
        self.requested, self.current = requested, current


class WatchClosed(StorageError):
    """A watch ended because the store closed or the watcher fell too far behind.
    Resume from the last revision seen."""


class Watch(abc.ABC):
    """A stream of `WatchEvent`s for one key prefix, in revision order.

    Iterate it, or call `next(timeout)` to get None on an idle timeout (for bookmarks).
    `progress_revision` is a revision up to which every matching event has been
    delivered (valid whenever `next` has just returned None)."""

    @abc.abstractmethod
    async def next(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event; None after `timeout` seconds idle. Raises WatchClosed at the end,
        CompactedError if the start revision was compacted."""

    @property
    @abc.abstractmethod
    def progress_revision(self) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[WatchEvent]:
        try:
            while True:
                try:
                    ev = await self.next()
                except WatchClosed:
                    return
                if ev is not None:
                    yield ev
        finally:
            self.close()


#: The root of every key the registry writes (kube's layout: /registry/services/specs/…).
#: A backend may store it elsewhere: etcd maps it onto --etcd-prefix.
REGISTRY_ROOT = "/registry"


def prefix_end(prefix: str) -> str:
    """The first key after every key starting with `prefix` (etcd's range_end)."""
    if not prefix:
        return "\U0010ffff"
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class Storage(abc.ABC):
    """A revisioned key-value store; see the module docstring for the model."""

    #: the name of this backend's readiness check (`[+]etcd ok` on /readyz?verbose)
    check_name: str = "storage"

    @property
    @abc.abstractmethod
    def revision(self) -> int:
        """The latest revision whose writes are visible (and delivered to watchers)."""

    @property
    @abc.abstractmethod
    def compact_revision(self) -> int:
        """Revisions at or below this have no history (0: nothing compacted)."""

    @abc.abstractmethod
    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        """The key's state at `revision` (0: now)."""

    @abc.abstractmethod
    async def range(self, prefix: str, *, start: str = "", revision: int = 0,
                    limit: int = 0) -> RangeResult:
        """Keys with `prefix`, from key `start` (inclusive; default the prefix) in key
        order, at `revision` (0: now), at most `limit` (0: all)."""

    @abc.abstractmethod
    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """If every compare holds, apply `ops` atomically at a new revision. A key may
        appear in `ops` at most once. A txn that writes nothing (only deletes of absent
        keys) keeps the revision; every put is a write, even of an identical value."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int = 0) -> Watch:
        """Events for keys with `prefix` from `start_revision` (inclusive; 0: from now)."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Drop history at and before `revision` (reads at `revision` keep working)."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Return if the store can serve requests now, else raise StorageError saying
        why (the apiserver's /readyz check; it bounds the wait itself)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # Convenience forms of the transaction, kube-apiserver's patterns.

    async def create(self, key: str, value: bytes) -> TxnResult:
        """Put `key` only if absent."""
        return await self.txn([Compare(key, 0)], [Put(key, value)])

    async def update(self, key: str, value: bytes, mod_revision: int) -> TxnResult:
        """Put `key` only if its mod_revision is still `mod_revision`."""
        return await self.txn([Compare(key, mod_revision)], [Put(key, value)])

    async def delete(self, key: str, mod_revision: int) -> TxnResult:
        """Delete `key` only if its mod_revision is still `mod_revision`."""
        return await self.txn([Compare(key, mod_revision)], [Delete(key)])
