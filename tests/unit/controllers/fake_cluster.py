"""An in-memory API for controller tests: a client with the RestClient verbs the
controllers use, and a source whose informers it feeds as a watch would.

Written to the API conventions the controllers rely on: a global revision as
resourceVersion, 409 Conflict on a stale resourceVersion, AlreadyExists, NotFound,
generateName, status writes that change only `.status`, uid preconditions on delete,
and the pods/binding subresource (switchable off, to exercise the fallback). Watch
delivery can be held back (`deliver=False`) to show a cache lagging behind writes.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from typing import Any

from svcnet.apiclient import errors
from svcnet.apiclient.informer import IndexFunc, Informer
from svcnet.apiclient.objects import Obj, key_of, meta, name_of
from svcnet.apiclient.resources import ALL, PODS, Resource


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message}


class FakeClient:
    def __init__(self, cluster: "FakeCluster") -> None:
        self.c = cluster
        self.calls: list[tuple[str, str, str]] = []

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> Obj:
        obj = self.c.store[resource].get(f"{namespace}/{name}" if resource.namespaced else name)
        if obj is None:
            raise errors.NotFound(_status(404, "NotFound", f"{resource.plural} {name!r} not found"))
        return copy.deepcopy(obj)

    async def create(self, resource: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        if resource.plural.startswith("pods/") and resource.plural.endswith("/binding"):
            return await self._bind(resource.plural.split("/")[1], obj, namespace)
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        if resource.namespaced:
            md["namespace"] = namespace or md.get("namespace")
        if not md.get("name"):
            md["name"] = md["generateName"] + f"{next(self.c.names):05d}"[-5:]
        if key_of(obj) in self.c.store[resource]:
            raise errors.AlreadyExists(_status(409, "AlreadyExists", f"{name_of(obj)} exists"))
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = "2026-01-01T00:00:00Z"
        self.calls.append(("create", resource.plural, name_of(obj)))
        return self.c.write(resource, obj, "ADDED")

    async def update(self, resource: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        return await self._put(resource, obj, status_only=False)

    async def update_status(self, resource: Resource, obj: Obj, namespace: str | None = None) -> Obj:
        return await self._put(resource, obj, status_only=True)

    async def _put(self, resource: Resource, obj: Obj, status_only: bool) -> Obj:
        current = self.c.store[resource].get(key_of(obj))
        if current is None:
            raise errors.NotFound(_status(404, "NotFound", f"{name_of(obj)} not found"))
        rv = meta(obj).get("resourceVersion")
        if rv and rv != meta(current).get("resourceVersion"):
            raise errors.Conflict(_status(409, "Conflict", f"{name_of(obj)} has been modified"))
        if status_only:
            new = copy.deepcopy(current)
            new["status"] = copy.deepcopy(obj.get("status"))
        else:
            new = copy.deepcopy(obj)
            new["metadata"]["uid"] = meta(current)["uid"]
            if "status" in current and resource.kind != "EndpointSlice":
                new["status"] = copy.deepcopy(current["status"])
        self.calls.append(("update_status" if status_only else "update", resource.plural, name_of(obj)))
        return self.c.write(resource, new, "MODIFIED")

    async def delete(self, resource: Resource, name: str, namespace: str | None = None, *,
                     preconditions: dict[str, str] | None = None, **_: Any) -> Obj:
        key = f"{namespace}/{name}" if resource.namespaced else name
        current = self.c.store[resource].get(key)
        if current is None:
            raise errors.NotFound(_status(404, "NotFound", f"{name} not found"))
        if preconditions and preconditions.get("uid") not in (None, meta(current)["uid"]):
            raise errors.Conflict(_status(409, "Conflict", "uid precondition failed"))
        self.calls.append(("delete", resource.plural, name))
        return self.c.remove(resource, key)

    async def _bind(self, pod_name: str, binding: Obj, namespace: str | None) -> Obj:
        if not self.c.serve_binding:
            raise errors.NotFound(_status(404, "NotFound", "the server could not find the requested resource"))
        pod = self.c.store[PODS].get(f"{namespace}/{pod_name}")
        if pod is None:
            raise errors.NotFound(_status(404, "NotFound", f"pods {pod_name!r} not found"))
        if pod["spec"].get("nodeName"):
            raise errors.Conflict(_status(409, "Conflict", f"pod {pod_name} is already assigned"))
        new = copy.deepcopy(pod)
        new["spec"]["nodeName"] = binding["target"]["name"]
        self.calls.append(("bind", "pods", pod_name))
        self.c.write(PODS, new, "MODIFIED")
        return {"kind": "Status", "status": "Success"}


class FakeCluster:
    """The store, and the `Source` protocol the ControllerManager asks for."""

    def __init__(self) -> None:
        self.store: dict[Resource, dict[str, Obj]] = {r: {} for r in ALL}
        self.informers: dict[Resource, Informer] = {}
        self.rev = itertools.count(1000)
        self.names = itertools.count(10000)
        self.serve_binding = True
        self.deliver = True
        self.pending: list[tuple[Resource, str, Obj]] = []
        self.client = FakeClient(self)

    # Source protocol
    def informer(self, resource: Resource, indexers: dict[str, IndexFunc] | None = None, *,
                 namespace: str | None = None) -> Informer:
        inf = self.informers.get(resource)
        if inf is None:
            inf = self.informers[resource] = Informer(resource, indexers)
        return inf

    async def run(self) -> None:
        for res, inf in self.informers.items():
            inf.replace([copy.deepcopy(o) for o in self.store[res].values()])
        import asyncio
        await asyncio.Event().wait()

    # writes, as the tests and the fake client make them
    def write(self, resource: Resource, obj: Obj, etype: str) -> Obj:
        obj["metadata"]["resourceVersion"] = str(next(self.rev))
        self.store[resource][key_of(obj)] = obj
        self._event(resource, etype, obj)
        return copy.deepcopy(obj)

    def remove(self, resource: Resource, key: str) -> Obj:
        obj = self.store[resource].pop(key)
        self._event(resource, "DELETED", obj)
        return copy.deepcopy(obj)

    def put(self, resource: Resource, obj: Obj) -> Obj:
        """Create or replace an object as another client would (no conflict checks)."""
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        old = self.store[resource].get(key_of(obj))
        md.setdefault("uid", meta(old)["uid"] if old else str(uuid.uuid4()))
        md.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        return self.write(resource, obj, "MODIFIED" if old else "ADDED")

    def _event(self, resource: Resource, etype: str, obj: Obj) -> None:
        if resource not in self.informers:
            return
        if self.deliver:
            self.informers[resource].apply(etype, copy.deepcopy(obj))
        else:
            self.pending.append((resource, etype, copy.deepcopy(obj)))

    def flush(self) -> None:
        self.deliver = True
        for resource, etype, obj in self.pending:
            self.informers[resource].apply(etype, obj)
        self.pending.clear()

    def objects(self, resource: Resource) -> list[Obj]:
        return list(self.store[resource].values())
