"""A small in-memory stand-in for the Registry, for testing the HTTP layer alone.

It implements only what the HTTP tests need (get/list/create/update/patch(merge)/delete/watch)
and records the keyword arguments each call received, so tests can check that query
parameters reach the Registry. Semantics live in the real Registry and its own tests.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from svcnet.controlplane.errors import APIError, not_found


class FakeStorage:
    """What the HTTP layer asks of the Registry's storage: its readiness check."""

    check_name = "etcd"

    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.hang = False

    async def check(self) -> None:
        if self.hang:
            await asyncio.Event().wait()  # an etcd that never answers
        if self.failure is not None:
            raise self.failure


class FakeRegistry:
    def __init__(self) -> None:
        self.storage = FakeStorage()
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.revision = 1
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.subscribers: list[asyncio.Queue[tuple[str, dict[str, Any]]]] = []
        self.warnings: list[str] = []
        self.watch_error: APIError | None = None

    def _emit(self, etype: str, obj: dict[str, Any]) -> None:
        for q in self.subscribers:
            q.put_nowait((etype, obj))

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.revision += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.revision)
        obj["metadata"].setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        return obj

    async def get(self, kind: Any, namespace: str | None, name: str, *,
                  subresource: str | None = None) -> dict[str, Any]:
        if subresource:
            self.calls.append(("get", {"subresource": subresource}))
        try:
            return self.objects[(kind.plural, namespace, name)]
        except KeyError:
            raise not_found(kind.plural, name, kind.group) from None

    async def list(self, kind: Any, namespace: str | None, **kw: Any) -> dict[str, Any]:
        self.calls.append(("list", kw))
        items = [o for (p, ns, _), o in sorted(self.objects.items(), key=lambda i: str(i[0]))
                 if p == kind.plural and (namespace is None or ns == namespace)]
        return {"kind": kind.list_kind, "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self.revision)}, "items": items}

    async def create(self, kind: Any, namespace: str | None, obj: dict[str, Any], **kw: Any
                     ) -> tuple[dict[str, Any], list[str]]:
        self.calls.append(("create", kw))
        key = (kind.plural, namespace, obj["metadata"]["name"])
        if key in self.objects:
            raise APIError(409, "AlreadyExists", f'{kind.plural} "{key[2]}" already exists')
        if kw.get("dry_run"):
            return obj, list(self.warnings)
        self.objects[key] = self._stamp(obj)
        self._emit("ADDED", obj)
        return obj, list(self.warnings)

    async def update(self, kind: Any, namespace: str | None, name: str, obj: dict[str, Any], **kw: Any
                     ) -> tuple[dict[str, Any], list[str]]:
        self.calls.append(("update", kw))
        await self.get(kind, namespace, name)
        self.objects[(kind.plural, namespace, name)] = self._stamp(obj)
        self._emit("MODIFIED", obj)
        return obj, []

    async def patch(self, kind: Any, namespace: str | None, name: str, patch_type: str, body: bytes,
                    **kw: Any) -> tuple[dict[str, Any], bool, list[str]]:
        self.calls.append(("patch", {"patch_type": patch_type, **kw}))
        obj = await self.get(kind, namespace, name)
        patch = json.loads(body)
        for key, value in patch.get("metadata", {}).get("labels", {}).items():
            obj["metadata"].setdefault("labels", {})[key] = value
        self._emit("MODIFIED", self._stamp(obj))
        return obj, False, []

    async def delete(self, kind: Any, namespace: str | None, name: str, **kw: Any) -> dict[str, Any]:
        self.calls.append(("delete", kw))
        obj = await self.get(kind, namespace, name)
        del self.objects[(kind.plural, namespace, name)]
        self._emit("DELETED", self._stamp(obj))
        return obj

    async def delete_collection(self, kind: Any, namespace: str | None, **kw: Any) -> dict[str, Any]:
        self.calls.append(("delete_collection", kw))
        return {"kind": kind.list_kind, "apiVersion": kind.api_version, "metadata": {}, "items": []}

    def watch(self, kind: Any, namespace: str | None, **kw: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.calls.append(("watch", kw))
        return self._watch(kind, namespace, kw.get("resource_version", ""))

    async def _watch(self, kind: Any, namespace: str | None, rv: str
                     ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        if self.watch_error is not None:
            raise self.watch_error
        q: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.subscribers.append(q)
        try:
            if rv in ("", "0"):
                for item in (await self.list(kind, namespace))["items"]:
                    yield "ADDED", item
            while True:
                yield await q.get()
        finally:
            self.subscribers.remove(q)
