"""Object lifecycle beyond one write: Namespace deletion and garbage collection.

* Deleting a Namespace marks it Terminating (deletionTimestamp, status.phase), deletes
  everything in it (objects held by finalizers or graceful pod deletion stay until they
  go), then drops the `kubernetes` spec finalizer and removes the Namespace: the
  namespace controller's job, done in the registry. `maybe_finalize_namespace` runs
  again whenever something in a terminating namespace is finally removed.
* When an object is removed, its dependents (objects whose ownerReferences name its
  uid, found through `gc.OwnerIndex`) are deleted in the background, or keep living
  without the reference when the deletion asked to Orphan them or another owner remains:
  kube-controller-manager's garbage collector, inline.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import TYPE_CHECKING, Any

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import codec
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.codec import Stale
from svcnet.controlplane.storage.interface import KeyValue

if TYPE_CHECKING:
    from svcnet.controlplane.registry.store import Registry

log = logging.getLogger(__name__)

Obj = dict[str, Any]
NAMESPACE_FINALIZER = "kubernetes"


async def delete_namespace(reg: Registry, kv: KeyValue, old: Obj, dry_run: bool) -> Obj:
    """Namespace deletion as the namespace controller does it: mark Terminating,
    delete the content, then drop the `kubernetes` finalizer and the namespace."""
    name = old["metadata"]["name"]
    if dry_run:
        return old
    if not old["metadata"].get("deletionTimestamp"):
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = codec.now_rfc3339()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        new.setdefault("status", {})["phase"] = "Terminating"
        old = await reg._write_meta(kv, new, False)
    for kind in k.KINDS:
        if not kind.namespaced:
            continue
        page = await reg.storage.range(codec.kind_prefix(kind, name))
        for item in page.kvs:
            obj = codec.decode(item)
            try:
                await reg.delete(kind, name, obj["metadata"]["name"],
                                 options={"preconditions": {"uid": obj["metadata"].get("uid")}})
            except APIError as err:
                if err.code not in (404, 409):
                    raise
    final = await maybe_finalize_namespace(reg, name)
    return final or old


async def maybe_finalize_namespace(reg: Registry, name: str) -> Obj | None:
    """Remove a terminating namespace once nothing is left in it."""
    key = codec.object_key(k.NAMESPACES, None, name)
    for _ in range(codec.MAX_WRITE_ATTEMPTS):
        kv = await reg.storage.get(key)
        if kv is None:
            return None
        ns = codec.decode(kv)
        if not ns["metadata"].get("deletionTimestamp"):
            return None
        for kind in k.KINDS:
            if kind.namespaced and (await reg.storage.range(codec.kind_prefix(kind, name),
                                                            limit=1)).kvs:
                return ns
        fins = [f for f in (ns.get("spec") or {}).get("finalizers") or [] if f != NAMESPACE_FINALIZER]
        if fins or ns["metadata"].get("finalizers"):
            if fins != (ns.get("spec") or {}).get("finalizers"):
                new = copy.deepcopy(ns)
                new.setdefault("spec", {})["finalizers"] = fins
                try:
                    return await reg._write_meta(kv, new, False)
                except Stale:
                    continue
            return ns
        try:
            return await reg._remove(k.NAMESPACES, kv, ns)
        except Stale:
            continue
    return None


async def collect(reg: Registry, uid: str, revision: int, orphan: bool) -> None:
    """Delete the dependents of the owner `uid` deleted at `revision` (Background
    propagation), or drop the reference to it (Orphan, or other owners remain)."""
    try:
        await reg.owners.wait_for(revision)
        for key in reg.owners.dependents(uid):
            where = codec.parse_key(key, k.KINDS)
            if where is None:
                continue
            dep_kind, ns, name = where
            kv = await reg.storage.get(key)
            if kv is None:
                continue
            obj = codec.decode(kv)
            refs = obj["metadata"].get("ownerReferences") or []
            try:
                if orphan or any(isinstance(r, dict) and r.get("uid") not in (uid, None)
                                 for r in refs):
                    kept = [r for r in refs if not (isinstance(r, dict) and r.get("uid") == uid)]
                    patch = json.dumps({"metadata": {"ownerReferences": kept or None}}).encode()
                    await reg.patch(dep_kind, ns, name, "application/merge-patch+json", patch,
                                    field_manager="garbage-collector")
                else:
                    await reg.delete(dep_kind, ns, name, options={
                        "preconditions": {"uid": obj["metadata"].get("uid")}})
            except APIError as err:
                if err.code not in (404, 409):
                    log.warning("garbage collection of %s %s/%s failed: %s", dep_kind.kind,
                                ns, name, err.message)
    except asyncio.CancelledError:
        raise
    except Exception:  # a failed sweep must not take the server down
        log.exception("garbage collection of the dependents of %s failed", uid)
