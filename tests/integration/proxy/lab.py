"""A one-node lab for proxy integration tests, in network namespaces it always removes.

    ext (192.168.0.100) ──veth── node (192.168.0.2; 10.244.1.1 towards pods) ──veth── pod1 10.244.1.11
                                  runs `svcnet proxy`                           ──veth── pod2 10.244.1.12
                                                                                ──veth── pod3 10.244.1.13
                                                                                ──veth── client 10.244.1.20

Each backend pod runs echo_server.py (TCP 8080, UDP 8053) answering "<pod> <client-ip>".
The external namespace routes the service CIDR and 198.18.0.0/16 (external/LB IPs) to
the node. Locality is by `nodeName` in the slices: pod1 is on node-a (this node),
pod2 and pod3 claim node-b.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from helpers.netns import NetnsPool

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
PY = sys.executable
NODE_IP = "192.168.0.2"
EXT_IP = "192.168.0.100"
GATEWAY = "10.244.1.1"
PODS = {"pod1": "10.244.1.11", "pod2": "10.244.1.12", "pod3": "10.244.1.13"}
CLIENT_POD = "10.244.1.20"
# IPv6: the same shape, for dual-stack Services
NODE_IP6, EXT_IP6, GATEWAY6 = "fd00:168::2", "fd00:168::100", "fd00:244::1"
PODS6 = {"pod1": "fd00:244::11", "pod2": "fd00:244::12", "pod3": "fd00:244::13"}
CLIENT_POD6 = "fd00:244::20"


class ProxyLab:
    def __init__(self, pool: NetnsPool, workdir: Path) -> None:
        self.pool = pool
        self.workdir = workdir
        self.objects_file = workdir / "objects.yaml"
        self.log_file = workdir / "proxy.log"
        self.proxy: subprocess.Popen[Any] | None = None
        self.node = pool.netns("node")
        self.ext = pool.netns("ext")
        self.ns: dict[str, str] = {}
        pool.run(self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        pool.run(self.node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        node_ext, ext_dev = pool.veth(self.node, f"{NODE_IP}/24", self.ext, f"{EXT_IP}/24")
        pool.run(self.node, "ip", "-6", "addr", "add", f"{NODE_IP6}/64", "dev", node_ext, "nodad")
        pool.run(self.ext, "ip", "-6", "addr", "add", f"{EXT_IP6}/64", "dev", ext_dev, "nodad")
        pool.run(self.ext, "ip", "-6", "route", "add", "fd00:96::/112", "via", NODE_IP6)
        pool.run(self.node, "ip", "-6", "route", "add", "default", "via", EXT_IP6)
        for cidr in ("10.96.0.0/16", "198.18.0.0/16"):
            pool.run(self.ext, "ip", "route", "add", cidr, "via", NODE_IP)
        # A node has a default route; its own connections to Service IPs need one to
        # leave the routing decision that precedes DNAT in the output hook.
        pool.run(self.node, "ip", "route", "add", "default", "via", EXT_IP)
        for name, ip in [*PODS.items(), ("client", CLIENT_POD)]:
            ip6 = PODS6.get(name, CLIENT_POD6)
            ns = self.ns[name] = pool.netns(name)
            node_dev, pod_dev = pool.veth(self.node, f"{GATEWAY}/32", ns, f"{ip}/32")
            pool.run(self.node, "ip", "route", "add", f"{ip}/32", "dev", node_dev)
            pool.run(ns, "ip", "route", "add", GATEWAY, "dev", pod_dev)
            pool.run(ns, "ip", "route", "add", "default", "via", GATEWAY)
            pool.run(self.node, "ip", "-6", "addr", "add", f"{GATEWAY6}/128", "dev", node_dev, "nodad")
            pool.run(ns, "ip", "-6", "addr", "add", f"{ip6}/128", "dev", pod_dev, "nodad")
            pool.run(self.node, "ip", "-6", "route", "add", f"{ip6}/128", "dev", node_dev)
            pool.run(ns, "ip", "-6", "route", "add", GATEWAY6, "dev", pod_dev)
            pool.run(ns, "ip", "-6", "route", "add", "default", "via", GATEWAY6)
        self.servers = {}
        for name in PODS:
            p = pool.popen(self.ns[name], PY, str(HERE / "echo_server.py"), name, "8080", "8053",
                           stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            self.servers[name] = p
            p6 = pool.popen(self.ns[name], PY, str(HERE / "echo_server.py"), name, "8080", "8053", "::",
                            stdout=subprocess.PIPE, text=True)
            assert p6.stdout is not None and p6.stdout.readline().strip() == "ready"

    # -- objects and the proxy -------------------------------------------------------------

    def write_objects(self, objects: list[dict[str, Any]]) -> None:
        tmp = self.objects_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump_all(objects))
        os.replace(tmp, self.objects_file)  # atomic: the proxy never reads half a file

    def proxy_cmd(self, *extra: str) -> list[str]:
        return [PY, "-m", "svcnet", "proxy", "--objects", str(self.objects_file), "--hostname-override", "node-a",
                "--node-ip", f"{NODE_IP},{NODE_IP6}", "--cluster-cidr", "10.244.0.0/16,fd00:244::/64",
                "--service-cidr", "10.96.0.0/16,fd00:96::/112", *extra]

    def start_proxy(self, *extra: str) -> None:
        log = open(self.log_file, "a")
        self.proxy = self.pool.popen(self.node, *self.proxy_cmd("--min-sync-period", "100ms", *extra),
                                     stdout=log, stderr=log, cwd=str(ROOT))
        self.wait_synced(0)

    def syncs(self) -> int:
        return self.log_file.read_text().count("synced rules") if self.log_file.exists() else 0

    def wait_synced(self, before: int, timeout: float = 20) -> None:
        wait_for(lambda: self.syncs() > before, timeout, lambda: f"proxy did not sync:\n{self.log()}")

    def apply(self, objects: list[dict[str, Any]]) -> None:
        """Write objects and wait until the running proxy has synced them."""
        before = self.syncs()
        self.write_objects(objects)
        self.wait_synced(before)

    def once(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.pool.run(self.node, *self.proxy_cmd("--once", *extra), check=False)

    def log(self) -> str:
        return self.log_file.read_text()[-5000:] if self.log_file.exists() else ""

    def nft(self) -> str:
        return self.pool.run(self.node, "nft", "list", "ruleset", check=False).stdout

    # -- traffic --------------------------------------------------------------------------------

    def probe(self, where: str, proto: str, ip: str, port: int, count: int = 1, timeout: float = 5.0,
              sport: int = 0) -> list[list[str]]:
        ns = {"ext": self.ext, "node": self.node}.get(where) or self.ns[where]
        out = self.pool.run(ns, PY, str(HERE / "probe.py"), proto, ip, str(port), str(count), str(timeout),
                            str(sport), timeout=count * timeout + 30)
        result: list[list[str]] = json.loads(out.stdout)
        return result


def reached(results: list[list[str]]) -> set[str]:
    return {r[0] for r in results}


def sources(results: list[list[str]]) -> set[str]:
    return {r[1] for r in results if len(r) > 1}


def wait_for(cond: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(why())
