"""Informer: a local, indexed cache of one resource kind, with change handlers.

Contract (after client-go's SharedInformer):

* Something feeds the informer: a `Reflector` watching the API, or a `FileSource`
  reading manifests. Feeders call `replace()` with a complete list (the first list,
  a relist after 410 Gone, a reloaded file) and `apply()` with single watch events.
* `replace()` delivers only the differences against the cache as add/update/delete,
  so a relist after a disconnect never duplicates or loses an event. An object whose
  resourceVersion did not change is not delivered again.
* Handlers run synchronously on the event loop, in the order events arrive, and must
  be quick: they should mark state dirty, not do the work. A handler that raises is
  logged and the others still run.
* `on_delete` always receives the last known state of the object (tombstones are
  unwrapped here, once, and never reach handlers).
* A handler added after the informer has synced first receives an `on_add` for every
  cached object, so late subscribers see the same world as early ones.
* `has_synced` turns true after the first complete list has been delivered, and the
  synced callbacks fire once then; agents must not program anything before that.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from typing import Callable, Iterable, Protocol

from svcnet.apiclient.objects import Obj, key_of, namespace_of, resource_version_of
from svcnet.apiclient.resources import Resource

log = logging.getLogger(__name__)

IndexFunc = Callable[[Obj], Iterable[str]]

NAMESPACE_INDEX = "namespace"


class ResourceEventHandler(Protocol):
    def on_add(self, obj: Obj) -> None: ...
    def on_update(self, old: Obj, new: Obj) -> None: ...
    def on_delete(self, obj: Obj) -> None: ...


class FuncHandler:
    """Adapts plain functions to the handler protocol; missing ones do nothing."""

    def __init__(
        self,
        on_add: Callable[[Obj], None] | None = None,
        on_update: Callable[[Obj, Obj], None] | None = None,
        on_delete: Callable[[Obj], None] | None = None,
    ) -> None:
        self._add, self._update, self._delete = on_add, on_update, on_delete

    def on_add(self, obj: Obj) -> None:
        if self._add:
            self._add(obj)

    def on_update(self, old: Obj, new: Obj) -> None:
        if self._update:
            self._update(old, new)

    def on_delete(self, obj: Obj) -> None:
        if self._delete:
            self._delete(obj)


def label_index(label: str) -> IndexFunc:
    """An index by the value of one label, e.g. `kubernetes.io/service-name`."""

    def index(obj: Obj) -> list[str]:
        value = ((obj.get("metadata") or {}).get("labels") or {}).get(label)
        return [value] if value is not None else []

    return index


class Informer:
    """The cache and handler fan-out for one resource; see the module docstring."""

    def __init__(self, resource: Resource, indexers: dict[str, IndexFunc] | None = None) -> None:
        self.resource = resource
        self._items: dict[str, Obj] = {}
        self._indexers: dict[str, IndexFunc] = {NAMESPACE_INDEX: lambda o: [namespace_of(o)]}
        self._indexers.update(indexers or {})
        self._indices: dict[str, dict[str, set[str]]] = {n: {} for n in self._indexers}
        self._handlers: list[ResourceEventHandler] = []
        self._synced_callbacks: list[Callable[[], None]] = []
        self._synced = asyncio.Event() if _loop_running() else None
        self._has_synced = False
        self.last_sync_resource_version = ""

    # -- consumers -------------------------------------------------------------

    def add_handler(self, handler: ResourceEventHandler) -> None:
        self._handlers.append(handler)
        if self._has_synced:
            for obj in list(self._items.values()):
                self._call(handler.on_add, obj)

    def add_synced_callback(self, callback: Callable[[], None]) -> None:
        if self._has_synced:
            callback()
        else:
            self._synced_callbacks.append(callback)

    def add_indexer(self, name: str, func: IndexFunc) -> None:
        self._indexers[name] = func
        self._indices[name] = {}
        for key, obj in self._items.items():
            self._index_add(name, key, obj)

    @property
    def has_synced(self) -> bool:
        return self._has_synced

    async def wait_for_sync(self) -> None:
        if self._has_synced:
            return
        if self._synced is None:
            self._synced = asyncio.Event()
        await self._synced.wait()

    def list(self) -> list[Obj]:
        return list(self._items.values())

    def keys(self) -> builtins.list[str]:
        return list(self._items)

    def get(self, key: str) -> Obj | None:
        return self._items.get(key)

    def get_by(self, namespace: str, name: str) -> Obj | None:
        return self._items.get(f"{namespace}/{name}" if namespace else name)

    def by_index(self, index: str, value: str) -> builtins.list[Obj]:
        keys = self._indices[index].get(value, ())
        return [self._items[k] for k in sorted(keys)]

    # -- feeders ---------------------------------------------------------------

    def replace(self, objects: Iterable[Obj], resource_version: str = "") -> None:
        """Make the cache equal to `objects`, delivering only the differences."""
        fresh = {key_of(o): o for o in objects}
        for key in [k for k in self._items if k not in fresh]:
            self._delete(key)
        for key, obj in fresh.items():
            self._upsert(key, obj)
        self.last_sync_resource_version = resource_version
        if not self._has_synced:
            self._has_synced = True
            if self._synced is not None:
                self._synced.set()
            for cb in self._synced_callbacks:
                try:
                    cb()
                except Exception:  # a broken subscriber must not stop the feed
                    log.exception("synced callback failed resource=%s", self.resource.plural)
            self._synced_callbacks.clear()

    def apply(self, event_type: str, obj: Obj) -> None:
        """Apply one watch event: ADDED, MODIFIED or DELETED."""
        key = key_of(obj)
        if event_type == "DELETED":
            if key in self._items:
                # A watch's DELETED event carries the object's final state: hand that on.
                self._delete(key, final=obj)
        elif event_type in ("ADDED", "MODIFIED"):
            self._upsert(key, obj)
        else:
            raise ValueError(f"informer cannot apply a {event_type!r} event")

    # -- internals -------------------------------------------------------------

    def _upsert(self, key: str, obj: Obj) -> None:
        old = self._items.get(key)
        if old is not None:
            rv = resource_version_of(obj)
            # Objects from manifest files carry no resourceVersion: compare content.
            if (rv and rv == resource_version_of(old)) or (not rv and obj == old):
                return
            self._index_remove(key, old)
        self._items[key] = obj
        for name in self._indexers:
            self._index_add(name, key, obj)
        for h in self._handlers:
            if old is None:
                self._call(h.on_add, obj)
            else:
                self._call(h.on_update, old, obj)

    def _delete(self, key: str, final: Obj | None = None) -> None:
        old = self._items.pop(key)
        self._index_remove(key, old)
        for h in self._handlers:
            self._call(h.on_delete, final if final is not None else old)

    def _index_add(self, name: str, key: str, obj: Obj) -> None:
        for value in self._indexers[name](obj):
            self._indices[name].setdefault(value, set()).add(key)

    def _index_remove(self, key: str, obj: Obj) -> None:
        for name, func in self._indexers.items():
            for value in func(obj):
                bucket = self._indices[name].get(value)
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del self._indices[name][value]

    def _call(self, fn: Callable[..., None], *args: Obj) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("event handler failed resource=%s", self.resource.plural)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False
