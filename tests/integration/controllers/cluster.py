"""A control plane of real processes for controller tests: `svcnet apiserver` and
`svcnet controller-manager`, plus a stand-in for the node agents.

No pods run here, so `NodeStandIn` plays the kubelet's API part with real API
writes: it registers Nodes, renews their Leases, reports bound pods Running and Ready
with an IP from the node's podCIDR, and completes graceful deletions. Everything the
controllers see comes through the apiserver, as in a cluster.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import quote

from integration.controlplane.apiserver_process import ApiServer

T = TypeVar("T")
Obj = dict[str, Any]


def now_micro() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wait_for(pred: Callable[[], T | None], timeout: float = 30.0, what: str = "condition",
             tick: Callable[[], None] | None = None, logs: Callable[[], str] | None = None) -> T:
    """Poll `pred` (running `tick` first each round) until it is truthy; fail with logs."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        value = pred()
        if value:
            return value
        last = value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{logs() if logs else ''}")


class Api:
    """JSON over the apiserver's HTTPS, with the admin token."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
             ok: tuple[int, ...] = (200, 201, 202)) -> Obj:
        data = json.dumps(body).encode() if body is not None else None
        status, _, raw = self.server.request(method, path, data, headers={"Content-Type": content_type,
                                                                          "Accept": "application/json"})
        if status not in ok:
            raise AssertionError(f"{method} {path} -> {status}: {raw[:500]!r}")
        return json.loads(raw) if raw else {}

    def items(self, path: str, selector: str | None = None) -> list[Obj]:
        q = f"?labelSelector={quote(selector)}" if selector else ""
        return list(self.call("GET", path + q).get("items") or [])

    def merge_patch(self, path: str, patch: Obj) -> Obj:
        return self.call("PATCH", path, patch, "application/merge-patch+json")

    def pods(self, ns: str = "default", selector: str | None = None) -> list[Obj]:
        return self.items(f"/api/v1/namespaces/{ns}/pods", selector)

    def slices(self, service: str, ns: str = "default") -> list[Obj]:
        return self.items(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                         f"kubernetes.io/service-name={service}")


def ready_of(obj: Obj) -> str:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status"))
    return "Unknown"


@dataclass
class NodeStandIn:
    """The API-facing half of the node agents for a set of nodes."""

    api: Api
    nodes: dict[str, str]  # name -> podCIDR
    renewing: set[str] = field(default_factory=set)
    unready_pods: set[str] = field(default_factory=set)  # pod names reported not ready
    hold_deletions: set[str] = field(default_factory=set)  # pod names kept terminating
    unready_images: set[str] = field(default_factory=set)  # pods running these never get Ready
    _ips: dict[str, str] = field(default_factory=dict)

    def register(self, zones: dict[str, str] | None = None) -> None:
        for name, cidr in self.nodes.items():
            labels = {"kubernetes.io/hostname": name}
            if zones and name in zones:
                labels["topology.kubernetes.io/zone"] = zones[name]
            self.api.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                                    "metadata": {"name": name, "labels": labels},
                                                    "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
            self.api.merge_patch(f"/api/v1/nodes/{name}/status", {"status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready",
                 "lastHeartbeatTime": now_micro()[:19] + "Z", "lastTransitionTime": now_micro()[:19] + "Z"}]}})
            self.api.call("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()}})
            self.renewing.add(name)

    def renew(self) -> None:
        for name in self.renewing:
            self.api.merge_patch(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}",
                                 {"spec": {"renewTime": now_micro()}})

    def _ip_for(self, pod: Obj) -> str:
        key = pod["metadata"]["uid"]
        if key not in self._ips:
            net = ipaddress.ip_network(self.nodes[pod["spec"]["nodeName"]])
            used = set(self._ips.values())
            self._ips[key] = next(str(ip) for ip in list(net.hosts())[1:] if str(ip) not in used)
        return self._ips[key]

    def tick(self, ns: str = "default") -> None:
        """One round of the kubelets' API work: leases, pod status, finished deletions."""
        self.renew()
        for pod in self.api.pods(ns):
            md, spec = pod["metadata"], pod["spec"]
            node = spec.get("nodeName")
            if node not in self.nodes:
                continue
            path = f"/api/v1/namespaces/{ns}/pods/{md['name']}"
            if md.get("deletionTimestamp"):
                if md["name"] in self.hold_deletions:
                    continue  # still shutting down: keeps running, and serving
                self.api.call("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1",
                                               "gracePeriodSeconds": 0}, ok=(200, 202, 404))
                continue
            if node not in self.renewing:
                continue  # a silent node reports nothing
            want_ready = md["name"] not in self.unready_pods and not any(
                c.get("image") in self.unready_images for c in spec.get("containers") or [])
            status = pod.get("status") or {}
            if status.get("podIP") and (ready_of(pod) == "True") == want_ready:
                continue
            ip = self._ip_for(pod)
            r = "True" if want_ready else "False"
            self.api.merge_patch(path + "/status", {"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": r, "lastTransitionTime": now_micro()[:19] + "Z"},
                               {"type": "ContainersReady", "status": r},
                               {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": c["name"], "ready": want_ready, "restartCount": 0,
                                       "image": c.get("image", ""), "imageID": "", "started": True,
                                       "state": {"running": {"startedAt": now_micro()[:19] + "Z"}}}
                                      for c in spec.get("containers") or []]}})


@dataclass
class ControllerManager:
    kubeconfig: Path
    log: Path
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "svcnet", "controller-manager", "--kubeconfig", str(self.kubeconfig),
               *self.args]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
