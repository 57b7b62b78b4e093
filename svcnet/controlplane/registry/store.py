"""The Registry: Kubernetes object semantics over a revisioned store.

This is the part of kube-apiserver between the HTTP handlers and etcd
(`pkg/registry/generic/registry.Store` plus the per-kind strategies). For every kind it
does, in one place:

* **identity and metadata**: uid, creationTimestamp, generateName (5 random
  characters, retried on collision), generation (bumped on spec changes for kinds
  that track it), managedFields entries for the field manager;
* **optimistic concurrency**: resourceVersion = the store's mod_revision; a stale
  resourceVersion on update is 409 Conflict; writes without one are retried against
  the latest object (GuaranteedUpdate); writes that change nothing are not written;
* **subresources**: `/status` writes change only status; main-resource writes keep the
  stored status; Namespace `/finalize` changes only spec.finalizers;
* **deletion**: finalizers hold an object with deletionTimestamp set until the last one
  is removed; pods are deleted gracefully; a Namespace's deletion removes everything in
  it, then the Namespace; objects whose owner is deleted are garbage-collected;
* **lists and watches**: label and field selectors, limit/continue pages served from
  one revision, watches that resume from any retained resourceVersion (410 Expired once
  compacted), selector-aware ADDED/MODIFIED/DELETED, bookmarks.

Defaulting and validation are the strategies' (`strategies/`), ClusterIP and NodePort
allocation the allocator's (`allocators.py`); both run inside the write so the
allocation commits in the same storage transaction as the Service.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import contextlib
import copy
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import yaml

from svcnet.common.tasks import cancel_and_wait
from svcnet.controlplane.errors import (
    APIError, already_exists, bad_request, conflict, gone, not_found,
)
from svcnet.controlplane.registry import codec
from svcnet.controlplane.registry.codec import Stale
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry import lifecycle, scale, subresources
from svcnet.controlplane.registry.allocators import AllocationPlan, ServiceAllocator
from svcnet.controlplane.registry.endpoint_reconciler import EndpointReconciler
from svcnet.controlplane.registry.gc import OwnerIndex
from svcnet.controlplane.registry.watch import (
    FRESHNESS_TIMEOUT, not_newer_than_store, too_large_resource_version, watch_objects,
)
from svcnet.controlplane.registry.kinds import KindInfo
from svcnet.controlplane.registry.selectors import (
    FieldSelector, LabelSelector, parse_field_selector, parse_label_selector,
)
from svcnet.controlplane.registry.strategies import Strategy, strategies_for_cluster
from svcnet.controlplane.registry.strategies.validation import (
    FieldError, forbidden, object_meta_update, raise_invalid,
)
from svcnet.controlplane.storage.interface import (
    CompactedError, Compare, Delete, FutureRevisionError, KeyValue, Op, Put, Storage, StorageError,
)
from svcnet.controlplane.storage import DEFAULT_ETCD_PREFIX, open_storage

log = logging.getLogger(__name__)

Obj = dict[str, Any]

PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
MAX_GENERATE_NAME_ATTEMPTS = 8
_LIST_CHUNK = 500

_PATCH_TYPES = (
    "application/json-patch+json", "application/merge-patch+json",
    "application/strategic-merge-patch+json", "application/apply-patch+yaml",
)


P = ParamSpec("P")
R = TypeVar("R")


def _internal_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Every failure leaves the Registry as an APIError: a storage failure (disk full,
    a closed store) becomes 500 InternalError with the cause, as kube-apiserver reports
    etcd errors it cannot classify."""
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except APIError:
            raise
        except StorageError as err:
            log.error("storage failure in %s: %s", fn.__name__, err)
            raise APIError(500, "InternalError", f"Internal error occurred: {err}",
                           {"causes": [{"message": str(err)}]}) from err
    return wrapper


class Registry:
    """Kubernetes object semantics for every kind in `kinds.KINDS`; see the module doc.

    Open with `await Registry.open(data_dir, ...)`; every method raises `APIError`.
    """

    #: seconds between bookmarks on an idle watch that allows them
    bookmark_interval: float = 10.0
    #: seconds of history kept for watches and continue tokens (kube: 5 minutes)
    compaction_interval: float = 300.0
    #: seconds an Event lives (kube-apiserver --event-ttl)
    event_ttl: float = 3600.0
    #: seconds between re-assertions of the bootstrap objects
    bootstrap_interval: float = 10.0
    #: seconds a list or streaming watch at a resourceVersion this store has not reached
    #: waits for it before the 504 ResourceVersionTooLarge (kube's watch cache: 3 s)
    freshness_timeout: float = FRESHNESS_TIMEOUT
    #: leaseDurationSeconds of this server's endpoint Lease (see endpoint_reconciler.py)
    endpoint_lease_duration: int = 15

    def __init__(self, storage: Storage, allocator: ServiceAllocator) -> None:
        self.storage = storage
        self.allocator = allocator
        self.strategies = strategies_for_cluster(allocator.families)
        self.service_cidrs = allocator.cidrs
        self.owners = OwnerIndex(storage)
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._gc_tasks: set[asyncio.Task[None]] = set()
        self._bootstrap_task: asyncio.Task[None] | None = None
        self._endpoints: EndpointReconciler | None = None
        self._endpoints_task: asyncio.Task[None] | None = None
        self._compaction_mark = storage.revision

    @classmethod
    async def open(cls, data_dir: Path, *, service_cidr: str = "10.96.0.0/12",
                   node_port_range: str = "30000-32767", storage: str = "sqlite",
                   etcd_prefix: str = DEFAULT_ETCD_PREFIX) -> "Registry":
        """A Registry on the store `svcnet apiserver --storage/--etcd-prefix` name:
        "sqlite" (a file in `data_dir`) or "etcd://HOST:PORT,..." (see `open_storage`)."""
        allocator = ServiceAllocator(service_cidr, node_port_range)
        backend = await open_storage(storage, data_dir=Path(data_dir), etcd_prefix=etcd_prefix)
        try:
            return await cls.with_storage(backend, allocator)
        except BaseException:
            await backend.close()
            raise

    @classmethod
    async def with_storage(cls, storage: Storage, allocator: ServiceAllocator) -> "Registry":
        """A Registry over any `Storage` (an etcd backend, a test double)."""
        loaded_at = await allocator.load(storage)
        reg = cls(storage, allocator)
        await reg.owners.start()
        reg._tasks.append(asyncio.create_task(allocator.follow(storage, loaded_at + 1),
                                              name="allocation-follower"))
        reg._tasks.append(asyncio.create_task(reg._maintenance(), name="registry-maintenance"))
        return reg

    async def close(self) -> None:
        if self._endpoints is not None:
            # a clean stop leaves the `kubernetes` slice at once, not after the lease expires
            if self._endpoints_task is not None:
                self._endpoints_task.cancel()
            try:
                await asyncio.wait_for(self._endpoints.remove(), timeout=3.0)
            except (Exception, asyncio.TimeoutError) as err:
                log.warning("could not remove this apiserver's endpoint: %s", err)
            self._endpoints = None
        await cancel_and_wait(*self._tasks, *self._gc_tasks)
        self._tasks.clear()
        await self.owners.stop()
        await self.storage.close()

    @property
    def current_revision(self) -> int:
        return self.storage.revision

    @_internal_errors
    async def object_counts(self) -> dict[str, int]:
        """Stored objects per resource (`services`, `endpointslices.discovery.k8s.io`, ...),
        for kube-apiserver's `apiserver_storage_objects{resource}` gauge."""
        counts = {}
        for kind in k.KINDS:
            page = await self.storage.range(codec.kind_prefix(kind), limit=1)
            counts[kind.resource] = page.count
        return counts

    # -- bootstrap -----------------------------------------------------------------------

    async def bootstrap(self, apiserver_ip: str, apiserver_port: int) -> None:
        """The objects kube-apiserver's bootstrap controller keeps (see `bootstrap.py`)."""
        from svcnet.controlplane.registry.bootstrap import bootstrap

        await bootstrap(self, apiserver_ip, apiserver_port)
        if self._bootstrap_task is not None:
            self._bootstrap_task.cancel()
        self._bootstrap_task = asyncio.create_task(self._keep_bootstrap(apiserver_ip, apiserver_port),
                                                   name="bootstrap-reconcile")
        self._tasks.append(self._bootstrap_task)
        # The `kubernetes` EndpointSlice: from every live apiserver's Lease.
        old = self._endpoints
        if old is None or (old.address, old.port, old.lease_duration) != (
                apiserver_ip, apiserver_port, self.endpoint_lease_duration):
            if self._endpoints_task is not None:
                self._endpoints_task.cancel()
            if old is not None:
                await old.remove()  # this server moved: its old endpoint goes at once
            self._endpoints = EndpointReconciler(self, apiserver_ip, apiserver_port,
                                                 self.endpoint_lease_duration)
            first_delay = await self._endpoints.reconcile()
            self._endpoints_task = asyncio.create_task(self._keep_endpoints(self._endpoints, first_delay),
                                                       name="endpoint-reconcile")
            self._tasks.append(self._endpoints_task)

    async def _keep_endpoints(self, reconciler: EndpointReconciler, first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        await reconciler.run()

    # -- reads ---------------------------------------------------------------------------

    def _strategy(self, kind: KindInfo) -> Strategy:
        try:
            return self.strategies[kind]
        except KeyError:
            raise APIError(404, "NotFound", f"the server could not find the requested resource "
                           f"({kind.plural})") from None

    @staticmethod
    def _ns(kind: KindInfo, namespace: str | None) -> str | None:
        return namespace or None if kind.namespaced else None

    @_internal_errors
    async def get(self, kind: KindInfo, namespace: str | None, name: str, *,
                  subresource: str | None = None) -> Obj:
        """The object; with subresource "scale" its autoscaling/v1 Scale (status and
        other subresources read as the object itself, as in kube)."""
        self._strategy(kind)
        kv = await self.storage.get(codec.object_key(kind, self._ns(kind, namespace), name))
        if kv is None:
            raise not_found(kind.plural, name, kind.group)
        obj = codec.decode(kv)
        if subresource == "scale":
            if kind not in scale.SCALABLE:
                raise not_found(f"{kind.plural}/scale", name, kind.group)
            return scale.to_scale(obj)
        return obj

    def _selectors(self, kind: KindInfo, label_selector: str, field_selector: str
                   ) -> Callable[[Obj], bool] | None:
        """The selector predicate, or None when nothing is filtered out."""
        ls: LabelSelector = parse_label_selector(label_selector)
        fs: FieldSelector = parse_field_selector(field_selector, kind.field_selectors)
        if ls.empty() and fs.empty():
            return None
        return lambda obj: ls.matches((obj.get("metadata") or {}).get("labels") or {}) and fs.matches(obj)

    @_internal_errors
    async def list(self, kind: KindInfo, namespace: str | None, *, label_selector: str = "",
                   field_selector: str = "", limit: int = 0, continue_token: str = "",
                   resource_version: str = "") -> Obj:
        self._strategy(kind)
        selected = self._selectors(kind, label_selector, field_selector)
        filtered = selected is not None
        match: Callable[[Obj], bool] = selected if selected is not None else (lambda obj: True)
        prefix = codec.kind_prefix(kind, self._ns(kind, namespace))
        revision, start = 0, prefix
        if limit < 0:
            raise bad_request("limit: Invalid value: must be non-negative")
        if continue_token:
            if resource_version not in ("", "0"):
                raise bad_request("specifying resource version is not allowed when using continue")
            revision, start = codec.decode_continue(continue_token, prefix)
            if revision < self.storage.compact_revision:
                raise gone("The provided continue parameter is too old to display a consistent "
                           "list result. You can start a new list without the continue parameter.")
        elif resource_version not in ("", "0"):
            wanted = await not_newer_than_store(resource_version, self.storage, self.freshness_timeout)
            if limit:
                revision = wanted  # legacy "Exact" semantics of RV + limit
        items: builtins.list[Obj] = []
        meta: dict[str, Any] = {}
        while True:
            want = 0 if not limit else (limit - len(items) if not filtered else max(limit, _LIST_CHUNK))
            try:
                page = await self.storage.range(prefix, start=start, revision=revision, limit=want)
            except CompactedError:
                raise gone("The resourceVersion for the provided list is too old.") from None
            except FutureRevisionError as err:
                raise too_large_resource_version(err.requested, err.current) from None
            revision = page.revision
            with codec.gc_paused():  # see gc_paused: decoding 10k objects, no cycles
                for i, kv in enumerate(page.kvs):
                    obj = codec.decode(kv)
                    if match(obj):
                        obj.setdefault("kind", kind.kind)
                        obj.setdefault("apiVersion", kind.api_version)
                        items.append(obj)
                    if limit and len(items) >= limit:
                        if i + 1 < len(page.kvs) or page.more:
                            meta["continue"] = codec.encode_continue(revision, kv.key + "\x00", prefix)
                            if not filtered:
                                meta["remainingItemCount"] = page.count - (i + 1)
                        break
                else:
                    if page.more and page.kvs:
                        start = page.kvs[-1].key + "\x00"
                        continue
            break
        return {"kind": kind.list_kind, "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(revision), **meta}, "items": items}

    # -- field validation ----------------------------------------------------------------

    @staticmethod
    def _field_validation(kind: KindInfo, obj: Obj, mode: str) -> builtins.list[str]:
        """Unknown fields: 400 (Strict), warnings (Warn) or nothing (Ignore); they are
        dropped from `obj` in every mode, as decoding into kube's structs drops them."""
        if mode not in ("", "Strict", "Warn", "Ignore"):
            raise bad_request(f"fieldValidation: Unsupported value: {json.dumps(mode)}: supported "
                              'values: "Ignore", "Strict", "Warn"')
        try:
            from svcnet.controlplane.registry.schema import unknown_fields
        except ImportError:  # pragma: no cover - schema.py is a sibling module
            return []
        if not kind.definition:
            return []
        unknown = unknown_fields(kind.definition, obj)
        if not unknown:
            return []
        if mode == "Strict":
            fields = ", ".join(f'unknown field "{p}"' for p in unknown)
            raise bad_request(f'{kind.kind} in version "{kind.version}" cannot be handled as a '
                              f"{kind.kind}: strict decoding error: {fields}")
        for path in unknown:
            codec.drop_path(obj, path)
        return [] if mode == "Ignore" else [f'unknown field "{p}"' for p in unknown]

    # -- create --------------------------------------------------------------------------

    def _check_type(self, kind: KindInfo, obj: Any) -> Obj:
        if not isinstance(obj, dict):
            raise bad_request(f"the body of the request must be a {kind.kind} object")
        if obj.get("kind") not in (None, "", kind.kind) or \
                obj.get("apiVersion") not in (None, "", kind.api_version):
            raise bad_request(f"the API version in the data ({obj.get('apiVersion')}) does not match "
                              f"the expected API version ({kind.api_version})"
                              if obj.get("kind") in (None, "", kind.kind) else
                              f"{obj.get('kind')} in version \"{kind.version}\" cannot be handled "
                              f"as a {kind.kind}")
        out: Obj = copy.deepcopy(obj)
        out["kind"], out["apiVersion"] = kind.kind, kind.api_version
        if out.get("metadata") is None:
            out["metadata"] = {}
        if not isinstance(out["metadata"], dict):
            raise bad_request("metadata must be an object")
        for f in _OMIT_EMPTY_META:
            # ObjectMeta's `omitempty` maps and lists: a patch that removes the last label
            # or annotation leaves no `labels: {}` behind (kubectl diff would show it)
            if f in out["metadata"] and out["metadata"][f] in ({}, [], None):
                del out["metadata"][f]
        return out

    def _place(self, kind: KindInfo, namespace: str | None, obj: Obj) -> str | None:
        """Reconcile the object's namespace with the request's."""
        meta = obj["metadata"]
        if not kind.namespaced:
            meta.pop("namespace", None)
            return None
        ns = namespace or meta.get("namespace") or ""
        if meta.get("namespace") and meta["namespace"] != ns:
            raise bad_request("the namespace of the provided object does not match the namespace "
                              "sent on the request")
        if not ns:
            raise bad_request("the namespace of the object is required")
        meta["namespace"] = ns
        return str(ns)

    async def _live_namespace(self, kind: KindInfo, namespace: str | None, name: str) -> KeyValue | None:
        """The namespace an object is created in: 404 if missing, 403 if terminating."""
        if not kind.namespaced or not namespace:
            return None
        kv = await self.storage.get(codec.object_key(k.NAMESPACES, None, namespace))
        if kv is None:
            raise not_found("namespaces", namespace)
        ns = codec.decode(kv)
        if ns["metadata"].get("deletionTimestamp") or (ns.get("status") or {}).get("phase") == "Terminating":
            raise APIError(403, "Forbidden",
                           f'{kind.resource} "{name}" is forbidden: unable to create new content in '
                           f"namespace {namespace} because it is being terminated",
                           {"name": name, "group": kind.group, "kind": kind.plural,
                            "causes": [{"reason": "NamespaceTerminating",
                                        "message": f"namespace {namespace} is being terminated",
                                        "field": "metadata.namespace"}]})
        return kv

    def _record_manager(self, kind: KindInfo, live: Obj | None, obj: Obj, manager: str,
                        subresource: str | None) -> Obj:
        """managedFields for a non-apply write: the writer owns what it added or changed
        (kube's fieldmanager; server-side apply records its own in `apply_patch`)."""
        from svcnet.controlplane.registry.apply import update_managed_fields
        from svcnet.controlplane.registry.schema import node_for

        node = node_for(kind.definition) if kind.definition else None
        return update_managed_fields(live, obj, manager or "unknown", node,
                                     subresource=subresource or "",
                                     reset_fields=_reset_fields(kind, subresource))

    @_internal_errors
    async def create(self, kind: KindInfo, namespace: str | None, obj: Obj, *, dry_run: bool = False,
                     field_manager: str = "", field_validation: str = "Strict"
                     ) -> tuple[Obj, builtins.list[str]]:
        return await self._create(kind, namespace, obj, dry_run, field_manager, field_validation,
                                  record=True)

    async def _create(self, kind: KindInfo, namespace: str | None, obj: Obj, dry_run: bool,
                      field_manager: str, field_validation: str, *, record: bool
                      ) -> tuple[Obj, builtins.list[str]]:
        strategy = self._strategy(kind)
        obj = self._check_type(kind, obj)
        warnings = self._field_validation(kind, obj, field_validation)
        ns = self._place(kind, namespace, obj)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        generated = not meta.get("name") and bool(meta.get("generateName"))
        for _ in range(MAX_GENERATE_NAME_ATTEMPTS if generated else 1):
            candidate = copy.deepcopy(obj)
            if generated:
                candidate["metadata"]["name"] = codec.generate_name(str(meta["generateName"]))
            try:
                return await self._create_once(kind, strategy, ns, candidate, dry_run,
                                               field_manager if record else None), warnings
            except APIError as err:
                if not (generated and err.reason == "AlreadyExists"):
                    raise
        raise APIError(409, "AlreadyExists",
                       f'{kind.resource} "{meta["generateName"]}" already exists, the server was not '
                       "able to generate a unique name for the object",
                       {"name": meta["generateName"], "group": kind.group, "kind": kind.plural})

    async def _create_once(self, kind: KindInfo, strategy: Strategy, ns: str | None, obj: Obj,
                           dry_run: bool, field_manager: str | None) -> Obj:
        meta = obj["metadata"]
        name = str(meta.get("name") or "")
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = codec.now_rfc3339()
        for f in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(f, None)
        if strategy.tracks_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        strategy.prepare_for_create(obj)
        strategy.default(obj)
        raise_invalid(kind.kind, name, strategy.validate(obj), kind.group)
        if field_manager is not None:
            obj = self._record_manager(kind, None, obj, field_manager, None)
        key = codec.object_key(kind, ns, name)
        base = obj
        for _ in range(codec.MAX_WRITE_ATTEMPTS):
            ns_kv = await self._live_namespace(kind, ns, name)
            obj = copy.deepcopy(base)  # each attempt allocates afresh
            plan = self._plan(kind, obj, None)
            if dry_run:
                if plan:
                    plan.abort()
                if await self.storage.get(key) is not None:  # as the real write would fail
                    raise already_exists(kind.plural, name, kind.group)
                return obj
            compares = [Compare(key, 0)]
            if ns_kv is not None:
                # the namespace must not start terminating between the check and the write
                compares.append(Compare(ns_kv.key, ns_kv.mod_revision))
            ops: builtins.list[Op] = [Put(key, codec.encode(obj))]
            if plan:
                compares += plan.compares()
                ops += plan.ops()
            res = await self.storage.txn(compares, ops)
            if res.succeeded:
                if plan:
                    plan.commit(res.revision)
                return codec.decode(res.kvs[key])
            if plan:
                plan.abort()
            if res.current.get(key) is not None:
                raise already_exists(kind.plural, name, kind.group)
            # The namespace changed, or another API server took a value we picked: learn
            # it (the allocation follower may not have seen it yet) and try again.
            for other, held in res.current.items():
                if held is not None:
                    self.allocator.observe_key(other, True, held.mod_revision)
        raise APIError(409, "Conflict", f'{kind.resource} "{name}": too many concurrent changes')

    def _plan(self, kind: KindInfo, obj: Obj, old: Obj | None) -> AllocationPlan | None:
        if kind is not k.SERVICES:
            return None
        meta = obj["metadata"]
        return self.allocator.plan(obj, old, owner=f"{meta.get('namespace')}/{meta.get('name')}")

    # -- update --------------------------------------------------------------------------

    @_internal_errors
    async def update(self, kind: KindInfo, namespace: str | None, name: str, obj: Obj, *,
                     subresource: str | None = None, dry_run: bool = False, field_manager: str = "",
                     field_validation: str = "Strict") -> tuple[Obj, builtins.list[str]]:
        strategy = self._strategy(kind)
        if subresource == "scale":
            scale.check_scale_body(obj)
            wanted = copy.deepcopy(obj)
            rv = str((wanted.get("metadata") or {}).get("resourceVersion") or "")
            return await subresources.write_scale(self, kind, namespace, name,
                                                  lambda current: wanted, rv, dry_run,
                                                  field_manager), []
        obj = self._check_type(kind, obj)
        warnings = self._field_validation(kind, obj, field_validation)
        ns = self._ns(kind, namespace)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on "
                              f"the URL ({name})")
        meta["name"] = name
        if kind.namespaced:
            self._place(kind, ns, obj)
        else:
            meta.pop("namespace", None)
        requested_rv = str(meta.get("resourceVersion") or "")
        key = codec.object_key(kind, ns, name)
        for _ in range(codec.MAX_WRITE_ATTEMPTS):
            kv = await self.storage.get(key)
            if kv is None:
                if subresource or not strategy.allow_create_on_update:
                    raise not_found(kind.plural, name, kind.group)
                if requested_rv:
                    raise not_found(kind.plural, name, kind.group)
                return await self.create(kind, ns, obj, dry_run=dry_run, field_manager=field_manager,
                                         field_validation="Ignore")
            old = codec.decode(kv)
            if requested_rv and requested_rv != str(kv.mod_revision):
                raise conflict(kind.plural, name, kind.group)
            try:
                result = await self._update_from(kind, strategy, kv, old, copy.deepcopy(obj),
                                                 subresource, dry_run, field_manager, "Update")
            except Stale:
                if requested_rv:
                    raise conflict(kind.plural, name, kind.group) from None
                continue
            return result, warnings
        raise conflict(kind.plural, name, kind.group)

    async def _update_from(self, kind: KindInfo, strategy: Strategy, kv: KeyValue, old: Obj,
                           new: Obj, subresource: str | None, dry_run: bool, field_manager: str,
                           operation: str, *, recorded_subresource: str | None = None) -> Obj:
        """Turn the requested object into the stored one and write it if it changed.
        Raises Stale when the object moved on since `kv` was read. `recorded_subresource`
        names the managedFields entry's subresource for a write that arrived through a
        view of the object (deployments/scale) but is applied as a main-resource write."""
        name = old["metadata"]["name"]
        new["kind"], new["apiVersion"] = kind.kind, kind.api_version
        if not isinstance(new.get("metadata"), dict):
            new["metadata"] = {}
        if subresource == "status":
            if not strategy.has_status:
                raise not_found(f"{kind.plural}/status", name, kind.group)
            strategy.prepare_for_status_update(new, old)
        elif subresource == "finalize" and kind is k.NAMESPACES:
            fins = (new.get("spec") or {}).get("finalizers") or []
            new.clear()
            new.update(copy.deepcopy(old))
            new.setdefault("spec", {})["finalizers"] = fins
        elif subresource:
            raise not_found(f"{kind.plural}/{subresource}", name, kind.group)
        else:
            nm, om = new["metadata"], old["metadata"]
            for f in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "generation", "namespace", "name"):
                if f in om:
                    nm[f] = om[f]
                else:
                    nm.pop(f, None)
            strategy.prepare_for_update(new, old)
        new["metadata"].pop("resourceVersion", None)
        new["metadata"].pop("selfLink", None)
        strategy.default(new)
        errs: builtins.list[FieldError] = strategy.validate(new)
        errs += object_meta_update(new["metadata"], old["metadata"])
        errs += strategy.validate_update(new, old)
        if subresource == "status":
            errs += strategy.validate_status(new, old)
        if old["metadata"].get("deletionTimestamp"):
            added = set(new["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
            if added:
                errs.append(forbidden("metadata.finalizers",
                                      "no new finalizers can be added if the object is being deleted, "
                                      f"found new finalizers {json.dumps(sorted(added))}"))
        raise_invalid(kind.kind, name, errs, kind.group)
        if strategy.tracks_generation and strategy.spec_changed(new, old):
            new["metadata"]["generation"] = int(old["metadata"].get("generation") or 0) + 1
        if operation != "Apply":
            new = self._record_manager(kind, old, new, field_manager, recorded_subresource or subresource)
        if _same(new, old):
            return old  # a no-op write: no new resourceVersion, no watch event
        plan = self._plan(kind, new, old) if subresource is None else None
        if dry_run:
            if plan:
                plan.abort()
            return new | {"metadata": {**new["metadata"], "resourceVersion": old["metadata"]["resourceVersion"]}}
        meta = new["metadata"]
        finalize = (meta.get("deletionTimestamp") and not meta.get("finalizers")
                    and not meta.get("deletionGracePeriodSeconds"))
        if finalize and kind is not k.NAMESPACES:
            # The last finalizer is gone: the deletion that was waiting completes now.
            if plan:
                plan.abort()
            return await self._remove(kind, kv, new)
        compares = [Compare(kv.key, kv.mod_revision)]
        ops: builtins.list[Op] = [Put(kv.key, codec.encode(new))]
        if plan:
            compares += plan.compares()
            ops += plan.ops()
        res = await self.storage.txn(compares, ops)
        if not res.succeeded:
            if plan:
                plan.abort()
            raise Stale()
        if plan:
            plan.commit(res.revision)
        stored = codec.decode(res.kvs[kv.key])
        if kind is k.NAMESPACES and meta.get("deletionTimestamp"):
            await lifecycle.maybe_finalize_namespace(self, name)
        return stored

    # -- patch ---------------------------------------------------------------------------

    @_internal_errors
    async def patch(self, kind: KindInfo, namespace: str | None, name: str, patch_type: str,
                    body: bytes, *, subresource: str | None = None, dry_run: bool = False,
                    field_manager: str = "", force: bool = False, field_validation: str = "Strict"
                    ) -> tuple[Obj, bool, builtins.list[str]]:
        from svcnet.controlplane.registry import patch as patches
        from svcnet.controlplane.registry.schema import node_for

        strategy = self._strategy(kind)
        if patch_type not in _PATCH_TYPES:
            raise APIError(415, "UnsupportedMediaType", f"unsupported patch type {patch_type!r}")
        apply = patch_type == "application/apply-patch+yaml"
        try:
            doc = yaml.safe_load(body) if apply else json.loads(body or b"null")
        except (ValueError, yaml.YAMLError) as err:
            raise bad_request(f"error decoding patch: {err}") from None
        if patch_type == "application/json-patch+json":
            if not isinstance(doc, list):
                raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        elif not isinstance(doc, dict):
            raise bad_request("error decoding patch: the patch must be a JSON object")
        if apply and not field_manager:
            raise bad_request("PATCH, application/apply-patch+yaml requires fieldManager parameter")
        if subresource == "scale":
            scale_node = node_for(scale.SCALE_DEFINITION)

            def patched(current: Obj) -> Obj:
                if patch_type == "application/json-patch+json":
                    return patches.json_patch(current, doc)
                if patch_type == "application/merge-patch+json":
                    return patches.merge_patch(current, doc)
                if patch_type == "application/strategic-merge-patch+json":
                    return patches.strategic_merge_patch(current, doc, scale_node)
                scale.check_scale_body(doc)
                out = patches.apply_patch(current, doc, field_manager, force, scale_node)
                out.get("metadata", {}).pop("managedFields", None)
                return out

            rv = str((doc.get("metadata") or {}).get("resourceVersion") or "") \
                if _patch_sets_rv(patch_type, doc) else ""
            return await subresources.write_scale(self, kind, namespace, name, patched, rv,
                                                  dry_run, field_manager), False, []
        node = node_for(kind.definition) if kind.definition else None
        ns = self._ns(kind, namespace)
        key = codec.object_key(kind, ns, name)
        for _ in range(codec.MAX_WRITE_ATTEMPTS):
            kv = await self.storage.get(key)
            if kv is None:
                if not apply or subresource:
                    raise not_found(kind.plural, name, kind.group)
                applied = self._check_type(kind, doc)
                applied["metadata"].setdefault("name", name)
                if applied["metadata"]["name"] != name:
                    raise bad_request(f"the name of the object ({applied['metadata']['name']}) does "
                                      f"not match the name on the URL ({name})")
                new = patches.apply_patch(None, applied, field_manager, force, node,
                                          reset_fields=_reset_fields(kind, None))
                new.get("metadata", {}).pop("resourceVersion", None)
                warnings = self._field_validation(kind, new, field_validation)
                created, _ = await self._create(kind, ns, new, dry_run, field_manager, "Ignore",
                                                record=False)
                return created, True, warnings
            old = codec.decode(kv)
            current = copy.deepcopy(old)
            if patch_type == "application/json-patch+json":
                new = patches.json_patch(current, doc)
            elif patch_type == "application/merge-patch+json":
                new = patches.merge_patch(current, doc)
            elif patch_type == "application/strategic-merge-patch+json":
                new = patches.strategic_merge_patch(current, doc, node)
            else:
                applied = self._check_type(kind, doc)
                new = patches.apply_patch(current, applied, field_manager, force, node,
                                          subresource=subresource or "",
                                          reset_fields=_reset_fields(kind, subresource))
            if not isinstance(new, dict):
                raise APIError(422, "Invalid", "the patched object must be a JSON object")
            # A patch that sets resourceVersion makes it a precondition; otherwise the
            # patch is re-applied to the latest object until it lands (kube's patcher).
            requested_rv = (str((new.get("metadata") or {}).get("resourceVersion") or "")
                            if _patch_sets_rv(patch_type, doc) else "")
            if requested_rv and requested_rv != str(kv.mod_revision):
                raise conflict(kind.plural, name, kind.group)
            new = self._check_type(kind, new)
            if new["metadata"].get("name", name) != name:
                raise bad_request("metadata.name: Invalid value: the name of the object may not change")
            warnings = self._field_validation(kind, new, field_validation)
            try:
                result = await self._update_from(kind, strategy, kv, old, new, subresource, dry_run,
                                                 field_manager, "Apply" if apply else "Update")
            except Stale:
                if requested_rv:
                    raise conflict(kind.plural, name, kind.group) from None
                continue
            return result, False, warnings
        raise conflict(kind.plural, name, kind.group)

    # -- pod subresources that are POSTed ----------------------------------------------

    @_internal_errors
    async def bind(self, namespace: str, name: str, binding: Obj, *, dry_run: bool = False) -> Obj:
        """POST pods/NAME/binding (see `subresources.bind`)."""
        return await subresources.bind(self, namespace, name, binding, dry_run=dry_run)

    @_internal_errors
    async def evict(self, namespace: str, name: str, eviction: Obj, *, dry_run: bool = False) -> Obj:
        """POST pods/NAME/eviction (see `subresources.evict`)."""
        return await subresources.evict(self, namespace, name, eviction, dry_run=dry_run)

    # -- delete --------------------------------------------------------------------------

    @_internal_errors
    async def delete(self, kind: KindInfo, namespace: str | None, name: str, *,
                     options: dict[str, Any] | None = None, dry_run: bool = False) -> Obj:
        strategy = self._strategy(kind)
        opts = options or {}
        ns = self._ns(kind, namespace)
        key = codec.object_key(kind, ns, name)
        policy = opts.get("propagationPolicy") or "Background"
        if policy not in ("Background", "Foreground", "Orphan"):
            raise bad_request(f'propagationPolicy: Unsupported value: "{policy}": supported values: '
                              '"Background", "Foreground", "Orphan"')
        if kind is k.NAMESPACES and name in PROTECTED_NAMESPACES:
            raise APIError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may '
                           "not be deleted", {"name": name, "kind": "namespaces"})
        for _ in range(codec.MAX_WRITE_ATTEMPTS):
            kv = await self.storage.get(key)
            if kv is None:
                raise not_found(kind.plural, name, kind.group)
            old = codec.decode(kv)
            self._check_preconditions(kind, old, opts.get("preconditions") or {})
            try:
                if kind is k.NAMESPACES:
                    return await lifecycle.delete_namespace(self, kv, old, dry_run)
                result = await self._delete_once(kind, strategy, kv, old, opts, dry_run)
            except Stale:
                continue
            return result
        raise conflict(kind.plural, name, kind.group)

    @staticmethod
    def _check_preconditions(kind: KindInfo, obj: Obj, pre: dict[str, Any]) -> None:
        meta = obj["metadata"]
        name = meta.get("name", "")
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise APIError(409, "Conflict", f'Operation cannot be fulfilled on {kind.resource} "{name}": '
                           f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                           f"meta: {meta.get('uid')}", {"name": name, "group": kind.group, "kind": kind.plural})
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise APIError(409, "Conflict", f'Operation cannot be fulfilled on {kind.resource} "{name}": '
                           "Precondition failed: ResourceVersion in precondition: "
                           f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                           f"{meta.get('resourceVersion')}",
                           {"name": name, "group": kind.group, "kind": kind.plural})

    async def _delete_once(self, kind: KindInfo, strategy: Strategy, kv: KeyValue, old: Obj,
                           opts: dict[str, Any], dry_run: bool) -> Obj:
        meta = old["metadata"]
        if kind is k.PODS:
            grace = self._pod_grace(old, opts)
            if grace > 0:
                current = meta.get("deletionGracePeriodSeconds")
                if meta.get("deletionTimestamp") and current is not None and current <= grace:
                    return old  # already terminating at least this fast
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = codec.now_rfc3339(grace)
                new["metadata"]["deletionGracePeriodSeconds"] = grace
                return await self._write_meta(kv, new, dry_run)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp") and not meta.get("deletionGracePeriodSeconds"):
                return old
            new = copy.deepcopy(old)
            new["metadata"].setdefault("deletionTimestamp", codec.now_rfc3339())
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return await self._write_meta(kv, new, dry_run)
        if dry_run:
            return old
        return await self._remove(kind, kv, old, orphan=opts.get("propagationPolicy") == "Orphan")

    @staticmethod
    def _pod_grace(pod: Obj, opts: dict[str, Any]) -> int:
        """kube's pod graceful deletion: unscheduled or finished pods go at once."""
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0
        grace = opts.get("gracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        try:
            return max(0, int(grace))
        except (TypeError, ValueError):
            raise bad_request(f"gracePeriodSeconds: Invalid value: {grace!r}") from None

    async def _write_meta(self, kv: KeyValue, new: Obj, dry_run: bool) -> Obj:
        if dry_run:
            return new
        res = await self.storage.update(kv.key, codec.encode(new), kv.mod_revision)
        if not res.succeeded:
            raise Stale()
        return codec.decode(res.kvs[kv.key])

    async def _remove(self, kind: KindInfo, kv: KeyValue, last: Obj, *, orphan: bool = False) -> Obj:
        """Delete the key (and a Service's allocations) if it is still at `kv`'s revision,
        then collect (or orphan) its dependents in the background."""
        plan = self.allocator.release_all(last) if kind is k.SERVICES else None
        ops: builtins.list[Op] = [Delete(kv.key)]
        if plan:
            ops += plan.ops()
        res = await self.storage.txn([Compare(kv.key, kv.mod_revision)], ops)
        if not res.succeeded:
            raise Stale()
        if plan:
            plan.commit(res.revision)
        out = copy.deepcopy(last)
        out["metadata"]["resourceVersion"] = str(res.revision)
        uid = out["metadata"].get("uid")
        if uid and kind is not k.NAMESPACES:
            task = asyncio.create_task(lifecycle.collect(self, uid, res.revision, orphan))
            self._gc_tasks.add(task)
            task.add_done_callback(self._gc_tasks.discard)
        ns = out["metadata"].get("namespace")
        if kind.namespaced and ns:
            await lifecycle.maybe_finalize_namespace(self, ns)
        return out

    @_internal_errors
    async def delete_collection(self, kind: KindInfo, namespace: str | None, *, label_selector: str = "",
                                field_selector: str = "", dry_run: bool = False) -> Obj:
        listed = await self.list(kind, namespace, label_selector=label_selector,
                                 field_selector=field_selector)
        items = []
        for obj in listed["items"]:
            meta = obj["metadata"]
            try:
                items.append(await self.delete(kind, meta.get("namespace"), meta["name"],
                                               options={"preconditions": {"uid": meta.get("uid")}},
                                               dry_run=dry_run))
            except APIError as err:
                if err.code not in (404, 409):
                    raise
        return {"kind": kind.list_kind, "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self.storage.revision)}, "items": items}

    async def wait_for_gc(self) -> None:
        """Wait until background garbage collection has settled (for tests and shutdown)."""
        while self._gc_tasks:
            await asyncio.gather(*list(self._gc_tasks), return_exceptions=True)

    # -- watch ---------------------------------------------------------------------------

    def watch(self, kind: KindInfo, namespace: str | None, *, label_selector: str = "",
              field_selector: str = "", resource_version: str = "",
              allow_bookmarks: bool = False, send_initial_events: bool | None = None
              ) -> AsyncIterator[tuple[str, Obj]]:
        """Events for `kind` (see `watch.watch_objects` for the semantics, also of
        `send_initial_events`: None is a plain watch)."""
        self._strategy(kind)
        return watch_objects(self.storage, kind, codec.kind_prefix(kind, self._ns(kind, namespace)),
                             lambda: self._selectors(kind, label_selector, field_selector),
                             resource_version=resource_version,
                             bookmark_interval=self.bookmark_interval if allow_bookmarks else None,
                             send_initial_events=send_initial_events,
                             freshness_timeout=self.freshness_timeout)

    # -- maintenance ---------------------------------------------------------------------

    async def _maintenance(self) -> None:
        """Every `compaction_interval`: compact the history to where it stood one
        interval ago (so watches and continue tokens live at least that long, as with
        kube's 5-minute etcd compaction) and expire old Events."""
        while True:
            await asyncio.sleep(self.compaction_interval)
            try:
                await self.maintain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registry maintenance failed")

    async def maintain(self) -> None:
        """One maintenance round (see `_maintenance`)."""
        mark = self._compaction_mark
        self._compaction_mark = self.storage.revision
        if mark > self.storage.compact_revision:
            await self.storage.compact(mark)
        await self.expire_events()

    async def _keep_bootstrap(self, apiserver_ip: str, apiserver_port: int) -> None:
        """Re-assert the bootstrap objects every `bootstrap_interval` (kube's bootstrap
        controller does it every 10 s): a deleted `kubernetes` Service comes back."""
        from svcnet.controlplane.registry.bootstrap import bootstrap

        while True:
            await asyncio.sleep(self.bootstrap_interval)
            try:
                await bootstrap(self, apiserver_ip, apiserver_port)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("bootstrap reconcile failed: %s", err)

    async def expire_events(self) -> int:
        """Delete Events older than `event_ttl` (kube-apiserver keeps them in etcd with a
        lease of --event-ttl); returns how many went."""
        cutoff = codec.parse_rfc3339(codec.now_rfc3339(-int(self.event_ttl)))
        assert cutoff is not None
        gone_count = 0
        for kv in (await self.storage.range(codec.kind_prefix(k.EVENTS))).kvs:
            ev = codec.decode(kv)
            stamp = (ev.get("lastTimestamp") or ev.get("eventTime")
                     or ev["metadata"].get("creationTimestamp") or "")
            when = codec.parse_rfc3339(str(stamp)[:19] + "Z" if stamp else "")
            if when is not None and when < cutoff:
                with contextlib.suppress(Stale):
                    await self._remove(k.EVENTS, kv, ev)
                    gone_count += 1
        return gone_count


_OMIT_EMPTY_META = ("labels", "annotations", "finalizers", "ownerReferences")


def _patch_sets_rv(patch_type: str, doc: Any) -> bool:
    if patch_type == "application/json-patch+json":
        return any(isinstance(op, dict) and op.get("path") == "/metadata/resourceVersion"
                   and op.get("op") in ("add", "replace") for op in doc)
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    return isinstance(meta, dict) and bool(meta.get("resourceVersion"))


def _reset_fields(kind: KindInfo, subresource: str | None) -> tuple[str, ...]:
    """Fields a write cannot set, so the field manager does not record them."""
    if "status" not in kind.subresources:
        return ()
    return ("spec",) if subresource == "status" else ("status",)


def _same(new: Obj, old: Obj) -> bool:
    """Equal apart from resourceVersion (a no-op write). The field manager keeps an
    entry's time when its ownership did not change, so managedFields compare too."""
    def strip(o: Obj) -> Obj:
        meta = {f: v for f, v in (o.get("metadata") or {}).items() if f != "resourceVersion"}
        return {**o, "metadata": meta}
    return strip(new) == strip(old)
