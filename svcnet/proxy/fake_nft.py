"""A fake `nft -f` with real transaction semantics, for tests without root.

In the spirit of knftables' `Fake`: it understands the statements svcnet's writer
emits (and fails loudly on others), applies a whole script to a *copy* of its
state, checks what the kernel would check (missing tables/chains/sets, jumps to
missing chains, deleting a chain or set that something still references, a
conflicting element), and only then swaps the copy in. A rejected script leaves the
state exactly as it was, like a failed kernel transaction. `table(family)` returns a
view the `Tracer` can walk, so tests can trace packets through what was *written*,
not only through what was computed.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

from svcnet.proxy.nft_ruleset import TABLE, Chain
from svcnet.proxy.nft_writer import NftError

_FAMILIES = {"ip": 4, "ip6": 6}
_REF = re.compile(r"(?:goto|jump) (\S+)")
_SETREF = re.compile(r"@(\S+)")


@dataclass
class FakeTable:
    family: int
    chains: dict[str, list[str]] = field(default_factory=dict)
    sets: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> key -> value
    set_defs: dict[str, str] = field(default_factory=dict)
    config: object = None

    # the attributes Tracer reads
    @property
    def chain_view(self) -> dict[str, Chain]:
        return {n: Chain(n, tuple(r)) for n, r in self.chains.items()}


class TableView:
    """What `Tracer` needs from a table: chains, set elements, family, config."""

    def __init__(self, t: FakeTable) -> None:
        self.family = t.family
        self.chains = t.chain_view
        self.set_elements = t.sets
        self.config = t.config


class FakeNft:
    def __init__(self) -> None:
        self.tables: dict[int, FakeTable] = {}
        self.scripts: list[str] = []  # every accepted script, for assertions
        self.fail_next: str | None = None  # stderr of an injected failure

    # Executor interface of NftWriter
    def __call__(self, script: str) -> None:
        if self.fail_next is not None:
            msg, self.fail_next = self.fail_next, None
            raise NftError("nft -f - failed (exit 1)", msg)
        work = copy.deepcopy(self.tables)
        lines = script.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if not line:
                continue
            if line.startswith("table "):
                i = self._block(work, line, lines, i)
            else:
                self._command(work, line)
        for t in work.values():
            self._validate(t)
        self.tables = work
        self.scripts.append(script)

    def table(self, family: int) -> TableView:
        return TableView(self.tables[family])

    def read(self, command: str) -> str:
        """`nft -j list chains|sets|maps <family>` over the fake state (NftWriter's reader)."""
        _, what, fam = command.split()
        t = self.tables.get(_FAMILIES[fam])
        items: list[dict[str, object]] = []
        if t is not None:
            if what == "chains":
                items = [{"chain": {"family": fam, "table": TABLE, "name": n}} for n in t.chains]
            else:
                for name, d in t.set_defs.items():
                    kind = "map" if " : " in d else "set"
                    if what != kind + "s":
                        continue
                    m = re.search(r"timeout (\d+)s", d)
                    obj: dict[str, object] = {"family": fam, "table": TABLE, "name": name}
                    if m:
                        obj["timeout"] = int(m.group(1))
                    items.append({kind: obj})
        return json.dumps({"nftables": items})

    # -- statements ----------------------------------------------------------------------

    def _fail(self, msg: str, errno: str) -> None:
        raise NftError("nft -f - failed (exit 1)", f"Error: {msg}: {errno}")

    def _get(self, work: dict[int, FakeTable], fam: str, table: str) -> FakeTable:
        if table != TABLE or fam not in _FAMILIES:
            self._fail(f"unexpected table {fam} {table}", "Invalid argument")
        t = work.get(_FAMILIES[fam])
        if t is None:
            self._fail(f"Could not process rule: table {fam} {table}", "No such file or directory")
        assert t is not None
        return t

    def _block(self, work: dict[int, FakeTable], head: str, lines: list[str], i: int) -> int:
        _, fam, name, _ = head.split()
        t = work.setdefault(_FAMILIES[fam], FakeTable(_FAMILIES[fam]))
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if line == "}":
                return i
            if line.startswith("comment "):
                continue
            m = re.match(r"(set|map) (\S+) \{ (.*) \}$", line)
            if m:
                if m.group(2) in t.set_defs and t.set_defs[m.group(2)] != m.group(3):
                    self._fail(f"set {m.group(2)} redefined with another type", "File exists")
                t.set_defs[m.group(2)] = m.group(3)
                t.sets.setdefault(m.group(2), {})
                continue
            m = re.match(r"chain (\S+) \{$", line)
            if not m:
                self._fail(f"fake nft cannot parse {line!r}", "Invalid argument")
            assert m is not None
            rules = t.chains.setdefault(m.group(1), [])
            while i < len(lines) and lines[i].strip() != "}":
                rule = lines[i].strip()
                i += 1
                if rule.startswith("type ") and "hook" in rule:
                    continue
                rules.append(rule)
            i += 1
        self._fail("unterminated table block", "Invalid argument")
        return i

    def _command(self, work: dict[int, FakeTable], line: str) -> None:
        words = line.split()
        verb, kind = words[0], words[1]
        if kind == "table":
            fam = _FAMILIES[words[2]]
            if verb == "add":
                work.setdefault(fam, FakeTable(fam))
            elif verb == "delete":
                if fam not in work:
                    self._fail("Could not process rule", "No such file or directory")
                del work[fam]
            elif verb == "flush":
                t = self._get(work, words[2], words[3])
                for rules in t.chains.values():
                    rules.clear()
            return
        t = self._get(work, words[2], words[3])
        name = words[4] if len(words) > 4 else ""
        if kind == "chain":
            if verb == "add":
                t.chains.setdefault(name, [])
            elif name not in t.chains:
                self._fail(f"Could not process rule: chain {name}", "No such file or directory")
            elif verb == "flush":
                t.chains[name].clear()
            elif verb == "delete":
                if t.chains[name]:
                    self._fail(f"Could not process rule: chain {name} not empty", "Device or resource busy")
                if self._referenced(t, name):
                    self._fail(f"Could not process rule: chain {name} in use", "Device or resource busy")
                del t.chains[name]
        elif kind == "rule":
            if name not in t.chains:
                self._fail(f"Could not process rule: chain {name}", "No such file or directory")
            t.chains[name].append(line.split(None, 5)[5])
        elif kind in ("set", "map"):
            if verb == "add":
                body = re.search(r"\{ (.*) \}$", line)
                t.set_defs.setdefault(name, body.group(1) if body else "")
                t.sets.setdefault(name, {})
            elif name not in t.sets:
                self._fail(f"Could not process rule: set {name}", "No such file or directory")
            elif verb == "flush":
                t.sets[name].clear()
            elif verb == "delete":
                if any(f"@{name}" in r.split() or f"@{name} " in r for rules in t.chains.values() for r in rules):
                    self._fail(f"Could not process rule: set {name} in use", "Device or resource busy")
                del t.sets[name]
                t.set_defs.pop(name, None)
        elif kind == "element":
            if name not in t.sets:
                self._fail(f"Could not process rule: set {name}", "No such file or directory")
            elements = line[line.index("{") + 1: line.rindex("}")]
            for item in (x.strip() for x in elements.split(",")):
                key, _, value = item.partition(" : ")
                elems = t.sets[name]
                if verb == "add":
                    if key in elems and elems[key] != value:
                        self._fail(f"Could not process rule: element {key} in {name}", "File exists")
                    elems[key] = value
                elif verb == "delete":
                    if key not in elems:
                        self._fail(f"Could not process rule: element {key} in {name}", "No such file or directory")
                    del elems[key]
        else:
            self._fail(f"fake nft cannot parse {line!r}", "Invalid argument")

    def _referenced(self, t: FakeTable, chain: str) -> bool:
        for rules in t.chains.values():
            if any(chain in _REF.findall(r) for r in rules):
                return True
        return any(v in (f"goto {chain}", f"jump {chain}") for elems in t.sets.values() for v in elems.values())

    def _validate(self, t: FakeTable) -> None:
        for name, rules in t.chains.items():
            for r in rules:
                for target in _REF.findall(r):
                    if target not in t.chains:
                        self._fail(f"rule in {name} jumps to missing chain {target}", "No such file or directory")
                for s in _SETREF.findall(r):
                    if s not in t.sets:
                        self._fail(f"rule in {name} uses missing set {s}", "No such file or directory")
        for set_name, elems in t.sets.items():
            for v in elems.values():
                for target in _REF.findall(v):
                    if target not in t.chains:
                        self._fail(f"element of {set_name} points to missing chain {target}",
                                   "No such file or directory")
