"""Network plans: the namespaces, links, addresses, routes and sysctls to create,
as plain data first and kernel calls second.

`lab_network_plan(topology)` is the whole underlay of a lab, `pod_sandbox_plan(...)`
one pod's namespace and veth. Each step renders as the `ip`/`sysctl` command a
person would type for it, so `svcnet lab up --dry-run` prints a recipe that works
by hand, and `apply_plan` executes the same steps with pyroute2, writing every
namespace and link to the state file before creating it.

The underlay, for a control-plane node and two workers:

    netns <lab>-underlay:   bridge <lab>-br ── u-control-plane, u-worker, u-worker2, u-external
    netns <lab>-<node>:     eth0 172.18.0.N/24 (peer of u-<node>)
                            routes: the other nodes' podCIDRs via their eth0 address
                            pods:   veth<hash> 10.244.X.1/32 ──► pod eth0 10.244.X.Y/32
    netns <lab>-external:   eth0 172.18.0.254/24; loadBalancerPool via every node (ECMP)
    netns <lab>-etcd1 …     with `controlPlane: {etcd: 3, apiservers: 2}`: one namespace
    netns <lab>-apiserver1 …  per member, eth0 on the bridge (addresses after the nodes');
                            apiservers route the podCIDRs via the nodes, to answer pods

Pods are routed, not bridged (like the CNI ptp plugin and Calico): the node side of
every pod veth holds the podCIDR's first address as a /32, the pod holds its own
/32 with an on-link route to that gateway, and the node has a /32 route per pod.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Union

from svcnet.lab.names import LabNames
from svcnet.lab.netns import Netns, Nexthop, create_netns, netns_exists, set_sysctl
from svcnet.lab.state import Record, StateFile
from svcnet.lab.topology import Topology

log = logging.getLogger(__name__)


def _n(netns: str | None) -> str:
    return f"-n {netns} " if netns else ""


@dataclass(frozen=True)
class NetnsAdd:
    name: str

    def render(self) -> str:
        return f"ip netns add {self.name}"


@dataclass(frozen=True)
class Sysctl:
    netns: str | None
    key: str
    value: str

    def render(self) -> str:
        pre = f"ip netns exec {self.netns} " if self.netns else ""
        return f"{pre}sysctl -qw {self.key}={self.value}"


@dataclass(frozen=True)
class BridgeAdd:
    netns: str | None
    name: str
    alias: str = ""

    def render(self) -> str:
        return (f"ip {_n(self.netns)}link add {self.name} type bridge stp_state 0 forward_delay 0"
                + (f" && ip {_n(self.netns)}link set {self.name} alias '{self.alias}'" if self.alias else ""))


@dataclass(frozen=True)
class VethAdd:
    netns: str | None
    name: str
    peer: str
    peer_netns: str | None = None
    alias: str = ""

    def render(self) -> str:
        peer_ns = f" netns {self.peer_netns}" if self.peer_netns else ""
        return (f"ip {_n(self.netns)}link add {self.name} type veth peer name {self.peer}{peer_ns}"
                + (f" && ip {_n(self.netns)}link set {self.name} alias '{self.alias}'" if self.alias else ""))


@dataclass(frozen=True)
class SetMaster:
    netns: str | None
    link: str
    bridge: str

    def render(self) -> str:
        return f"ip {_n(self.netns)}link set {self.link} master {self.bridge}"


@dataclass(frozen=True)
class LinkUp:
    netns: str | None
    link: str

    def render(self) -> str:
        return f"ip {_n(self.netns)}link set {self.link} up"


@dataclass(frozen=True)
class AddrAdd:
    netns: str | None
    link: str
    cidr: str

    def render(self) -> str:
        return f"ip {_n(self.netns)}addr add {self.cidr} dev {self.link}"


@dataclass(frozen=True)
class RouteAdd:
    netns: str | None
    dst: str
    via: str | None = None
    dev: str | None = None
    src: str | None = None
    nexthops: tuple[Nexthop, ...] = ()

    def render(self) -> str:
        parts = [f"ip {_n(self.netns)}route replace {self.dst}"]
        if self.via:
            parts.append(f"via {self.via}")
        if self.dev:
            parts.append(f"dev {self.dev}" + ("" if self.via else " scope link"))
        if self.src:
            parts.append(f"src {self.src}")
        for hop in self.nexthops:
            parts.append(f"nexthop via {hop.gateway}" + (f" dev {hop.dev}" if hop.dev else ""))
        return " ".join(parts)


Step = Union[NetnsAdd, Sysctl, BridgeAdd, VethAdd, SetMaster, LinkUp, AddrAdd, RouteAdd]


def render_plan(steps: list[Step]) -> str:
    return "\n".join(s.render() for s in steps)


# Sysctls every node namespace gets, and why.
NODE_SYSCTLS = (
    # Nodes route between pods, the underlay and other nodes.
    ("net.ipv4.ip_forward", "1"),
    # A new namespace inherits the host's rp_filter (devconf_inherit_init_net=0).
    # Strict reverse-path filtering drops Service replies that were DNATed on one
    # node and come back over another path; kube-proxy clusters run with loose or off.
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
)


def lab_network_plan(topo: Topology) -> list[Step]:
    """Every step that builds the lab's underlay, nodes and external client."""
    names = LabNames(topo.name)
    net = topo.networking
    under = names.underlay_netns
    steps: list[Step] = [
        NetnsAdd(under),
        LinkUp(under, "lo"),
        BridgeAdd(under, names.bridge, names.alias(role="underlay")),
        LinkUp(under, names.bridge),
    ]

    def attach(member_ns: str, ip: str, role: str) -> None:
        port = names.underlay_port(member_ns)
        steps.extend([
            NetnsAdd(member_ns),
            LinkUp(member_ns, "lo"),
            *(Sysctl(member_ns, k, v) for k, v in NODE_SYSCTLS),
            VethAdd(member_ns, "eth0", port, under, names.alias(**{role: member_ns})),
            SetMaster(under, port, names.bridge),
            LinkUp(under, port),
            AddrAdd(member_ns, "eth0", f"{ip}/{net.underlay_subnet.prefixlen}"),
            LinkUp(member_ns, "eth0"),
        ])

    for node in topo.nodes:
        attach(node.name, str(node.underlay_ip), "node")
        for other in topo.nodes:
            if other is not node:
                steps.append(RouteAdd(node.name, str(other.pod_cidr), via=str(other.underlay_ip)))

    # An HA control plane: every etcd member and apiserver in its own namespace on
    # the bridge. Apiservers answer pods (the `kubernetes` Service DNATs to them), so
    # they, like the nodes, route each podCIDR via its node.
    for member in topo.control_plane_spec.members:
        attach(member.name, str(member.underlay_ip), member.role)
        if member.role == "apiserver":
            for node in topo.nodes:
                steps.append(RouteAdd(member.name, str(node.pod_cidr), via=str(node.underlay_ip)))

    ext = names.external_netns
    attach(ext, str(topo.external_ip), "external")
    hops = tuple(Nexthop(str(n.underlay_ip)) for n in topo.nodes)
    steps.append(RouteAdd(ext, str(net.load_balancer_pool), nexthops=hops) if len(hops) > 1
                 else RouteAdd(ext, str(net.load_balancer_pool), via=hops[0].gateway))
    return steps


def pod_sandbox_plan(node_netns: str | None, pod_netns: str, host_veth: str, pod_ip: str,
                     gateway: str, alias: str) -> list[Step]:
    """One pod: its namespace, a veth to the node, a /32 each side, routes both ways."""
    return [
        NetnsAdd(pod_netns),
        LinkUp(pod_netns, "lo"),
        VethAdd(node_netns, host_veth, "eth0", pod_netns, alias),
        AddrAdd(node_netns, host_veth, f"{gateway}/32"),
        LinkUp(node_netns, host_veth),
        AddrAdd(pod_netns, "eth0", f"{pod_ip}/32"),
        LinkUp(pod_netns, "eth0"),
        RouteAdd(pod_netns, f"{gateway}/32", dev="eth0"),
        RouteAdd(pod_netns, "default", via=gateway, dev="eth0"),
        RouteAdd(node_netns, f"{pod_ip}/32", dev=host_veth, src=gateway),
    ]


async def apply_plan(steps: list[Step], state: StateFile | None, owner: str = "") -> None:
    """Execute `steps` in order; namespaces and links are journaled before creation.

    A step that fails raises with the step's command in the message, and whatever
    was created so far is in the state file for teardown to remove.
    """
    for step in steps:
        try:
            await _apply(step, state, owner)
        except OSError as e:
            raise PlanError(step, e) from e


class PlanError(OSError):
    def __init__(self, step: Step, cause: OSError) -> None:
        super().__init__(cause.errno, f"{step.render()}: {cause.strerror or cause}")
        self.step = step


async def _apply(step: Step, state: StateFile | None, owner: str) -> None:
    log.debug("apply %s", step.render())
    if isinstance(step, NetnsAdd):
        if state is not None:
            state.record(Record("netns", step.name, owner=owner))
        create_netns(step.name)
        return
    if isinstance(step, Sysctl):
        set_sysctl(step.netns, step.key, step.value)
        return
    async with Netns(step.netns) as ns:
        if isinstance(step, BridgeAdd):
            if state is not None:
                state.record(Record("link", step.name, netns=step.netns or "", owner=owner))
            await ns.add_bridge(step.name, step.alias)
        elif isinstance(step, VethAdd):
            if state is not None:
                state.record(Record("link", step.name, netns=step.netns or "", owner=owner))
            await ns.add_veth(step.name, step.peer, step.peer_netns, step.alias)
        elif isinstance(step, SetMaster):
            await ns.set_master(step.link, step.bridge)
        elif isinstance(step, LinkUp):
            await ns.link_up(step.link)
        elif isinstance(step, AddrAdd):
            await ns.add_address(step.link, step.cidr)
        elif isinstance(step, RouteAdd):
            await ns.add_route(step.dst, via=step.via, dev=step.dev, src=step.src, nexthops=step.nexthops)


def namespaces_of(steps: list[Step]) -> list[str]:
    return [s.name for s in steps if isinstance(s, NetnsAdd)]


def existing_namespaces(steps: list[Step]) -> list[str]:
    """Namespaces of the plan that already exist: a lab by this name is (partly) up."""
    return [n for n in namespaces_of(steps) if netns_exists(n)]
