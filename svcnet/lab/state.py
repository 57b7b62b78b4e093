"""The state file: every object a lab (or a node agent) creates, written down
*before* it is created, so that `down` removes exactly that — after a clean run, a
crash, or a half-finished `up` — and nothing matched only by a name pattern
(mininet #877 deleted other people's bridges; containerlab #1978 could not clean a
lab whose file was gone).

The file is a journal: one JSON object per line, appended and fsync'd. Writing the
record first means a crash between the two steps leaves a record for an object
that may not exist, which teardown treats as already gone; the opposite order
could leave an object nobody knows about. A torn last line (a crash mid-write) is
ignored when reading.

Record kinds:
    netns    a network namespace (its links, routes, rules and conntrack go with it)
    link     an interface in a namespace (deleted first: a veth peer may live elsewhere)
    process  a pid with its start time (so a recycled pid is never signalled)
    file/dir something written to disk (/etc/netns/<ns>/resolv.conf); a dir is
             removed only when empty
    tree     a directory the creator made fresh and owns whole (the lab's run
             directory with logs and the apiserver's data): removed recursively
    include  another state file (each node agent keeps its own for its pods)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

KINDS = ("netns", "link", "process", "file", "dir", "tree", "include")


@dataclass(frozen=True)
class Record:
    kind: str
    name: str  # netns name, link name, path, or the process's role
    netns: str = ""  # for a link: the namespace it lives in
    pid: int = 0
    start_time: int = 0  # /proc/PID/stat field 22, in clock ticks since boot
    owner: str = ""  # who created it: "lab", "node/<name>", "pod/<ns>/<name>"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown state record kind {self.kind!r}")

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in ("", 0)}, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        return cls(**{k: d[k] for k in ("kind", "name", "netns", "pid", "start_time", "owner") if k in d})


def process_start_time(pid: int) -> int | None:
    """A process's start time from /proc (None when it is gone): with the pid it
    identifies one process for its whole life, as pidfds do."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])  # field 22 overall; fields[0] is field 3


class StateFile:
    """An append-only journal of created objects at `path`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def record(self, rec: Record) -> Record:
        """Append `rec` durably; call it *before* creating the object."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (rec.to_json() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return rec

    def record_process(self, name: str, pid: int, owner: str = "") -> Record:
        """Record a process that was just started (its pid exists only after the start)."""
        return self.record(Record("process", name, pid=pid, start_time=process_start_time(pid) or 0,
                                  owner=owner))

    def records(self) -> list[Record]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(Record.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, ValueError) as e:
                if i == len(lines) - 1:
                    log.warning("ignoring torn last line of %s (a crash mid-write)", self.path)
                else:
                    log.error("skipping unreadable line %d of %s: %s", i + 1, self.path, e)
        return out

    def all_records(self, _seen: set[Path] | None = None) -> Iterator[Record]:
        """Records of this file and, depth first, of every file it includes."""
        seen = _seen if _seen is not None else set()
        me = self.path.resolve()
        if me in seen:
            return
        seen.add(me)
        for rec in self.records():
            if rec.kind == "include":
                yield from StateFile(rec.name).all_records(seen)
            yield rec

    def rewrite(self, records: list[Record]) -> None:
        """Replace the journal with `records` (atomically: a crash keeps the old one)."""
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, "".join(r.to_json() + "\n" for r in records).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
