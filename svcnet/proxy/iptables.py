"""iptables mode: the desired `nat` and `filter` rules computed from `ProxyState`, as data.

The layout is kube-proxy's iptables mode with `SVCNET-` in place of `KUBE-`, so
`iptables-save` reads like a kube-proxy node's and the packet walk is the same:

    nat    PREROUTING, OUTPUT -> SVCNET-SERVICES   one rule per (service IP, proto, port)
                                   -> SVCNET-SVC-<h> (ClusterIP) | SVCNET-EXT-<h> | SVCNET-FW-<h>
                                   last: local destinations -> SVCNET-NODEPORTS -> SVCNET-EXT-<h>
           SVCNET-SVC-<h> / SVCNET-SVL-<h>         cluster / local endpoints, `-m statistic`
                                                   draws with probability 1/(N-i) -> SVCNET-SEP-<h>
           SVCNET-SEP-<h>                          hairpin mark, DNAT to the endpoint
           POSTROUTING -> SVCNET-POSTROUTING       masquerade (--random-fully) what is marked
    filter INPUT/FORWARD/OUTPUT -> SVCNET-SERVICES, SVCNET-EXTERNAL-SERVICES (REJECT: no
           endpoints; DROP: Local policy without local endpoints), SVCNET-NODEPORTS (health
           check ACCEPT), SVCNET-PROXY-FIREWALL (loadBalancerSourceRanges), SVCNET-FORWARD,
           SVCNET-FIREWALL (the anti-martian drop that localhost NodePorts need)

Chain-name hashes are kube-proxy's (first 16 base32 characters of SHA-256 over
`ns/name:port` + protocol [+ endpoint]), so a service port has the same chain names
as under kube-proxy. Which endpoints each chain uses, and when traffic is masqueraded,
rejected or dropped, is decided exactly as in nftables.py (both read topology.py).

Two deliberate differences from nftables mode, as in kube-proxy: NodePorts default to
every local address (and 127.0.0.1 with --iptables-localhost-nodeports, which needs
`route_localnet`), and wrong ports / unallocated IPs in the service CIDR are left alone.

`compute()` reuses the previous ruleset's `ServiceRules` for every service port that
did not change; the writer (iptables_restore.py) finds the changed ones by identity.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Mapping

from svcnet.proxy.backend import BackendOptions, PerFamilyBackend
from svcnet.proxy.model import Endpoint, ProxyConfig, ProxyState, ServicePort, ServicePortName
from svcnet.proxy.topology import Categorized, categorize

NAT, FILTER = "nat", "filter"
TABLES = (FILTER, NAT)  # payload order; the two tables never reference each other
PREFIX = "SVCNET-"
SERVICES = "SVCNET-SERVICES"
EXTERNAL_SERVICES = "SVCNET-EXTERNAL-SERVICES"
NODEPORTS = "SVCNET-NODEPORTS"
POSTROUTING = "SVCNET-POSTROUTING"
MARK_MASQ = "SVCNET-MARK-MASQ"
FORWARD = "SVCNET-FORWARD"
FIREWALL = "SVCNET-FIREWALL"
PROXY_FIREWALL = "SVCNET-PROXY-FIREWALL"
# Only with more than one local CIDR: iptables has no "! -s A ! -s B", so off-cluster
# sources are found by returning for each cluster CIDR and marking the rest.
MASQ_OFF_CLUSTER = "SVCNET-MASQ-OFF-CLUSTER"

# Chains rebuilt from every service's contributions (KEP-3453's "top-level" chains).
TOP_CHAINS: dict[str, tuple[str, ...]] = {
    NAT: (SERVICES, NODEPORTS),
    FILTER: (SERVICES, EXTERNAL_SERVICES, NODEPORTS, PROXY_FIREWALL),
}
# kube-proxy's largeClusterEndpointsThreshold: above this many endpoints (all
# services together) the per-endpoint rules (SEP chains, the SVC jumps to them) carry
# no comment. At 10,000 services x 3 endpoints that is 60,000 comments, ~40% of the
# payload that iptables-restore must parse; the Service-level rules keep theirs.
LARGE_CLUSTER_ENDPOINTS = 1000
NODEPORTS_COMMENT = '"svcnet service nodeports; NOTE: this must be the last rule in this chain"'

_NEW = "-m conntrack --ctstate NEW "


@dataclass(frozen=True)
class Jump:
    """A rule in a built-in chain that enters one of ours (kept in this order)."""

    chain: str  # built-in chain: PREROUTING, INPUT, ...
    target: str
    spec: str  # the whole rule after `-A CHAIN`, in iptables -S canonical form


def _jump(chain: str, target: str, comment: str, new: bool = False) -> Jump:
    return Jump(chain, target, f'{_NEW if new else ""}-m comment --comment "{comment}" -j {target}')


JUMPS: dict[str, tuple[Jump, ...]] = {
    NAT: (
        _jump("PREROUTING", SERVICES, "svcnet service portals"),
        _jump("OUTPUT", SERVICES, "svcnet service portals"),
        _jump("POSTROUTING", POSTROUTING, "svcnet postrouting rules"),
    ),
    FILTER: (
        _jump("INPUT", PROXY_FIREWALL, "svcnet load balancer firewall", new=True),
        _jump("INPUT", NODEPORTS, "svcnet health check service ports"),
        _jump("INPUT", EXTERNAL_SERVICES, "svcnet externally-visible service portals", new=True),
        _jump("INPUT", FIREWALL, "svcnet localhost nodeports firewall"),
        _jump("FORWARD", PROXY_FIREWALL, "svcnet load balancer firewall", new=True),
        _jump("FORWARD", FORWARD, "svcnet forwarding rules"),
        _jump("FORWARD", SERVICES, "svcnet service portals", new=True),
        _jump("FORWARD", EXTERNAL_SERVICES, "svcnet externally-visible service portals", new=True),
        _jump("OUTPUT", PROXY_FIREWALL, "svcnet load balancer firewall", new=True),
        _jump("OUTPUT", SERVICES, "svcnet service portals", new=True),
        _jump("OUTPUT", FIREWALL, "svcnet localhost nodeports firewall"),
    ),
}


# -- the ruleset as data ---------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[str, ...] = ()  # each rule is what follows `-A <name> `


@dataclass(frozen=True)
class ServiceRules:
    """What one service port contributes: its own nat chains and top-level rules."""

    chains: tuple[Chain, ...] = ()  # nat: SVC, SVL, EXT, FW, SEP chains
    top: tuple[tuple[str, str, str], ...] = ()  # (table, top-level chain, rule)


@dataclass(frozen=True)
class FamilyRuleset:
    """The iptables (family 4) or ip6tables (family 6) rules svcnet wants."""

    family: int
    config: ProxyConfig
    services: Mapping[ServicePortName, ServiceRules]
    fixed: Mapping[str, tuple[Chain, ...]]  # table -> helper chains (MARK-MASQ, FORWARD, ...)
    top_tail: tuple[str, ...] = ()  # nat SVCNET-SERVICES rules after every service's: NodePorts
    localhost_nodeports: bool = False  # the writer sets net.ipv4.conf.all.route_localnet=1
    jumps: Mapping[str, tuple[Jump, ...]] = field(default_factory=lambda: JUMPS)
    # (table, chain) -> top-level rule -> how many service ports contribute it (several
    # ports of one Service share a health-check rule). Built once by a full compute and
    # patched by a partial one, so a one-service change never walks every service.
    contributions: Mapping[tuple[str, str], Mapping[str, int]] = field(default_factory=dict)
    # A partial compute names the ports it recomputed and the ruleset it started from
    # (by id: the writer holds that one, so the id cannot be reused meanwhile).
    recomputed: frozenset[ServicePortName] | None = None
    base_id: int = 0
    large: bool = False  # per-endpoint rules without comments (LARGE_CLUSTER_ENDPOINTS)

    @cached_property
    def top(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(table, chain) -> rules of each top-level chain, without duplicates."""
        out = {}
        for t, cs in TOP_CHAINS.items():
            for c in cs:
                rules = tuple(self.contributions.get((t, c), ()))
                if (t, c) == (NAT, SERVICES):  # the NodePort jump must stay last
                    rules = tuple(r for r in rules if r not in self.top_tail) + self.top_tail
                out[(t, c)] = rules
        return out

    @cached_property
    def chains(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """table -> chain name -> rules: everything, in dependency order (leaves first)."""
        out: dict[str, dict[str, tuple[str, ...]]] = {}
        for table in TABLES:
            chains = {c.name: c.rules for c in self.fixed.get(table, ())}
            if table == NAT:
                for sr in self.services.values():
                    chains.update((c.name, c.rules) for c in sr.chains)
            chains.update((c, self.top[(table, c)]) for c in TOP_CHAINS[table])
            out[table] = chains
        return out

    def render(self) -> str:
        """The whole ruleset as one `iptables-restore --noflush` payload (`--dry-run`);
        the jumps from the built-in chains, which the writer inserts only where they
        are missing, are listed as comments."""
        parts: list[str] = []
        for table in TABLES:
            chains = self.chains[table]
            parts.append(f"*{table}\n")
            parts.extend(f"# -A {j.chain} {j.spec}\n" for j in self.jumps[table])
            parts.extend(f":{name} - [0:0]\n" for name in chains)
            for name, rules in chains.items():
                head = f"-A {name} "
                parts.extend(f"{head}{r}\n" for r in rules)
            parts.append("COMMIT\n")
        return "".join(parts)


@dataclass(frozen=True)
class Ruleset:
    tables: tuple[FamilyRuleset, ...]

    def table(self, family: int) -> FamilyRuleset:
        for t in self.tables:
            if t.family == family:
                return t
        raise KeyError(f"no rules for IPv{family}")

    def render(self) -> str:
        return "".join(f"# {'iptables' if t.family == 4 else 'ip6tables'}\n{t.render()}" for t in self.tables)


# -- names -------------------------------------------------------------------------------


_B32_PAIRS = [a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"]


def _hash16(text: str) -> str:
    """First 16 base32 characters of SHA-256, as kube-proxy names chains. They are
    exactly the first 10 bytes (80 bits), encoded here 10 bits at a time: the
    standard library's base32 is pure Python and was the largest single cost of a
    10,000-service compute (equality with it is unit-tested)."""
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    return "".join([_B32_PAIRS[(n >> shift) & 1023] for shift in (70, 60, 50, 40, 30, 20, 10, 0)])


@lru_cache(maxsize=200_000)
def port_hash(spn: ServicePortName) -> str:
    """kube-proxy's servicePortChainNameBase: the same service port, the same chain names."""
    return _hash16(str(spn) + spn.protocol.lower())


@lru_cache(maxsize=600_000)
def endpoint_chain(spn: ServicePortName, address: str) -> str:
    """SVCNET-SEP-<hash of ns/name:port + protocol + ip:port> (28 chars, iptables' limit)."""
    return "SVCNET-SEP-" + _hash16(str(spn) + spn.protocol.lower() + address)


def service_chain(spn: ServicePortName) -> str:
    return "SVCNET-SVC-" + port_hash(spn)


def local_chain(spn: ServicePortName) -> str:
    return "SVCNET-SVL-" + port_hash(spn)


def external_chain(spn: ServicePortName) -> str:
    return "SVCNET-EXT-" + port_hash(spn)


def firewall_chain(spn: ServicePortName) -> str:
    return "SVCNET-FW-" + port_hash(spn)


@lru_cache(maxsize=1024)
def probability(n: int) -> str:
    """`-m statistic` probability of picking the first of n endpoints, printed as
    kube-proxy prints it (10 decimals), so chained draws stay uniform."""
    return f"{1.0 / n:.10f}"


# -- configuration-derived pieces ----------------------------------------------------------


def nodeport_destinations(cfg: ProxyConfig, localhost: bool) -> tuple[str, ...] | None:
    """Addresses that accept NodePorts in iptables mode; None = every local address.

    An empty --nodeport-addresses means all here (nftables mode reads it as primary);
    loopback counts only for IPv4 with localhost NodePorts (IPv6 never routes ::1 off
    the host)."""
    if not cfg.nodeport_addresses:
        return None
    return cfg.nodeport_ips(loopback=localhost and cfg.family == 4)


def _wants_route_localnet(cfg: ProxyConfig, localhost: bool, dests: tuple[str, ...] | None) -> bool:
    if cfg.family != 4 or not localhost:
        return False
    return dests is None or any(ipaddress.ip_address(ip).is_loopback for ip in dests)


def _fixed(cfg: ProxyConfig, localhost_nodeports: bool) -> tuple[dict[str, tuple[Chain, ...]], tuple[str, ...]]:
    mark = f"0x{cfg.masquerade_mark:x}"
    nat = [
        Chain(MARK_MASQ, (f"-j MARK --or-mark {mark}",)),
        Chain(POSTROUTING, (
            f"-m mark ! --mark {mark}/{mark} -j RETURN",
            f"-j MARK --xor-mark {mark}",
            '-m comment --comment "svcnet service traffic requiring SNAT" -j MASQUERADE --random-fully',
        )),
    ]
    if len(cfg.local_cidrs) > 1 and not cfg.masquerade_all:
        nat.append(Chain(MASQ_OFF_CLUSTER, (*(f"-s {c} -j RETURN" for c in cfg.local_cidrs), f"-j {MARK_MASQ}")))
    firewall: tuple[str, ...] = ()
    dests = nodeport_destinations(cfg, localhost_nodeports)
    if _wants_route_localnet(cfg, localhost_nodeports, dests):
        # route_localnet lets 127.0.0.1 be routed to a pod; this rule keeps anything
        # but loopback-sourced or already-DNATed traffic from reaching 127/8 through
        # it (CVE-2020-8558), as kube-proxy's KUBE-FIREWALL does.
        firewall = ('-m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
                    "! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",)
    filt = [
        Chain(FORWARD, (
            "-m conntrack --ctstate INVALID -j DROP",
            f'-m comment --comment "svcnet forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT',
            '-m comment --comment "svcnet forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED '
            "-j ACCEPT",
        )),
        Chain(FIREWALL, firewall),
    ]
    if dests is None:
        exclude = "" if cfg.family == 4 and localhost_nodeports else (
            " ! -d 127.0.0.0/8" if cfg.family == 4 else " ! -d ::1/128")
        tail: tuple[str, ...] = (f"-m comment --comment {NODEPORTS_COMMENT} -m addrtype --dst-type LOCAL"
                                 f"{exclude} -j {NODEPORTS}",)
    else:
        tail = tuple(f"-m comment --comment {NODEPORTS_COMMENT} -d {ip} -j {NODEPORTS}" for ip in dests)
    return {NAT: tuple(nat), FILTER: tuple(filt)}, tail


# -- one service port --------------------------------------------------------------------------


def service_rules(sp: ServicePort, endpoints: tuple[Endpoint, ...], cfg: ProxyConfig,
                  large: bool = False) -> ServiceRules:
    """Chains and top-level rules of one service port (kube-proxy's per-service loop).
    `large`: leave the comments off the per-endpoint rules (see LARGE_CLUSTER_ENDPOINTS)."""
    spn = sp.name
    name = str(spn)
    proto = sp.protocol.lower()
    mproto = f"-m {proto} -p {proto}"
    cat = categorize(sp, endpoints, cfg.node_name, cfg.node_zone)
    chains: list[Chain] = []
    top: list[tuple[str, str, str]] = []

    sep_comment = "" if large else f"-m comment --comment {name} "
    # Endpoint chains, shared by the cluster and local chains.
    for ep in cat.distinct:
        sep = endpoint_chain(spn, ep.address)
        recent = f"-m recent --name {sep} --set " if sp.affinity_timeout is not None else ""
        chains.append(Chain(sep, (
            f"{sep_comment}-s {ep.ip} -j {MARK_MASQ}",  # hairpin: a pod reaching itself
            f"{sep_comment}{recent}{mproto} -j DNAT --to-destination {ep.address}",
        )))

    cluster_ip_match = f'-m comment --comment "{name} cluster IP" {mproto} -d {sp.cluster_ip} --dport {sp.port}'
    masq_rule: str | None = None
    if cfg.masquerade_all:
        masq_rule = f"{cluster_ip_match} -j {MARK_MASQ}"
    elif len(cfg.local_cidrs) == 1:
        masq_rule = f"{cluster_ip_match} ! -s {cfg.local_cidrs[0]} -j {MARK_MASQ}"
    elif cfg.local_cidrs:
        masq_rule = f"{cluster_ip_match} -j {MASQ_OFF_CLUSTER}"

    def ep_comment(e: Endpoint) -> str:
        return "" if large else f'-m comment --comment "{name} -> {e.address}" '

    def dispatch(chain: str, eps: tuple[Endpoint, ...], internal: bool) -> None:
        rules: list[str] = []
        if internal and masq_rule:
            rules.append(masq_rule)
        if sp.affinity_timeout is not None:
            for e in eps:
                sep = endpoint_chain(spn, e.address)
                rules.append(f"{ep_comment(e)}-m recent --name {sep} "
                             f"--rcheck --seconds {sp.affinity_timeout} --reap -j {sep}")
        n = len(eps)
        for i, e in enumerate(eps):
            draw = f"-m statistic --mode random --probability {probability(n - i)} " if i < n - 1 else ""
            rules.append(f"{ep_comment(e)}{draw}-j {endpoint_chain(spn, e.address)}")
        chains.append(Chain(chain, tuple(rules)))

    svc, svl = service_chain(spn), local_chain(spn)
    if cat.cluster:
        dispatch(svc, cat.cluster, not sp.internal_policy_local)
    if cat.local:
        dispatch(svl, cat.local, sp.internal_policy_local)

    # Internal traffic: the ClusterIP.
    if cat.internal(sp):
        top.append((NAT, SERVICES, f"{cluster_ip_match} -j {svl if sp.internal_policy_local else svc}"))
    else:
        top.append((FILTER, SERVICES, _no_endpoints(name, cat.when_none_usable).format(
            f"{mproto} -d {sp.cluster_ip} --dport {sp.port}")))

    if sp.externally_accessible:
        _external(sp, cat, cfg, chains, top)
    return ServiceRules(tuple(chains), tuple(top))


def _no_endpoints(name: str, action: str) -> str:
    """The filter rule (a template for its match) for traffic that finds no endpoint."""
    if action == "drop":
        return f'-m comment --comment "{name} has no local endpoints" ' + "{} -j DROP"
    return f'-m comment --comment "{name} has no endpoints" ' + "{} -j REJECT"


def _external(sp: ServicePort, cat: Categorized, cfg: ProxyConfig, chains: list[Chain],
              top: list[tuple[str, str, str]]) -> None:
    """NodePort, externalIPs and LoadBalancer IPs: the EXT and FW chains and their entries."""
    cluster, local = cat.cluster, cat.local
    spn = sp.name
    name = str(spn)
    proto = sp.protocol.lower()
    mproto = f"-m {proto} -p {proto}"
    svc, svl, ext = service_chain(spn), local_chain(spn), external_chain(spn)
    rules: list[str] = []
    if not sp.external_policy_local:
        if cluster:
            rules += [f'-m comment --comment "masquerade traffic for {name} external destinations" -j {MARK_MASQ}',
                      f"-j {svc}"]
    else:
        if cluster:
            # Pods reaching an external destination are short-circuited to every
            # endpoint, as if they had gone out to the load balancer and back.
            rules += [f'-m comment --comment "pod traffic for {name} external destinations" -s {c} -j {svc}'
                      for c in cfg.local_cidrs]
            rules += [f'-m comment --comment "masquerade LOCAL traffic for {name} external destinations" '
                      f"-m addrtype --src-type LOCAL -j {MARK_MASQ}",
                      f'-m comment --comment "route LOCAL traffic for {name} external destinations" '
                      f"-m addrtype --src-type LOCAL -j {svc}"]
        if local:
            rules.append(f"-j {svl}")
    if rules:
        chains.append(Chain(ext, tuple(rules)))
    no_ep = "" if cat.external(sp) else _no_endpoints(name, cat.when_none_usable)

    for ip in sp.external_ips:
        if rules:
            top.append((NAT, SERVICES, f'-m comment --comment "{name} external IP" {mproto} -d {ip} '
                                       f"--dport {sp.port} -j {ext}"))
        if no_ep:
            top.append((FILTER, EXTERNAL_SERVICES, no_ep.format(f"{mproto} -d {ip} --dport {sp.port}")))

    use_fw = bool(rules and sp.load_balancer_source_ranges)
    fw = firewall_chain(spn)
    for ip in sp.load_balancer_ips:
        if rules:
            top.append((NAT, SERVICES, f'-m comment --comment "{name} loadbalancer IP" {mproto} -d {ip} '
                                       f"--dport {sp.port} -j {fw if use_fw else ext}"))
        if use_fw:
            # What FW-<h> did not send on is still addressed to the LB IP here.
            top.append((FILTER, PROXY_FIREWALL, f'-m comment --comment "{name} traffic not accepted by {fw}" '
                                                f"{mproto} -d {ip} --dport {sp.port} -j DROP"))
        if no_ep:
            top.append((FILTER, EXTERNAL_SERVICES, no_ep.format(f"{mproto} -d {ip} --dport {sp.port}")))
    if use_fw:
        head = f'-m comment --comment "{name} loadbalancer IP"'
        fw_rules = [f"{head} -s {r} -j {ext}" for r in sp.load_balancer_source_ranges]
        if cfg.node_ip_in(sp.load_balancer_source_ranges):
            # A VIP bound on the node loops node traffic back with the VIP as source.
            fw_rules += [f"{head} -s {ip} -j {ext}" for ip in sp.load_balancer_ips]
        fw_rules.append(f'-m comment --comment "other traffic to {name} will be dropped by {PROXY_FIREWALL}"')
        chains.append(Chain(fw, tuple(fw_rules)))

    if sp.node_port:
        if rules:
            top.append((NAT, NODEPORTS, f"-m comment --comment {name} {mproto} --dport {sp.node_port} -j {ext}"))
        if no_ep:
            top.append((FILTER, EXTERNAL_SERVICES,
                        no_ep.format(f"-m addrtype --dst-type LOCAL {mproto} --dport {sp.node_port}")))
    if sp.health_check_node_port:
        top.append((FILTER, NODEPORTS, f'-m comment --comment "{spn.namespace}/{spn.name} health check node port" '
                                       f"-m tcp -p tcp --dport {sp.health_check_node_port} -j ACCEPT"))


# -- the computation ---------------------------------------------------------------------------


def compute_family(
    state: ProxyState,
    previous: FamilyRuleset | None = None,
    changed: frozenset[ServicePortName] | None = None,
    localhost_nodeports: bool = True,
) -> FamilyRuleset:
    """One family's rules; reuses `previous` for services not in `changed`."""
    cfg = state.config
    fixed, tail = _fixed(cfg, localhost_nodeports)
    # Service rules depend on the node's configuration only (not on the localhost
    # NodePort option, which shapes the fixed chains): reuse them when it is the same.
    large = sum(map(len, state.endpoints.values())) > LARGE_CLUSTER_ENDPOINTS
    reused = previous is not None and changed is not None and previous.config == cfg and previous.large == large
    if reused:
        assert previous is not None and changed is not None
        services = dict(previous.services)
        counts = {k: dict(v) for k, v in previous.contributions.items()}
        for spn in changed:
            old = services.pop(spn, None)
            sp = state.services.get(spn)
            new = service_rules(sp, state.endpoints.get(spn, ()), cfg, large) if sp is not None else None
            if new is not None:
                services[spn] = new
            if old is not None and new is not None and old.top == new.top:
                continue  # e.g. only endpoints changed: the top-level chains stay as they are
            _count(counts, old.top if old else (), -1)
            _count(counts, new.top if new else (), 1)
    else:
        # sorted: the payload (--dry-run, golden tests) must not depend on event order
        order = sorted(state.services, key=lambda n: (n.namespace, n.name, n.port, n.protocol))
        services = {spn: service_rules(state.services[spn], state.endpoints.get(spn, ()), cfg, large)
                    for spn in order}
        counts = {(t, c): {} for t, cs in TOP_CHAINS.items() for c in cs}
        for sr in services.values():
            _count(counts, sr.top, 1)
    dests = nodeport_destinations(cfg, localhost_nodeports)
    return FamilyRuleset(
        family=cfg.family, config=cfg, services=services, fixed=fixed, top_tail=tail,
        localhost_nodeports=_wants_route_localnet(cfg, localhost_nodeports, dests), contributions=counts,
        recomputed=changed if reused else None, base_id=id(previous) if reused else 0, large=large,
    )


def _count(counts: dict[tuple[str, str], dict[str, int]], top: tuple[tuple[str, str, str], ...], delta: int) -> None:
    for table, chain, rule in top:
        bucket = counts.setdefault((table, chain), {})
        n = bucket.get(rule, 0) + delta
        if n > 0:
            bucket[rule] = n
        else:
            bucket.pop(rule, None)


# -- the backend ---------------------------------------------------------------------------------


class IptablesBackend(PerFamilyBackend):
    """`Backend` for iptables: compute here, write through `RestoreWriter`."""

    mode = "iptables"

    def __init__(self, options: BackendOptions) -> None:
        from svcnet.proxy.iptables_restore import RestoreWriter  # subprocess only where it is needed

        super().__init__(options, RestoreWriter(families=options.families))

    def compute_table(self, state: ProxyState, previous: Any | None,
                      changed: frozenset[ServicePortName] | None) -> FamilyRuleset:
        return compute_family(state, previous, changed, self.options.localhost_nodeports)

    def assemble(self, tables: tuple[Any, ...]) -> Ruleset:
        return Ruleset(tables)


def create_backend(options: BackendOptions) -> IptablesBackend:
    return IptablesBackend(options)
