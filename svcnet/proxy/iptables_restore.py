"""Writing a computed iptables `Ruleset` into the kernel through `iptables-restore --noflush`.

Which iptables: `iptables -V` says `(nf_tables)` or `(legacy)`; rules are written with
the matching `iptables-nft-restore` / `iptables-legacy-restore` (and ip6tables-…),
because rules written through one backend are invisible to the other and a node
must not end up with kube-proxy-style rules split across both.

One `--noflush` payload per family per sync, with a `*filter` and a `*nat` section
(`--noflush`: declaring `:CHAIN` flushes just that chain; nothing else of the table
is touched, so other software's rules survive):

* Full write (first sync, after any failure, periodically): the kernel's SVCNET-
  chains and the jumps into them are read back first, so the write does not depend
  on what this process believes is programmed. Every wanted chain is declared and
  refilled, SVCNET- chains nobody wants any more are flushed and deleted (`-X`) in the
  same payload, and the jumps from the built-in chains are (re)inserted when they are
  missing or out of order. When nat and filter hold nothing but svcnet's rules, the
  tables are instead replaced whole by a restore without --noflush (see
  `exclusive_payload`: iptables-nft's --noflush path is quadratic).
* Partial write: only the chains of services whose `ServiceRules` changed (found by
  identity, then compared), plus the top-level chains (SVCNET-SERVICES, …). kube-proxy
  (KEP-3453) rewrites the top-level chains on every sync; here a top-level chain is
  touched only when its rules changed, and then by `-D`/`-I` of the changed rules.
  Measured at 10,000 services on iptables-nft 1.8.9: one service's chains 20–50 ms,
  the same plus a rewrite of SVCNET-SERVICES 0.9–2 s (iptables-nft's `--noflush`
  rule path is superlinear), `-I` of one rule 20 ms, `-D` of one rule 150 ms. Order
  within the top-level chains carries no meaning (their rules match disjoint
  destinations) except the NodePort jump, which stays last because new rules are
  inserted at the top. A sync with no changes runs nothing.

A failed restore raises `IptablesError` (a `BackendError`) with the stderr read under
LC_ALL=C, the failing payload line and an errno-like class. iptables-restore commits
a table only after parsing it whole, so the last good rules stay in place; the
writer forgets what it believed about that family, so the next write is full and
re-reads the kernel (the engine forces a full sync too).

python-iptables (libiptc) is not used to write: it reaches only the legacy backend
and building 10,000 services' rules through it took ~42 s here against ~1–2 s for
generating and restoring text. Nor to read back: libiptc listed 10,000 services'
chain names in ~0.37 s (plus ~0.5 s to import) against ~0.7 s for
`iptables-legacy-save -t nat`, but a full write also needs the built-in chains'
rules as text (exact specs to `-D` stale jumps, and other programs' rules that
forbid replacing a table whole), which iptables-save prints directly; one reader
for both backends' text beat a second, legacy-only code path for ~0.3 s per
(hourly) full sync.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from svcnet.proxy.backend import BackendError, WriteStats
from svcnet.proxy.iptables import JUMPS, NAT, PREFIX, TABLES, TOP_CHAINS, FamilyRuleset, Jump, Ruleset
from svcnet.proxy.model import ServicePortName

log = logging.getLogger(__name__)

ROUTE_LOCALNET = "/proc/sys/net/ipv4/conf/all/route_localnet"
# A top-level chain is rewritten whole when more than this share of it changed
# (one restore line per rule is then cheaper than thousands of -D lookups).
REWRITE_SHARE = 0.25
BUILTIN = {NAT: ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"), "filter": ("INPUT", "FORWARD", "OUTPUT")}


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


Executor = Callable[[Sequence[str], "str | None"], Result]


def run_command(argv: Sequence[str], stdin: str | None = None) -> Result:
    """Run a tool in the C locale (its error text is parsed) and capture its output."""
    env = {**os.environ, "LC_ALL": "C"}
    try:
        p = subprocess.run(list(argv), input=stdin, text=True, capture_output=True, env=env, timeout=600)
    except FileNotFoundError:
        raise IptablesError(f"cannot run {argv[0]!r}: not installed (apt install iptables)") from None
    return Result(p.returncode, p.stdout, p.stderr)


# -- errors -----------------------------------------------------------------------------------


class IptablesError(BackendError):
    """iptables(-restore) refused; `stderr` is its C-locale explanation, `line` the
    1-based payload line it names (when it names one)."""

    def __init__(self, message: str, stderr: str = "", returncode: int = 1, payload: str = "") -> None:
        self.stderr = stderr
        self.returncode = returncode
        m = re.search(r"line:? (\d+)", stderr)
        self.line = int(m.group(1)) if m else None
        lines = payload.splitlines()
        self.line_text = lines[self.line - 1] if self.line and 0 < self.line <= len(lines) else ""
        detail = stderr.strip().splitlines()[0] if stderr.strip() else ""
        where = f" (line {self.line}: {self.line_text[:200]})" if self.line_text else ""
        super().__init__(f"{message}: {detail}{where}" if detail else message)

    def is_lock_held(self) -> bool:
        """Another program holds the xtables lock (legacy backend); retry later."""
        return self.returncode == 4 or "xtables lock" in self.stderr

    def is_not_found(self) -> bool:
        s = self.stderr
        return any(t in s for t in ("does not exist", "No chain/target/match by that name",
                                    "No such file or directory", "Couldn't load target", "Bad rule"))

    def already_exists(self) -> bool:
        return "File exists" in self.stderr or "Chain already exists" in self.stderr

    def is_busy(self) -> bool:
        """A chain still referenced (deleting it) or in use."""
        return any(t in self.stderr for t in ("Device or resource busy", "Directory not empty", "Too many links"))


# -- which iptables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    """The iptables binaries of one backend ("nf_tables" or "legacy")."""

    variant: str

    def _name(self, family: int, tool: str) -> str:
        base = "iptables" if family == 4 else "ip6tables"
        suffix = "nft" if self.variant == "nf_tables" else "legacy"
        specific = f"{base}-{suffix}{tool}"
        return specific if shutil.which(specific) else f"{base}{tool}"

    def restore(self, family: int, flush: bool = False) -> list[str]:
        # -w: wait for the xtables lock (legacy; accepted and ignored by the nft variant)
        return [self._name(family, "-restore"), "-w", "5", *(() if flush else ("--noflush",))]

    def save(self, family: int, table: str) -> list[str]:
        return [self._name(family, "-save"), "-t", table]

    def list_chain(self, family: int, table: str, chain: str) -> list[str]:
        return [self._name(family, ""), "-w", "5", "-t", table, "-S", chain]


def detect_tools(execute: Executor = run_command, binary: str = "iptables") -> Tools:
    """The backend the host's `iptables` uses; old versions without a tag are legacy."""
    r = execute([binary, "-V"], None)
    if r.returncode != 0:
        raise IptablesError(f"{binary} -V failed", r.stderr, r.returncode)
    return Tools("nf_tables" if "nf_tables" in r.stdout else "legacy")


# -- what the kernel has ---------------------------------------------------------------------------


@dataclass
class KernelTable:
    """svcnet's footprint in one table: its chains and the jumps into them, and whether
    anything else lives there (then a write must never flush the table)."""

    chains: set[str] = field(default_factory=set)
    jumps: list[tuple[str, str]] = field(default_factory=list)  # (built-in chain, rule spec) in order
    foreign: bool = False  # other chains, other rules in built-in chains, or sets
    policies: dict[str, str] = field(default_factory=dict)  # built-in chain -> ACCEPT | DROP

    def jump_keys(self) -> list[tuple[str, str, str]]:
        return [_jump_key(chain, spec) for chain, spec in self.jumps]


def _jump_key(chain: str, spec: str) -> tuple[str, str, str]:
    target = spec.rsplit("-j ", 1)[-1].split()[0]
    m = re.search(r'--comment (?:"([^"]*)"|(\S+))', spec)
    return chain, target, (m.group(1) or m.group(2)) if m else ""


def parse_save(text: str) -> dict[str, KernelTable]:
    """Read svcnet's chains and jumps out of `iptables-save` / `iptables -S` text."""
    out: dict[str, KernelTable] = {}
    table = out.setdefault("", KernelTable())
    for line in text.splitlines():
        if line.startswith("*"):
            table = out.setdefault(line[1:].strip(), KernelTable())
        elif line.startswith(":"):
            name, policy = (line[1:].split() + ["-"])[:2]
            if name.startswith(PREFIX):
                table.chains.add(name)
            elif policy != "-":
                table.policies[name] = policy
            else:
                table.foreign = True
        elif line.startswith("-N "):
            name = line.split()[1]
            if name.startswith(PREFIX):
                table.chains.add(name)
            else:
                table.foreign = True
        elif line.startswith("-P "):
            _, chain, policy = line.split()[:3]
            table.policies[chain] = policy
        elif line.startswith("-A "):
            _, chain, spec = line.split(" ", 2)
            if chain.startswith(PREFIX):
                continue
            if f"-j {PREFIX}" in spec:
                table.jumps.append((chain, spec))
            else:
                table.foreign = True
    return out


def parse_nft_chains(text: str, family: int, prefix: str = PREFIX) -> dict[str, set[str]]:
    """table -> names of chains starting with `prefix`, from `nft list chains` or
    `nft list sets` (iptables-nft's tables are nftables tables `ip nat`, `ip6 filter`)."""
    want = "ip" if family == 4 else "ip6"
    out: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "table":
            current = out.setdefault(words[2], set()) if words[1] == want else None
        elif current is not None and len(words) >= 2 and words[0] in ("chain", "set", "map") \
                and words[1].startswith(prefix):
            current.add(words[1])
    return out


# -- the writer --------------------------------------------------------------------------------------


class RestoreWriter:
    """Keeps what each family last had accepted and turns the next ruleset into payloads."""

    def __init__(
        self,
        families: tuple[int, ...] = (4, 6),
        execute: Executor | None = None,
        tools: Tools | None = None,
        set_route_localnet: Callable[[], None] | None = None,
        always_rewrite_top: bool = False,
        exclusive_tables: bool = True,
    ) -> None:
        self.families = families
        self.execute = execute or run_command
        self._tools = tools
        self.set_route_localnet = set_route_localnet or _set_route_localnet
        self.always_rewrite_top = always_rewrite_top  # kube-proxy's KEP-3453 behaviour (for bench/)
        self.exclusive_tables = exclusive_tables
        self.applied: dict[int, FamilyRuleset] = {}
        self.last_payloads: dict[int, str] = {}

    @property
    def tools(self) -> Tools:
        if self._tools is None:
            self._tools = detect_tools(self.execute)
            log.info("iptables backend detected variant=%s", self._tools.variant)
        return self._tools

    # -- public --------------------------------------------------------------------------

    def write(self, ruleset: Ruleset, full: bool) -> WriteStats:
        start = time.monotonic()
        ops = 0
        was_full = full
        for table in ruleset.tables:
            old = self.applied.get(table.family)
            flush = False
            if full or old is None or not _same_frame(old, table):
                kernel = self.read_kernel(table.family)
                flush = self.exclusive_tables and not any(kt.foreign for kt in kernel.values())
                payload, n = (self.exclusive_payload if flush else self.full_payload)(table, kernel)
                was_full = True
            else:
                payload, n = self.partial_payload(old, table)
            if table.localhost_nodeports:
                self.set_route_localnet()
            if n:
                self._restore(table.family, payload, flush)
            self.applied[table.family] = table
            ops += n
        return WriteStats(full=was_full, ops=ops, seconds=time.monotonic() - start)

    def cleanup(self) -> list[str]:
        """Remove every SVCNET- chain and the jumps into them, in each backend that has
        tables here, and nothing else. Returns what was removed, one entry per table
        (`iptables-nft IPv4 nat: 12 SVCNET- chains, 3 jumps`)."""
        removed: list[str] = []
        if not shutil.which("iptables") and self._tools is None:
            log.info("no iptables installed: no iptables rules to remove")
            return removed
        variants = [self.tools]
        other = Tools("legacy" if self.tools.variant == "nf_tables" else "nf_tables")
        if other.variant == "nf_tables" or _legacy_tables_exist():
            variants.append(other)  # reading legacy tables that do not exist would create them
        errors: list[str] = []
        for tools in variants:
            for family in self.families:
                try:
                    kernel = self._read_save(tools, family)
                    payload = cleanup_payload(kernel)
                    if payload:
                        self._run_restore(tools, family, payload)
                        log.info("removed iptables rules variant=%s family=IPv%d", tools.variant, family)
                        tool = ("iptables" if family == 4 else "ip6tables") + \
                            ("-nft" if tools.variant == "nf_tables" else "-legacy")
                        removed.extend(
                            f"{tool} {name}: {len(kt.chains)} SVCNET- chains, {len(kt.jumps)} jumps"
                            for name, kt in kernel.items() if kt.chains or kt.jumps)
                except IptablesError as e:
                    if tools is self.tools:
                        errors.append(str(e))
                    else:
                        log.debug("cleanup of %s tables skipped: %s", tools.variant, e)
        self.applied.clear()
        if errors:
            raise IptablesError("cleanup failed: " + "; ".join(errors))
        return removed

    # -- reading the kernel ------------------------------------------------------------------

    def read_kernel(self, family: int) -> dict[str, KernelTable]:
        """svcnet's chains and jumps per table, as the kernel has them now."""
        tools = self.tools
        if tools.variant == "legacy" or not shutil.which("nft"):
            return self._read_save(tools, family)
        # nf_tables: `iptables-nft-save -t nat` of 10,000 services takes ~1.5 s; chain
        # names from `nft list chains` and the few built-in chains one by one are cheaper.
        r = self.execute(["nft", "list", "chains"], None)
        if r.returncode != 0:
            return self._read_save(tools, family)
        names = parse_nft_chains(r.stdout, family, "")
        sets = self.execute(["nft", "list", "sets"], None)
        with_sets = parse_nft_chains(sets.stdout, family, "") if sets.returncode == 0 else {}
        out = {}
        for table in TABLES:
            chains = names.get(table, set())
            kt = KernelTable(chains={c for c in chains if c.startswith(PREFIX)})
            kt.foreign = bool(with_sets.get(table)) or any(
                not c.startswith(PREFIX) and c not in BUILTIN[table] for c in chains)
            for chain in BUILTIN[table]:
                if chain not in chains:
                    continue
                r = self.execute(tools.list_chain(family, table, chain), None)
                if r.returncode == 0:
                    seen = parse_save(r.stdout)[""]
                    kt.jumps.extend(seen.jumps)
                    kt.policies.update(seen.policies)
                    kt.foreign |= seen.foreign
                else:
                    kt.foreign = True  # unreadable: assume the worst
            out[table] = kt
        return out

    def _read_save(self, tools: Tools, family: int) -> dict[str, KernelTable]:
        out = {}
        for table in TABLES:
            r = self.execute(tools.save(family, table), None)
            if r.returncode != 0:
                raise IptablesError(f"{tools.save(family, table)[0]} -t {table} failed", r.stderr, r.returncode)
            out[table] = parse_save(r.stdout).get(table, KernelTable())
        return out

    # -- payloads ----------------------------------------------------------------------------

    def full_payload(self, table: FamilyRuleset, kernel: dict[str, KernelTable]) -> tuple[str, int]:
        parts: list[str] = []
        ops = 0
        for name in TABLES:
            chains = table.chains[name]
            have = kernel.get(name, KernelTable())
            stale = sorted(c for c in have.chains if c not in chains)
            parts.append(f"*{name}\n")
            parts.extend(f":{c} - [0:0]\n" for c in chains)
            parts.extend(f":{c} - [0:0]\n" for c in stale)
            for c, rules in chains.items():
                head = f"-A {c} "
                parts.extend(f"{head}{r}\n" for r in rules)
                ops += len(rules)
            parts.extend(_jump_lines(table.jumps[name], have))
            parts.extend(f"-X {c}\n" for c in stale)
            parts.append("COMMIT\n")
            ops += len(chains) + len(stale)
        return "".join(parts), ops

    def exclusive_payload(self, table: FamilyRuleset, kernel: dict[str, KernelTable]) -> tuple[str, int]:
        """A full write for tables that hold nothing but svcnet's rules: restored without
        --noflush, so each table is replaced whole (built-in policies kept as read).

        Why: iptables-nft 1.8.9's --noflush path is quadratic in userspace (each chain
        it touches costs a lookup over every chain of the table): 3,000 services took
        4–6 s with --noflush and 1.0 s without, 10,000 services more than 7 minutes
        against ~2–4 s. The flushing restore is taken only when the read just made
        found no other chain, rule or set in nat and filter (a dedicated node or a lab
        namespace); a rule another program adds between that read and this write
        would be lost, which is why kube-proxy, sharing nodes with everyone, never
        flushes. Tables with anything else in them get the --noflush payload. The
        legacy backend gains too (10,000 services: 2.6 s --noflush, 1.3 s without,
        for the lean payload of bench/proxy_iptables.py)."""
        parts: list[str] = []
        ops = 0
        for name in TABLES:
            chains = table.chains[name]
            policies = kernel.get(name, KernelTable()).policies
            parts.append(f"*{name}\n")
            parts.extend(f":{b} {policies.get(b, 'ACCEPT')} [0:0]\n" for b in BUILTIN[name])
            parts.extend(f":{c} - [0:0]\n" for c in chains)
            for c, rules in chains.items():
                head = f"-A {c} "
                parts.extend(f"{head}{r}\n" for r in rules)
                ops += len(rules)
            parts.extend(f"-A {j.chain} {j.spec}\n" for j in table.jumps[name])
            parts.append("COMMIT\n")
            ops += len(chains)
        return "".join(parts), ops

    def partial_payload(self, old: FamilyRuleset, new: FamilyRuleset) -> tuple[str, int]:
        declare: dict[str, list[str]] = {t: [] for t in TABLES}
        rules: dict[str, list[str]] = {t: [] for t in TABLES}
        deletes: dict[str, list[str]] = {t: [] for t in TABLES}
        inserts: dict[str, list[str]] = {t: [] for t in TABLES}
        remove: dict[str, list[str]] = {t: [] for t in TABLES}
        if new.recomputed is not None and new.base_id == id(old):
            keys: Iterable[ServicePortName] = new.recomputed  # hashing 10,000 names costs ~20 ms
        else:
            keys = old.services.keys() | new.services.keys()
        for key in keys:
            o, n = old.services.get(key), new.services.get(key)
            if o is n:
                continue
            before = {c.name: c.rules for c in o.chains} if o else {}
            after = {c.name: c.rules for c in n.chains} if n else {}
            for name, body in after.items():
                if before.get(name) != body:
                    declare[NAT].append(name)
                    rules[NAT].extend(f"-A {name} {r}\n" for r in body)
            for name in before:
                if name not in after:
                    declare[NAT].append(name)  # flush, then delete once nothing refers to it
                    remove[NAT].append(name)
        for table, chains in TOP_CHAINS.items():
            for chain in chains:
                was, now = old.top[(table, chain)], new.top[(table, chain)]
                if was == now and not self.always_rewrite_top:
                    continue
                was_set = set(was)
                gone = was_set.difference(now)
                added = [r for r in now if r not in was_set]
                if self.always_rewrite_top or len(gone) + len(added) > max(1, len(now)) * REWRITE_SHARE + 8:
                    declare[table].append(chain)
                    rules[table].extend(f"-A {chain} {r}\n" for r in now)
                else:
                    deletes[table].extend(f"-D {chain} {r}\n" for r in was if r in gone)
                    # at the top: the NodePort jump at the end of SVCNET-SERVICES stays last
                    inserts[table].extend(f"-I {chain} 1 {r}\n" for r in reversed(added))
        parts: list[str] = []
        ops = 0
        for t in TABLES:
            count = len(declare[t]) + len(rules[t]) + len(deletes[t]) + len(inserts[t]) + len(remove[t])
            if not count:
                continue
            ops += count
            parts.append(f"*{t}\n")
            parts.extend(f":{c} - [0:0]\n" for c in declare[t])
            parts.extend(deletes[t])
            parts.extend(rules[t])
            parts.extend(inserts[t])
            parts.extend(f"-X {c}\n" for c in remove[t])
            parts.append("COMMIT\n")
        return "".join(parts), ops

    # -- running ------------------------------------------------------------------------------

    def _restore(self, family: int, payload: str, flush: bool = False) -> None:
        self.last_payloads[family] = payload
        try:
            self._run_restore(self.tools, family, payload, flush)
        except IptablesError:
            self.applied.pop(family, None)  # unknown now: the next write is full and re-reads
            raise

    def _run_restore(self, tools: Tools, family: int, payload: str, flush: bool = False) -> None:
        argv = tools.restore(family, flush)
        r = self.execute(argv, payload)
        if r.returncode != 0:
            raise IptablesError(f"{' '.join(argv)} failed (exit {r.returncode})", r.stderr, r.returncode, payload)


def _same_frame(a: FamilyRuleset, b: FamilyRuleset) -> bool:
    """A partial write needs the same fixed chains, jumps and NodePort tail."""
    return a.fixed == b.fixed and a.top_tail == b.top_tail and a.jumps == b.jumps and a.config == b.config \
        and a.large == b.large


def _jump_lines(wanted: tuple[Jump, ...], have: KernelTable) -> list[str]:
    """Delete and re-insert our jumps unless the kernel has exactly these, in order."""
    want_keys = [_jump_key(j.chain, j.spec) for j in wanted]
    if have.jump_keys() == want_keys:
        return []
    lines = [f"-D {chain} {spec}\n" for chain, spec in have.jumps]
    position: dict[str, int] = {}
    for j in wanted:
        position[j.chain] = position.get(j.chain, 0) + 1
        lines.append(f"-I {j.chain} {position[j.chain]} {j.spec}\n")
    return lines


def cleanup_payload(kernel: dict[str, KernelTable]) -> str:
    """Drop our jumps, flush and delete every SVCNET- chain; "" when there is nothing."""
    parts: list[str] = []
    for name in TABLES:
        kt = kernel.get(name)
        if kt is None or not (kt.chains or kt.jumps):
            continue
        chains = sorted(kt.chains)
        parts.append(f"*{name}\n")
        parts.extend(f":{c} - [0:0]\n" for c in chains)
        parts.extend(f"-D {chain} {spec}\n" for chain, spec in kt.jumps)
        parts.extend(f"-X {c}\n" for c in chains)
        parts.append("COMMIT\n")
    return "".join(parts)


def _legacy_tables_exist() -> bool:
    """Legacy tables appear in /proc once used; reading them otherwise would create them."""
    for path in ("/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"):
        try:
            with open(path) as f:
                if f.read().split():
                    return True
        except OSError:
            continue
    return False


def _set_route_localnet() -> None:
    """Localhost NodePorts: let 127.0.0.1 be routed to pods (IPv4 only)."""
    try:
        with open(ROUTE_LOCALNET) as f:
            if f.read().strip() == "1":
                return
        with open(ROUTE_LOCALNET, "w") as f:
            f.write("1\n")
        log.info("set net.ipv4.conf.all.route_localnet=1 for localhost NodePorts")
    except OSError as e:
        raise IptablesError(f"cannot set route_localnet for localhost NodePorts: {e}") from None
