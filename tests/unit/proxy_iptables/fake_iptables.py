"""A fake iptables-restore/-save with the semantics the writer relies on, for tests
without root (knftables.Fake's idea for iptables): a payload is applied to a copy
of the tables and swapped in only if every line is valid — unknown chains, deleting
a missing rule, deleting a chain that is not empty or still referenced, and jumps to
missing chains all fail the whole restore with iptables' own messages."""

from __future__ import annotations

import copy
import shlex
from typing import Sequence

from svcnet.proxy.iptables_restore import Result

BUILTIN = {"nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"), "filter": ("INPUT", "FORWARD", "OUTPUT")}
TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "MARK", "DNAT", "MASQUERADE"}


class FakeIptables:
    def __init__(self, variant: str = "nf_tables") -> None:
        self.variant = variant
        # family -> table -> chain -> rules (text after "-A CHAIN ")
        self.tables: dict[int, dict[str, dict[str, list[str]]]] = {
            f: {t: {c: [] for c in cs} for t, cs in BUILTIN.items()} for f in (4, 6)}
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail_next: str | None = None
        self.sets = ""  # `nft list sets` output

    def restores(self) -> list[str]:
        return [stdin or "" for argv, stdin in self.calls if "restore" in argv[0]]

    def __call__(self, argv: Sequence[str], stdin: str | None) -> Result:
        argv = list(argv)
        self.calls.append((argv, stdin))
        tool = argv[0]
        family = 6 if tool.startswith("ip6") else 4
        if argv[1:] == ["-V"]:
            return Result(0, f"iptables v1.8.9 ({self.variant})\n", "")
        if tool == "nft":
            return Result(0, self.nft_list_chains() if argv[2] == "chains" else self.sets, "")
        if "restore" in tool:
            if self.fail_next is not None:
                msg, self.fail_next = self.fail_next, None
                return Result(1, "", msg)
            return self.restore(family, stdin or "", flush="--noflush" not in argv)
        if "save" in tool:
            return Result(0, self.save(family, argv[argv.index("-t") + 1]), "")
        if "-S" in argv:
            table, chain = argv[argv.index("-t") + 1], argv[argv.index("-S") + 1]
            rules = self.tables[family][table].get(chain, [])
            return Result(0, f"-P {chain} ACCEPT\n" + "".join(f"-A {chain} {r}\n" for r in rules), "")
        raise AssertionError(f"unexpected command {argv}")

    def save(self, family: int, table: str) -> str:
        chains = self.tables[family][table]
        out = [f"*{table}\n"] + [f":{c} {'ACCEPT' if c in BUILTIN[table] else '-'} [0:0]\n" for c in chains]
        out += [f"-A {c} {r}\n" for c, rules in chains.items() for r in rules]
        return "".join(out) + "COMMIT\n"

    def nft_list_chains(self) -> str:
        out = []
        for family, tables in self.tables.items():
            for t, chains in tables.items():
                out.append(f"table {'ip' if family == 4 else 'ip6'} {t} {{\n")
                out += [f"\tchain {c} {{\n\t}}\n" for c in chains]
                out.append("}\n")
        return "".join(out)

    def restore(self, family: int, payload: str, flush: bool = False) -> Result:
        """Without --noflush each `*table` starts from empty built-in chains."""
        self.flushes = getattr(self, "flushes", 0) + flush
        state = copy.deepcopy(self.tables[family])
        table: dict[str, list[str]] | None = None
        tname = ""
        for n, line in enumerate(payload.splitlines(), 1):
            def fail(why: str) -> Result:
                return Result(2, "", f"iptables-restore v1.8.9 ({self.variant}): {why}\nError occurred at line: {n}\n")
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                if flush:
                    state[line[1:]] = {c: [] for c in BUILTIN[line[1:]]}
                table, tname = state[line[1:]], line[1:]
                continue
            if line == "COMMIT":
                for chain, rules in (table or {}).items():
                    for r in rules:
                        target = _target(r)
                        if target and target not in TARGETS and target not in table:  # type: ignore[operator]
                            return fail(f"Couldn't load target `{target}':No such file or directory")
                table = None
                continue
            assert table is not None, f"line outside a table: {line}"
            if line.startswith(":"):
                name = line[1:].split()[0]
                if name in BUILTIN[tname] and not flush:
                    return fail("built-in chain declared in --noflush mode")
                table[name] = []  # create, or flush in --noflush mode
                continue
            op, chain, *rest = line.split(" ", 2)
            spec = rest[0] if rest else ""
            if chain not in table:
                return fail(f"Chain '{chain}' does not exist")
            if op == "-A":
                table[chain].append(spec)
            elif op == "-I":
                pos, _, spec = spec.partition(" ")
                table[chain].insert(int(pos) - 1, spec)
            elif op == "-D":
                if spec not in table[chain]:
                    return fail("Bad rule (does a matching rule exist in that chain?)")
                table[chain].remove(spec)
            elif op == "-X":
                if table[chain] or any(_target(r) == chain for rules in table.values() for r in rules):
                    return fail(f"CHAIN_USER_DEL failed (Device or resource busy): chain {chain}")
                del table[chain]
            else:
                raise AssertionError(f"unexpected restore line {line}")
        self.tables[family] = state
        return Result(0, "", "")


def _target(rule: str) -> str | None:
    t = shlex.split(rule)
    return t[t.index("-j") + 1] if "-j" in t else None
