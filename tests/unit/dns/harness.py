"""Shared test set-up for the DNS unit tests: objects, a Handler without sockets, and
CoreDNS-style cases (`Case{qname, qtype, rcode, answer, ns, extra}`) whose records are
zone-file text. Queries are built and replies parsed with dnslib, an encoder and
parser independent of svcnet's own, so a test cannot pass by agreeing with itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dnslib

from svcnet.dns.app import IndexFeeder
from svcnet.dns.handler import Handler, Listener
from svcnet.dns.index import ClusterIndex
from svcnet.dns.metrics import Metrics
from svcnet.dns.zone import Zone, ZoneConfig, expand_zone

SERIAL = 1_700_000_000


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def svc(name: str, namespace: str, ips: list[str] | None, ports: list[tuple[str, int, str]] = (),
        external: str = "", selector: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports]}
    if selector:
        spec["selector"] = {"app": name}
    if external:
        spec = {"type": "ExternalName", "externalName": external}
    elif ips is None:
        spec["clusterIP"] = "None"
    else:
        spec["clusterIP"] = ips[0]
        spec["clusterIPs"] = ips
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def slice_(name: str, namespace: str, service: str, endpoints: list[dict[str, Any]],
           ports: list[tuple[str, int, str]] = (), family: str = "IPv4") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": family, "endpoints": endpoints,
            "ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports]}


def ep(ip: str, hostname: str | None = None, ready: bool | None = None, pod: str | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"addresses": [ip]}
    if hostname:
        e["hostname"] = hostname
    if ready is not None:
        e["conditions"] = {"ready": ready}
    if pod:
        e["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "x"}
    return e


def pod(name: str, namespace: str, ip: str, phase: str = "Running") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}}


HTTP = ("http", 80, "TCP")

# The fixture cluster, after CoreDNS's handler_test.go objects.
OBJECTS: list[dict[str, Any]] = [
    ns("testns"), ns("otherns"),
    svc("svc1", "testns", ["10.0.0.1"], [HTTP]),
    slice_("svc1-a", "testns", "svc1", [ep("172.0.9.1")], [HTTP]),
    svc("svc6", "testns", ["1234:abcd::1"], [HTTP]),
    svc("svcempty", "testns", ["10.0.0.2"], [HTTP]),
    svc("dual", "testns", ["10.0.0.3", "1234:abcd::3"], [HTTP, ("", 8080, "TCP")]),
    svc("hdls1", "testns", None, [HTTP]),
    slice_("hdls1-v4", "testns", "hdls1", [
        ep("172.0.0.2", "dup-name"), ep("172.0.0.3", "dup-name"), ep("172.0.0.4", pod="pod-4"),
        ep("172.0.0.5", ready=False)], [HTTP]),
    slice_("hdls1-v6", "testns", "hdls1", [ep("5678:abcd::1"), ep("5678:abcd::2")], [HTTP], "IPv6"),
    svc("hdlsempty", "testns", None, [HTTP]),
    svc("hdlsportless", "testns", None, []),
    slice_("hdlsportless-a", "testns", "hdlsportless", [ep("172.0.1.1")], []),
    svc("external", "testns", None, external="ext.interwebs.test"),
    svc("external-to-service", "testns", None, external="svc1.testns.svc.cluster.local"),
    svc("loop", "testns", None, external="loop.testns.svc.cluster.local"),
    svc("extip", "testns", None, external="1.2.3.4"),
    svc("other", "otherns", ["10.0.0.9"], [HTTP]),
]

ZONES = ("cluster.local", "10.0.0.0/24", "in-addr.arpa", "ip6.arpa")


def make_handler(objects: list[dict[str, Any]] | None = None, synced: bool = True,
                 zones: tuple[str, ...] = ZONES, **zone_options: Any) -> Handler:
    index = ClusterIndex(clock=lambda: SERIAL)
    metrics = Metrics()
    feeder = IndexFeeder(index, metrics, clock=lambda: SERIAL)
    for obj in OBJECTS if objects is None else objects:
        kind = obj["kind"]
        if kind == "Service":
            feeder.on_service_add(obj)
        elif kind == "EndpointSlice":
            feeder.on_endpoint_slice_add(obj)
        elif kind == "Pod":
            feeder.on_pod_add(obj)
        elif kind == "Namespace":
            feeder.on_namespace_add(obj)
    if synced:
        index.mark_synced()
    served = tuple(z for spec in zones for z in expand_zone(spec))
    zone = Zone(ZoneConfig(zones=served, **zone_options), index)
    return Handler(zone, None, metrics)


def listener(handler: Handler, proto: str = "udp") -> Listener:
    return Listener("dns://127.0.0.1:53", proto, "1", handler.metrics.collector.new_stats())


async def ask(handler: Handler, qname: str, qtype: str, *, proto: str = "udp", bufsize: int | None = None,
              client: str = "10.9.9.9") -> dnslib.DNSRecord:
    q = dnslib.DNSRecord.question(qname, qtype)
    if bufsize is not None:
        q.add_ar(dnslib.EDNS0(udp_len=bufsize))
    replies = await handler.handle(q.pack(), listener(handler, proto), client)
    assert len(replies) == 1
    return dnslib.DNSRecord.parse(replies[0])


def zone_text(rrs: list[Any]) -> list[str]:
    out = []
    for rr in rrs:
        if rr.rtype == dnslib.QTYPE.OPT:
            continue
        out.append(" ".join(rr.toZone().split()))
    return sorted(out)


def norm(lines: list[str]) -> list[str]:
    return sorted(" ".join(line.split()) for line in lines)


@dataclass
class Case:
    qname: str
    qtype: str
    rcode: str = "NOERROR"
    answer: list[str] = field(default_factory=list)
    ns: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


def soa(zone: str = "cluster.local.", serial: int = SERIAL, ttl: int = 5) -> str:
    return f"{zone} {min(ttl, 300)} IN SOA ns.dns.{zone} hostmaster.{zone} {serial} 7200 1800 86400 {ttl}"


async def check(handler: Handler, case: Case) -> None:
    reply = await ask(handler, case.qname, case.qtype)
    assert dnslib.RCODE.get(reply.header.rcode) == case.rcode, reply
    assert reply.header.aa == 1, "authoritative answers carry AA"
    assert zone_text(reply.rr) == norm(case.answer), reply
    assert zone_text(reply.auth) == norm(case.ns), reply
    assert zone_text(reply.ar) == norm(case.extra), reply
