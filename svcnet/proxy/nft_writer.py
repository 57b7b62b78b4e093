"""Writing a computed `Ruleset` into the kernel: one `nft -f -` transaction per sync.

Full and partial syncs (kube-proxy's `needFullSync`):

* The first write of a process replaces both tables atomically
  (`add table` + `delete table` + the whole table), so nothing a previous run left
  behind survives and nothing depends on what we believe is programmed.
* Later full writes `flush table` (rules only: set elements, including the dynamic
  affinity sets, survive a flush), flush the shared maps, and re-add everything, so
  session affinity is not reset by the periodic full sync.
* A partial write sends only the difference against the last good ruleset: chains of
  the services whose `ServiceRules` changed (found by identity, then compared), and
  the map/set elements whose value changed. A sync with no changes writes nothing.

Stale chains are flushed in the transaction that stops using them and deleted in a
later write at least `STALE_CHAIN_DELAY` seconds afterwards: kernels before 6.2 keep
a reference from a just-deleted verdict-map element for a short while, and deleting
the chain in the same transaction fails with EBUSY (kube-proxy does the same).
Affinity sets are deleted at once (nothing but the flushed rules referenced them).

A failed write raises `NftError` with nft's stderr (read with LC_ALL=C so the
messages can be matched); the kernel is unchanged because the transaction is atomic,
and the last good ruleset stays the base for the next (full) write.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from svcnet.proxy.backend import BackendError, WriteStats
from svcnet.proxy.nft_ruleset import TABLE, FAMILY_NAMES, FamilyRuleset, NftSet, Ruleset, render_elements

log = logging.getLogger(__name__)

STALE_CHAIN_DELAY = 1.0  # seconds between flushing a chain and deleting it


class NftError(BackendError):
    """`nft` refused a transaction; `stderr` holds its (C-locale) explanation."""

    def __init__(self, message: str, stderr: str = "", returncode: int = 1) -> None:
        super().__init__(f"{message}: {stderr.strip()}" if stderr else message)
        self.stderr = stderr
        self.returncode = returncode

    def is_not_found(self) -> bool:
        return "No such file or directory" in self.stderr

    def already_exists(self) -> bool:
        return "File exists" in self.stderr

    def is_busy(self) -> bool:
        return "Device or resource busy" in self.stderr


@dataclass
class Transaction:
    """nft commands for one atomic `nft -f`, kept as text lines plus an op count."""

    lines: list[str] = field(default_factory=list)
    ops: int = 0

    def add(self, line: str, ops: int = 1) -> None:
        self.lines.append(line if line.endswith("\n") else line + "\n")
        self.ops += ops

    def text(self) -> str:
        return "".join(self.lines)

    def __bool__(self) -> bool:
        return self.ops > 0


Executor = Callable[[str], None]
Reader = Callable[[str], str]  # a read-only nft command -> its JSON output


@dataclass(frozen=True)
class KernelTable:
    """What a previous run left in one family's svcnet table (names only)."""

    family: int
    chains: frozenset[str]
    sets: dict[str, tuple[str, int | None]]  # name -> ("set" | "map", timeout seconds)


def read_nft_json(binary: str = "nft") -> Reader:
    def read(command: str) -> str:
        env = {**os.environ, "LC_ALL": "C"}
        proc = subprocess.run([binary, "-j", *command.split()], text=True, capture_output=True, env=env,
                              timeout=120)
        if proc.returncode != 0:
            raise NftError(f"{binary} -j {command} failed", proc.stderr, proc.returncode)
        return proc.stdout

    return read


def parse_kernel_table(family: int, outputs: list[str]) -> KernelTable | None:
    """Chains and sets of `table <family> svcnet` from `nft -j list chains|sets|maps`."""
    fam = FAMILY_NAMES[family]
    chains: set[str] = set()
    sets: dict[str, tuple[str, int | None]] = {}
    for out in outputs:
        for item in (json.loads(out) if out.strip() else {}).get("nftables", []):
            for kind in ("chain", "set", "map"):
                obj = item.get(kind)
                if obj and obj.get("table") == TABLE and obj.get("family") == fam:
                    if kind == "chain":
                        chains.add(obj["name"])
                    else:
                        sets[obj["name"]] = (kind, obj.get("timeout"))
    if not chains and not sets:
        return None
    return KernelTable(family, frozenset(chains), sets)


def run_nft(binary: str = "nft") -> Executor:
    """An executor that pipes a script into `nft -f -` in the C locale."""

    def execute(script: str) -> None:
        env = {**os.environ, "LC_ALL": "C"}  # error text is parsed: no translations
        try:
            proc = subprocess.run([binary, "-f", "-"], input=script, text=True, capture_output=True,
                                  env=env, timeout=600)
        except FileNotFoundError:
            raise NftError(f"cannot run {binary!r}: not installed (apt install nftables)") from None
        if proc.returncode != 0:
            raise NftError(f"{binary} -f - failed (exit {proc.returncode})", proc.stderr, proc.returncode)

    return execute


def default_executor(binary: str = "nft") -> Executor:
    """In-process libnftables when available (no fork/exec per sync), else `nft -f -`."""
    if binary == "nft":
        try:
            from svcnet.proxy.libnftables import LibNftables

            return LibNftables()
        except NftError as e:
            log.info("libnftables unavailable, using the nft binary: %s", e)
    return run_nft(binary)


class NftWriter:
    """Keeps the last good ruleset and turns the next one into a minimal transaction."""

    def __init__(
        self,
        binary: str = "nft",
        families: tuple[int, ...] = (4, 6),
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        reader: Reader | None = None,
    ) -> None:
        self.families = families
        self.execute = executor or default_executor(binary)
        # Reading what a previous run left lets a restart keep ClientIP affinity
        # (and reuse identical objects) instead of replacing the table.
        self.reader = reader if reader is not None or executor is not None else read_nft_json(binary)
        self._kernel: dict[int, KernelTable] = {}
        self._adopting = False
        self.clock = clock
        self.applied: Ruleset | None = None  # last ruleset the kernel accepted
        self._stale: dict[tuple[int, str], float] = {}  # (family, chain) -> flushed at
        self._next_stale: dict[tuple[int, str], float] = {}
        self._deleting: set[tuple[int, str]] = set()
        self.last_script = ""

    # -- public -------------------------------------------------------------------

    def write(self, ruleset: Ruleset, full: bool) -> WriteStats:
        start = self.clock()
        was_empty = self.applied is None
        if was_empty:
            self._kernel = self._read_kernel()
        tx = self.transaction(ruleset, full)
        if tx:
            self.last_script = tx.text()
            try:
                self.execute(self.last_script)  # raises NftError; self.applied stays the last good one
            except NftError:
                if self._adopting:  # the leftover table surprised us: replace it next time
                    log.warning("could not reuse the existing svcnet table; replacing it on retry")
                    self.reader = None
                raise
        self._commit(ruleset)
        return WriteStats(full=full or was_empty, ops=tx.ops, seconds=self.clock() - start)

    def _read_kernel(self) -> dict[int, KernelTable]:
        if self.reader is None:
            return {}
        found: dict[int, KernelTable] = {}
        for family in self.families:
            fam = FAMILY_NAMES[family]
            try:
                outputs = [self.reader(f"list {what} {fam}") for what in ("chains", "sets", "maps")]
                kt = parse_kernel_table(family, outputs)
            except (NftError, OSError, ValueError) as e:
                log.info("not reusing existing rules family=%s: %s", fam, e)
                continue
            if kt is not None:
                found[family] = kt
        return found

    def cleanup(self) -> list[str]:
        """Delete both svcnet tables (and nothing else); missing tables are fine.

        Returns what was removed (`table ip svcnet`, ...) when the tables could be
        listed first; the delete itself does not depend on that listing (`add` then
        `delete` in one transaction removes a table whether or not it existed)."""
        present = self._existing_tables()
        tx = Transaction()
        for family in self.families:
            fam = FAMILY_NAMES[family]
            tx.add(f"add table {fam} {TABLE}")
            tx.add(f"delete table {fam} {TABLE}")
        self.execute(tx.text())
        self.applied = None
        self._stale.clear()
        return [f"table {FAMILY_NAMES[f]} {TABLE}" for f in self.families if f in present]

    def _existing_tables(self) -> set[int]:
        if self.reader is None:
            return set()
        try:
            out = self.reader("list tables")
            items = (json.loads(out) if out.strip() else {}).get("nftables", [])
        except (NftError, OSError, ValueError) as e:
            log.debug("could not list nftables tables before cleanup: %s", e)
            return set()
        names = {FAMILY_NAMES[f]: f for f in self.families}
        return {names[t["family"]] for t in (i.get("table") for i in items)
                if t and t.get("name") == TABLE and t.get("family") in names}

    # -- building transactions ---------------------------------------------------------

    def transaction(self, ruleset: Ruleset, full: bool) -> Transaction:
        """The commands that turn the last good ruleset into `ruleset` (no side effects
        until `write` commits it)."""
        tx = Transaction()
        self._next_stale = dict(self._stale)
        self._deleting = set()
        self._adopting = False
        for table in ruleset.tables:
            old = self._applied_table(table.family)
            kernel = self._kernel.get(table.family) if self.applied is None else None
            if old is None and kernel is not None and self.reader is not None:
                self._adopt(tx, kernel, table)
            elif old is None:
                self._replace_table(tx, table)
            elif full or not self._same_fixed(old, table) or self._set_redefined(old, table):
                self._full(tx, old, table)
            else:
                self._partial(tx, old, table)
        for family in self.families:  # a family that is no longer wanted
            if self.applied is not None and self._applied_table(family) is not None and \
                    not any(t.family == family for t in ruleset.tables):
                tx.add(f"delete table {FAMILY_NAMES[family]} {TABLE}")
        return tx

    def _applied_table(self, family: int) -> FamilyRuleset | None:
        if self.applied is None:
            return None
        return next((t for t in self.applied.tables if t.family == family), None)

    @staticmethod
    def _same_fixed(a: FamilyRuleset, b: FamilyRuleset) -> bool:
        return (a.fixed_sets == b.fixed_sets and a.fixed_chains_first == b.fixed_chains_first
                and a.fixed_chains_last == b.fixed_chains_last)

    @staticmethod
    def _set_redefined(a: FamilyRuleset, b: FamilyRuleset) -> bool:
        """An affinity set kept its name but changed (a new timeout): nft cannot
        redefine a set in place, and deleting it needs its rules gone first, which
        the full path does in the right order."""
        for k in a.services.keys() & b.services.keys():
            sa, sb = a.services[k], b.services[k]
            if sa is not sb and sa.sets != sb.sets:
                old = {s.name: s for s in sa.sets}
                if any(s.name in old and old[s.name] != s for s in sb.sets):
                    return True
        return False

    def _replace_table(self, tx: Transaction, table: FamilyRuleset) -> None:
        fam = table.family_name
        tx.add(f"add table {fam} {TABLE}")
        tx.add(f"delete table {fam} {TABLE}")
        tx.add(table.render(), ops=1 + len(table.chains) + len(table.elements))
        for key in [k for k in self._next_stale if k[0] == table.family]:
            del self._next_stale[key]

    def _adopt(self, tx: Transaction, kernel: KernelTable, table: FamilyRuleset) -> None:
        """First write over a table a previous run left: like a full write, but the
        affinity sets whose definition still matches keep their clients."""
        self._adopting = True
        fam = table.family_name
        tx.add(f"add table {fam} {TABLE}")
        tx.add(f"flush table {fam} {TABLE}")
        for name, (kind, timeout) in kernel.sets.items():
            want = table.sets.get(name)
            if want is not None and name.startswith("affinity-") and want.timeout == timeout:
                continue
            tx.add(f"delete {kind} {fam} {TABLE} {name}")  # unreferenced after the flush
        tx.add(table.render(), ops=1 + len(table.chains) + len(table.elements))
        now = self.clock()
        for name in kernel.chains - table.chains.keys():
            self._next_stale.setdefault((table.family, name), now)

    def _full(self, tx: Transaction, old: FamilyRuleset, table: FamilyRuleset) -> None:
        fam = table.family_name
        tx.add(f"add table {fam} {TABLE}")
        tx.add(f"flush table {fam} {TABLE}")
        new_sets = table.sets
        for name, s in old.sets.items():
            if name in new_sets and new_sets[name] == s:
                if not name.startswith("affinity-"):
                    tx.add(f"flush {s.kind} {fam} {TABLE} {name}")
            else:  # gone, or redefined with another type: recreate
                tx.add(f"delete {s.kind} {fam} {TABLE} {name}")
        tx.add(table.render(), ops=1 + len(table.chains) + len(table.elements))
        now = self.clock()
        for name in old.chains:
            if name not in table.chains:
                self._next_stale.setdefault((table.family, name), now)
        self._delete_due_stale(tx, table, now)

    def _partial(self, tx: Transaction, old: FamilyRuleset, table: FamilyRuleset) -> None:
        fam = table.family_name
        prefix = f"{fam} {TABLE}"
        changed = [k for k in old.services.keys() | table.services.keys()
                   if old.services.get(k) is not table.services.get(k)]
        new_chains, new_sets = table.chains, table.sets
        add_chains: list[str] = []
        rewrite: list[str] = []
        flush: list[str] = []
        add_sets: list[NftSet] = []
        del_sets: list[NftSet] = []
        touched_keys: set[tuple[str, str]] = set()
        for k in changed:
            o, n = old.services.get(k), table.services.get(k)
            for c in n.chains if n else ():
                prev = old.chains.get(c.name)
                if prev is None:
                    add_chains.append(c.name)
                    rewrite.append(c.name)
                elif prev.rules != c.rules:
                    rewrite.append(c.name)
            for c in o.chains if o else ():
                if c.name not in new_chains:
                    flush.append(c.name)
            for s in n.sets if n else ():
                if s.name not in old.sets:
                    add_sets.append(s)
            for s in o.sets if o else ():
                if s.name not in new_sets:
                    del_sets.append(s)
            touched_keys.update((e[0], e[1]) for e in (o.elements if o else ()))
            touched_keys.update((e[0], e[1]) for e in (n.elements if n else ()))
        if old.fixed_elements != table.fixed_elements:
            touched_keys.update((e[0], e[1]) for e in (*old.fixed_elements, *table.fixed_elements))
        dels: dict[str, dict[str, str]] = {}
        adds: dict[str, dict[str, str]] = {}
        for key in touched_keys:
            a, b = old.elements.get(key), table.elements.get(key)
            va, vb = (a[0] if a else None), (b[0] if b else None)
            if va == vb:
                continue
            if va is not None:
                dels.setdefault(key[0], {})[key[1]] = va
            if vb is not None:
                adds.setdefault(key[0], {})[key[1]] = vb
        for s in add_sets:
            tx.add(f"add set {prefix} {s.name} {{ type {s.type}; flags {','.join(s.flags)}; timeout {s.timeout}s; }}")
        now = self.clock()
        for name in add_chains:
            tx.add(f"add chain {prefix} {name}")
            self._next_stale.pop((table.family, name), None)  # revived: it is empty already
        for name in rewrite:
            if name not in add_chains:
                tx.add(f"flush chain {prefix} {name}")
            for rule in new_chains[name].rules:
                tx.add(f"add rule {prefix} {name} {rule}")
        for line in render_elements(fam, dels, "delete"):
            tx.add(line, ops=0)
        tx.ops += sum(len(v) for v in dels.values())
        for line in render_elements(fam, adds, "add"):
            tx.add(line, ops=0)
        tx.ops += sum(len(v) for v in adds.values())
        for name in flush:
            tx.add(f"flush chain {prefix} {name}")
            self._next_stale.setdefault((table.family, name), now)
        for s in del_sets:
            tx.add(f"delete set {prefix} {s.name}")
        self._delete_due_stale(tx, table, now)

    def _delete_due_stale(self, tx: Transaction, table: FamilyRuleset, now: float) -> None:
        prefix = f"{table.family_name} {TABLE}"
        for (family, name), since in list(self._next_stale.items()):
            if family != table.family:
                continue
            if name in table.chains:
                del self._next_stale[(family, name)]
            elif now - since >= STALE_CHAIN_DELAY:
                tx.add(f"delete chain {prefix} {name}")
                self._deleting.add((family, name))

    def _commit(self, ruleset: Ruleset) -> None:
        """The transaction succeeded: adopt its ruleset and its stale-chain bookkeeping."""
        self._stale = self._next_stale
        for key in self._deleting:
            self._stale.pop(key, None)
        self.applied = ruleset

    def pending_stale(self) -> list[tuple[int, str]]:
        return sorted(self._stale)

