"""A packet tracer over svcnet's own nftables rule shapes (no kernel needed).

In the spirit of kube-proxy's `nftablesTracer`: it understands exactly the matches
and statements `nftables.py` emits and fails loudly on anything else, so a new rule
shape cannot silently escape the tests. It follows a *new* connection through the
hooks the kernel would run:

    from another host:  filter-prerouting-pre-dnat -> nat-prerouting -> routing
                        -> filter-input (daddr local) | filter-forward -> nat-postrouting
    from this node:     filter-output-pre-dnat -> nat-output -> filter-output -> nat-postrouting

Every `numgen` draw is explored both ways, so one trace answers "which endpoints can
this connection reach, and is it masqueraded on each path?". Dynamic affinity sets
start empty, as they are for a client's first connection.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Iterator

from svcnet.proxy.nft_ruleset import FamilyRuleset


class TraceError(ValueError):
    """A rule shape the tracer does not understand (add it, with a test)."""


@dataclass(frozen=True)
class Packet:
    src: str
    proto: str  # tcp, udp, sctp
    dst: str
    dport: int
    mark: int = 0
    dnat: str | None = None  # "ip:port" once translated
    masq: bool = False  # reached a masquerade statement


@dataclass(frozen=True)
class Outcome:
    verdict: str  # ACCEPT, DROP or REJECT
    endpoint: str | None  # "ip:port" when DNATed
    masquerade: bool


@dataclass(frozen=True)
class Trace:
    outcomes: tuple[Outcome, ...]

    @property
    def verdict(self) -> str:
        """DNAT, ACCEPT (untouched), DROP, REJECT, or MIXED when paths differ."""
        kinds = {("DNAT" if o.endpoint and o.verdict == "ACCEPT" else o.verdict) for o in self.outcomes}
        return kinds.pop() if len(kinds) == 1 else "MIXED"

    @property
    def endpoints(self) -> list[str]:
        return sorted({o.endpoint for o in self.outcomes if o.endpoint and o.verdict == "ACCEPT"},
                      key=_addr_key)

    @property
    def masquerade(self) -> bool | None:
        """True/False when every accepted path agrees, None when they differ."""
        m = {o.masquerade for o in self.outcomes if o.verdict == "ACCEPT"}
        return m.pop() if len(m) == 1 else None


def _addr_key(a: str) -> tuple[int, int]:
    ip, _, port = a.rpartition(":")
    return int(ipaddress.ip_address(ip.strip("[]"))), int(port)


_TOKEN = re.compile(r'"[^"]*"|\{[^}]*\}|\S+')


class Tracer:
    """Trace new connections through one family's computed ruleset."""

    def __init__(self, table: FamilyRuleset, local_ips: tuple[str, ...] = ()) -> None:
        self.table = table
        self.ip = "ip" if table.family == 4 else "ip6"
        cfg = table.config
        node_ips = getattr(cfg, "node_ips", ()) + getattr(cfg, "local_addresses", ())
        self.local_ips = {str(ipaddress.ip_address(i)) for i in (*local_ips, *node_ips)}
        self.local_ips |= {"127.0.0.1", "::1"}
        self._parsed: dict[str, list[list[str]]] = {}

    def trace(self, src: str, proto: str, dst: str, dport: int, from_node: bool = False) -> Trace:
        """Follow a new connection; `from_node` means the node itself sends it (output hook)."""
        pkt = Packet(src, proto.lower(), dst, int(dport))
        outcomes: list[Outcome] = []
        pre = ["filter-output-pre-dnat", "nat-output"] if from_node else ["filter-prerouting-pre-dnat", "nat-prerouting"]
        for verdict, p in self._hooks(pre, pkt):
            if verdict != "ACCEPT":
                outcomes.append(Outcome(verdict, p.dnat, False))
                continue
            daddr = p.dnat.rpartition(":")[0].strip("[]") if p.dnat else p.dst
            if from_node:
                filt = "filter-output"
            else:
                filt = "filter-input" if daddr in self.local_ips else "filter-forward"
            for v2, p2 in self._hooks([filt, "nat-postrouting"], p):
                outcomes.append(Outcome(v2, p2.dnat, v2 == "ACCEPT" and p2.masq))
        return Trace(tuple(outcomes))

    # -- evaluation -------------------------------------------------------------------

    def _hooks(self, chains: list[str], pkt: Packet) -> Iterator[tuple[str, Packet]]:
        if not chains:
            yield "ACCEPT", pkt
            return
        first, rest = chains[0], chains[1:]
        for flow, p in self._chain(first, pkt, 0):
            if flow in ("DROP", "REJECT"):
                yield flow, p
            else:  # base chains have policy accept
                yield from self._hooks(rest, p)

    def _chain(self, name: str, pkt: Packet, depth: int) -> Iterator[tuple[str, Packet]]:
        """Yield (flow, packet): flow is CONTINUE (fell off the end / return), or a verdict."""
        if depth > 32:
            raise TraceError(f"chain loop through {name}")
        yield from self._rules(name, self._rules_of(name), 0, pkt, depth)

    def _rules_of(self, name: str) -> list[list[str]]:
        if name not in self._parsed:
            chain = self.table.chains.get(name)
            if chain is None:
                raise TraceError(f"jump to missing chain {name!r}")
            self._parsed[name] = [_TOKEN.findall(re.sub(r'\s+comment ".*"$', "", r)) for r in chain.rules]
        return self._parsed[name]

    def _rules(self, chain: str, rules: list[list[str]], i: int, pkt: Packet, depth: int) -> Iterator[tuple[str, Packet]]:
        if i >= len(rules):
            yield "CONTINUE", pkt
            return
        for matched, p, action in self._match(rules[i], pkt):
            if not matched:
                yield from self._rules(chain, rules, i + 1, p, depth)
                continue
            kind, arg = action
            if kind == "next":
                yield from self._rules(chain, rules, i + 1, p, depth)
            elif kind in ("goto", "jump"):
                for flow, p2 in self._chain(arg, p, depth + 1):
                    if flow == "CONTINUE" and kind == "jump":
                        yield from self._rules(chain, rules, i + 1, p2, depth)
                    else:
                        yield flow, p2
            elif kind == "return":
                yield "CONTINUE", p
            else:
                yield kind, p

    def _match(self, tokens: list[str], pkt: Packet) -> Iterator[tuple[bool, Packet, tuple[str, str]]]:
        """Evaluate one rule's matches; yields (matched, packet, action) per branch."""
        t = tokens
        i = 0
        p = pkt
        while i < len(t):
            tok = t[i]
            if tok in (self.ip,) and t[i + 1] in ("saddr", "daddr"):
                if i + 5 < len(t) and t[i + 2] == "." and t[i + 3] == self.ip and t[i + 5].startswith("@"):
                    key = f"{p.src} . {self._daddr(p)}"  # ip saddr . ip daddr @set
                    if key not in self.table.set_elements.get(t[i + 5][1:], {}):
                        yield False, p, ("", "")
                        return
                    i += 6
                    continue
                if i + 9 < len(t) and t[i + 2] == "." and t[i + 8] == "vmap":
                    key = f"{self._daddr(p)} . {p.proto} . {self._dport(p)}"
                    yield from self._vmap(t[i + 9], key, p)
                    return
                addr = p.src if t[i + 1] == "saddr" else self._daddr(p)
                neg = t[i + 2] == "!="
                value = t[i + 3] if neg else t[i + 2]
                i += 4 if neg else 3
                if self._in(addr, value) == neg:
                    yield False, p, ("", "")
                    return
            elif tok == "meta" and t[i + 1] == "l4proto":
                if t[i + 2] == "." and t[i + 5] == "vmap":
                    yield from self._vmap(t[i + 6], f"{p.proto} . {self._dport(p)}", p)
                    return
                if t[i + 2] != p.proto:
                    yield False, p, ("", "")
                    return
                i += 3
            elif tok in ("tcp", "udp", "sctp") and t[i + 1] == "dport":
                if tok != p.proto or int(t[i + 2]) != self._dport(p):
                    yield False, p, ("", "")
                    return
                i += 3
            elif tok == "fib":
                addr = p.src if t[i + 1] == "saddr" else self._daddr(p)
                if t[i + 2:i + 4] != ["type", "local"]:
                    raise TraceError(f"unknown fib match in {' '.join(t)}")
                if addr not in self.local_ips:
                    yield False, p, ("", "")
                    return
                i += 4
            elif tok == "ct" and t[i + 1:i + 3] == ["state", "new"]:
                i += 3  # the tracer follows new connections only
            elif tok == "ct" and t[i + 1:i + 3] == ["status", "dnat"]:
                if p.dnat is None:
                    yield False, p, ("", "")
                    return
                i += 3
            elif tok == "numgen":
                rest = t[i + 5:]
                yield False, p, ("", "")
                yield from self._match(rest, p)
                return
            elif tok == "mark" and t[i + 1] == "and":
                masked = (1 if p.mark == -1 else 0)
                if not (t[i + 3] == "==" and masked == int(t[i + 4], 0)):
                    yield False, p, ("", "")
                    return
                i += 5
            elif tok == "mark" and t[i + 1] == "set":
                # The tracer keeps a single bit: -1 = "marked for masquerade".
                p = replace(p, mark=-1 if t[i + 3] == "or" else 0)
                i += 5
            elif tok == "update":
                i += 2 + len(t[i + 2:i + 3])
            elif tok == "dnat":
                p = replace(p, dnat=t[i + 2])
                yield True, p, ("ACCEPT", "")
                return
            elif tok == "masquerade":
                yield True, replace(p, masq=True), ("ACCEPT", "")
                return
            elif tok in ("goto", "jump"):
                yield True, p, (tok, t[i + 1])
                return
            elif tok in ("drop", "reject", "accept", "return"):
                yield True, p, ({"drop": "DROP", "reject": "REJECT", "accept": "ACCEPT"}.get(tok, "return"), "")
                return
            else:
                raise TraceError(f"unknown rule shape near {tok!r} in: {' '.join(t)}")
        yield True, p, ("next", "")

    def _vmap(self, ref: str, key: str, p: Packet) -> Iterator[tuple[bool, Packet, tuple[str, str]]]:
        elems = self.table.set_elements.get(ref.lstrip("@"), {})
        verdict = elems.get(key)
        if verdict is None:
            yield False, p, ("", "")
            return
        word, _, arg = verdict.partition(" ")
        if word in ("goto", "jump"):
            yield True, p, (word, arg)
        else:
            yield True, p, ({"drop": "DROP", "accept": "ACCEPT"}[word], "")

    def _in(self, addr: str, value: str) -> bool:
        if value.startswith("@"):
            elems = self.table.set_elements.get(value[1:])
            if elems is None:
                raise TraceError(f"reference to missing set {value}")
            if value[1:].startswith("affinity-"):
                return False  # dynamic sets start empty for a first connection
            return any(_addr_in(addr, e) for e in elems)
        if value.startswith("{"):
            return any(_addr_in(addr, v.strip()) for v in value.strip("{}").split(","))
        return _addr_in(addr, value)

    def _daddr(self, p: Packet) -> str:
        return p.dnat.rpartition(":")[0].strip("[]") if p.dnat else p.dst

    def _dport(self, p: Packet) -> int:
        return int(p.dnat.rpartition(":")[2]) if p.dnat else p.dport


def _addr_in(addr: str, value: str) -> bool:
    a = ipaddress.ip_address(addr)
    net = ipaddress.ip_network(value, strict=False)
    return a.version == net.version and a in net
