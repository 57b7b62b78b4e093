#!/usr/bin/env python3
"""Benchmark: `svcnet proxy --proxy-mode iptables` against its floors, side by side.

1. Full sync of N services x 3 endpoints (N = 1,000 / 10,000): svcnet's whole path
   (convert objects, compute, read the kernel's SVCNET- chains, render, one
   `iptables-restore --noflush` per family) against the floor, a raw restore of the
   leanest equivalent payload (SERVICES -> SVC -> SEP with DNAT; no comments,
   masquerade, filter rules or jumps), loaded into an empty namespace both the way
   perf-floors.md measured it (plain restore, which flushes the table) and with
   `--noflush` (what a proxy sharing the table with other software must use).
   Both iptables backends: nf_tables and legacy.
2. One-service change at 10,000 services: EndpointSlice event -> rules in the
   kernel (checkpoint, partial compute, payload of only the changed chains, one
   restore), and the same with kube-proxy's KEP-3453 behaviour (top-level chains
   always rewritten), against a raw `--noflush` restore of just the changed chains.
3. New TCP connections per second to a ClusterIP with 10 and 10,000 services
   loaded, against the direct pod IP (client -> node -> server namespaces, the C
   client of bench/proxy_conn.c).

Everything runs in throwaway namespaces `svbi<pid>-*`, removed on exit; every load
has a time limit. Prints figures and ratios.

    .venv/bin/python bench/proxy_iptables.py [--sizes 1000,10000] [--runs 3] [--limit 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svcnet.proxy.iptables import Ruleset, compute_family  # noqa: E402
from svcnet.proxy.iptables_restore import KernelTable, RestoreWriter, Tools, run_command  # noqa: E402
from svcnet.proxy.model import ProxyState  # noqa: E402

_spec = importlib.util.spec_from_file_location("nft_bench", Path(__file__).with_name("proxy.py"))
assert _spec and _spec.loader
nftb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nftb)  # objects(), slice_(), tracker_with(), svc_ip(), ep_ips(): same workload

PREFIX = f"svbi{os.getpid() % 100000}"
CREATED: list[str] = []
CONFIG = dataclasses.replace(nftb.CONFIG, nodeport_addresses=("0.0.0.0/0",))  # iptables mode's default
m = statistics.median


def netns(role: str) -> str:
    name = f"{PREFIX}-{role}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    CREATED.append(name)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    return name


def drop_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    if name in CREATED:
        CREATED.remove(name)


def run_in(ns: str, argv: list[str], stdin: str | None = None, limit: float = 600) -> float:
    """Run argv in ns; seconds taken, or +inf when it hit the limit."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, text=True, capture_output=True,
                           timeout=limit, env={**os.environ, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        return float("inf")
    if p.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()[:500]}")
    return time.perf_counter() - t0


def lean_payload(n: int) -> str:
    """The floor: the same DNAT behaviour and nothing else (perf-floors' iptables shape)."""
    decl, rules = [":SVCNET-SERVICES - [0:0]"], []
    for i in range(n):
        decl.append(f":SVC-{i} - [0:0]")
        rules.append(f"-A SVCNET-SERVICES -d {nftb.svc_ip(i + 1)}/32 -p tcp -m tcp --dport 80 -j SVC-{i}")
        for j, ip in enumerate(nftb.ep_ips(i)):
            decl.append(f":SEP-{i}-{j} - [0:0]")
            draw = ("-m statistic --mode random --probability 0.3333333333 ",
                    "-m statistic --mode random --probability 0.5000000000 ", "")[j]
            rules.append(f"-A SVC-{i} {draw}-j SEP-{i}-{j}")
            rules.append(f"-A SEP-{i}-{j} -p tcp -m tcp -j DNAT --to-destination {ip}:8080")
    return "*nat\n" + "\n".join(decl + rules) + "\nCOMMIT\n"


def in_ns_executor(ns: str, limit: float) -> Any:
    def execute(argv: Any, stdin: str | None) -> Any:
        return run_command(["ip", "netns", "exec", ns, "timeout", str(int(limit)), *argv], stdin)
    return execute


def fmt(x: float) -> str:
    return f">{ARGS.limit:.0f}" if x == float("inf") else f"{x:.3f}"


# -- 1. full sync -----------------------------------------------------------------------------------


def bench_full(sizes: list[int], runs: int, variants: list[str]) -> None:
    print("\n## Full sync, N services x 3 endpoints (median; seconds; empty namespace each run)")
    print("  svcnet = exclusive tables (nothing else in nat/filter: replaced whole, no --noflush);"
          " shared = a foreign rule in filter INPUT forces --noflush")
    print(f"{'backend':>9} {'N':>6} | {'floor restore':>13} | {'floor --noflush':>15} | {'svcnet':>8} |"
          f" {'python':>7} | {'read':>6} | {'restore':>8} | {'vs floor':>8} | {'shared':>8} | {'vs noflush floor':>16}")
    for variant in variants:
        tools = Tools(variant)
        restore = tools.restore(4)[0]
        for n in sizes:
            objs = nftb.objects(n)
            lean = lean_payload(n)
            floor, floor_nf, total, py, read, load, shared = [], [], [], [], [], [], []
            for _ in range(runs if n <= 3000 else 1):
                ns = netns("full")
                floor.append(run_in(ns, [restore], lean, ARGS.limit))
                drop_netns(ns)
                ns = netns("full")
                floor_nf.append(run_in(ns, [restore, "--noflush"], lean, ARGS.limit))
                drop_netns(ns)
                ns = netns("full")
                t = nftb.tracker_with(objs)
                writer = RestoreWriter(families=(4,), execute=in_ns_executor(ns, ARGS.limit), tools=tools,
                                       set_route_localnet=lambda: None)
                t0 = time.perf_counter()
                t.checkpoint()
                fr = compute_family(ProxyState(CONFIG, t.ports[4], t.endpoints[4]))
                t1 = time.perf_counter()
                kernel = writer.read_kernel(4)
                t2 = time.perf_counter()
                # the writer's own choice (RestoreWriter.write), timed in parts
                flush = not any(k.foreign for k in kernel.values())
                payload, _ = (writer.exclusive_payload if flush else writer.full_payload)(fr, kernel)
                t3 = time.perf_counter()
                secs = run_in(ns, tools.restore(4, flush), payload, ARGS.limit)
                t4 = time.perf_counter()
                drop_netns(ns)
                py.append((t1 - t0) + (t3 - t2)); read.append(t2 - t1); load.append(secs)
                total.append(py[-1] + read[-1] + secs if secs != float("inf") else secs)
                del t4
                if n <= 3000 or ARGS.shared_big:
                    ns = netns("full")
                    run_in(ns, [tools._name(4, ""), "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT"])
                    t = nftb.tracker_with(objs)
                    writer = RestoreWriter(families=(4,), execute=in_ns_executor(ns, ARGS.limit), tools=tools,
                                           set_route_localnet=lambda: None)
                    t0 = time.perf_counter()
                    t.checkpoint()
                    fr = compute_family(ProxyState(CONFIG, t.ports[4], t.endpoints[4]))
                    try:
                        writer.write(Ruleset((fr,)), True)
                        shared.append(time.perf_counter() - t0)
                    except Exception:
                        shared.append(float("inf"))
                    drop_netns(ns)
            ratio = m(total) / m(floor)
            sh = m(shared) if shared else float("nan")
            ratio_nf = sh / m(floor_nf) if shared and m(floor_nf) != float("inf") else float("nan")
            print(f"{variant:>9} {n:>6} | {fmt(m(floor)):>13} | {fmt(m(floor_nf)):>15} | {fmt(m(total)):>8} |"
                  f" {m(py):>7.3f} | {m(read):>6.3f} | {fmt(m(load)):>8} | {ratio:>7.2f}x |"
                  f" {fmt(sh) if shared else '-':>8} | {ratio_nf:>15.2f}x")


# -- 2. one-service change ----------------------------------------------------------------------------


def bench_partial(n: int, runs: int, variants: list[str]) -> None:
    print(f"\n## One-service change at {n} services (EndpointSlice event -> rules in the kernel; ms, median"
          f" of {runs})")
    for variant in variants:
        tools = Tools(variant)
        ns = netns("partial")
        try:
            objs = nftb.objects(n)
            t = nftb.tracker_with(objs)
            t.checkpoint()
            fr = compute_family(ProxyState(CONFIG, t.ports[4], t.endpoints[4]))
            # Set-up only: load the full payload with a plain (flushing) restore into the
            # empty namespace, which is the same end state as a full write and faster.
            writer = RestoreWriter(families=(4,), execute=in_ns_executor(ns, ARGS.limit), tools=tools,
                                   set_route_localnet=lambda: None)
            payload, _ = writer.full_payload(fr, {"nat": KernelTable(), "filter": KernelTable()})
            run_in(ns, [tools.restore(4)[0]], payload, ARGS.limit)
            writer.applied[4] = fr
            target = f"svc-{n // 2}"
            res: dict[str, list[float]] = {"svcnet": [], "kep3453": [], "floor": [], "ops": []}
            for r in range(runs):
                for mode in ("svcnet", "kep3453"):
                    writer.always_rewrite_top = mode == "kep3453"
                    ips = [f"10.{220 + (mode == 'kep3453')}.{r}.{k + 1}" for k in range(3)]
                    t0 = time.perf_counter()
                    t.on_endpoint_slice_update({}, nftb.slice_(target, ips))
                    changes = t.checkpoint()
                    fr = compute_family(ProxyState(CONFIG, t.ports[4], t.endpoints[4]), fr, changes.services)
                    stats = writer.write(Ruleset((fr,)), False)
                    res[mode].append((time.perf_counter() - t0) * 1000)
                    if mode == "svcnet":
                        res["ops"].append(stats.ops)
                        # the floor: the very same changed chains, raw
                        res["floor"].append(run_in(ns, tools.restore(4), writer.last_payloads[4]) * 1000)
            print(f"  {variant:>9}: svcnet {m(res['svcnet']):7.1f} ms ({int(m(res['ops']))} lines) | raw --noflush"
                  f" of the changed chains {m(res['floor']):7.1f} ms | ratio {m(res['svcnet']) / m(res['floor']):.2f}x"
                  f" | KEP-3453 (top-level chains rewritten) {m(res['kep3453']):7.1f} ms"
                  f" ({m(res['kep3453']) / m(res['svcnet']):.1f}x svcnet's)")
        finally:
            drop_netns(ns)
    print("  floors measured here (perf-floors.md): iptables-nft-restore --noflush 68 ms, legacy 474 ms")


# -- 3. data path ---------------------------------------------------------------------------------------


def bench_conn(seconds: float, counts: list[int], conn_bin: str, rounds: int) -> None:
    print(f"\n## New TCP connections/s, iptables-nft ({seconds:.0f} s runs, 32 in flight, median of {rounds})")
    cli, node, srv = netns("cli"), netns("node"), netns("srv")

    def sh(ns: str, *cmd: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, text=True, capture_output=True).stdout

    for a, aip, b, bip in ((cli, "192.0.2.2/24", node, "192.0.2.1/24"),
                           (node, "198.51.100.1/24", srv, "198.51.100.2/24")):
        na, nb = f"{PREFIX[-6:]}{a[-3:]}a", f"{PREFIX[-6:]}{b[-3:]}b"
        subprocess.run(["ip", "link", "add", na, "netns", a, "type", "veth", "peer", "name", nb, "netns", b],
                       check=True)
        sh(a, "ip", "addr", "add", aip, "dev", na); sh(a, "ip", "link", "set", na, "up")
        sh(b, "ip", "addr", "add", bip, "dev", nb); sh(b, "ip", "link", "set", nb, "up")
    sh(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh(cli, "ip", "route", "add", "default", "via", "192.0.2.1")
    sh(srv, "ip", "route", "add", "default", "via", "198.51.100.1")
    for ip in ("198.19.250.1", "198.19.250.2", "198.19.250.3"):
        sh(srv, "ip", "addr", "add", f"{ip}/32", "dev", "lo")
    sh(node, "ip", "route", "add", "198.19.250.0/24", "via", "198.51.100.2")
    for k in ("time_wait", "close", "fin_wait"):
        subprocess.run(["ip", "netns", "exec", node, "sysctl", "-qw",
                        f"net.netfilter.nf_conntrack_tcp_timeout_{k}=1"], capture_output=True)
    sh(cli, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
    server = subprocess.Popen(["ip", "netns", "exec", srv, "taskset", "-c", "1", conn_bin, "server", "8080"],
                              stdout=subprocess.PIPE, text=True)
    tools = Tools("nf_tables")
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

        def rate(ip: str, port: str) -> float:
            subprocess.run(["ip", "netns", "exec", node, "conntrack", "-F"], capture_output=True)
            done, secs, _ = sh(cli, "taskset", "-c", "0", conn_bin, "client", ip, port, "32", str(seconds)).split()
            return int(done) / float(secs)

        floor = [rate("198.19.250.1", "8080") for _ in range(rounds)]
        results: dict[int, dict[str, list[float]]] = {}
        for n in counts:
            special = n // 2
            t = nftb.tracker_with(nftb.objects(n, special, ["198.19.250.1", "198.19.250.2", "198.19.250.3"]))
            t.checkpoint()
            cfg = dataclasses.replace(CONFIG, node_ips=("192.0.2.1",))
            fr = compute_family(ProxyState(cfg, t.ports[4], t.endpoints[4]))
            w = RestoreWriter(families=(4,), execute=in_ns_executor(node, ARGS.limit), tools=tools,
                              set_route_localnet=lambda: None)
            payload, _ = w.full_payload(fr, {"nat": KernelTable(), "filter": KernelTable()})
            # set-up: a flushing load replaces the previous N's rules; the same end state as a full write
            run_in(node, [tools.restore(4)[0]], payload, ARGS.limit)
            r = results.setdefault(n, {"cluster": [], "direct": []})
            for _ in range(rounds):
                r["cluster"].append(rate(nftb.svc_ip(special + 1), "80"))
                r["direct"].append(rate("198.19.250.1", "8080"))
        print(f"floor (no rules loaded, direct pod IP): {m(floor):.0f} conn/s")
        print(f"{'N':>7} | {'ClusterIP conn/s':>16} | {'direct pod IP':>13} | {'ClusterIP/direct':>16} |"
              f" {'ClusterIP/floor':>15}")
        for n, r in results.items():
            print(f"{n:>7} | {m(r['cluster']):>16.0f} | {m(r['direct']):>13.0f} |"
                  f" {m(r['cluster']) / m(r['direct']):>15.2f}x | {m(r['cluster']) / m(floor):>14.2f}x")
        lo, hi = results[counts[0]], results[counts[-1]]
        print(f"ClusterIP at {counts[-1]} vs {counts[0]} services: {m(hi['cluster']) / m(lo['cluster']):.2f}x"
              " (iptables walks SVCNET-SERVICES linearly; perf-floors: iptables-nft 0.24x of the floor at 10k)")
    finally:
        server.kill()
        server.wait()


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partial-runs", type=int, default=5)
    ap.add_argument("--partial-size", type=int, default=10_000)
    ap.add_argument("--backends", default="nf_tables,legacy")
    ap.add_argument("--limit", type=float, default=300, help="seconds before one load counts as too slow")
    ap.add_argument("--shared-big", action="store_true",
                    help="also time the --noflush (shared tables) full write above 3,000 services (minutes on nft)")
    ap.add_argument("--conn-seconds", type=float, default=3)
    ap.add_argument("--conn-rounds", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: full,partial,conn")
    ARGS = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/proxy_iptables.py needs root (network namespaces)", file=sys.stderr)
        return 1
    skip = set(ARGS.skip.split(","))
    variants = ARGS.backends.split(",")
    tmp = tempfile.mkdtemp(prefix="svcnet-bench-")
    try:
        if "full" not in skip:
            bench_full([int(x) for x in ARGS.sizes.split(",")], ARGS.runs, variants)
        if "partial" not in skip:
            bench_partial(ARGS.partial_size, ARGS.partial_runs, variants)
        if "conn" not in skip:
            conn_bin = os.path.join(tmp, "proxy_conn")
            subprocess.run(["cc", "-O2", "-o", conn_bin, str(Path(__file__).with_name("proxy_conn.c"))], check=True)
            bench_conn(ARGS.conn_seconds, [10, ARGS.partial_size], conn_bin, ARGS.conn_rounds)
    finally:
        for ns in list(CREATED):
            drop_netns(ns)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
