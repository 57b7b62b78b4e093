"""The lab topology: what `svcnet lab up` builds, read from a YAML file.

    name: svcnet                 # prefixes every namespace and link (two labs coexist)
    proxyMode: nftables          # or iptables, like kind's kubeProxyMode
    networking:
      podSubnet: 10.244.0.0/16   # one /24 per node (nodeMaskSize)
      serviceSubnet: 10.96.0.0/12
      clusterDNS: 10.96.0.10
      dnsDomain: cluster.local
      underlaySubnet: 172.18.0.0/24   # the bridge joining the nodes
      loadBalancerPool: 172.19.0.0/28 # routed from `external` to the nodes
    nodes:
      - role: control-plane
      - role: worker
      - role: worker
    manifests: [web.yaml]        # applied after the cluster is Ready (relative paths
                                 # are relative to this file)
    controlPlane:                # optional; default: one apiserver on SQLite
      apiservers: 2              # each in its own namespace on the underlay
      etcd: 3                    # etcd members, each in its own namespace (0: SQLite)

Loading checks everything up front and names the offending key, so a typo fails
before any namespace exists. The model is frozen data; addresses are derived here
(node i gets underlay host i+2 and the i-th pod /24), so `--dry-run` can show the
plan without touching the kernel.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from svcnet.lab.names import LabNameError, LabNames, netns_name, validate_lab_name

IPv4Net = ipaddress.IPv4Network
IPv4Addr = ipaddress.IPv4Address

PROXY_MODES = ("nftables", "iptables")
ROLES = ("control-plane", "worker")
DEFAULT_TOPOLOGY = Path("netns-lab/default.yaml")


class TopologyError(ValueError):
    """A topology file that cannot be built; the message names the file and key."""


@dataclass(frozen=True)
class Networking:
    pod_subnet: IPv4Net = IPv4Net("10.244.0.0/16")
    node_mask_size: int = 24
    service_subnet: IPv4Net = IPv4Net("10.96.0.0/12")
    cluster_dns: IPv4Addr = IPv4Addr("10.96.0.10")
    dns_domain: str = "cluster.local"
    underlay_subnet: IPv4Net = IPv4Net("172.18.0.0/24")
    load_balancer_pool: IPv4Net = IPv4Net("172.19.0.0/28")
    node_port_range: tuple[int, int] = (30000, 32767)


@dataclass(frozen=True)
class Node:
    name: str  # the Kubernetes node name, also its network namespace
    role: str
    index: int
    underlay_ip: IPv4Addr
    underlay_prefix: int
    pod_cidr: IPv4Net
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def pod_gateway(self) -> IPv4Addr:
        """The first address of the podCIDR: the node side of every pod's veth."""
        return self.pod_cidr.network_address + 1


@dataclass(frozen=True)
class ControlPlaneMember:
    """An etcd member or an apiserver of an HA control plane: its own namespace on
    the underlay (`<lab>-etcd1`, `<lab>-apiserver2`), addressed after the nodes."""

    name: str  # the namespace
    role: str  # "etcd" or "apiserver"
    index: int  # 1-based within its role
    underlay_ip: IPv4Addr


@dataclass(frozen=True)
class ControlPlane:
    apiservers: int = 1
    etcd: int = 0  # 0: the apiserver's own SQLite store, in the control-plane node
    members: tuple[ControlPlaneMember, ...] = ()

    @property
    def ha(self) -> bool:
        """Members run in their own namespaces (etcd storage); else the single
        apiserver runs in the control-plane node, as before."""
        return self.etcd > 0

    def of(self, role: str) -> tuple[ControlPlaneMember, ...]:
        return tuple(m for m in self.members if m.role == role)


@dataclass(frozen=True)
class Topology:
    name: str
    proxy_mode: str
    networking: Networking
    nodes: tuple[Node, ...]
    external_ip: IPv4Addr
    dns_replicas: int = 2
    apiserver_port: int = 6443
    manifests: tuple[Path, ...] = ()
    source: Path | None = None
    control_plane_spec: ControlPlane = ControlPlane()

    @property
    def names(self) -> LabNames:
        return LabNames(self.name)

    @property
    def control_plane(self) -> Node:
        return next(n for n in self.nodes if n.role == "control-plane")

    def node(self, name: str) -> Node:
        full = self.names.node(name)
        for n in self.nodes:
            if n.name == full:
                return n
        raise KeyError(name)


# --- loading -----------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_TOP_KEYS = {"name", "proxyMode", "networking", "nodes", "manifests", "dns", "apiserver", "controlPlane"}
_CP_KEYS = {"apiservers", "etcd"}
ETCD_SIZES = (0, 1, 3, 5)  # a member count etcd can keep a quorum with (0: SQLite)
_NET_KEYS = {"podSubnet", "nodeMaskSize", "serviceSubnet", "clusterDNS", "dnsDomain",
             "underlaySubnet", "loadBalancerPool", "nodePortRange"}
_NODE_KEYS = {"role", "name", "labels"}


@dataclass
class _Reader:
    origin: str
    errors: list[str] = field(default_factory=list)

    def fail(self, where: str, msg: str) -> None:
        self.errors.append(f"{self.origin}: {where}: {msg}")

    def check_keys(self, where: str, data: dict[str, Any], allowed: set[str]) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(allowed))})"
                self.fail(f"{where}{key}", f"unknown key{hint}")

    def net(self, where: str, value: Any, default: IPv4Net) -> IPv4Net:
        if value is None:
            return default
        try:
            net = ipaddress.ip_network(str(value), strict=True)
        except ValueError as e:
            self.fail(where, f"{value!r} is not a network in CIDR form ({e})")
            return default
        if not isinstance(net, IPv4Net):
            self.fail(where, f"{value!r}: only IPv4 is supported by the lab so far")
            return default
        return net

    def addr(self, where: str, value: Any, default: IPv4Addr) -> IPv4Addr:
        if value is None:
            return default
        try:
            a = ipaddress.ip_address(str(value))
        except ValueError:
            self.fail(where, f"{value!r} is not an IP address")
            return default
        if not isinstance(a, IPv4Addr):
            self.fail(where, f"{value!r}: only IPv4 is supported by the lab so far")
            return default
        return a

    def int_in(self, where: str, value: Any, default: int, lo: int, hi: int) -> int:
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.fail(where, f"{value!r}: expected a whole number from {lo} to {hi}")
            return default
        return value


def parse_topology(text: str, origin: str = "<topology>", base_dir: Path | None = None) -> Topology:
    """The Topology in `text`; raises TopologyError listing every problem found."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TopologyError(f"{origin}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TopologyError(f"{origin}: expected a mapping at the top, got {type(data).__name__}")
    r = _Reader(origin)
    r.check_keys("", data, _TOP_KEYS)

    name = str(data.get("name", "svcnet"))
    try:
        validate_lab_name(name)
    except LabNameError as e:
        r.fail("name", str(e))
        name = "svcnet"

    proxy_mode = data.get("proxyMode", "nftables")
    if proxy_mode not in PROXY_MODES:
        r.fail("proxyMode", f"{proxy_mode!r}: expected one of {', '.join(PROXY_MODES)}")
        proxy_mode = "nftables"

    networking = _networking(r, data.get("networking") or {})
    nodes, external_ip = _nodes(r, name, networking, data.get("nodes"))

    dns = data.get("dns") or {}
    if not isinstance(dns, dict):
        r.fail("dns", "expected a mapping like {replicas: 2}")
        dns = {}
    r.check_keys("dns.", dns, {"replicas"})
    dns_replicas = r.int_in("dns.replicas", dns.get("replicas"), 2, 0, 10)

    apiserver = data.get("apiserver") or {}
    if not isinstance(apiserver, dict):
        r.fail("apiserver", "expected a mapping like {port: 6443}")
        apiserver = {}
    r.check_keys("apiserver.", apiserver, {"port"})
    port = r.int_in("apiserver.port", apiserver.get("port"), 6443, 1, 65535)

    manifests = _manifests(r, data.get("manifests"), base_dir)
    cp = _control_plane(r, name, networking, nodes, external_ip, data.get("controlPlane"))
    if r.errors:
        raise TopologyError("\n".join(r.errors))
    return Topology(name=name, proxy_mode=str(proxy_mode), networking=networking, nodes=nodes,
                    external_ip=external_ip, dns_replicas=dns_replicas, apiserver_port=port,
                    manifests=manifests, source=None, control_plane_spec=cp)


def load_topology(path: str | Path) -> Topology:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise TopologyError(f"{p}: cannot read topology: {e.strerror or e}") from None
    topo = parse_topology(text, str(p), p.parent)
    return Topology(**{**topo.__dict__, "source": p.resolve()})


def find_topology(cwd: Path | None = None) -> Path:
    """The topology to use when none is named: one `*.lab.yaml` in the current
    directory (as containerlab finds `*.clab.yml`), else netns-lab/default.yaml."""
    here = cwd or Path.cwd()
    found = sorted(here.glob("*.lab.yaml")) + sorted(here.glob("*.lab.yml"))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise TopologyError(f"{here}: several topologies ({', '.join(f.name for f in found)}); name one")
    for candidate in (here / DEFAULT_TOPOLOGY, Path(__file__).resolve().parents[2] / DEFAULT_TOPOLOGY):
        if candidate.is_file():
            return candidate
    raise TopologyError(f"no topology given and no {DEFAULT_TOPOLOGY} found from {here}")


def _networking(r: _Reader, net: Any) -> Networking:
    if not isinstance(net, dict):
        r.fail("networking", "expected a mapping")
        return Networking()
    r.check_keys("networking.", net, _NET_KEYS)
    d = Networking()
    pod = r.net("networking.podSubnet", net.get("podSubnet"), d.pod_subnet)
    mask = r.int_in("networking.nodeMaskSize", net.get("nodeMaskSize"), d.node_mask_size, pod.prefixlen, 30)
    svc = r.net("networking.serviceSubnet", net.get("serviceSubnet"), d.service_subnet)
    dns = r.addr("networking.clusterDNS", net.get("clusterDNS"), svc.network_address + 10)
    if dns not in svc:
        r.fail("networking.clusterDNS", f"{dns} is outside serviceSubnet {svc}")
    domain = str(net.get("dnsDomain", d.dns_domain)).strip(".")
    underlay = r.net("networking.underlaySubnet", net.get("underlaySubnet"), d.underlay_subnet)
    pool = r.net("networking.loadBalancerPool", net.get("loadBalancerPool"), d.load_balancer_pool)
    npr = net.get("nodePortRange", "30000-32767")
    try:
        lo_s, hi_s = str(npr).split("-")
        npr_t = (int(lo_s), int(hi_s))
        if not 1 <= npr_t[0] <= npr_t[1] <= 65535:
            raise ValueError
    except ValueError:
        r.fail("networking.nodePortRange", f"{npr!r}: expected LOW-HIGH like 30000-32767")
        npr_t = d.node_port_range
    nets = {"podSubnet": pod, "serviceSubnet": svc, "underlaySubnet": underlay, "loadBalancerPool": pool}
    keys = list(nets)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if nets[a].overlaps(nets[b]):
                r.fail(f"networking.{b}", f"{nets[b]} overlaps {a} {nets[a]}")
    return Networking(pod, mask, svc, dns, domain, underlay, pool, npr_t)


def _nodes(r: _Reader, lab: str, net: Networking, raw: Any) -> tuple[tuple[Node, ...], IPv4Addr]:
    if raw is None:
        raw = [{"role": "control-plane"}, {"role": "worker"}, {"role": "worker"}]
    if not isinstance(raw, list) or not raw:
        r.fail("nodes", "expected a list of nodes like [{role: control-plane}, {role: worker}]")
        raw = [{"role": "control-plane"}]
    hosts = _hosts(net.underlay_subnet)
    pod_cidrs = _subnets(net.pod_subnet, net.node_mask_size)
    names = LabNames(lab) if _valid(lab) else LabNames("svcnet")
    nodes: list[Node] = []
    seen: set[str] = set()
    workers = 0
    for i, item in enumerate(raw):
        where = f"nodes[{i}]"
        if not isinstance(item, dict):
            r.fail(where, "expected a mapping like {role: worker}")
            continue
        r.check_keys(f"{where}.", item, _NODE_KEYS)
        role = item.get("role", "worker")
        if role not in ROLES:
            r.fail(f"{where}.role", f"{role!r}: expected one of {', '.join(ROLES)}")
            continue
        if role == "worker":
            workers += 1
        default_short = role if role == "control-plane" or workers == 1 else f"worker{workers}"
        short = str(item.get("name") or default_short)
        if not _DNS_LABEL.match(short):
            r.fail(f"{where}.name", f"{short!r}: use lower-case letters, digits and '-' (a DNS label)")
            continue
        name = names.node(short)
        if name in seen:
            r.fail(f"{where}.name", f"{name!r} is used by two nodes")
            continue
        seen.add(name)
        labels = item.get("labels") or {}
        if not isinstance(labels, dict):
            r.fail(f"{where}.labels", "expected a mapping of label: value")
            labels = {}
        ip = next(hosts, None)
        cidr = next(pod_cidrs, None)
        if ip is None:
            r.fail(where, f"underlaySubnet {net.underlay_subnet} has no address left for this node")
            continue
        if cidr is None:
            r.fail(where, f"podSubnet {net.pod_subnet} has no /{net.node_mask_size} left for this node")
            continue
        nodes.append(Node(name, str(role), i, ip, net.underlay_subnet.prefixlen, cidr,
                          tuple(sorted((str(k), str(v)) for k, v in labels.items()))))
    cps = [n for n in nodes if n.role == "control-plane"]
    if len(cps) != 1:
        r.fail("nodes", f"expected exactly one control-plane node, found {len(cps)}")
    # The external client takes the last host address, far from the nodes.
    external = net.underlay_subnet.broadcast_address - 1
    if any(n.underlay_ip == external for n in nodes):
        r.fail("nodes", f"too many nodes for underlaySubnet {net.underlay_subnet}")
    return tuple(nodes), external


def _control_plane(r: _Reader, lab: str, net: Networking, nodes: tuple[Node, ...],
                   external: IPv4Addr, raw: Any) -> ControlPlane:
    if raw is None:
        return ControlPlane()
    if not isinstance(raw, dict):
        r.fail("controlPlane", "expected a mapping like {apiservers: 2, etcd: 3}")
        return ControlPlane()
    r.check_keys("controlPlane.", raw, _CP_KEYS)
    apiservers = r.int_in("controlPlane.apiservers", raw.get("apiservers"), 1, 1, 5)
    etcd = r.int_in("controlPlane.etcd", raw.get("etcd"), 0, 0, 5)
    if etcd not in ETCD_SIZES:
        # An even count tolerates no more failures than the odd one below it.
        r.fail("controlPlane.etcd", f"{etcd}: expected one of {', '.join(map(str, ETCD_SIZES))}")
        return ControlPlane()
    if apiservers > 1 and etcd == 0:
        r.fail("controlPlane.apiservers", f"{apiservers} apiservers need shared storage: set controlPlane.etcd "
               "(1, 3 or 5); SQLite belongs to one apiserver")
        return ControlPlane()
    if etcd == 0:
        return ControlPlane(apiservers, 0)
    # Members take the underlay addresses after the nodes', so node addresses never
    # depend on the control plane's shape.
    hosts = _hosts(net.underlay_subnet)
    used = {n.underlay_ip for n in nodes} | {external}
    free = (ip for ip in hosts if ip not in used)
    names = LabNames(lab) if _valid(lab) else LabNames("svcnet")
    node_names = {n.name for n in nodes}
    members: list[ControlPlaneMember] = []
    for role, count in (("etcd", etcd), ("apiserver", apiservers)):
        for i in range(1, count + 1):
            ip = next(free, None)
            if ip is None or ip > external:
                r.fail("controlPlane", f"underlaySubnet {net.underlay_subnet} has no address left for {role} {i}")
                return ControlPlane()
            ns = netns_name(names.lab, f"{role}{i}")
            if ns in node_names:
                r.fail("controlPlane", f"{ns!r} is also a node's name; rename the node")
                return ControlPlane()
            members.append(ControlPlaneMember(ns, role, i, ip))
    return ControlPlane(apiservers, etcd, tuple(members))


def _valid(lab: str) -> bool:
    try:
        validate_lab_name(lab)
        return True
    except LabNameError:
        return False


def _hosts(net: IPv4Net) -> Iterator[IPv4Addr]:
    """Underlay addresses for nodes: .2 upwards (.1 is left for a gateway, as docker does)."""
    it = net.hosts()
    next(it, None)
    return it


def _subnets(net: IPv4Net, prefix: int) -> Iterator[IPv4Net]:
    """Pod CIDRs in order; node 0 gets the first (10.244.0.0/24), as kind's first node."""
    return net.subnets(new_prefix=prefix) if prefix >= net.prefixlen else iter(())


def _manifests(r: _Reader, raw: Any, base_dir: Path | None) -> tuple[Path, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        r.fail("manifests", "expected a list of file paths")
        return ()
    out = []
    for i, item in enumerate(raw):
        p = Path(str(item))
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if base_dir is not None and not p.exists():
            r.fail(f"manifests[{i}]", f"{p} does not exist")
        out.append(p)
    return tuple(out)
