"""The Node object and its Lease: how the control plane knows this node is alive.

The agent registers its Node (addresses, podCIDR, labels, Ready) once, updates its
status when something changes or every `status_interval`, and renews
`kube-node-lease/<node>` every 10 s — the heartbeat the node-lifecycle controller
watches (40 s without a renewal and the node turns NotReady), as kubelets do since
Kubernetes 1.17.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import platform
from dataclasses import dataclass
from typing import Any

from svcnet import __version__
from svcnet.apiclient import errors
from svcnet.apiclient.client import PatchType, RestClient
from svcnet.apiclient.objects import Obj
from svcnet.apiclient.resources import LEASES, NODES

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40


def micro_time(t: datetime.datetime | None = None) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    return (t or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class NodeConfig:
    name: str
    ip: str
    pod_cidr: str
    labels: tuple[tuple[str, str], ...] = ()


def node_object(cfg: NodeConfig) -> Obj:
    labels = {"kubernetes.io/hostname": cfg.name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
              **dict(cfg.labels)}
    spec: Obj = {}
    if cfg.pod_cidr:
        spec = {"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr]}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": cfg.name, "labels": labels}, "spec": spec}


def node_status(cfg: NodeConfig, ready: bool, previous: Obj | None = None) -> Obj:
    now = rfc3339()
    prev = {c.get("type"): c for c in ((previous or {}).get("conditions") or [])}

    def cond(ctype: str, ok: bool, reason: str, message: str) -> Obj:
        status = "True" if ok else "False"
        old = prev.get(ctype) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        return {"type": ctype, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": since or now}

    cpus = str(os.cpu_count() or 1)
    capacity = {"cpu": cpus, "memory": f"{_mem_kib()}Ki", "pods": "110", "ephemeral-storage": "10Gi"}
    return {
        "addresses": [{"type": "InternalIP", "address": cfg.ip}, {"type": "Hostname", "address": cfg.name}],
        "conditions": [
            cond("MemoryPressure", False, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", False, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", False, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", ready, "KubeletReady" if ready else "KubeletNotReady",
                 "kubelet is posting ready status" if ready else "pods are not synced yet"),
        ],
        "capacity": capacity,
        "allocatable": capacity,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": platform.release(),
                     "osImage": "svcnet netns lab", "containerRuntimeVersion": "svcnet://" + __version__,
                     "kubeletVersion": "v1.32.0-svcnet", "kubeProxyVersion": "", "operatingSystem": "linux",
                     "architecture": node_object(cfg)["metadata"]["labels"]["kubernetes.io/arch"]},
    }


def _mem_kib() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 1 << 20


class NodeRegistration:
    """Registers the Node, keeps its status and renews its Lease."""

    def __init__(self, client: RestClient, cfg: NodeConfig, lease_interval: float = 10.0,
                 status_interval: float = 60.0) -> None:
        self.client, self.cfg = client, cfg
        self.lease_interval, self.status_interval = lease_interval, status_interval
        self.ready = False
        self.node: Obj | None = None
        self._status_dirty = asyncio.Event()

    async def register(self) -> Obj:
        """Create the Node, or adopt an existing one (keeping what others set on it)."""
        while True:
            try:
                try:
                    self.node = await self.client.create(NODES, node_object(self.cfg))
                    log.info("registered node=%s ip=%s podCIDR=%s", self.cfg.name, self.cfg.ip, self.cfg.pod_cidr)
                except errors.AlreadyExists:
                    patch = node_object(self.cfg)
                    self.node = await self.client.patch(NODES, self.cfg.name, {"metadata": patch["metadata"],
                                                                               "spec": patch["spec"]},
                                                        patch_type=PatchType.MERGE)
                    log.info("node=%s already registered: updated", self.cfg.name)
                await self.write_status()
                return self.node
            except (errors.ApiError, errors.TransportError, OSError) as e:
                log.warning("registering node=%s failed (will retry): %s", self.cfg.name, e)
                await asyncio.sleep(2)

    def set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self._status_dirty.set()

    async def write_status(self) -> None:
        previous = (self.node or {}).get("status")
        status = node_status(self.cfg, self.ready, previous)
        self.node = await self.client.patch(NODES, self.cfg.name, {"status": status}, patch_type=PatchType.MERGE,
                                            subresource="status")

    async def status_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.status_interval):
                    await self._status_dirty.wait()
            except TimeoutError:
                pass
            self._status_dirty.clear()
            try:
                await self.write_status()
            except (errors.ApiError, errors.TransportError, OSError) as e:
                log.warning("node status update failed: %s", e)
                self._status_dirty.set()
                await asyncio.sleep(2)

    async def lease_loop(self) -> None:
        lease: Obj | None = None
        while True:
            try:
                lease = await self._renew(lease)
            except (errors.ApiError, errors.TransportError, OSError) as e:
                log.warning("lease renewal failed: %s", e)
                lease = None
            await asyncio.sleep(self.lease_interval)

    async def _renew(self, lease: Obj | None) -> Obj:
        now = micro_time()
        if lease is None:
            try:
                lease = await self.client.get(LEASES, self.cfg.name, LEASE_NAMESPACE)
            except errors.NotFound:
                owner: list[Any] = []
                if self.node and self.node.get("metadata", {}).get("uid"):
                    owner = [{"apiVersion": "v1", "kind": "Node", "name": self.cfg.name,
                              "uid": self.node["metadata"]["uid"]}]
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.cfg.name, "namespace": LEASE_NAMESPACE,
                                     "ownerReferences": owner},
                        "spec": {"holderIdentity": self.cfg.name, "leaseDurationSeconds": LEASE_DURATION,
                                 "renewTime": now}}
                return await self.client.create(LEASES, body, LEASE_NAMESPACE)
        lease = {**lease, "spec": {**(lease.get("spec") or {}), "holderIdentity": self.cfg.name,
                                   "leaseDurationSeconds": LEASE_DURATION, "renewTime": now}}
        try:
            return await self.client.update(LEASES, lease, LEASE_NAMESPACE)
        except errors.Conflict:
            return await self._renew(None)
