"""The cluster zone: answers computed from the live ClusterIndex by CoreDNS's rules.

This mirrors CoreDNS's kubernetes plugin (handler.go, kubernetes.go, parse.go, ns.go,
reverse.go) and the generic lookups it calls (plugin/backend_lookup.go):

1. `_records()` parses the name right to left (parse.go) into
   `[endpoint | _port._proto] . service . namespace . svc|pod . <zone>` and finds the
   matching "services" (CoreDNS `msg.Service`: a host that is an IP or a CNAME target,
   a port, and the owner name). Raising `NoSuchName` is CoreDNS's `errNoItems` /
   `errNsNotExposed` / `errInvalidRequest`: the name does not exist (NXDOMAIN);
   an empty list means the name exists with no data (NODATA).
2. `answer()` turns them into records per query type, exactly as handler.go
   dispatches: A/AAAA (CNAME chasing), SRV (weights), TXT (dns-version), PTR, NS and
   SOA at the apex; any other type does a "fake A lookup" only to choose between
   NODATA and NXDOMAIN.

Everything here is pure and synchronous. The only thing it cannot finish itself is an
ExternalName whose target is outside the served zones: it returns the CNAME chain
plus a `chase` (name, type) for the handler to resolve upstream.

Names are handled in lower case; the handler restores the client's spelling when it
writes the reply (owner names, and the zone suffix of every name built from the zone).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

from svcnet.dns import wire
from svcnet.dns.index import ClusterIndex
from svcnet.dns.records import CLUSTER_IP, EXTERNAL_NAME, PortRecord, endpoint_hostname
from svcnet.dns.wire import RR

DNS_SCHEMA_VERSION = "1.1.0"
DNS_VERSION_TTL = 28800
MAX_CNAME_CHAIN = 10

PODS_DISABLED, PODS_INSECURE, PODS_VERIFIED = "disabled", "insecure", "verified"


class NoSuchName(Exception):
    """The name does not exist in the zone (NXDOMAIN)."""


@dataclass(frozen=True)
class ServedZone:
    """One zone the server is authoritative for; names are lower case."""

    name: str  # "cluster.local"
    wire: bytes
    labels: tuple[str, ...]
    reverse: bool

    @staticmethod
    def of(name: str) -> "ServedZone":
        text = name.strip(".").lower()
        labels = tuple(text.split(".")) if text else ()
        return ServedZone(text, wire.name_to_wire(text), labels,
                          text.endswith("in-addr.arpa") or text.endswith("ip6.arpa"))


def expand_zone(spec: str) -> list[ServedZone]:
    """A zone name, or a CIDR expanded into its reverse zones (CoreDNS `cidr.Split`).

    10.96.0.0/12 becomes 96.10.in-addr.arpa ... 111.10.in-addr.arpa: reverse zones
    end on octet (IPv4) or nibble (IPv6) boundaries, so the prefix is rounded up.
    """
    if "/" not in spec:
        return [ServedZone.of(spec)]
    net = ipaddress.ip_network(spec, strict=False)
    step = 8 if net.version == 4 else 4
    prefix = min(net.max_prefixlen, math.ceil(net.prefixlen / step) * step) or step
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = (
        list(net.subnets(new_prefix=prefix)) if prefix > net.prefixlen else [net])
    if len(subnets) > 256:
        raise ValueError(f"zone {spec}: expands to {len(subnets)} reverse zones; use a longer prefix")
    zones = []
    for sub in subnets:
        labels = sub.network_address.reverse_pointer.split(".")
        keep = prefix // step
        head = len(labels) - 2  # labels before in-addr.arpa / ip6.arpa
        zones.append(ServedZone.of(".".join(labels[head - keep:])))
    return zones


@dataclass(frozen=True)
class ZoneConfig:
    zones: tuple[ServedZone, ...]
    ttl: int = 5
    pods: str = PODS_DISABLED
    namespaces: frozenset[str] = frozenset()
    endpoint_pod_names: bool = False
    ignore_empty_service: bool = False
    local_ips: tuple[str, ...] = ("127.0.0.1",)
    fallthrough: bool = False
    fallthrough_zones: tuple[bytes, ...] = ()  # lower-case wire names; empty = every zone

    @property
    def primary(self) -> ServedZone:
        for z in self.zones:
            if not z.reverse:
                return z
        return self.zones[0]


@dataclass(frozen=True)
class Svc:
    """CoreDNS's msg.Service: what a name resolves to before it becomes records."""

    host: str  # an IP address, a CNAME target, or "" (TXT)
    key: tuple[str, ...]  # owner labels for SRV targets / NS names (lower case)
    ttl: int
    port: int = -1
    text: str = ""

    @property
    def host_type(self) -> int:
        if not self.host:
            return wire.TXT
        try:
            return wire.A if ipaddress.ip_address(self.host).version == 4 else wire.AAAA
        except ValueError:
            return wire.CNAME


@dataclass
class Result:
    """An authoritative answer before it is written; `rcode` is NOERROR or NXDOMAIN."""

    zone: ServedZone
    rcode: int = wire.NOERROR
    answer: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    chase: tuple[bytes, int] | None = None  # out-of-zone CNAME target for the upstream

    @property
    def name_error(self) -> bool:
        return self.rcode == wire.NXDOMAIN


def _wire(labels: tuple[str, ...] | list[str]) -> bytes:
    return wire.labels_to_wire([lb.encode("latin-1") for lb in labels])


def _labels(name: bytes) -> tuple[str, ...]:
    return tuple(lb.decode("latin-1") for lb in wire.wire_labels(name))


def _strip_underscore(s: str) -> str:
    return s[1:] if s.startswith("_") else s


def extract_reverse_address(labels: tuple[str, ...]) -> str:
    """The address a full reverse name stands for, or "" (CoreDNS ExtractAddressFromReverse)."""
    if labels[-2:] == ("in-addr", "arpa") and len(labels) == 6:
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
        except ValueError:
            return ""
    if labels[-2:] == ("ip6", "arpa") and len(labels) == 34:
        nibbles = labels[:32]
        if not all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles):
            return ""
        h = "".join(reversed(nibbles))
        return str(ipaddress.IPv6Address(":".join(h[i:i + 4] for i in range(0, 32, 4))))
    return ""


class Zone:
    """Answers for the served zones; see the module docstring."""

    def __init__(self, config: ZoneConfig, index: ClusterIndex) -> None:
        self.config = config
        self.index = index
        # longest zone first, so `match` finds the most specific one
        self._by_length = sorted(config.zones, key=lambda z: -len(z.wire))
        self._soa_cache: dict[tuple[bytes, int], RR] = {}

    # -- which zone ------------------------------------------------------------

    def match(self, lname: bytes) -> ServedZone | None:
        for z in self._by_length:
            if wire.is_subdomain(lname, z.wire):
                return z
        return None

    def falls_through(self, lname: bytes) -> bool:
        if not self.config.fallthrough:
            return False
        zones = self.config.fallthrough_zones
        return not zones or any(wire.is_subdomain(lname, z) for z in zones)

    def namespace_exposed(self, ns: str) -> bool:
        allowed = self.config.namespaces
        if allowed and ns not in allowed:
            return False
        return self.index.namespace_exists(ns)

    # -- the soa and ns records ------------------------------------------------

    def soa(self, zone: ServedZone) -> RR:
        """The zone's SOA (every negative answer carries one, so it is memoised per serial)."""
        key = (zone.wire, self.index.serial)
        rr = self._soa_cache.get(key)
        if rr is None:
            ttl = self.config.ttl
            rr = wire.rr_soa(zone.wire, min(ttl, 300), _wire(("ns", "dns") + zone.labels),
                             _wire(("hostmaster",) + zone.labels), self.index.serial,
                             7200, 1800, 86400, ttl)
            if len(self._soa_cache) > 64:
                self._soa_cache.clear()
            self._soa_cache[key] = rr
        return rr

    def ns_addresses(self, zone: ServedZone) -> list[tuple[tuple[str, ...], str]]:
        """(name labels, address) for each server address (CoreDNS `nsAddrs`)."""
        out: list[tuple[tuple[str, ...], str]] = []
        for local in self.config.local_ips:
            for sl in self.index.slices_with_ip(local):
                svc = self.index.service(sl.namespace, sl.service)
                if svc is None:
                    continue
                base = (svc.name, svc.namespace, "svc") + zone.labels
                if svc.headless:
                    for a in sl.addresses:
                        if ipaddress.ip_address(a.ip) == ipaddress.ip_address(local):
                            host = endpoint_hostname(a, self.config.endpoint_pod_names)
                            out.append(((host.lower(),) + base, local))
                    continue
                for cip in svc.cluster_ips:
                    out.append((base, cip))
        if not out:
            out = [(("ns", "dns") + zone.labels, ip) for ip in self.config.local_ips]
        return out

    # -- name -> services ------------------------------------------------------

    def _services(self, labels: tuple[str, ...], zone: ServedZone, qtype: int) -> list[Svc]:
        """CoreDNS `Kubernetes.Services`: raises NoSuchName, [] is NODATA."""
        rel = labels[:len(labels) - len(zone.labels)]
        ttl = self.config.ttl
        if qtype == wire.TXT:
            if rel == ("dns-version",):
                return [Svc("", labels, DNS_VERSION_TTL, text=DNS_SCHEMA_VERSION)]
            self._records(rel, zone)  # NXDOMAIN if the name does not exist
            return []
        if rel == ("ns", "dns"):
            want = wire.A if qtype == wire.A else wire.AAAA if qtype == wire.AAAA else 0
            found = []
            for _, ip in self.ns_addresses(zone):
                s = Svc(ip, labels, ttl)
                if s.host_type == want:
                    found.append(s)
            return found
        found = self._records(rel, zone)
        if qtype == wire.SRV:
            found = [s for s in found if s.host_type != wire.CNAME]
        return found

    def _records(self, rel: tuple[str, ...], zone: ServedZone) -> list[Svc]:
        """CoreDNS `Records` + `parseRequest`: the name grammar."""
        if not rel or rel in (("svc",), ("pod",)):
            return []  # apex and the svc/pod subtrees: NODATA
        kind = rel[-1]
        if kind not in ("svc", "pod"):
            raise NoSuchName
        namespace = rel[-2]
        service = rel[-3] if len(rel) >= 3 else ""
        rest = rel[:-3]
        endpoint = port = proto = ""
        if len(rest) == 1:
            endpoint = rest[0]
        elif len(rest) == 2:
            port, proto = _strip_underscore(rest[0]), _strip_underscore(rest[1])
        elif len(rest) > 2:
            raise NoSuchName  # too long
        if zone.reverse:
            raise NoSuchName
        if not self.namespace_exposed(namespace):
            raise NoSuchName
        if kind == "pod":
            return self._pods(namespace, service, zone)
        return self._find_services(namespace, service, endpoint, port, proto, zone)

    def _pods(self, namespace: str, podname: str, zone: ServedZone) -> list[Svc]:
        mode = self.config.pods
        if mode == PODS_DISABLED:
            raise NoSuchName
        if not podname:
            return []
        if podname.count("-") == 3 and "--" not in podname:
            text = podname.replace("-", ".")
        else:
            text = podname.replace("-", ":")
        try:
            ip = str(ipaddress.ip_address(text))
        except ValueError:
            raise NoSuchName from None
        key = (podname, namespace, "pod") + zone.labels
        if mode == PODS_INSECURE:
            return [Svc(ip, key, self.config.ttl)]
        if any(p.namespace == namespace for p in self.index.pods_with_ip(ip)):
            return [Svc(ip, key, self.config.ttl)]
        raise NoSuchName

    def _find_services(self, namespace: str, service: str, endpoint: str, port: str,
                       proto: str, zone: ServedZone) -> list[Svc]:
        if not service:
            return []  # an existing namespace: NODATA
        svc = self.index.service(namespace, service)
        if svc is None:
            raise NoSuchName
        ttl = self.config.ttl
        base = (service, namespace, "svc") + zone.labels
        if svc.kind == EXTERNAL_NAME:
            # Names below an ExternalName do not exist; an IP-looking target is not served.
            target = Svc(svc.external_name, base, ttl)
            if endpoint or port or target.host_type != wire.CNAME:
                raise NoSuchName
            return [target]
        slices = self.index.service_slices(namespace, service)
        if self.config.ignore_empty_service and svc.kind == CLUSTER_IP:
            if not any(sl.addresses for sl in slices):
                raise NoSuchName
        out: list[Svc] = []
        if svc.headless or endpoint:
            names = self.config.endpoint_pod_names
            for sl in slices:
                ports = sl.ports or (PortRecord("", "", -1),)
                for addr in sl.addresses:
                    host = endpoint_hostname(addr, names).lower()
                    if endpoint and endpoint != host:
                        continue
                    for p in ports:
                        if _port_matches(port, proto, p):
                            out.append(Svc(addr.ip, (host,) + base, ttl, p.port))
            if not out:
                raise NoSuchName
            return out
        matched = False
        for p in svc.ports:
            if not _port_matches(port, proto, p):
                continue
            matched = True
            for ip in svc.cluster_ips:
                out.append(Svc(ip, base, ttl, p.port))
        if not matched:
            raise NoSuchName
        return out

    # -- per query type --------------------------------------------------------

    def answer(self, lname: bytes, qtype: int, zone: ServedZone) -> Result:
        """The authoritative answer for a lower-case name in `zone` (handler.go ServeDNS)."""
        labels = _labels(lname)
        res = Result(zone)
        try:
            if qtype in (wire.A, wire.AAAA):
                res.answer, res.chase = self._address(lname, labels, zone, qtype, [])
            elif qtype == wire.TXT:
                for s in self._services(labels, zone, wire.TXT):
                    res.answer.append(wire.rr_txt(lname, s.ttl, s.text))
            elif qtype == wire.CNAME:
                found = self._services(labels, zone, wire.CNAME)
                if found and found[0].host_type == wire.CNAME:
                    res.answer.append(wire.rr_cname(lname, found[0].ttl, _target(found[0].host)))
            elif qtype == wire.PTR:
                res.answer = self._ptr(lname, labels, zone)
            elif qtype == wire.SRV:
                res.answer, res.additional = self._srv(lname, labels, zone)
            elif qtype == wire.SOA:
                if lname == zone.wire:
                    res.answer.append(self.soa(zone))
            elif qtype == wire.NS and lname == zone.wire:
                res.answer, res.additional = self._ns(zone)
            else:
                # handler.go: a fake A lookup tells NODATA from NXDOMAIN
                self._address(lname, labels, zone, wire.A, [])
        except NoSuchName:
            res.rcode = wire.NXDOMAIN
            res.answer, res.additional, res.chase = [], [], None
        return res

    def _address(self, lname: bytes, labels: tuple[str, ...], zone: ServedZone, qtype: int,
                 previous: list[RR]) -> tuple[list[RR], tuple[bytes, int] | None]:
        """backend_lookup.go A/AAAA: addresses, CNAMEs chased in-zone, the rest upstream."""
        records: list[RR] = []
        chase: tuple[bytes, int] | None = None
        seen: set[str] = set()
        for s in self._services(labels, zone, qtype):
            t = s.host_type
            if t == wire.CNAME:
                target = _target(s.host)
                if target == lname or len(previous) >= MAX_CNAME_CHAIN:
                    continue  # x CNAME x is a loop; long chains stop here
                cname = wire.rr_cname(lname, s.ttl, target)
                if any(r.target == target for r in previous):
                    continue  # a longer loop
                inner = self.match(target)
                if inner is not None:
                    try:
                        more, more_chase = self._address(target, _labels(target), inner, qtype,
                                                         previous + [cname])
                    except NoSuchName:
                        continue
                    if more or more_chase:
                        records.append(cname)
                        records.extend(more)
                        chase = more_chase
                    continue
                records.append(cname)
                chase = (target, qtype)
                continue
            if t == qtype and s.host not in seen:
                seen.add(s.host)
                records.append(wire.rr_a(lname, s.ttl, s.host))
        return records, chase

    def _srv(self, lname: bytes, labels: tuple[str, ...], zone: ServedZone) -> tuple[list[RR], list[RR]]:
        found = self._services(labels, zone, wire.SRV)
        # All records share priority 0 and weight 0, which CoreDNS counts as 100 each:
        # weight = floor(100 / total * 100), at least 1.
        total = 100 * len(found)
        weight = max(1, math.floor(100.0 / total * 100)) if total else 100
        records: list[RR] = []
        extra: list[RR] = []
        seen_srv: set[tuple[bytes, int]] = set()
        seen_glue: set[tuple[bytes, str]] = set()
        for s in found:
            if s.port == -1:
                continue
            target = _wire(s.key)
            if (target, s.port) not in seen_srv:
                seen_srv.add((target, s.port))
                records.append(wire.rr_srv(lname, s.ttl, 0, weight, s.port, target))
            if (target, s.host) not in seen_glue:
                seen_glue.add((target, s.host))
                extra.append(wire.rr_a(target, s.ttl, s.host))
        return records, extra

    def _ptr(self, lname: bytes, labels: tuple[str, ...], zone: ServedZone) -> list[RR]:
        ip = extract_reverse_address(labels)
        if not ip:
            self._records(labels[:len(labels) - len(zone.labels)], zone)
            return []
        ttl = self.config.ttl
        primary = self.config.primary
        allowed = self.config.namespaces
        for svc in self.index.services_with_ip(ip):
            if allowed and svc.namespace not in allowed:
                continue
            return [wire.rr_ptr(lname, ttl, _wire((svc.name, svc.namespace, "svc") + primary.labels))]
        out: list[RR] = []
        seen: set[bytes] = set()
        want = ipaddress.ip_address(ip)
        for sl in self.index.slices_with_ip(ip):
            if allowed and sl.namespace not in allowed:
                continue
            for a in sl.addresses:
                if ipaddress.ip_address(a.ip) != want:
                    continue
                host = endpoint_hostname(a, self.config.endpoint_pod_names).lower()
                target = _wire((host, sl.service, sl.namespace, "svc") + primary.labels)
                if target not in seen:
                    seen.add(target)
                    out.append(wire.rr_ptr(lname, ttl, target))
        if not out:
            raise NoSuchName
        return out

    def _ns(self, zone: ServedZone) -> tuple[list[RR], list[RR]]:
        ttl = self.config.ttl
        records: list[RR] = []
        extra: list[RR] = []
        seen: set[bytes] = set()
        for labels, ip in self.ns_addresses(zone):
            name = _wire(labels)
            extra.append(wire.rr_a(name, ttl, ip))
            if name not in seen:
                seen.add(name)
                records.append(wire.rr_ns(zone.wire, ttl, name))
        return records, extra


def _port_matches(port: str, proto: str, p: PortRecord) -> bool:
    return (not port or port == p.name.lower()) and (not proto or proto == p.protocol.lower())


def _target(host: str) -> bytes:
    return wire.name_to_wire(host.lower())
