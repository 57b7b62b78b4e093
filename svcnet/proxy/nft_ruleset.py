"""The nftables ruleset as plain data, and its text form.

A `Ruleset` holds one `FamilyRuleset` per IP family (table `ip svcnet`, table
`ip6 svcnet`). Each is split the way partial syncs need it:

* fixed parts (base chains, dispatch chains, the shared maps and sets themselves),
* one `ServiceRules` per service port: its chains, its affinity sets, and the
  elements it contributes to the shared maps (`service-ips`, `no-endpoint-…`, …).

Shared elements are reference-counted in `elements`: several ports of one Service
contribute the same ClusterIP to `cluster-ips`, and the element must stay while any
of them exists. Everything here is immutable; `compute` builds new values and shares
unchanged `ServiceRules` objects with the previous ruleset, so a writer can find the
changed services by identity before comparing contents.

`render()` is the `nft -f` script of the whole ruleset (and `--dry-run` output):
chains before the map elements that name them, leaf chains before their callers, so
one transaction creates everything without forward references.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Mapping

from svcnet.proxy.model import ServicePortName

TABLE = "svcnet"
FAMILY_NAMES = {4: "ip", 6: "ip6"}

Element = tuple[str, str, str]  # (set or map name, key, value: "" for plain sets)


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[str, ...] = ()
    base: str | None = None  # e.g. "type nat hook prerouting priority -100" for base chains

    def render(self, indent: str = "\t") -> str:
        head = f"{indent}chain {self.name} {{\n"
        if self.base:
            head += f"{indent}\t{self.base}; policy accept;\n"
        return head + "".join(f"{indent}\t{r}\n" for r in self.rules) + f"{indent}}}\n"


@dataclass(frozen=True)
class NftSet:
    name: str
    type: str
    map_to: str | None = None  # "verdict" for verdict maps
    flags: tuple[str, ...] = ()
    timeout: int | None = None
    comment: str | None = None

    @property
    def kind(self) -> str:
        return "map" if self.map_to else "set"

    def render(self, indent: str = "\t") -> str:
        body = f"type {self.type}" + (f" : {self.map_to}" if self.map_to else "") + ";"
        if self.flags:
            body += f" flags {','.join(self.flags)};"
        if self.timeout is not None:
            body += f" timeout {self.timeout}s;"
        if self.comment:
            body += f' comment "{self.comment}";'
        return f"{indent}{self.kind} {self.name} {{ {body} }}\n"


@dataclass(frozen=True)
class ServiceRules:
    """What one service port contributes to its family's table."""

    chains: tuple[Chain, ...] = ()
    sets: tuple[NftSet, ...] = ()  # affinity sets (dynamic, with timeout)
    elements: tuple[Element, ...] = ()


@dataclass(frozen=True)
class FamilyRuleset:
    family: int
    fixed_sets: tuple[NftSet, ...]
    fixed_chains_first: tuple[Chain, ...]  # leaves that service chains jump to
    fixed_chains_last: tuple[Chain, ...]  # dispatch and base chains, which use the maps
    fixed_elements: tuple[Element, ...]
    services: Mapping[ServicePortName, ServiceRules]
    # (set, key) -> (value, how many contributors); fixed elements count too
    elements: Mapping[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    config: object = None  # the ProxyConfig it was computed for: reuse needs the same one

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES[self.family]

    @cached_property
    def chains(self) -> dict[str, Chain]:
        out = {c.name: c for c in self.fixed_chains_first}
        for sr in self.services.values():
            out.update((c.name, c) for c in sr.chains)
        out.update((c.name, c) for c in self.fixed_chains_last)
        return out

    @cached_property
    def sets(self) -> dict[str, NftSet]:
        out = {s.name: s for s in self.fixed_sets}
        for sr in self.services.values():
            out.update((s.name, s) for s in sr.sets)
        return out

    @cached_property
    def set_elements(self) -> dict[str, dict[str, str]]:
        """Elements grouped per set: what the kernel holds."""
        out: dict[str, dict[str, str]] = {name: {} for name in self.sets}
        for (set_name, key), (value, _) in self.elements.items():
            out.setdefault(set_name, {})[key] = value
        return out

    def render(self) -> str:
        head = f"table {self.family_name} {TABLE} {{\n"
        parts = [head, "\tcomment \"svcnet proxy: Service NAT rules (kube-proxy nftables layout)\"\n"]
        parts.extend(s.render() for s in self.sets.values())
        parts.extend(c.render() for c in self.chains.values())
        parts.append("}\n")
        parts.extend(render_elements(self.family_name, self.set_elements, "add"))
        return "".join(parts)


def render_elements(family: str, by_set: Mapping[str, Mapping[str, str]], verb: str) -> Iterable[str]:
    """`add element` / `delete element` lines, one per set, chunked to bound line size."""
    for set_name, elems in by_set.items():
        items = [f"{k} : {v}" if v else k for k, v in elems.items()] if verb == "add" else list(elems)
        for i in range(0, len(items), 2000):
            yield f"{verb} element {family} {TABLE} {set_name} {{ {', '.join(items[i:i + 2000])} }}\n"


@dataclass(frozen=True)
class Ruleset:
    tables: tuple[FamilyRuleset, ...]

    def table(self, family: int) -> FamilyRuleset:
        for t in self.tables:
            if t.family == family:
                return t
        raise KeyError(f"no table for IPv{family}")

    def render(self) -> str:
        return "".join(t.render() for t in self.tables)


def count_elements(
    base: Mapping[tuple[str, str], tuple[str, int]] | None,
    remove: Iterable[Element],
    add: Iterable[Element],
) -> dict[tuple[str, str], tuple[str, int]]:
    """Reference-counted element bookkeeping: `base - remove + add` (a new dict)."""
    out = dict(base or {})
    for s, k, _ in remove:
        value, n = out[(s, k)]
        if n <= 1:
            del out[(s, k)]
        else:
            out[(s, k)] = (value, n - 1)
    for s, k, v in add:
        prev = out.get((s, k))
        # The latest contributor's value wins, as a later Service claiming an
        # already-used IP:port would in kube-proxy's map.
        out[(s, k)] = (v, prev[1] + 1 if prev else 1)
    return out
