"""Subresources that are not the object itself: deployments/scale (an autoscaling/v1
Scale view, see `scale.py`), pods/binding (kube-scheduler places a pod by POSTing a
Binding) and pods/eviction (a policy/v1 Eviction deletes the pod; svcnet has no
PodDisruptionBudgets to consult). They write through the Registry's update pipeline,
so defaulting, validation, generation and managedFields apply as for any write.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from svcnet.controlplane.errors import APIError, bad_request, conflict, not_found
from svcnet.controlplane.registry import codec, scale
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.codec import Stale
from svcnet.controlplane.registry.kinds import KindInfo
from svcnet.controlplane.registry.strategies.validation import FieldError, raise_invalid

if TYPE_CHECKING:
    from svcnet.controlplane.registry.store import Registry

Obj = dict[str, Any]


async def write_scale(reg: Registry, kind: KindInfo, namespace: str | None, name: str,
                      change: Callable[[Obj], Obj], requested_rv: str, dry_run: bool,
                      field_manager: str) -> Obj:
    """Write a scalable object's replicas through its Scale view; returns the Scale."""
    if kind not in scale.SCALABLE:
        raise not_found(f"{kind.plural}/scale", name, kind.group)
    strategy = reg._strategy(kind)
    key = codec.object_key(kind, reg._ns(kind, namespace), name)
    for _ in range(codec.MAX_WRITE_ATTEMPTS):
        kv = await reg.storage.get(key)
        if kv is None:
            raise not_found(kind.plural, name, kind.group)
        old = codec.decode(kv)
        if requested_rv and requested_rv != str(kv.mod_revision):
            raise conflict(kind.plural, name, kind.group)
        desired = change(scale.to_scale(old))
        raise_invalid("Scale", name, scale.validate_scale(desired), "autoscaling")
        new = copy.deepcopy(old)
        new.setdefault("spec", {})["replicas"] = desired["spec"]["replicas"]
        try:
            result = await reg._update_from(kind, strategy, kv, old, new, None, dry_run,
                                            field_manager, "Update", recorded_subresource="scale")
        except Stale:
            if requested_rv:
                raise conflict(kind.plural, name, kind.group) from None
            continue
        return scale.to_scale(result)
    raise conflict(kind.plural, name, kind.group)


async def bind(reg: Registry, namespace: str, name: str, binding: Obj, *, dry_run: bool = False) -> Obj:
    """POST pods/NAME/binding (kube-scheduler's way of placing a pod): sets
    spec.nodeName once; a pod already on a node is 409. Returns a success Status."""
    if not isinstance(binding, dict) or binding.get("kind") not in (None, "", "Binding"):
        raise bad_request("the body of the request must be a Binding object")
    target = binding.get("target") or {}
    node = target.get("name") if isinstance(target, dict) else None
    if not node:
        raise_invalid("Binding", name, [FieldError("FieldValueRequired", "target.name",
                                                   "Required value")])
    if target.get("kind") not in (None, "", "Node"):
        raise_invalid("Binding", name, [FieldError(
            "FieldValueNotSupported", "target.kind",
            f'Unsupported value: "{target.get("kind")}": supported values: "Node"')])
    key = codec.object_key(k.PODS, namespace, name)
    strategy = reg._strategy(k.PODS)
    for _ in range(codec.MAX_WRITE_ATTEMPTS):
        kv = await reg.storage.get(key)
        if kv is None:
            raise not_found("pods", name)
        old = codec.decode(kv)
        uid = ((binding.get("metadata") or {}).get("uid"))
        if uid and uid != old["metadata"].get("uid"):
            raise conflict("pods/binding", name)
        current = (old.get("spec") or {}).get("nodeName")
        if current:
            raise APIError(409, "Conflict", f'Operation cannot be fulfilled on pods/binding "{name}": '
                           f'pod {name} is already assigned to node "{current}"',
                           {"name": name, "kind": "pods/binding"})
        if old["metadata"].get("deletionTimestamp"):
            raise APIError(409, "Conflict", f'Operation cannot be fulfilled on pods/binding "{name}": '
                           f"pod {name} is being deleted, cannot be assigned to a host",
                           {"name": name, "kind": "pods/binding"})
        new = copy.deepcopy(old)
        new["spec"]["nodeName"] = node
        try:
            await reg._update_from(k.PODS, strategy, kv, old, new, None, dry_run,
                                   "kube-scheduler", "Update")
        except Stale:
            continue
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "code": 201}
    raise conflict("pods/binding", name)


async def evict(reg: Registry, namespace: str, name: str, eviction: Obj, *, dry_run: bool = False) -> Obj:
    """POST pods/NAME/eviction (policy/v1 Eviction): deletes the pod with the
    eviction's deleteOptions (svcnet has no PodDisruptionBudgets to consult)."""
    if not isinstance(eviction, dict) or eviction.get("kind") not in (None, "", "Eviction"):
        raise bad_request("the body of the request must be an Eviction object")
    options = eviction.get("deleteOptions") or {}
    await reg.delete(k.PODS, namespace, name, options=options, dry_run=dry_run)
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "code": 201}
