"""Removing what a state file lists, in the order that cannot strand anything:

1. processes: the recorded ones (pid *and* start time must match, so a recycled pid
   is left alone) and any process still running inside one of the recorded
   namespaces (a pod whose agent crashed). SIGTERM, a grace period, then SIGKILL,
   and a bounded wait until a SIGKILLed process is really gone. etcd members go
   last and one at a time, after their clients (apiservers, agents): a leader
   stopping hands leadership to a live peer first (etcd's Stop), which hangs past
   any grace when its peers are being stopped at the same moment.
2. links, newest first (a veth's peer may sit in a namespace we do not own).
3. namespaces, newest first (their routes, rules and conntrack entries go with them).
4. files, then directories (only if empty: we never remove what we did not write).
5. the state files themselves, last, so an interrupted teardown can be re-run.

Every step tolerates "already gone", which makes teardown idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from svcnet.lab.netns import Netns, NetnsError, delete_netns, netns_exists, netns_inode
from svcnet.lab.state import Record, StateFile, process_start_time

log = logging.getLogger(__name__)


@dataclass
class TeardownReport:
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _alive(pid: int, start_time: int) -> bool:
    st = process_start_time(pid)
    if st is None or (start_time and st != start_time):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


KILL_WAIT = 5.0  # after SIGKILL: only a task stuck in the kernel (D state) takes this long


def is_etcd(name: str) -> bool:
    """A recorded etcd member (the lab records them as `etcd-<namespace>`)."""
    return name.startswith("etcd-")


def processes_in_netns(inodes: set[int]) -> list[tuple[int, int]]:
    """(pid, start time) of every process whose network namespace is one of `inodes`."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            ino = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if ino in inodes:
            st = process_start_time(int(entry))
            if st is not None:
                found.append((int(entry), st))
    return found


async def stop_processes(targets: list[tuple[int, int, str]], grace: float,
                         report: TeardownReport | None = None) -> None:
    """SIGTERM each (pid, start time, label), wait up to `grace` seconds, then SIGKILL
    what is left and wait (at most KILL_WAIT) until it is gone."""
    live = [(p, s, n) for p, s, n in targets if _alive(p, s)]
    for pid, _, name in live:
        _signal(pid, signal.SIGTERM)
        log.debug("SIGTERM pid=%d name=%s", pid, name)
    live = await _wait_gone(live, grace)
    for pid, start, name in live:
        log.warning("pid %d (%s) ignored SIGTERM for %.0fs: SIGKILL", pid, name, grace)
        _signal(pid, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: a namespace or directory removed next may
    # still be in use until the kernel has finished the process.
    stuck = {pid for pid, _, _ in await _wait_gone(live, KILL_WAIT)}
    for pid, _, name in targets:
        if pid in stuck:
            log.error("pid %d (%s) still running %.0fs after SIGKILL", pid, name, KILL_WAIT)
            if report is not None:
                report.errors.append(f"process {name} (pid {pid}) survived SIGKILL")
        elif report is not None:
            report.removed.append(f"process {name} (pid {pid})")


async def _wait_gone(live: list[tuple[int, int, str]], timeout: float) -> list[tuple[int, int, str]]:
    """Poll until none of `live` runs or `timeout` passes; what still runs. (A pidfd
    would not help much: these are rarely our children, and the start time check
    is what guards against a recycled pid.)"""
    deadline = time.monotonic() + timeout
    live = [t for t in live if _alive(t[0], t[1])]
    while live and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        live = [t for t in live if _alive(t[0], t[1])]
    return live


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def teardown(state: StateFile, grace: float = 5.0, dry_run: bool = False,
                   keep: Callable[[Record], bool] | None = None) -> TeardownReport:
    """Remove every object `state` (and the files it includes) records, except those
    `keep` says stay (they are written back as the whole journal)."""
    report = TeardownReport()
    kept = [r for r in state.records() if keep(r)] if keep else []
    # 1. processes. A process being stopped may still be creating objects (an agent
    # setting up a pod while it gets SIGTERM) and journaling them: so stop, re-read
    # the journals, and repeat until a pass finds nothing new.
    by_kind: dict[str, list[Record]] = {}
    for _ in range(5):
        by_kind = {}
        for rec in state.all_records():
            if keep is None or not keep(rec):
                by_kind.setdefault(rec.kind, []).append(rec)
        targets = [(r.pid, r.start_time, r.name) for r in by_kind.get("process", [])]
        inodes = {ino for r in by_kind.get("netns", []) if (ino := netns_inode(r.name)) is not None}
        recorded = {p for p, _, _ in targets}
        targets += [(pid, st, "process in lab namespace") for pid, st in processes_in_netns(inodes)
                    if pid not in recorded]
        targets = [t for t in targets if _alive(t[0], t[1])]
        if not targets:
            break
        if dry_run:
            report.removed += [f"would stop process {n} (pid {p})" for p, _, n in targets]
            break
        # Clients first, all at once; then the etcd members one by one, so that each
        # stops while the others are still up to take over leadership.
        await stop_processes([t for t in targets if not is_etcd(t[2])], grace, report)
        for t in targets:
            if is_etcd(t[2]):
                await stop_processes([t], grace, report)

    # 2. links, newest first
    for rec in reversed(by_kind.get("link", [])):
        if rec.netns and not netns_exists(rec.netns):
            continue  # went with its namespace (or never existed)
        if dry_run:
            report.removed.append(f"would delete link {rec.name} in {rec.netns or 'host'}")
            continue
        try:
            async with Netns(rec.netns or None) as ns:
                if await ns.delete_link(rec.name):
                    report.removed.append(f"link {rec.name}")
        except (NetnsError, OSError) as e:
            if not (isinstance(e, NetnsError) and e.is_not_found()):
                report.errors.append(f"link {rec.name} in {rec.netns}: {e}")

    # 3. namespaces, newest first
    for rec in reversed(by_kind.get("netns", [])):
        if not netns_exists(rec.name):
            continue
        if dry_run:
            report.removed.append(f"would delete netns {rec.name}")
            continue
        try:
            if delete_netns(rec.name):
                report.removed.append(f"netns {rec.name}")
        except OSError as e:
            report.errors.append(f"netns {rec.name}: {e}")

    # 4. files, then directories (deepest first; only when empty)
    for rec in reversed(by_kind.get("file", [])):
        p = Path(rec.name)
        if p.is_file() or p.is_symlink():
            if dry_run:
                report.removed.append(f"would remove {p}")
                continue
            try:
                p.unlink()
                report.removed.append(f"file {p}")
            except FileNotFoundError:
                pass
            except OSError as e:
                report.errors.append(f"file {p}: {e}")
    for rec in sorted(by_kind.get("dir", []), key=lambda r: -len(Path(r.name).parts)):
        p = Path(rec.name)
        if p.is_dir() and not dry_run:
            try:
                p.rmdir()
                report.removed.append(f"dir {p}")
            except OSError as e:
                log.info("leaving directory %s: %s", p, e.strerror)

    for rec in reversed(by_kind.get("tree", [])):
        p = Path(rec.name)
        if p.is_dir():
            if dry_run:
                report.removed.append(f"would remove directory tree {p}")
                continue
            # The journal may live inside the tree: keep it until everything else is gone.
            _remove_tree(p, keep={state.path.resolve()} | {Path(r.name).resolve() for r in by_kind.get("include", [])})
            report.removed.append(f"tree {p}")

    # 5. the journals themselves
    if not dry_run and report.ok:
        for rec in by_kind.get("include", []):
            StateFile(rec.name).remove()
        if kept:
            state.rewrite(kept)
            return report
        state.remove()
        for rec in reversed(by_kind.get("tree", [])):
            shutil.rmtree(rec.name, ignore_errors=True)
    return report


def _remove_tree(root: Path, keep: set[Path]) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for f in filenames:
            p = Path(dirpath, f)
            if p.resolve() not in keep:
                p.unlink(missing_ok=True)
        for d in dirnames:
            try:
                Path(dirpath, d).rmdir()
            except OSError:
                pass  # holds a kept journal
