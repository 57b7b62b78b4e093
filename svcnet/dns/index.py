"""ClusterIndex: the live DNS data, updated record by record from the informers.

This is the only state cluster answers are computed from (CoreDNS keeps no cache of
authoritative data either: "the watch-fed index *is* the cache"). It holds the
converted records plus the reverse indexes CoreDNS keeps (`svcIPIndexFunc`,
`epIPIndexFunc`, the pod IP index), the SOA serial, and whether the first list has
synced.

Contract:
* Mutations (`set_*`) run on the event-loop thread only. Each one that changes DNS
  data bumps `version`, sets the serial to the current Unix time and calls the change
  listeners synchronously, so the response caches are flushed before the next query
  is looked up on that thread. Listeners are told what changed (kube-proxy's change
  tracking): the (namespace, service) pairs whose own names may answer differently,
  or None when anything may have (a namespace, a pod, the first sync).
* Readers on other threads only read the response caches, never this index.
* A namespace exists when a Namespace object says so or when any Service,
  EndpointSlice or Pod lives in it. In a real cluster both are the same (objects
  cannot outlive their namespace); for `--objects` files, which often leave Namespace
  objects out, it keeps names resolvable.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Callable

from svcnet.dns.records import PodRecord, ServiceRecord, SliceRecord

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


def norm_ip(ip: str) -> str:
    """The canonical text of an address, so reverse lookups match however it was written."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


class ClusterIndex:
    """Services, EndpointSlices, Pods and Namespaces as DNS sees them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.services: dict[Key, ServiceRecord] = {}
        self.slices: dict[Key, SliceRecord] = {}
        self.slices_by_service: dict[Key, dict[str, SliceRecord]] = {}
        self.pods: dict[Key, PodRecord] = {}
        self.namespace_objects: set[str] = set()
        self._ns_refs: dict[str, int] = {}
        self.svc_by_ip: dict[str, set[Key]] = {}
        self.slice_by_ip: dict[str, set[Key]] = {}
        self.pod_by_ip: dict[str, set[Key]] = {}
        self.version = 0
        self.serial = 0
        self.synced = False
        self._listeners: list[Callable[[list[Key] | None], None]] = []

    # -- reading ---------------------------------------------------------------

    def namespace_exists(self, ns: str) -> bool:
        return ns in self.namespace_objects or self._ns_refs.get(ns, 0) > 0

    def service(self, ns: str, name: str) -> ServiceRecord | None:
        return self.services.get((ns, name))

    def service_slices(self, ns: str, name: str) -> list[SliceRecord]:
        by_name = self.slices_by_service.get((ns, name))
        if not by_name:
            return []
        return [by_name[k] for k in sorted(by_name)]

    def services_with_ip(self, ip: str) -> list[ServiceRecord]:
        return [self.services[k] for k in sorted(self.svc_by_ip.get(norm_ip(ip), ()))]

    def slices_with_ip(self, ip: str) -> list[SliceRecord]:
        return [self.slices[k] for k in sorted(self.slice_by_ip.get(norm_ip(ip), ()))]

    def pods_with_ip(self, ip: str) -> list[PodRecord]:
        return [self.pods[k] for k in sorted(self.pod_by_ip.get(norm_ip(ip), ()))]

    # -- change notification ---------------------------------------------------

    def add_listener(self, fn: Callable[[list[Key] | None], None]) -> None:
        """`fn(services)` after every change: the (namespace, name) of the Services whose
        names may answer differently, or None for "anything"."""
        self._listeners.append(fn)

    def _changed(self, services: list[Key] | None) -> None:
        self.version += 1
        self.serial = int(self._clock())
        for fn in self._listeners:
            fn(services)

    def mark_synced(self) -> None:
        if not self.synced:
            self.synced = True
            if not self.serial:
                self.serial = int(self._clock())
            self.version += 1
            for fn in self._listeners:
                fn(None)

    # -- mutation --------------------------------------------------------------

    def _ref(self, ns: str, delta: int) -> None:
        n = self._ns_refs.get(ns, 0) + delta
        if n > 0:
            self._ns_refs[ns] = n
        else:
            self._ns_refs.pop(ns, None)

    def set_namespace(self, name: str, present: bool) -> bool:
        if present == (name in self.namespace_objects):
            return False
        if present:
            self.namespace_objects.add(name)
        else:
            self.namespace_objects.discard(name)
        self._changed(None)
        return True

    def set_service(self, key: Key, rec: ServiceRecord | None) -> bool:
        """Store or remove a Service; returns whether DNS data changed."""
        old = self.services.get(key)
        if old == rec:
            return False
        if old is not None:
            for ip in old.cluster_ips:
                _discard(self.svc_by_ip, norm_ip(ip), key)
            self._ref(key[0], -1)
            del self.services[key]
        if rec is not None:
            self.services[key] = rec
            for ip in rec.cluster_ips:
                self.svc_by_ip.setdefault(norm_ip(ip), set()).add(key)
            self._ref(key[0], +1)
        self._changed([key])
        return True

    def set_slice(self, key: Key, rec: SliceRecord | None) -> bool:
        """Store or remove an EndpointSlice; returns whether DNS data changed."""
        old = self.slices.get(key)
        if old == rec:
            if old is not None and rec is not None:
                self.slices[key] = rec  # keep the newest trigger time
            return False
        if old is not None:
            for a in old.addresses:
                _discard(self.slice_by_ip, norm_ip(a.ip), key)
            group = self.slices_by_service.get((key[0], old.service))
            if group is not None:
                group.pop(key[1], None)
                if not group:
                    del self.slices_by_service[(key[0], old.service)]
            self._ref(key[0], -1)
            del self.slices[key]
        if rec is not None:
            self.slices[key] = rec
            for a in rec.addresses:
                self.slice_by_ip.setdefault(norm_ip(a.ip), set()).add(key)
            if rec.service:
                self.slices_by_service.setdefault((key[0], rec.service), {})[key[1]] = rec
            self._ref(key[0], +1)
        owners = {(key[0], r.service) for r in (old, rec) if r is not None}
        self._changed(sorted(owners))
        return True

    def set_pod(self, key: Key, rec: PodRecord | None) -> bool:
        old = self.pods.get(key)
        if old == rec:
            return False
        if old is not None:
            for ip in old.ips:
                _discard(self.pod_by_ip, norm_ip(ip), key)
            self._ref(key[0], -1)
            del self.pods[key]
        if rec is not None:
            self.pods[key] = rec
            for ip in rec.ips:
                self.pod_by_ip.setdefault(norm_ip(ip), set()).add(key)
            self._ref(key[0], +1)
        self._changed(None)
        return True


def _discard(index: dict[str, set[Key]], value: str, key: Key) -> None:
    bucket = index.get(value)
    if bucket is not None:
        bucket.discard(key)
        if not bucket:
            del index[value]
