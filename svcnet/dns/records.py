"""What DNS needs from Kubernetes objects, converted once at the informer boundary.

The informers hand us Kubernetes JSON (dicts). DNS keeps only the fields that change
an answer, as small frozen dataclasses, the way CoreDNS's `plugin/kubernetes/object`
strips Services and EndpointSlices down (its memory note: 75k backends OOMed the full
objects). Two records compare equal exactly when they answer the same, so "did this
update change DNS?" (and with it the SOA serial) is an equality test.

Conversion rules follow CoreDNS `object/service.go`, `object/endpoint.go`, `object/pod.go`:
* a Service is headless when `spec.clusterIP` is "None"; ExternalName when its type
  says so; every other type (ClusterIP, NodePort, LoadBalancer) answers its clusterIPs;
* an EndpointSlice contributes only ready endpoints (`conditions.ready` unset counts as
  ready); a targetRef name of 64 characters or more is dropped (not a valid label);
* a Pod counts only while it is not terminating and its phase is not
  Succeeded/Failed/Unknown.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

from svcnet.apiclient.objects import Obj, annotations_of, labels_of, meta

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"

CLUSTER_IP = "cluster_ip"
HEADLESS = "headless"
EXTERNAL_NAME = "external_name"


class RecordError(ValueError):
    """An object DNS cannot use; the message names the object and the field."""


@dataclass(frozen=True)
class PortRecord:
    name: str  # "" for an unnamed port
    protocol: str  # TCP, UDP or SCTP, as in the object
    port: int  # -1 when an EndpointSlice port has no number


@dataclass(frozen=True)
class ServiceRecord:
    namespace: str
    name: str
    kind: str  # CLUSTER_IP, HEADLESS or EXTERNAL_NAME
    cluster_ips: tuple[str, ...]  # empty for headless and ExternalName
    external_name: str  # lower case, no trailing dot; "" unless EXTERNAL_NAME
    ports: tuple[PortRecord, ...]
    has_selector: bool = True

    @property
    def headless(self) -> bool:
        return self.kind == HEADLESS


@dataclass(frozen=True)
class EndpointAddress:
    ip: str  # as written in the slice (CoreDNS uses the string as is)
    hostname: str  # "" when unset
    target_pod: str  # targetRef name if a Pod and shorter than 64, else ""


@dataclass(frozen=True)
class SliceRecord:
    namespace: str
    name: str
    service: str  # the kubernetes.io/service-name label
    addresses: tuple[EndpointAddress, ...]  # ready endpoints only, in slice order
    ports: tuple[PortRecord, ...]
    # When the controller saw the change that produced this slice (for the
    # programming-latency histogram). Not DNS data, so not part of equality.
    trigger_time: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PodRecord:
    namespace: str
    name: str
    ips: tuple[str, ...]


def _where(obj: Obj) -> str:
    m = meta(obj)
    return f"{obj.get('kind', 'object')} {m.get('namespace', '')}/{m.get('name', '')}"


def _ports(raw: Any, where: str, default_number: int | None) -> tuple[PortRecord, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RecordError(f"{where}: ports must be a list")
    out = []
    for p in raw:
        if not isinstance(p, dict):
            raise RecordError(f"{where}: a port must be an object")
        number = p.get("port", default_number)
        if number is None:
            number = -1
        if not isinstance(number, int) or isinstance(number, bool):
            raise RecordError(f"{where}: port {p.get('name', '')!r} number {number!r} is not an integer")
        out.append(PortRecord(str(p.get("name") or ""), str(p.get("protocol") or "TCP"), number))
    return tuple(out)


def service_record(obj: Obj) -> ServiceRecord:
    """Convert a Service; raises RecordError on a shape DNS cannot read."""
    where = _where(obj)
    m = meta(obj)
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise RecordError(f"{where}: spec must be an object")
    stype = spec.get("type") or "ClusterIP"
    ports = _ports(spec.get("ports"), where, None)
    selector = bool(spec.get("selector"))
    ns, name = str(m.get("namespace") or ""), str(m.get("name") or "")
    if stype == "ExternalName":
        ext = str(spec.get("externalName") or "").rstrip(".").lower()
        return ServiceRecord(ns, name, EXTERNAL_NAME, (), ext, ports, selector)
    cluster_ip = spec.get("clusterIP")
    if cluster_ip == "None":
        return ServiceRecord(ns, name, HEADLESS, (), "", ports, selector)
    ips = spec.get("clusterIPs") or ([cluster_ip] if cluster_ip else [])
    if not isinstance(ips, list):
        raise RecordError(f"{where}: spec.clusterIPs must be a list")
    good = []
    for ip in ips:
        try:
            good.append(str(ipaddress.ip_address(str(ip))))
        except ValueError:
            raise RecordError(f"{where}: clusterIP {ip!r} is not an IP address") from None
    return ServiceRecord(ns, name, CLUSTER_IP, tuple(good), "", ports, selector)


def _ready(conditions: Any) -> bool:
    if not isinstance(conditions, dict):
        return True
    ready = conditions.get("ready")
    return ready is None or ready is True


def slice_record(obj: Obj) -> SliceRecord:
    """Convert an EndpointSlice; raises RecordError on a shape DNS cannot read."""
    where = _where(obj)
    m = meta(obj)
    addresses: list[EndpointAddress] = []
    endpoints = obj.get("endpoints") or []
    if not isinstance(endpoints, list):
        raise RecordError(f"{where}: endpoints must be a list")
    for ep in endpoints:
        if not isinstance(ep, dict):
            raise RecordError(f"{where}: an endpoint must be an object")
        if not _ready(ep.get("conditions")):
            continue
        hostname = str(ep.get("hostname") or "")
        ref = ep.get("targetRef") or {}
        pod = ""
        if isinstance(ref, dict) and ref.get("kind", "Pod") == "Pod":
            ref_name = str(ref.get("name") or "")
            pod = ref_name if len(ref_name) < 64 else ""
        for addr in ep.get("addresses") or []:
            try:
                ipaddress.ip_address(str(addr))
            except ValueError:
                raise RecordError(f"{where}: endpoint address {addr!r} is not an IP address") from None
            addresses.append(EndpointAddress(str(addr), hostname, pod))
    trigger = None
    raw_time = annotations_of(obj).get(TRIGGER_TIME_ANNOTATION)
    if raw_time:
        trigger = parse_rfc3339(raw_time)
    return SliceRecord(
        str(m.get("namespace") or ""),
        str(m.get("name") or ""),
        labels_of(obj).get(SERVICE_NAME_LABEL, ""),
        tuple(addresses),
        _ports(obj.get("ports"), where, -1),
        trigger,
    )


def pod_record(obj: Obj) -> PodRecord | None:
    """Convert a Pod, or None when DNS must ignore it (finished or terminating)."""
    m = meta(obj)
    status = obj.get("status") or {}
    if m.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed", "Unknown"):
        return None
    ips: list[str] = []
    for entry in status.get("podIPs") or []:
        if isinstance(entry, dict) and entry.get("ip"):
            ips.append(str(entry["ip"]))
    if status.get("podIP") and str(status["podIP"]) not in ips:
        ips.insert(0, str(status["podIP"]))
    if not ips:
        return None
    return PodRecord(str(m.get("namespace") or ""), str(m.get("name") or ""), tuple(ips))


def parse_rfc3339(value: str) -> float | None:
    """Seconds since the epoch for a Kubernetes timestamp, or None if unreadable."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def endpoint_hostname(addr: EndpointAddress, endpoint_pod_names: bool) -> str:
    """The label an endpoint answers under (CoreDNS `endpointHostname`)."""
    if addr.hostname:
        return addr.hostname
    if endpoint_pod_names and addr.target_pod:
        return addr.target_pod
    if "." in addr.ip:
        return addr.ip.replace(".", "-")
    if ":" in addr.ip:
        dashed = addr.ip.replace(":", "-")
        return dashed + "0" if dashed.endswith("-") else dashed
    return ""
