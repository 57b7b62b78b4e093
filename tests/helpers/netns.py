"""Network namespaces for tests: unique names, veth pairs, always removed.

    with NetnsPool() as pool:
        node = pool.netns("node")             # svt-<pid>-<n>-node
        pod = pool.netns("pod")
        pool.veth(node, "10.244.0.1/24", pod, "10.244.0.2/24")
        pool.run(pod, "ip", "route", "add", "default", "via", "10.244.0.1")

Everything a pool created is removed on exit, also when the test failed: deleting a
namespace removes its links, rules and conntrack entries with it, and processes
started through `pool.popen` are killed first.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from typing import Any

_counter = itertools.count()


class NetnsPool:
    def __init__(self, prefix: str = "svt") -> None:
        self.prefix = f"{prefix}{os.getpid() % 100000}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> "NetnsPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self, role: str) -> str:
        name = f"{self.prefix}-{next(_counter)}-{role}"[:40]
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        return name

    def veth(self, ns_a: str, addr_a: str | None, ns_b: str, addr_b: str | None) -> tuple[str, str]:
        n = next(_counter)
        a, b = f"vt{os.getpid() % 10000}a{n}"[:15], f"vt{os.getpid() % 10000}b{n}"[:15]
        subprocess.run(["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b,
                        "netns", ns_b], check=True)
        for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
            if addr:
                self.run(ns, "ip", "addr", "add", addr, "dev", dev)
            self.run(ns, "ip", "link", "set", dev, "up")
        return a, b

    def run(self, ns: str, *cmd: str, check: bool = True, input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check, text=True,
                              capture_output=True, input=input, timeout=timeout)

    def popen(self, ns: str, *cmd: str, **kw: Any) -> subprocess.Popen[Any]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        self.namespaces.clear()
