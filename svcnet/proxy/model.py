"""The proxy's own model of Services and endpoints, converted at the informer boundary.

Everything after this module works on small frozen dataclasses, never on Kubernetes
JSON: a `ServicePort` per (Service, port, IP family) and an `Endpoint` per usable
address of that port. Both backends (nftables and iptables) compute their rulesets
from a `ProxyState`, which holds these plus the node's configuration, so they share
one reading of the API:

* Headless (`clusterIP: None`) and `ExternalName` Services, and Services labelled
  `service.kubernetes.io/service-proxy-name` (owned by another proxy) produce nothing.
* Slice ports are joined to Service ports by name and protocol (kube-proxy never
  resolves a named targetPort; the EndpointSlice controller already did).
* `ready` unset means ready; `serving` unset means "same as ready"; `terminating`
  unset means false (discovery.k8s.io/v1 semantics).
* LoadBalancer ingress entries with `ipMode: Proxy` get no rules (KEP-1860).
* Bad addresses are normalised where kube-proxy tolerates them (leading zeros,
  whitespace in CIDRs) and otherwise skipped with a log line, never fatal.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping

from svcnet.apiclient.objects import Obj, annotations_of, labels_of, meta, name_of, namespace_of

log = logging.getLogger(__name__)

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
ZONE_LABEL = "topology.kubernetes.io/zone"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, core/v1 default for ClientIP affinity
MAX_AFFINITY_TIMEOUT = 86400


@dataclass(frozen=True, order=True)
class ServicePortName:
    """Identifies one port of one Service: `ns/name:port` (port name may be empty)."""

    namespace: str
    name: str
    port: str
    protocol: str

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port}" if self.port else f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    """One Service port in one IP family, with everything the proxy acts on."""

    name: ServicePortName
    family: int  # 4 or 6
    cluster_ip: str
    port: int
    protocol: str  # TCP, UDP or SCTP
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # ingress IPs, ipMode Proxy already removed
    load_balancer_source_ranges: tuple[str, ...] = ()
    external_policy_local: bool = False
    internal_policy_local: bool = False
    health_check_node_port: int = 0
    affinity_timeout: int | None = None  # seconds for ClientIP affinity, None without
    traffic_distribution: str | None = None  # informational: hints in slices carry it

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        """kube-proxy's UsesClusterEndpoints: some traffic may go to any endpoint."""
        return not self.internal_policy_local or (
            self.externally_accessible and not self.external_policy_local
        )

    @property
    def uses_local_endpoints(self) -> bool:
        """kube-proxy's UsesLocalEndpoints: some traffic must stay on this node."""
        return self.internal_policy_local or (self.externally_accessible and self.external_policy_local)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint address of a Service port as the proxy sees it."""

    ip: str
    port: int
    node_name: str | None = None
    is_local: bool = False
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    zone_hints: frozenset[str] = frozenset()
    node_hints: frozenset[str] = frozenset()

    @cached_property
    def address(self) -> str:
        """`ip:port`, bracketed for IPv6 (the form iptables and nft DNAT targets take)."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ProxyConfig:
    """Per-family node configuration, from flags and the Node object."""

    family: int
    node_name: str
    node_ips: tuple[str, ...] = ()  # this family's node addresses, primary first
    cluster_cidrs: tuple[str, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = 14
    detect_local_mode: str = "ClusterCIDR"  # ClusterCIDR | NodeCIDR | None
    node_pod_cidrs: tuple[str, ...] = ()  # Node.spec.podCIDRs of this family
    nodeport_addresses: tuple[str, ...] = ("primary",)  # CIDRs, or ("primary",)
    service_cidrs: tuple[str, ...] = ()  # flags + ServiceCIDR objects
    node_zone: str = ""
    local_addresses: tuple[str, ...] = ()  # addresses on the node's links (for CIDR NodePort addrs)

    @property
    def masquerade_mark(self) -> int:
        return 1 << self.masquerade_bit

    @property
    def local_cidrs(self) -> tuple[str, ...]:
        """Sources counted as "from a pod of this cluster"; empty = no local detector."""
        if self.detect_local_mode == "ClusterCIDR":
            return self.cluster_cidrs
        if self.detect_local_mode == "NodeCIDR":
            return self.node_pod_cidrs
        return ()

    def node_ip_in(self, cidrs: Iterable[str]) -> bool:
        """Whether one of this family's node addresses lies in `cidrs`. For
        loadBalancerSourceRanges: when it does, the LB IPs are allowed as sources too,
        because a VIP bound on the node loops node traffic back with the VIP as source
        (kube-proxy's rule in both of its modes)."""
        nets = [n for n in map(ipaddress.ip_network, cidrs) if n.version == self.family]
        return any(ipaddress.ip_address(ip) in n for ip in self.node_ips for n in nets)

    def nodeport_ips(self, loopback: bool = False) -> tuple[str, ...] | None:
        """Node addresses that accept NodePorts; None means every local address.

        kube-proxy's NodePortAddresses, for both modes: CIDRs of this family select the
        node's addresses in them; none of this family (or a /0) means all. Loopback
        counts only when asked (iptables mode's localhost NodePorts, IPv4 only)."""
        if not self.nodeport_addresses or self.nodeport_addresses == ("primary",):
            return self.node_ips[:1]
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for c in self.nodeport_addresses:
            if c == "primary":
                nets.extend(ipaddress.ip_network(ip) for ip in self.node_ips[:1])
                continue
            net = ipaddress.ip_network(c, strict=False)
            if net.version == self.family:
                if net.prefixlen == 0:
                    return None
                nets.append(net)
        if not nets:
            # a family that --nodeport-addresses names no CIDR of (say an IPv4-only
            # list on a dual-stack node) accepts NodePorts on all its addresses
            return None
        found: list[str] = []
        for ip in (*self.node_ips, *self.local_addresses):
            addr = ipaddress.ip_address(ip)
            if ip in found or addr.version != self.family or (addr.is_loopback and not loopback):
                continue
            if any(addr in n for n in nets):
                found.append(ip)
        return tuple(found)


@dataclass(frozen=True)
class ProxyState:
    """Everything one family's ruleset is computed from: pure data, no API objects."""

    config: ProxyConfig
    services: Mapping[ServicePortName, ServicePort] = field(default_factory=dict)
    endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]] = field(default_factory=dict)


# -- addresses -----------------------------------------------------------------


def normalize_ip(value: Any) -> str | None:
    """An IP as canonical text; tolerates kube-proxy's leading-zero IPv4 (`172.30.0.041`)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    # Fast path in C (a full sync converts tens of thousands of addresses);
    # ipaddress only for the odd cases.
    for af in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(af, socket.inet_pton(af, text))
        except (OSError, ValueError):
            continue
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        try:  # Go's old ParseIP read leading zeros as decimal; so does kube-proxy
            return str(ipaddress.IPv4Address(".".join(str(int(p)) for p in parts)))
        except ValueError:
            return None
    return None


def normalize_cidr(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        return None


def family_of(ip: str) -> int:
    return 6 if ":" in ip else 4


# -- Services --------------------------------------------------------------------


def service_is_proxied(svc: Obj) -> bool:
    """False for Services this proxy must ignore (headless, ExternalName, other proxy)."""
    spec = svc.get("spec") or {}
    if labels_of(svc).get(SERVICE_PROXY_NAME_LABEL):
        return False
    if spec.get("type") == "ExternalName":
        return False
    cip = spec.get("clusterIP")
    return bool(cip) and cip != "None"


def service_ports(svc: Obj, family: int) -> dict[ServicePortName, ServicePort]:
    """The ServicePorts of one Service object for one IP family (empty when ignored)."""
    if not service_is_proxied(svc):
        return {}
    spec = svc.get("spec") or {}
    ns, name = namespace_of(svc) or "default", name_of(svc)
    cluster_ips = [normalize_ip(ip) for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")])]
    cluster_ip = next((ip for ip in cluster_ips if ip and family_of(ip) == family), None)
    if cluster_ip is None:
        return {}
    svc_type = spec.get("type") or "ClusterIP"
    node_ports_apply = svc_type in ("NodePort", "LoadBalancer")
    external_ips = _ips_of_family(spec.get("externalIPs") or [], family)
    lb_ips: list[str] = []
    if svc_type == "LoadBalancer":
        for ing in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            if (ing or {}).get("ipMode") == "Proxy":
                continue  # traffic must go through the load balancer itself
            ip = normalize_ip((ing or {}).get("ip"))
            if ip and family_of(ip) == family and ip not in lb_ips:
                lb_ips.append(ip)
    ranges: list[str] = []
    for r in spec.get("loadBalancerSourceRanges") or []:
        c = normalize_cidr(r)
        if c is None:
            log.warning("ignoring bad loadBalancerSourceRange service=%s/%s range=%r", ns, name, r)
        elif family_of(c) == family:
            ranges.append(c)
    affinity = None
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
        affinity = int(cfg.get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT)
        affinity = max(1, min(affinity, MAX_AFFINITY_TIMEOUT))
    etp_local = node_ports_apply and spec.get("externalTrafficPolicy") == "Local"
    out: dict[ServicePortName, ServicePort] = {}
    for p in spec.get("ports") or []:
        proto = str(p.get("protocol") or "TCP").upper()
        try:
            port = int(p["port"])
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring service port without a number service=%s/%s port=%r", ns, name, p)
            continue
        if proto not in PROTOCOLS:
            log.warning("ignoring port with unknown protocol service=%s/%s protocol=%s", ns, name, proto)
            continue
        spn = ServicePortName(ns, name, str(p.get("name") or ""), proto)
        out[spn] = ServicePort(
            name=spn,
            family=family,
            cluster_ip=cluster_ip,
            port=port,
            protocol=proto,
            node_port=int(p.get("nodePort") or 0) if node_ports_apply else 0,
            external_ips=external_ips,
            load_balancer_ips=tuple(lb_ips),
            load_balancer_source_ranges=tuple(ranges) if lb_ips else (),
            external_policy_local=etp_local,
            internal_policy_local=spec.get("internalTrafficPolicy") == "Local",
            health_check_node_port=int(spec.get("healthCheckNodePort") or 0) if etp_local else 0,
            affinity_timeout=affinity,
            traffic_distribution=spec.get("trafficDistribution"),
        )
    return out


def _ips_of_family(values: Iterable[Any], family: int) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        ip = normalize_ip(v)
        if ip is None:
            log.warning("ignoring bad IP %r", v)
        elif family_of(ip) == family and ip not in out:
            out.append(ip)
    return tuple(out)


# -- EndpointSlices ----------------------------------------------------------------


def slice_service_key(eps: Obj) -> str | None:
    """`ns/name` of the Service a slice belongs to; None for slices the proxy ignores."""
    labels = labels_of(eps)
    svc = labels.get(SERVICE_NAME_LABEL)
    if not svc or labels.get(SERVICE_PROXY_NAME_LABEL) or HEADLESS_LABEL in labels:
        return None
    return f"{namespace_of(eps) or 'default'}/{svc}"


def slice_family(eps: Obj) -> int | None:
    return {"IPv4": 4, "IPv6": 6}.get(str(eps.get("addressType")))


PortEndpoints = dict[tuple[str, str], tuple[Endpoint, ...]]  # (port name, protocol) -> endpoints


def endpoints_by_port(slices: Iterable[Obj], family: int, node_name: str) -> PortEndpoints:
    """Merge a Service's slices into endpoints per (port name, protocol), deduplicated."""
    merged: dict[tuple[str, str], dict[str, Endpoint]] = {}
    for eps in slices:
        if slice_family(eps) != family:
            continue
        for sp in eps.get("ports") or []:
            try:
                number = int(sp.get("port"))
            except (TypeError, ValueError):
                continue  # a port without a number matches nothing (kube-proxy skips it)
            key = (str(sp.get("name") or ""), str(sp.get("protocol") or "TCP").upper())
            bucket = merged.setdefault(key, {})
            for ep in eps.get("endpoints") or []:
                e = _endpoint(ep, number, node_name)
                if e is None:
                    continue
                seen = bucket.get(e.address)
                # The same address in two slices (mid-migration): the ready copy wins,
                # as in kube-proxy's endpointSliceCache.
                if seen is None or (e.ready and not seen.ready):
                    bucket[e.address] = e
    return {k: tuple(sorted(v.values(), key=_ep_sort_key)) for k, v in merged.items()}


def merge_port_endpoints(parts: list[PortEndpoints]) -> PortEndpoints:
    """Several slices' converted endpoints as one Service's (same rules as above)."""
    if len(parts) == 1:
        return parts[0]
    merged: dict[tuple[str, str], dict[str, Endpoint]] = {}
    for part in parts:
        for key, eps in part.items():
            bucket = merged.setdefault(key, {})
            for e in eps:
                seen = bucket.get(e.address)
                if seen is None or (e.ready and not seen.ready):
                    bucket[e.address] = e
    return {k: tuple(sorted(v.values(), key=_ep_sort_key)) for k, v in merged.items()}


def _ep_sort_key(e: Endpoint) -> tuple[bytes, int]:
    if ":" in e.ip:
        return (b"\xff" + socket.inet_pton(socket.AF_INET6, e.ip), e.port)
    return (socket.inet_pton(socket.AF_INET, e.ip), e.port)


def _endpoint(ep: Obj, port: int, node_name: str) -> Endpoint | None:
    addrs = ep.get("addresses") or []
    ip = normalize_ip(addrs[0]) if addrs else None
    if ip is None:
        return None
    cond = ep.get("conditions") or {}
    ready = cond.get("ready") is not False
    serving = cond["serving"] is not False if cond.get("serving") is not None else ready
    terminating = cond.get("terminating") is True
    hints = ep.get("hints")
    node = ep.get("nodeName")
    # positional: a full sync converts tens of thousands of these
    if not hints:
        return Endpoint(ip, port, node, bool(node) and node == node_name, ready, serving, terminating)
    return Endpoint(ip, port, node, bool(node) and node == node_name, ready, serving, terminating,
                    _hint_names(hints, "forZones"), _hint_names(hints, "forNodes"))


_NO_HINTS: frozenset[str] = frozenset()


def _hint_names(hints: Any, key: str) -> frozenset[str]:
    if not hints or not hints.get(key):
        return _NO_HINTS  # the common case, without building a set per endpoint
    return frozenset(h.get("name") for h in hints[key] if h.get("name"))


def trigger_time(eps: Obj) -> str | None:
    """The EndpointSlice controller's `last-change-trigger-time` annotation (RFC 3339)."""
    return annotations_of(eps).get(TRIGGER_TIME_ANNOTATION)


def node_zone(node: Obj | None) -> str:
    return labels_of(node).get(ZONE_LABEL, "") if node else ""


def node_addresses(node: Obj | None) -> list[str]:
    """InternalIP then ExternalIP addresses of a Node (kube-proxy's node-IP fallback)."""
    if not node:
        return []
    addrs = (node.get("status") or {}).get("addresses") or []
    out = []
    for kind in ("InternalIP", "ExternalIP"):
        for a in addrs:
            ip = normalize_ip(a.get("address")) if a.get("type") == kind else None
            if ip and ip not in out:
                out.append(ip)
    return out


def node_pod_cidrs(node: Obj | None) -> list[str]:
    if not node:
        return []
    spec = node.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    return [c for c in (normalize_cidr(x) for x in cidrs) if c]


def node_is_terminating(node: Obj | None) -> bool:
    """Deleted or tainted for deletion: /healthz reports the node ineligible (KEP-3836)."""
    if not node:
        return False
    if meta(node).get("deletionTimestamp"):
        return True
    taints = (node.get("spec") or {}).get("taints") or []
    return any(t.get("key") == "ToBeDeletedByClusterAutoscaler" for t in taints)
