"""Pod sandboxes: a pod's network namespace, its veth to the node, its address
from the node's podCIDR, and its /etc/netns/<netns>/ files (resolv.conf,
nsswitch.conf, hosts) — the part of a pod that outlives container restarts.

The wiring is `plan.pod_sandbox_plan` (routed /32s, no bridge). Every namespace,
link and file is journaled in the agent's state file before it is made, so
`svcnet lab down` — or the next agent start — removes exactly those.

Addresses come from a host-local allocator over the podCIDR: the first address
is the gateway on the node side of every veth, the network and broadcast
addresses are never handed out, and a released address is reused last (lowest
free after the last one handed out), so a replaced pod rarely inherits the
address its predecessor had in someone's conntrack table.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from svcnet.apiclient.objects import Obj, meta
from svcnet.lab.agent.podspec import NSSWITCH_CONF, ClusterDNS, hosts_file, resolv_conf
from svcnet.lab.names import pod_host_veth, pod_netns_name
from svcnet.lab.netns import Netns, delete_netns, netns_exists
from svcnet.lab.plan import apply_plan, pod_sandbox_plan
from svcnet.lab.state import Record, StateFile

log = logging.getLogger(__name__)

ETC_NETNS = Path("/etc/netns")


class IPAMExhausted(RuntimeError):
    pass


class HostLocalIPAM:
    """Addresses of one podCIDR for pods on this node."""

    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.IPv4Network(cidr)
        self.gateway = self.network.network_address + 1
        self._used: dict[str, str] = {}  # ip -> owner (pod uid)
        self._last = self.gateway

    def allocate(self, owner: str) -> str:
        for ip, who in self._used.items():
            if who == owner:
                return ip
        hosts = [h for h in self.network.hosts() if h != self.gateway]
        start = next((i for i, h in enumerate(hosts) if h > self._last), 0)
        for h in hosts[start:] + hosts[:start]:
            if str(h) not in self._used:
                self._used[str(h)] = owner
                self._last = h
                return str(h)
        raise IPAMExhausted(f"podCIDR {self.network} has no free address")

    def reserve(self, ip: str, owner: str) -> None:
        """Mark `ip` used by `owner` (a sandbox adopted from an earlier run)."""
        if ipaddress.IPv4Address(ip) not in self.network:
            raise ValueError(f"{ip} is not in podCIDR {self.network}")
        self._used[ip] = owner

    def release(self, ip: str) -> None:
        self._used.pop(ip, None)

    def in_use(self) -> dict[str, str]:
        return dict(self._used)


@dataclass(frozen=True)
class Sandbox:
    uid: str
    namespace: str
    name: str
    netns: str
    host_veth: str
    ip: str
    gateway: str

    @property
    def etc_dir(self) -> Path:
        return ETC_NETNS / self.netns


class SandboxManager:
    """Creates and removes pod sandboxes on one node.

    `node_netns` is the node's namespace name when the agent runs outside it (the
    tests), or None when the agent itself runs inside the node's namespace (the lab).
    """

    def __init__(self, node_name: str, pod_cidr: str, state: StateFile, dns: ClusterDNS,
                 node_netns: str | None = None, etc_netns: Path = ETC_NETNS,
                 host_resolv: str = "") -> None:
        self.node_name = node_name
        self.ipam = HostLocalIPAM(pod_cidr)
        self.state = state
        self.dns = dns
        self.node_netns = node_netns
        self.etc_netns = etc_netns
        self.host_resolv = host_resolv

    async def create(self, pod: Obj) -> Sandbox:
        m = meta(pod)
        uid, ns, name = str(m.get("uid") or f"{m.get('namespace')}/{m.get('name')}"), str(
            m.get("namespace") or "default"), str(m.get("name"))
        netns = pod_netns_name(self.node_name, ns, name)
        if netns_exists(netns):
            # A sandbox of an earlier pod with the same name (or our own crash): start clean.
            log.info("removing stale sandbox netns=%s", netns)
            delete_netns(netns)
        ip = self.ipam.allocate(uid)
        sb = Sandbox(uid, ns, name, netns, pod_host_veth(uid), ip, str(self.ipam.gateway))
        owner = f"pod/{ns}/{name}"
        alias = f"svcnet node={self.node_name} pod={ns}/{name}"
        try:
            await apply_plan(pod_sandbox_plan(self.node_netns, netns, sb.host_veth, ip, sb.gateway, alias),
                             self.state, owner)
            self._write_files(sb, pod, owner)
        except BaseException:
            await self.remove(sb)
            raise
        log.info("sandbox ready pod=%s/%s netns=%s ip=%s veth=%s", ns, name, netns, ip, sb.host_veth)
        return sb

    def _write_files(self, sb: Sandbox, pod: Obj, owner: str) -> None:
        d = self.etc_netns / sb.netns
        if not self.etc_netns.exists():  # only what we create is ours to remove
            self.state.record(Record("dir", str(self.etc_netns), owner=owner))
        self.state.record(Record("dir", str(d), owner=owner))
        d.mkdir(parents=True, exist_ok=True)
        files = {
            "resolv.conf": resolv_conf(pod, self.dns, self.host_resolv),
            "nsswitch.conf": NSSWITCH_CONF,
            "hosts": hosts_file(pod, sb.ip, self.dns.domain),
        }
        for fname, text in files.items():
            self.state.record(Record("file", str(d / fname), owner=owner))
            (d / fname).write_text(text)

    async def remove(self, sb: Sandbox) -> None:
        """Delete the veth, the namespace and the /etc/netns files; release the address."""
        try:
            async with Netns(self.node_netns) as node:
                await node.delete_link(sb.host_veth)
        except OSError as e:
            log.warning("pod=%s/%s: deleting veth %s: %s", sb.namespace, sb.name, sb.host_veth, e)
        delete_netns(sb.netns)
        shutil.rmtree(self.etc_netns / sb.netns, ignore_errors=True)
        self.ipam.release(sb.ip)
        log.info("sandbox removed pod=%s/%s netns=%s", sb.namespace, sb.name, sb.netns)
