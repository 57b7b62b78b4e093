"""The EndpointSlice controller's write side: events → Service keys → `reconcile_slices`
→ creates, updates and deletes (the plan itself lives in `endpointslice.py`)."""

from __future__ import annotations

import logging
from typing import Any

from svcnet.apiclient import errors
from svcnet.apiclient.informer import FuncHandler
from svcnet.apiclient.objects import Obj, key_of, labels_of, meta, name_of, namespace_of
from svcnet.apiclient.resources import ENDPOINT_SLICES
from svcnet.controlplane.controllers import endpointslice as es
from svcnet.controlplane.controllers import metrics
from svcnet.controlplane.controllers.base import Controller, WriteTracker
from svcnet.controlplane.controllers.config import ManagerConfig
from svcnet.controlplane.controllers.informers import SERVICE_INDEX, Informers, slice_service_key
from svcnet.controlplane.controllers.pod_status import selector_matches, zone_of
from svcnet.controlplane.controllers.trigger_time import TriggerTimeTracker

log = logging.getLogger(__name__)


class EndpointSliceController(Controller):
    name = "endpointslice"

    def __init__(self, inf: Informers, client: Any, config: ManagerConfig) -> None:
        super().__init__()
        self.inf, self.client, self.config = inf, client, config
        self.triggers = TriggerTimeTracker()
        self.written = WriteTracker()  # our slice writes the cache must show before we plan again
        inf.services.add_handler(FuncHandler(
            on_add=lambda s: self.enqueue(key_of(s)),
            on_update=lambda o, n: self.enqueue(key_of(n)),
            on_delete=lambda s: self.enqueue(key_of(s))))
        inf.pods.add_handler(FuncHandler(
            on_add=self._pod_changed, on_update=self._pod_changed, on_delete=self._pod_changed))
        inf.slices.add_handler(FuncHandler(
            on_add=self._slice_changed, on_update=lambda o, n: self._slice_changed(n),
            on_delete=lambda s: self._slice_changed(s, deleted=True)))
        inf.nodes.add_handler(FuncHandler(on_update=self._node_changed))

    def _pod_changed(self, *pods: Obj) -> None:
        for svc in self.inf.services.by_index("namespace", namespace_of(pods[-1])):
            selector = (svc.get("spec") or {}).get("selector") or {}
            if selector and any(selector_matches(selector, labels_of(p)) for p in pods):
                self.enqueue(key_of(svc))

    def _slice_changed(self, obj: Obj, deleted: bool = False) -> None:
        for key in slice_service_key(obj):
            self.written.observed(key, name_of(obj), None if deleted else str(meta(obj).get("resourceVersion")))
            self.enqueue(key)

    def _node_changed(self, old: Obj, new: Obj) -> None:
        if zone_of(old) != zone_of(new):  # endpoints carry the zone: revisit every Service
            for key in self.inf.services.keys():
                self.enqueue(key)

    async def sync(self, key: str) -> None:
        existing = self.inf.slices.by_index(SERVICE_INDEX, key)
        self.written.check(key, {name_of(o): meta(o).get("resourceVersion") for o in existing})
        service = self.inf.services.get(key)
        trigger_state = None
        if service is None:
            self.triggers.forget(key)
            changes = es.SliceChanges(delete=existing)
        else:
            pods = self.inf.pods.by_index("namespace", namespace_of(service))
            selected = es.selected_pods(service, pods)
            trigger, trigger_state = self.triggers.compute(key, service, selected)
            zones = {name_of(n): z for n in self.inf.nodes.list() if (z := zone_of(n))}
            changes = es.reconcile_slices(service, selected, existing, zones,
                                          max_endpoints_per_slice=self.config.max_endpoints_per_slice,
                                          trigger_time=trigger)
        if not changes.empty:
            await self._write(key, changes)
        if trigger_state is not None:
            self.triggers.commit(key, trigger_state)

    async def _write(self, key: str, changes: es.SliceChanges) -> None:
        ns = key.partition("/")[0]
        for obj in changes.create:
            made = await self.client.create(ENDPOINT_SLICES, obj, ns)
            self.written.wrote(key, name_of(made), str(meta(made).get("resourceVersion") or ""))
        for obj in changes.update:
            made = await self.client.update(ENDPOINT_SLICES, obj, ns)
            self.written.wrote(key, name_of(made), str(meta(made).get("resourceVersion") or ""))
        for obj in changes.delete:
            try:
                await self.client.delete(ENDPOINT_SLICES, name_of(obj), ns)
            except errors.NotFound:
                pass
            self.written.wrote(key, name_of(obj), None)
        metrics.ENDPOINTSLICE_CHANGES.labels("create").inc(len(changes.create))
        metrics.ENDPOINTSLICE_CHANGES.labels("update").inc(len(changes.update))
        metrics.ENDPOINTSLICE_CHANGES.labels("delete").inc(len(changes.delete))
        log.info("endpointslices service=%s created=%d updated=%d deleted=%d", key,
                 len(changes.create), len(changes.update), len(changes.delete))
