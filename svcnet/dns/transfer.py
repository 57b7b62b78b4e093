"""Zone transfer content (CoreDNS plugin/kubernetes/xfr.go).

The AXFR stream is: SOA; NS records with their glue (TTL 0); then every exposed
Service sorted by name: ClusterIP/NodePort/LoadBalancer Services give their A/AAAA, an
SRV at the bare name for every port (weight 100) and `_port._proto` SRVs for named
ports; headless Services give, per ready endpoint, the service A, the endpoint A and
the named-port SRVs (weight split over the slice's endpoints); ExternalName Services
give their CNAME; then the closing SOA. Pod records, endpoints of ClusterIP Services
and the zonal names are not part of a transfer, as in CoreDNS.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from svcnet.dns import wire
from svcnet.dns.records import CLUSTER_IP, EXTERNAL_NAME, endpoint_hostname
from svcnet.dns.wire import RR

if TYPE_CHECKING:
    from svcnet.dns.zone import ServedZone, Zone


def _w(labels: tuple[str, ...]) -> bytes:
    return wire.labels_to_wire([lb.encode("latin-1") for lb in labels])


def transfer_records(zone: "Zone", served: "ServedZone") -> list[RR]:
    """Every record of an AXFR of `served`, opening and closing SOA included."""
    ttl = zone.config.ttl
    soa = zone.soa(served)
    out: list[RR] = [soa]
    seen: set[bytes] = set()
    for labels, ip in zone.ns_addresses(served):
        name = _w(labels)
        if name not in seen:
            seen.add(name)
            out.append(wire.rr_ns(served.wire, ttl, name))
        out.append(wire.rr_a(name, 0, ip))
    index = zone.index
    for svc in sorted(index.services.values(), key=lambda s: (s.name, s.namespace)):
        if not zone.namespace_exposed(svc.namespace):
            continue
        base = (svc.name, svc.namespace, "svc") + served.labels
        bname = _w(base)
        if svc.kind == EXTERNAL_NAME:
            try:
                import ipaddress
                ipaddress.ip_address(svc.external_name)
                continue
            except ValueError:
                if svc.external_name:
                    out.append(wire.rr_cname(bname, ttl, wire.name_to_wire(svc.external_name)))
                continue
        if svc.kind == CLUSTER_IP and svc.cluster_ips:
            for ip in svc.cluster_ips:
                out.append(wire.rr_a(bname, ttl, ip))
            for p in svc.ports:
                out.append(wire.rr_srv(bname, ttl, 0, 100, p.port, bname))
                if p.name:
                    srv_name = _w(("_" + p.name.lower(), "_" + p.protocol.lower()) + base)
                    out.append(wire.rr_srv(srv_name, ttl, 0, 100, p.port, bname))
            continue
        for sl in index.service_slices(svc.namespace, svc.name):
            if not sl.addresses:
                continue
            weight = math.floor(100.0 / (100 * len(sl.addresses)) * 100)
            for a in sl.addresses:
                host = _w((endpoint_hostname(a, zone.config.endpoint_pod_names).lower(),) + base)
                out.append(wire.rr_a(bname, ttl, a.ip))
                out.append(wire.rr_a(host, ttl, a.ip))
                for p in sl.ports:
                    if p.name and p.port >= 0:
                        srv_name = _w(("_" + p.name.lower(), "_" + p.protocol.lower()) + base)
                        out.append(wire.rr_srv(srv_name, ttl, 0, max(weight, 1), p.port, host))
    out.append(soa)
    return out
