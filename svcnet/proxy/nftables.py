"""nftables mode: the desired ruleset computed from `ProxyState`, as data.

The layout follows kube-proxy's nftables mode (see README.md in this folder for the
hooks and priorities), with measured differences in rule shape. A service chain
picks and translates its endpoint inline, with *chained* `numgen` draws:

    meta l4proto tcp numgen random mod 3 0 dnat to A comment "ns/svc:port"  # 1/3
    meta l4proto tcp numgen random mod 2 0 dnat to B comment "ns/svc:port"  # 1/2 of the other 2/3
    meta l4proto tcp dnat to C comment "ns/svc:port"                        # the rest

(every rule of a service port's chains carries its `ns/name:port`, as kube-proxy's
iptables rules do, so `nft list ruleset` reads service by service)

* not kube-proxy's one anonymous `numgen random mod N vmap { … }` per service: each
  anonymous vmap is a kernel set, and on this kernel allocating and looking up
  anonymous sets is O(sets in the table): 10,000 services took 52 s to load that
  way against 1.4 s for chained draws (reference/perf-floors.md);
* not a `goto` to one chain per endpoint either: 30,000 endpoint chains at 10,000
  services make every load slower and make nft list every chain of the table
  before it accepts any rule that jumps to one. Inline DNAT loaded 10,000 services
  x 3 endpoints in 0.88 s of CPU against 1.39 s for the per-endpoint-chain floor,
  and rewriting one service's chain takes ~35 ms of nft CPU instead of ~140 ms,
  because a rule without a jump needs no chain cache (bench/proxy.py);
* hairpin marking is one lookup in postrouting (`ip saddr . ip daddr @hairpin`)
  and the off-cluster-to-ClusterIP mark one rule in `services`, not a rule per
  endpoint and per service.

The distribution is kube-proxy's: uniform over the usable endpoints, drawn
independently for every new connection.

`compute()` reuses the previous ruleset's `ServiceRules` for every service port that
did not change, so a partial sync costs O(changed services) in Python as well.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from functools import lru_cache
from typing import Any, Mapping

from svcnet.proxy.backend import BackendOptions, PerFamilyBackend
from svcnet.proxy.model import Endpoint, ProxyState, ServicePort, ServicePortName
from svcnet.proxy.nft_ruleset import (
    Chain,
    Element,
    FamilyRuleset,
    NftSet,
    Ruleset,
    ServiceRules,
    count_elements,
)
from svcnet.proxy.topology import categorize

# Fixed object names (kube-proxy's, so `nft list table ip svcnet` reads the same).
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NODEPORT_IPS = "nodeport-ips"
CLUSTER_IPS = "cluster-ips"
SERVICE_CIDRS = "service-cidrs"
LOCAL_CIDRS = "pod-cidrs"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
HAIRPIN = "hairpin"
MARK_CHAIN = "mark-for-masquerade"
MASQ_CHAIN = "masquerading"
REJECT_CHAIN = "reject-chain"
SERVICES_CHAIN = "services"
FIREWALL_CHECK = "firewall-check"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"

# Hook priorities, numeric because nft 1.0.6 accepts `dstnat` only in prerouting.
DSTNAT, SRCNAT, FILTER = -100, 100, 0
PRE_DNAT_FILTER = DSTNAT - 10  # source ranges are checked before DNAT rewrites daddr

GOTO_REJECT = f"goto {REJECT_CHAIN}"
NO_ENDPOINT_VERDICTS = {"drop": "drop", "reject": GOTO_REJECT}  # topology.Categorized.when_none_usable


# -- names -------------------------------------------------------------------------


def _hash8(text: str) -> str:
    # base32 of the first 5 bytes == the first 8 characters of base32 of the whole
    # digest (kube-proxy's form), at a fraction of the cost.
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:5]).decode()


@lru_cache(maxsize=200_000)
def port_base(spn: ServicePortName) -> str:
    """`<hash8>-ns/name/proto/port`: kube-proxy's chain-name base for a service port."""
    return f"{_hash8(str(spn) + spn.protocol)}-{spn.namespace}/{spn.name}/{spn.protocol.lower()}/{spn.port}"


@lru_cache(maxsize=600_000)
def endpoint_base(spn: ServicePortName, address: str) -> str:
    ip, _, port = address.rpartition(":")
    ip = ip.strip("[]").replace(":", ".")  # nft chain names may not contain ':'
    return (
        f"{_hash8(str(spn) + spn.protocol + address)}-{spn.namespace}/{spn.name}/"
        f"{spn.protocol.lower()}/{spn.port}__{ip}/{port}"
    )


def service_chain(spn: ServicePortName) -> str:
    return f"service-{port_base(spn)}"


def local_chain(spn: ServicePortName) -> str:
    return f"local-{port_base(spn)}"


def external_chain(spn: ServicePortName) -> str:
    return f"external-{port_base(spn)}"


def firewall_chain(spn: ServicePortName) -> str:
    return f"firewall-{port_base(spn)}"


def affinity_set(spn: ServicePortName, ep: Endpoint) -> str:
    return f"affinity-{endpoint_base(spn, ep.address)}"


# -- per-family constants -------------------------------------------------------------


class _Fam:
    """The per-family spellings (`ip`/`ip6`, address types, loopback)."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.ip = "ip" if family == 4 else "ip6"
        self.addr = "ipv4_addr" if family == 4 else "ipv6_addr"
        self.loopback = "127.0.0.0/8" if family == 4 else "::1"


def _saddr_match(f: _Fam, cidrs: tuple[str, ...], negate: bool) -> str:
    op = "!= " if negate else ""
    if len(cidrs) == 1:
        return f"{f.ip} saddr {op}{cidrs[0]}"
    return f"{f.ip} saddr {op}@{LOCAL_CIDRS}"


# -- the computation ----------------------------------------------------------------------


def compute_family(
    state: ProxyState,
    previous: FamilyRuleset | None = None,
    changed: frozenset[ServicePortName] | None = None,
) -> FamilyRuleset:
    """The table for one family; reuses `previous` for services not in `changed`."""
    cfg = state.config
    f = _Fam(cfg.family)
    fixed_sets, first, last, fixed_elements = _fixed(state, f)
    # Per-service rules depend on the node's configuration (node name, CIDRs, mark):
    # reuse them only when that did not change.
    reuse = previous is not None and changed is not None and previous.config == cfg
    if reuse:
        assert previous is not None and changed is not None
        services = dict(previous.services)
        removed: list[Element] = []
        added: list[Element] = []
        for spn in changed:
            old = services.pop(spn, None)
            if old is not None:
                removed.extend(old.elements)
            sp = state.services.get(spn)
            if sp is not None:
                new = service_rules(sp, state.endpoints.get(spn, ()), state, f)
                services[spn] = new
                added.extend(new.elements)
        elements = count_elements(previous.elements, removed, added)
    else:
        # sorted: the rendered text (--dry-run, golden tests) must not depend on event order
        services = {
            spn: service_rules(state.services[spn], state.endpoints.get(spn, ()), state, f)
            for spn in sorted(state.services, key=_spn_key)
        }
        elements = count_elements(None, (), [e for sr in services.values() for e in sr.elements])
        elements = count_elements(elements, (), fixed_elements)
    return FamilyRuleset(
        family=cfg.family,
        fixed_sets=fixed_sets,
        fixed_chains_first=first,
        fixed_chains_last=last,
        fixed_elements=fixed_elements,
        services=services,
        elements=elements,
        config=cfg,
    )


def _fixed(state: ProxyState, f: _Fam) -> tuple[tuple[NftSet, ...], tuple[Chain, ...], tuple[Chain, ...], tuple[Element, ...]]:
    cfg = state.config
    proto_port = f"{f.addr} . inet_proto . inet_service"
    sets = [
        NftSet(CLUSTER_IPS, f.addr, comment="Active ClusterIPs"),
        NftSet(NODEPORT_IPS, f.addr, comment="IPs that accept NodePort traffic"),
        NftSet(SERVICE_CIDRS, f.addr, flags=("interval",), comment="Service CIDRs (unallocated IPs are dropped)"),
        NftSet(SERVICE_IPS, proto_port, "verdict", comment="ClusterIP, ExternalIP and LoadBalancer IP traffic"),
        NftSet(SERVICE_NODEPORTS, "inet_proto . inet_service", "verdict", comment="NodePort traffic"),
        NftSet(NO_ENDPOINT_SERVICES, proto_port, "verdict", comment="vmap to drop or reject packets to services with no endpoints"),
        NftSet(NO_ENDPOINT_NODEPORTS, "inet_proto . inet_service", "verdict", comment="vmap to drop or reject packets to service nodeports with no endpoints"),
        NftSet(FIREWALL_IPS, proto_port, "verdict", comment="destinations that are subject to LoadBalancerSourceRanges"),
        NftSet(HAIRPIN, f"{f.addr} . {f.addr}", comment="endpoint . endpoint: a pod reaching itself via a Service"),
    ]
    elements: list[Element] = []
    local_cidrs = cfg.local_cidrs
    if len(local_cidrs) > 1:
        sets.append(NftSet(LOCAL_CIDRS, f.addr, flags=("interval",), comment="sources that are pods of this cluster"))
        elements.extend((LOCAL_CIDRS, c, "") for c in local_cidrs)
    elements.extend((SERVICE_CIDRS, c, "") for c in _merge_cidrs(cfg.service_cidrs))
    nodeport_ips = cfg.nodeport_ips()
    if nodeport_ips is not None:
        elements.extend((NODEPORT_IPS, ip, "") for ip in nodeport_ips)
        nodeport_match = f"{f.ip} daddr @{NODEPORT_IPS}"
    else:  # --nodeport-addresses covers everything: any local address but loopback
        nodeport_match = f"fib daddr type local {f.ip} daddr != {f.loopback}"
    mark = f"0x{cfg.masquerade_mark:x}"
    new = "ct state new"
    # Traffic to ClusterIPs from outside the cluster (or from anyone with
    # --masquerade-all) is marked once here, before the service-ips dispatch, instead
    # of by one rule per service chain. Packets to a ClusterIP that end up not
    # DNATed (wrong port, no endpoints) are rejected or dropped by the filter chains,
    # so marking them changes nothing.
    services_rules = []
    if cfg.masquerade_all:
        services_rules.append(f"{f.ip} daddr @{CLUSTER_IPS} jump {MARK_CHAIN}")
    elif local_cidrs:
        services_rules.append(f"{f.ip} daddr @{CLUSTER_IPS} {_saddr_match(f, local_cidrs, True)} jump {MARK_CHAIN}")
    first = (
        Chain(MARK_CHAIN, (f"mark set mark or {mark}",)),
        Chain(REJECT_CHAIN, ("reject",)),
    )
    last = (
        Chain(MASQ_CHAIN, (
            # only translated connections: a host-network endpoint (the apiserver on
            # 127.0.0.1, a node IP) talking to itself directly must stay untouched
            f"ct status dnat {f.ip} saddr . {f.ip} daddr @{HAIRPIN} jump {MARK_CHAIN}",
            f"mark and {mark} == 0 return",
            f"mark set mark xor {mark}",
            "masquerade fully-random",
        )),
        Chain(SERVICES_CHAIN, (
            *services_rules,
            f"{f.ip} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
            f"{nodeport_match} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
        )),
        Chain(FIREWALL_CHECK, (f"{f.ip} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}",)),
        Chain(SERVICE_ENDPOINTS_CHECK, (f"{f.ip} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",)),
        Chain(NODEPORT_ENDPOINTS_CHECK, (f"{nodeport_match} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",)),
        Chain(CLUSTER_IPS_CHECK, (
            f"{f.ip} daddr @{CLUSTER_IPS} reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
            f"{f.ip} daddr @{SERVICE_CIDRS} drop comment \"Drop traffic to unallocated ClusterIPs\"",
        )),
        Chain("filter-prerouting-pre-dnat", (f"{new} jump {FIREWALL_CHECK}",),
              f"type filter hook prerouting priority {PRE_DNAT_FILTER}"),
        Chain("filter-output-pre-dnat", (f"{new} jump {FIREWALL_CHECK}",),
              f"type filter hook output priority {PRE_DNAT_FILTER}"),
        Chain("nat-prerouting", (f"jump {SERVICES_CHAIN}",), f"type nat hook prerouting priority {DSTNAT}"),
        Chain("nat-output", (f"jump {SERVICES_CHAIN}",), f"type nat hook output priority {DSTNAT}"),
        Chain("filter-input", (f"{new} jump {NODEPORT_ENDPOINTS_CHECK}", f"{new} jump {SERVICE_ENDPOINTS_CHECK}"),
              f"type filter hook input priority {FILTER}"),
        Chain("filter-forward", (f"{new} jump {SERVICE_ENDPOINTS_CHECK}", f"{new} jump {CLUSTER_IPS_CHECK}"),
              f"type filter hook forward priority {FILTER}"),
        Chain("filter-output", (f"{new} jump {SERVICE_ENDPOINTS_CHECK}", f"{new} jump {CLUSTER_IPS_CHECK}"),
              f"type filter hook output priority {FILTER}"),
        Chain("nat-postrouting", (f"jump {MASQ_CHAIN}",), f"type nat hook postrouting priority {SRCNAT}"),
    )
    return tuple(sets), first, last, tuple(elements)


def _spn_key(spn: ServicePortName) -> tuple[str, str, str, str]:
    return (spn.namespace, spn.name, spn.port, spn.protocol)


def _merge_cidrs(cidrs: tuple[str, ...]) -> list[str]:
    """Interval sets refuse overlapping elements: collapse them first."""
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    out: list[str] = []
    for version in (4, 6):
        out.extend(str(n) for n in ipaddress.collapse_addresses(n for n in nets if n.version == version))  # type: ignore[type-var]
    return out


def service_rules(sp: ServicePort, endpoints: tuple[Endpoint, ...], state: ProxyState, f: _Fam) -> ServiceRules:
    """Chains, affinity sets and map elements of one service port."""
    cfg = state.config
    spn = sp.name
    # Every rule of a service port's chains names it (kube-proxy's iptables comments:
    # "ns/name:port", plus what the rule is for where that is not obvious), so
    # `nft list ruleset` can be read service by service.
    comment = f'comment "{spn}"'

    def why(what: str) -> str:
        return f'comment "{spn} {what}"'
    proto = sp.protocol.lower()
    cat = categorize(sp, endpoints, cfg.node_name, cfg.node_zone)
    chains: list[Chain] = []
    sets: list[NftSet] = []
    elements: list[Element] = [(CLUSTER_IPS, sp.cluster_ip, "")]

    # Endpoints are picked and translated inline in the service (and local) chain:
    # one rule per endpoint, no per-endpoint chains. Hairpin traffic (a pod DNATed
    # back to itself) is marked in postrouting through @hairpin, one element per
    # endpoint IP. See the module docstring for why (load time, partial syncs).
    for ep in cat.distinct:
        elements.append((HAIRPIN, f"{ep.ip} . {ep.ip}", ""))
        if sp.affinity_timeout is not None:
            sets.append(NftSet(affinity_set(spn, ep), f.addr, flags=("dynamic", "timeout"),
                               timeout=sp.affinity_timeout))

    def translate(ep: Endpoint) -> str:
        if sp.affinity_timeout is None:
            return f"dnat to {ep.address}"
        return f"update @{affinity_set(spn, ep)} {{ {f.ip} saddr }} dnat to {ep.address}"

    l4 = f"meta l4proto {proto}"

    def dispatch(name: str, eps: tuple[Endpoint, ...]) -> None:
        rules: list[str] = []
        if sp.affinity_timeout is not None:  # a client seen recently keeps its endpoint
            rules.extend(f"{l4} {f.ip} saddr @{affinity_set(spn, e)} {translate(e)} {why('affinity')}"
                         for e in eps)
        n = len(eps)
        for i, e in enumerate(eps[:-1]):
            rules.append(f"{l4} numgen random mod {n - i} 0 {translate(e)} {comment}")
        rules.append(f"{l4} {translate(eps[-1])} {comment}")
        chains.append(Chain(name, tuple(rules)))

    svc_chain, loc_chain = service_chain(spn), local_chain(spn)
    if cat.cluster:
        dispatch(svc_chain, cat.cluster)
    if cat.local:
        dispatch(loc_chain, cat.local)

    # Internal traffic: the ClusterIP.
    key = f"{sp.cluster_ip} . {proto} . {sp.port}"
    no_ep_verdict = NO_ENDPOINT_VERDICTS[cat.when_none_usable]
    if cat.internal(sp):
        elements.append((SERVICE_IPS, key, f"goto {loc_chain if sp.internal_policy_local else svc_chain}"))
    else:
        elements.append((NO_ENDPOINT_SERVICES, key, no_ep_verdict))

    # External traffic: NodePort, externalIPs, LoadBalancer IPs.
    if sp.externally_accessible:
        ext = external_chain(spn)
        external_eps = cat.external(sp)
        rules: list[str] = []
        if not sp.external_policy_local:
            if cat.cluster:
                rules += [f"jump {MARK_CHAIN} {why('masquerade traffic from outside the cluster')}",
                          f"goto {svc_chain} {comment}"]
        else:
            if cat.cluster and cfg.local_cidrs:
                rules.append(f"{_saddr_match(f, cfg.local_cidrs, False)} goto {svc_chain} "
                             f"{why('short-circuit pod traffic')}")
            if cat.cluster:
                rules.append(f"fib saddr type local jump {MARK_CHAIN} {why('masquerade local traffic')}")
                rules.append(f"fib saddr type local goto {svc_chain} {why('short-circuit local traffic')}")
            if cat.local:
                rules.append(f"goto {loc_chain} {comment}")
        if rules:
            chains.append(Chain(ext, tuple(rules)))
        dests = [f"{ip} . {proto} . {sp.port}" for ip in (*sp.external_ips, *sp.load_balancer_ips)]
        for d in dests:
            if rules:
                elements.append((SERVICE_IPS, d, f"goto {ext}"))
            if not external_eps:
                elements.append((NO_ENDPOINT_SERVICES, d, no_ep_verdict))
        if sp.node_port:
            np_key = f"{proto} . {sp.node_port}"
            if rules:
                elements.append((SERVICE_NODEPORTS, np_key, f"goto {ext}"))
            if not external_eps:
                elements.append((NO_ENDPOINT_NODEPORTS, np_key, no_ep_verdict))
        if sp.load_balancer_source_ranges and sp.load_balancer_ips:
            allowed = list(sp.load_balancer_source_ranges)
            if cfg.node_ip_in(sp.load_balancer_source_ranges):
                allowed += list(sp.load_balancer_ips)  # node traffic that loops back via the VIP
            match = allowed[0] if len(allowed) == 1 else "{ " + ", ".join(allowed) + " }"
            fw = firewall_chain(spn)
            chains.append(Chain(fw, (f"{f.ip} saddr != {match} drop {comment}",)))
            elements.extend((FIREWALL_IPS, f"{ip} . {proto} . {sp.port}", f"goto {fw}")
                            for ip in sp.load_balancer_ips)
    return ServiceRules(tuple(chains), tuple(sets), tuple(elements))


# -- the backend -----------------------------------------------------------------------------


class NftablesBackend(PerFamilyBackend):
    """`Backend` for nftables: compute here, write through `NftWriter`."""

    mode = "nftables"

    def __init__(self, options: BackendOptions) -> None:
        from svcnet.proxy.nft_writer import NftWriter  # the writer needs subprocess; compute does not

        super().__init__(options, NftWriter(binary=options.nft_binary, families=options.families))

    def compute_table(self, state: ProxyState, previous: Any | None,
                      changed: frozenset[ServicePortName] | None) -> FamilyRuleset:
        return compute_family(state, previous, changed)

    def assemble(self, tables: tuple[Any, ...]) -> Ruleset:
        return Ruleset(tables)


def create_backend(options: BackendOptions) -> NftablesBackend:
    return NftablesBackend(options)
