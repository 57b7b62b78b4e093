"""`svcnet lab status`: nodes, pods, and Services as frontends → endpoints, the
way `cilium-dbg service list` shows them (ClusterIP, NodePort per node, LB IPs →
each endpoint with ready/serving/terminating and its node). Never crashes on a
half-dead lab: what cannot be read is said, not raised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from svcnet.apiclient.objects import Obj


def _ready(obj: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def summarize(meta: dict[str, Any], nodes: list[Obj], pods: list[Obj], services: list[Obj],
              slices: list[Obj]) -> dict[str, Any]:
    """Plain data for both the table and --format json."""
    node_ips = {n["name"]: n["ip"] for n in meta.get("nodes") or []}
    out_nodes = [{"name": n["metadata"]["name"], "ready": _ready(n),
                  "ip": next((a["address"] for a in (n.get("status") or {}).get("addresses") or []
                              if a.get("type") == "InternalIP"), ""),
                  "podCIDR": (n.get("spec") or {}).get("podCIDR", "")} for n in nodes]
    out_pods = []
    for p in pods:
        st = p.get("status") or {}
        out_pods.append({"namespace": p["metadata"].get("namespace"), "name": p["metadata"]["name"],
                         "node": (p.get("spec") or {}).get("nodeName", ""), "ip": st.get("podIP", ""),
                         "phase": st.get("phase", ""), "ready": _ready(p),
                         "restarts": sum(c.get("restartCount", 0) for c in st.get("containerStatuses") or []),
                         "terminating": bool(p["metadata"].get("deletionTimestamp"))})
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for s in slices:
        svc = (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
        if svc:
            by_service.setdefault((s["metadata"].get("namespace", ""), svc), []).append(s)
    out_svcs = []
    for svc in services:
        m, spec = svc["metadata"], svc.get("spec") or {}
        frontends = []
        for port in spec.get("ports") or []:
            proto = port.get("protocol", "TCP")
            for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []):
                if ip != "None":
                    frontends.append(f"{ip}:{port.get('port')}/{proto}")
            if port.get("nodePort"):
                frontends += [f"{ip}:{port['nodePort']}/{proto} (NodePort)" for ip in node_ips.values()]
            for ing in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
                if ing.get("ip"):
                    frontends.append(f"{ing['ip']}:{port.get('port')}/{proto} (LoadBalancer)")
            for ip in spec.get("externalIPs") or []:
                frontends.append(f"{ip}:{port.get('port')}/{proto} (ExternalIP)")
        endpoints = []
        for s in by_service.get((m.get("namespace", ""), m["name"]), []):
            ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in s.get("ports") or [])
            for ep in s.get("endpoints") or []:
                cond = ep.get("conditions") or {}
                for addr in ep.get("addresses") or []:
                    endpoints.append({"address": addr, "ports": ports, "node": ep.get("nodeName", ""),
                                      "pod": ((ep.get("targetRef") or {}).get("name", "")),
                                      "ready": cond.get("ready", False), "serving": cond.get("serving", False),
                                      "terminating": cond.get("terminating", False)})
        out_svcs.append({"namespace": m.get("namespace"), "name": m["name"], "type": spec.get("type", "ClusterIP"),
                         "frontends": frontends, "endpoints": endpoints})
    return {"lab": meta.get("name"), "proxyMode": meta.get("proxyMode"), "nodes": out_nodes, "pods": out_pods,
            "services": out_svcs, "external": meta.get("external")}


def render_table(s: dict[str, Any]) -> str:
    lines = [f"Lab {s['lab']} (proxy mode {s['proxyMode']}; external client {s['external']['ip']} "
             f"in netns {s['external']['netns']})", "", "NODES"]
    for n in s["nodes"]:
        lines.append(f"  {n['name']:<28} {'Ready' if n['ready'] else 'NotReady':<9} {n['ip']:<15} {n['podCIDR']}")
    lines += ["", "PODS"]
    for p in s["pods"]:
        state = "Terminating" if p["terminating"] else p["phase"]
        lines.append(f"  {p['namespace'] + '/' + p['name']:<40} {state:<11} {'ready' if p['ready'] else 'not-ready':<9}"
                     f" {p['ip']:<15} {p['node']:<24} restarts={p['restarts']}")
    lines += ["", "SERVICES (frontend → endpoints)"]
    for svc in s["services"]:
        lines.append(f"  {svc['namespace']}/{svc['name']} ({svc['type']})")
        for f in svc["frontends"]:
            lines.append(f"      {f}")
        for i, ep in enumerate(svc["endpoints"], 1):
            flags = [k for k in ("ready", "serving", "terminating") if ep[k]]
            lines.append(f"      {i}) → {ep['address']} {ep['ports']:<14} {'/'.join(flags) or 'not-ready':<22}"
                         f" {ep['pod']} on {ep['node']}")
        if not svc["endpoints"]:
            lines.append("      (no endpoints)")
    return "\n".join(lines)


async def print_status(name: str, fmt: str) -> int:
    from svcnet.apiclient.client import RestClient
    from svcnet.apiclient.resources import ENDPOINT_SLICES, NODES, PODS, SERVICES
    from svcnet.lab.lab import LabPaths

    paths = LabPaths.of(name)
    try:
        meta = json.loads(Path(paths.meta).read_text())
    except (OSError, ValueError):
        print(f"lab {name!r}: no lab.json (a half-finished up?); `svcnet lab down --name {name}` cleans it")
        return 1
    try:
        async with RestClient.from_kubeconfig(str(paths.kubeconfig)) as c:
            nodes = (await c.list(NODES)).get("items") or []
            pods = (await c.list(PODS)).get("items") or []
            services = (await c.list(SERVICES)).get("items") or []
            slices = (await c.list(ENDPOINT_SLICES)).get("items") or []
    except Exception as e:  # status must say what is wrong, never crash (netlab #3217)
        print(f"lab {name!r}: the apiserver does not answer ({e}); see `svcnet lab logs apiserver`")
        return 1
    s = summarize(meta, nodes, pods, services, slices)
    print(json.dumps(s, indent=2) if fmt == "json" else render_table(s))
    return 0
