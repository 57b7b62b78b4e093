"""Kubernetes objects for proxy tests, written the short way, and state built from them
through the same change tracker the proxy uses (so conversion is exercised too)."""

from __future__ import annotations

from typing import Any

from svcnet.proxy.change_tracker import ChangeTracker
from svcnet.proxy.model import ProxyConfig, ProxyState
from svcnet.proxy.nft_ruleset import FamilyRuleset
from svcnet.proxy.nftables import compute_family
from svcnet.proxy.tracer import Tracer

NODE = "node-a"
NODE_IP = "192.168.0.2"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"


def svc(name: str, ip: str, *ports: tuple[Any, ...], ns: str = "ns1", type: str = "ClusterIP",
        labels: dict[str, str] | None = None, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """ports: (name, port, protocol[, nodePort])."""
    pl = []
    for p in ports:
        d: dict[str, Any] = {"name": p[0], "port": p[1], "protocol": p[2]}
        if len(p) > 3:
            d["nodePort"] = p[3]
        pl.append(d)
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
                           "spec": {"clusterIP": ip, "clusterIPs": [ip] if ip != "None" else None,
                                    "type": type, "ports": pl, **spec}}
    if status:
        obj["status"] = status
    return obj


def ep(ip: str, node: str | None = "node-b", ready: bool | None = True, serving: bool | None = None,
       terminating: bool | None = None, zones: tuple[str, ...] = ()) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    if ready is not None:
        cond["ready"] = ready
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    e: dict[str, Any] = {"addresses": [ip], "conditions": cond}
    if node:
        e["nodeName"] = node
    if zones:
        e["hints"] = {"forZones": [{"name": z} for z in zones]}
    return e


def eps(service: str, *endpoints: dict[str, Any], ports: tuple[tuple[str, int, str], ...] = (("p80", 80, "TCP"),),
        ns: str = "ns1", name: str | None = None, family: str = "IPv4") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{service}-x", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": family,
            "ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports],
            "endpoints": list(endpoints)}


def config(**kw: Any) -> ProxyConfig:
    base: dict[str, Any] = dict(family=4, node_name=NODE, node_ips=(NODE_IP,), cluster_cidrs=(CLUSTER_CIDR,),
                                service_cidrs=(SERVICE_CIDR,))
    base.update(kw)
    return ProxyConfig(**base)


def state(objects: list[dict[str, Any]], **kw: Any) -> ProxyState:
    cfg = config(**kw)
    t = ChangeTracker(cfg.node_name, (cfg.family,))
    for o in objects:
        if o["kind"] == "Service":
            t.on_service_add(o)
        else:
            t.on_endpoint_slice_add(o)
    t.checkpoint()
    return ProxyState(cfg, t.ports[cfg.family], t.endpoints[cfg.family])


def ruleset(objects: list[dict[str, Any]], **kw: Any) -> FamilyRuleset:
    return compute_family(state(objects, **kw))


def tracer(objects: list[dict[str, Any]], **kw: Any) -> Tracer:
    return Tracer(ruleset(objects, **kw))
