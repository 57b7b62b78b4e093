"""A packet tracer over svcnet's own iptables rule shapes (no kernel needed).

The iptables twin of tracer.py (kube-proxy's `iptablesTracer`): it reads a computed
`FamilyRuleset` (or any chains in the same text form, e.g. parsed back from
`iptables-save`) and follows a *new* connection through the hooks the kernel runs:

    from another host:  nat PREROUTING -> filter INPUT (daddr local) | filter FORWARD
                        -> nat POSTROUTING (forwarded only)
    from this node:     nat OUTPUT -> filter OUTPUT -> nat POSTROUTING
                        (-> filter INPUT when the final destination is local)

It understands exactly the matches and targets iptables.py emits and raises
`TraceError` on anything else. Every `-m statistic` draw is explored both ways, so
one trace answers "which endpoints can this connection reach, and is it masqueraded
on each path?". `-m recent --rcheck` is false: a client's first connection has no
affinity entry yet.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import replace
from typing import Iterator, Mapping

from svcnet.proxy.iptables import FILTER, NAT, FamilyRuleset
from svcnet.proxy.tracer import Outcome, Packet, Trace, TraceError

Flow = Iterator[tuple[str, Packet]]  # (CONTINUE | ACCEPT | DROP | REJECT | RETURN, packet)
TERMINAL = {"ACCEPT", "DROP", "REJECT"}


class IptablesTracer:
    """Trace new connections through one family's nat and filter chains."""

    def __init__(self, table: FamilyRuleset, local_ips: tuple[str, ...] = ()) -> None:
        self.family = table.family
        cfg = table.config
        self.local_ips = {str(ipaddress.ip_address(i)) for i in (*local_ips, *cfg.node_ips, *cfg.local_addresses)}
        self.local_ips |= {"127.0.0.1", "::1"}
        self.chains: dict[str, dict[str, list[list[str]]]] = {}
        for t in (NAT, FILTER):
            chains: Mapping[str, tuple[str, ...]] = table.chains[t]
            parsed = {name: [shlex.split(r) for r in rules] for name, rules in chains.items()}
            for j in table.jumps[t]:
                parsed.setdefault(j.chain, []).append(shlex.split(j.spec))
            self.chains[t] = parsed

    def trace(self, src: str, proto: str, dst: str, dport: int, from_node: bool = False) -> Trace:
        pkt = Packet(src, proto.lower(), dst, int(dport))
        outcomes: list[Outcome] = []
        first = (NAT, "OUTPUT") if from_node else (NAT, "PREROUTING")
        for flow, p in self._hook(first, pkt):
            if flow in ("DROP", "REJECT"):
                outcomes.append(Outcome(flow, p.dnat, False))
                continue
            local = self._daddr(p) in self.local_ips
            if from_node:
                hooks = [(FILTER, "OUTPUT"), (NAT, "POSTROUTING")] + ([(FILTER, "INPUT")] if local else [])
            else:
                hooks = [(FILTER, "INPUT")] if local else [(FILTER, "FORWARD"), (NAT, "POSTROUTING")]
            for v, p2 in self._hooks(hooks, p):
                outcomes.append(Outcome(v, p2.dnat, v == "ACCEPT" and p2.masq))
        return Trace(tuple(outcomes))

    # -- evaluation ---------------------------------------------------------------------

    def _hooks(self, hooks: list[tuple[str, str]], pkt: Packet) -> Flow:
        if not hooks:
            yield "ACCEPT", pkt
            return
        for flow, p in self._hook(hooks[0], pkt):
            if flow in ("DROP", "REJECT"):
                yield flow, p
            else:
                yield from self._hooks(hooks[1:], p)

    def _hook(self, where: tuple[str, str], pkt: Packet) -> Flow:
        """A built-in chain: policy ACCEPT. In nat, a DNAT/MASQUERADE ends the table."""
        for flow, p in self._chain(where[0], where[1], pkt, 0):
            yield ("ACCEPT" if flow in ("CONTINUE", "RETURN") else flow), p

    def _chain(self, table: str, name: str, pkt: Packet, depth: int) -> Flow:
        if depth > 16:
            raise TraceError(f"chain loop through {name}")
        rules = self.chains[table].get(name)
        if rules is None:
            if name in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"):
                rules = []
            else:
                raise TraceError(f"jump to missing chain {table}/{name}")
        yield from self._rules(table, rules, 0, pkt, depth)

    def _rules(self, table: str, rules: list[list[str]], i: int, pkt: Packet, depth: int) -> Flow:
        if i >= len(rules):
            yield "CONTINUE", pkt
            return
        for matched, p in self._match(rules[i], pkt):
            if not matched:
                yield from self._rules(table, rules, i + 1, p, depth)
                continue
            target, args = _target(rules[i])
            if target is None:
                yield from self._rules(table, rules, i + 1, p, depth)
            elif target == "MARK":
                on = args[0] == "--or-mark"
                yield from self._rules(table, rules, i + 1, replace(p, mark=-1 if on else 0), depth)
            elif target == "DNAT":
                yield "ACCEPT", replace(p, dnat=args[args.index("--to-destination") + 1])
            elif target == "MASQUERADE":
                yield "ACCEPT", replace(p, masq=True)
            elif target in TERMINAL:
                yield target, p
            elif target == "RETURN":
                yield "RETURN", p
            elif target in self.chains[table]:
                for flow, p2 in self._chain(table, target, p, depth + 1):
                    if flow in ("CONTINUE", "RETURN"):
                        yield from self._rules(table, rules, i + 1, p2, depth)
                    else:
                        yield flow, p2
            else:
                raise TraceError(f"unknown target {target!r} in {table}: {' '.join(rules[i])}")

    def _match(self, t: list[str], p: Packet) -> Iterator[tuple[bool, Packet]]:
        """Evaluate one rule's matches; yields (matched, packet) per branch."""
        i, neg = 0, False
        end = t.index("-j") if "-j" in t else len(t)
        while i < end:
            tok = t[i]
            if tok == "!":
                neg, i = True, i + 1
                continue
            ok: bool
            if tok == "-m":
                module = t[i + 1]
                i += 2
                if module in ("comment", "tcp", "udp", "sctp", "addrtype", "statistic", "recent", "mark",
                              "conntrack"):
                    continue
                raise TraceError(f"unknown match module {module!r} in: {' '.join(t)}")
            elif tok == "--comment":
                i += 2
                continue
            elif tok == "-p":
                ok, i = t[i + 1] == p.proto, i + 2
            elif tok in ("-s", "-d"):
                addr = p.src if tok == "-s" else self._daddr(p)
                ok, i = _addr_in(addr, t[i + 1]), i + 2
            elif tok == "--dport":
                ok, i = int(t[i + 1]) == self._dport(p), i + 2
            elif tok in ("--dst-type", "--src-type"):
                if t[i + 1] != "LOCAL":
                    raise TraceError(f"unknown addrtype {t[i + 1]!r}")
                addr = p.src if tok == "--src-type" else self._daddr(p)
                ok, i = addr in self.local_ips, i + 2
            elif tok == "--mode" and t[i + 1] == "random" and t[i + 2] == "--probability":
                rest = t[i + 4:]
                yield False, p  # this draw fails ...
                yield from self._match(rest, p)  # ... or succeeds: both paths are possible
                return
            elif tok == "--name":
                i += 2
                continue
            elif tok == "--rcheck":
                ok = False  # no affinity entry for a first connection
                i += 1
                while i < end and t[i] in ("--seconds", "--reap"):
                    i += 2 if t[i] == "--seconds" else 1
            elif tok == "--set":
                ok, i = True, i + 1
            elif tok == "--mark":
                value, _, mask = t[i + 1].partition("/")
                ok, i = (p.mark == -1) == bool(int(value, 0) & int(mask or value, 0)), i + 2
            elif tok == "--ctstate":
                states = {"NEW"} | ({"DNAT"} if p.dnat else set())
                ok, i = bool(states & set(t[i + 1].split(","))), i + 2
            else:
                raise TraceError(f"unknown rule shape near {tok!r} in: {' '.join(t)}")
            if ok == neg:
                yield False, p
                return
            neg = False
        yield True, p

    def _daddr(self, p: Packet) -> str:
        return p.dnat.rpartition(":")[0].strip("[]") if p.dnat else p.dst

    def _dport(self, p: Packet) -> int:
        return int(p.dnat.rpartition(":")[2]) if p.dnat else p.dport


def _target(tokens: list[str]) -> tuple[str | None, list[str]]:
    if "-j" not in tokens:
        return None, []
    i = tokens.index("-j")
    return tokens[i + 1], tokens[i + 2:]


def _addr_in(addr: str, value: str) -> bool:
    a = ipaddress.ip_address(addr)
    net = ipaddress.ip_network(value, strict=False)
    return a.version == net.version and a in net
