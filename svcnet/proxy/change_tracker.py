"""Change tracking: informer events in, "what changed since the last sync" out.

Handlers are spelled like kube-proxy's (`on_service_add`, `on_service_update(old,
new)`, `on_service_delete`, `on_endpoint_slice_*`, `on_node_*`,
`on_service_cidrs_changed`). Each converts its one object into the proxy's model at
once, as kube-proxy's ServiceChangeTracker and endpointSliceCache do (the work is
spread over the arrival of objects, not piled into the sync), keeps only the latest
conversion per key, and marks the owning Service dirty. Many events for one Service
between two syncs are coalesced: `checkpoint()` merges the slices of each dirty
Service, compares with what the previous checkpoint produced, and reports only the
service ports that really differ. That one answer drives partial syncs, UDP
conntrack cleanup (previous vs current endpoints) and network-programming latency
(the slices' `last-change-trigger-time`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from svcnet.apiclient.objects import Obj, key_of
from svcnet.proxy.model import (
    Endpoint,
    PortEndpoints,
    ServicePort,
    ServicePortName,
    endpoints_by_port,
    merge_port_endpoints,
    service_ports,
    slice_family,
    slice_service_key,
    trigger_time,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Changes:
    """One checkpoint's worth of differences."""

    services: frozenset[ServicePortName] = frozenset()  # ports whose rules may differ
    # per family: the endpoints each changed port had before (for conntrack cleanup)
    previous_endpoints: dict[int, dict[ServicePortName, tuple[Endpoint, ...]]] = field(default_factory=dict)
    trigger_times: tuple[float, ...] = ()  # epoch seconds of the slice changes behind this sync
    node_changed: bool = False  # Node labels/addresses or ServiceCIDRs: forces a full sync

    def __bool__(self) -> bool:
        return bool(self.services) or self.node_changed


class ChangeTracker:
    """Latest Services/EndpointSlices per key, converted per IP family on checkpoint."""

    def __init__(self, node_name: str, families: tuple[int, ...] = (4, 6)) -> None:
        self.node_name = node_name
        self.families = families
        # converted at event time: service key -> family -> ports; slice key ->
        # (service key, address family, endpoints per port)
        self._services: dict[str, dict[int, dict[ServicePortName, ServicePort]]] = {}
        self._slices: dict[str, tuple[str, int | None, PortEndpoints]] = {}
        self._slices_of: dict[str, set[str]] = {}  # service key -> slice keys
        self._dirty: set[str] = set()
        self._triggers: list[float] = []
        self._node_dirty = False
        self.node: Obj | None = None
        self.service_cidrs: dict[str, Obj] = {}
        # converted state, per family
        self.ports: dict[int, dict[ServicePortName, ServicePort]] = {f: {} for f in families}
        self.endpoints: dict[int, dict[ServicePortName, tuple[Endpoint, ...]]] = {f: {} for f in families}
        self._ports_of: dict[str, dict[int, list[ServicePortName]]] = {}
        self.pending_service_changes = 0
        self.pending_endpoint_changes = 0

    # -- Services ---------------------------------------------------------------------

    def on_service_add(self, svc: Obj) -> None:
        key = key_of(svc)
        self._services[key] = {f: service_ports(svc, f) for f in self.families}
        self._mark(key, service=True)

    def on_service_update(self, old: Obj, new: Obj) -> None:
        self.on_service_add(new)

    def on_service_delete(self, svc: Obj) -> None:
        self._services.pop(key_of(svc), None)
        self._mark(key_of(svc), service=True)

    # -- EndpointSlices ------------------------------------------------------------------

    def on_endpoint_slice_add(self, eps: Obj) -> None:
        key = key_of(eps)
        self._forget_slice(key)
        svc = slice_service_key(eps)
        if svc is None:
            return
        family = slice_family(eps)
        converted = endpoints_by_port([eps], family, self.node_name) if family in self.families else {}
        self._slices[key] = (svc, family, converted)
        self._slices_of.setdefault(svc, set()).add(key)
        self._note_trigger(eps)
        self._mark(svc, service=False)

    def on_endpoint_slice_update(self, old: Obj, new: Obj) -> None:
        self.on_endpoint_slice_add(new)

    def on_endpoint_slice_delete(self, eps: Obj) -> None:
        self._forget_slice(key_of(eps))

    def _forget_slice(self, key: str) -> None:
        old = self._slices.pop(key, None)
        if old is None:
            return
        svc = old[0]
        self._slices_of.get(svc, set()).discard(key)
        self._mark(svc, service=False)

    def _note_trigger(self, eps: Obj) -> None:
        stamp = trigger_time(eps)
        if not stamp:
            return
        try:
            self._triggers.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
        except ValueError:
            log.debug("unparseable trigger time %r on slice %s", stamp, key_of(eps))

    # -- Node and ServiceCIDRs ---------------------------------------------------------------

    def on_node_add(self, node: Obj) -> None:
        if key_of(node) != self.node_name:
            return
        if self.node is None or _node_view(self.node) != _node_view(node):
            self._node_dirty = True
        self.node = node

    def on_node_update(self, old: Obj, new: Obj) -> None:
        self.on_node_add(new)

    def on_node_delete(self, node: Obj) -> None:
        if key_of(node) == self.node_name:
            self.node = node  # keep the last state; healthz reports the node ineligible
            self._node_dirty = True

    def on_service_cidrs_changed(self, cidrs: dict[str, Obj]) -> None:
        self.service_cidrs = dict(cidrs)
        self._node_dirty = True

    # -- checkpoint ---------------------------------------------------------------------------

    def _mark(self, svc_key: str, service: bool) -> None:
        self._dirty.add(svc_key)
        if service:
            self.pending_service_changes += 1
        else:
            self.pending_endpoint_changes += 1

    @property
    def has_pending(self) -> bool:
        return bool(self._dirty) or self._node_dirty

    def checkpoint(self) -> Changes:
        """Convert every dirty Service and return what differs from the last checkpoint."""
        changed: set[ServicePortName] = set()
        previous: dict[int, dict[ServicePortName, tuple[Endpoint, ...]]] = {f: {} for f in self.families}
        for svc_key in self._dirty:
            for family in self.families:
                old_names = self._ports_of.get(svc_key, {}).get(family, [])
                new_ports = self._convert(svc_key, family)
                old_ports = {n: self.ports[family].pop(n) for n in old_names if n in self.ports[family]}
                old_eps = {n: self.endpoints[family].pop(n, ()) for n in old_names}
                for name, (sp, eps) in new_ports.items():
                    self.ports[family][name] = sp
                    self.endpoints[family][name] = eps
                    if old_ports.get(name) != sp or old_eps.get(name, ()) != eps:
                        changed.add(name)
                        previous[family][name] = old_eps.get(name, ())
                for name in old_ports.keys() - new_ports.keys():
                    changed.add(name)
                    previous[family][name] = old_eps.get(name, ())
                self._ports_of.setdefault(svc_key, {})[family] = list(new_ports)
        changes = Changes(
            services=frozenset(changed),
            previous_endpoints=previous,
            trigger_times=tuple(self._triggers),
            node_changed=self._node_dirty,
        )
        self._dirty.clear()
        self._triggers.clear()
        self._node_dirty = False
        self.pending_service_changes = self.pending_endpoint_changes = 0
        return changes

    def _convert(self, svc_key: str, family: int) -> dict[ServicePortName, tuple[ServicePort, tuple[Endpoint, ...]]]:
        ports = (self._services.get(svc_key) or {}).get(family)
        if not ports:
            return {}
        parts = [conv for svc, fam, conv in (self._slices[k] for k in sorted(self._slices_of.get(svc_key, ())))
                 if fam == family]
        by_port = merge_port_endpoints(parts) if parts else {}
        return {name: (sp, by_port.get((name.port, name.protocol), ())) for name, sp in ports.items()}


def _node_view(node: Obj) -> tuple[object, ...]:
    """The parts of a Node the rules depend on (labels, addresses, pod CIDRs)."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    return (
        meta.get("labels"),
        (node.get("status") or {}).get("addresses"),
        spec.get("podCIDRs"),
        spec.get("podCIDR"),
    )
