#!/usr/bin/env python3
"""Benchmark: `svcnet proxy` (nftables mode) against its floors, side by side.

1. Full sync of N services x 3 endpoints (N = 1,000 / 10,000 / 30,000): svcnet's
   sync (checkpoint the converted objects, compute the ruleset, render, one
   `nft -f`; the conversion at event time is shown next to it) against
   the floor, a raw `nft -f` of the leanest equivalent ruleset (one verdict map,
   one chain per service with chained numgen draws, one DNAT chain per endpoint;
   no masquerade, hairpin, reject or comments) loaded the same way.
2. One-service change at 10,000 services: from the EndpointSlice event to `nft`
   returning (tracker checkpoint, partial compute, delta, one transaction).
3. New TCP connections per second to a ClusterIP with 10 and 10,000 services
   loaded, against the direct pod IP and a no-rules floor, through a client ->
   node -> server chain of namespaces, with a small C epoll client
   (bench/proxy_conn.c, built here). The client counts as a pod (no masquerade):
   an off-cluster client would add SNAT port allocation (~25% here) to every
   variant that translates.

Everything runs in throwaway namespaces `svb<pid>-*`, removed on exit. Prints
figures and ratios. Bounded: each part has fixed run counts and durations.

    .venv/bin/python bench/proxy.py [--sizes 1000,10000,30000] [--runs 3] [--conn-seconds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svcnet.proxy.change_tracker import ChangeTracker  # noqa: E402
from svcnet.proxy.model import ProxyConfig, ProxyState  # noqa: E402
from svcnet.proxy.nft_ruleset import Ruleset  # noqa: E402
from svcnet.proxy.nft_writer import NftError, NftWriter  # noqa: E402
from svcnet.proxy.nftables import compute_family  # noqa: E402

PREFIX = f"svb{os.getpid() % 100000}"
CREATED: list[str] = []


def netns(role: str) -> str:
    name = f"{PREFIX}-{role}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    CREATED.append(name)
    sh(name, "ip", "link", "set", "lo", "up")
    return name


def sh(ns: str, *cmd: str, input: str | None = None) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, *cmd], input=input, text=True, capture_output=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


def cleanup() -> None:
    for ns in reversed(CREATED):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# -- objects -------------------------------------------------------------------------------


def svc_ip(i: int) -> str:
    return f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256 + 0}"


def ep_ips(i: int) -> list[str]:
    return [f"10.{200 + j}.{(i // 256) % 256}.{i % 256}" for j in range(3)]


def objects(n: int, special: int | None = None, special_eps: list[str] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        name = f"svc-{i}"
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench"},
                    "spec": {"clusterIP": svc_ip(i + 1), "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
        ips = special_eps if i == special and special_eps else ep_ips(i)
        out.append(slice_(name, ips))
    return out


def slice_(name: str, ips: list[str]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-a", "namespace": "bench", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-b"} for ip in ips]}


CONFIG = ProxyConfig(family=4, node_name="node-a", node_ips=("192.0.2.1",), cluster_cidrs=("10.200.0.0/14",),
                     service_cidrs=("10.96.0.0/12",))


def tracker_with(objs: list[dict[str, Any]]) -> ChangeTracker:
    t = ChangeTracker("node-a", (4,))
    for o in objs:
        (t.on_service_add if o["kind"] == "Service" else t.on_endpoint_slice_add)(o)
    return t


def lean_ruleset(n: int) -> str:
    """The floor: the same DNAT behaviour with nothing else (perf-floors' "noanon")."""
    lines = ["table ip svcnet {",
             "\tmap service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }"]
    elems = []
    for i in range(n):
        eps = ep_ips(i)
        for j, ip in enumerate(eps):
            lines.append(f"\tchain ep-{i}-{j} {{\n\t\tmeta l4proto tcp dnat to {ip}:8080\n\t}}")
        lines.append(f"\tchain svc-{i} {{\n\t\tnumgen random mod 3 0 goto ep-{i}-0\n"
                     f"\t\tnumgen random mod 2 0 goto ep-{i}-1\n\t\tgoto ep-{i}-2\n\t}}")
        elems.append(f"{svc_ip(i + 1)} . tcp . 80 : goto svc-{i}")
    lines.append("\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}")
    lines.append("\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n"
                 "\t\tjump services\n\t}")
    lines.append("\tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}")
    lines.append("}")
    for k in range(0, len(elems), 2000):
        lines.append(f"add element ip svcnet service-ips {{ {', '.join(elems[k:k + 2000])} }}")
    return "\n".join(lines) + "\n"


def nft_in(ns: str) -> Callable[[str], None]:
    def execute(script: str) -> None:
        out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                             capture_output=True, env={**os.environ, "LC_ALL": "C"})
        if out.returncode:
            raise NftError("nft -f - failed", out.stderr)
    return execute


# -- 1. full sync -----------------------------------------------------------------------------


def _cpu() -> float:
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def bench_full(sizes: list[int], runs: int) -> None:
    print("\n## Full sync, N services x 3 endpoints (median of runs; seconds)")
    print("events = converting the listed objects as they arrive (informer handlers, before the sync);"
          " sync = checkpoint + compute + render + one transaction;\nCPU = user+sys of python and nft,"
          " steadier than wall time on a shared host")
    print(f"{'N':>7} | {'floor nft -f':>12} | {'events':>7} | {'sync':>6} | {'compute':>8} | {'render':>7} |"
          f" {'nft load':>8} | {'ratio':>6} | {'floor CPU':>9} | {'sync CPU':>8} | {'CPU ratio':>9} |"
          f" {'incl. events':>12}")
    ns = netns("rules")
    m = statistics.median
    for n in sizes:
        objs = objects(n)
        lean = lean_ruleset(n)
        r: dict[str, list[float]] = {}
        for _ in range(runs):
            sh(ns, "nft", "flush", "ruleset")
            c0, t0 = _cpu(), time.perf_counter()
            nft_in(ns)(lean)
            r.setdefault("floor", []).append(time.perf_counter() - t0)
            r.setdefault("floor_cpu", []).append(_cpu() - c0)
            sh(ns, "nft", "flush", "ruleset")
            c0, t0 = _cpu(), time.perf_counter()
            t = tracker_with(objs)
            r.setdefault("events", []).append(time.perf_counter() - t0)
            r.setdefault("events_cpu", []).append(_cpu() - c0)
            c0, t0 = _cpu(), time.perf_counter()
            t.checkpoint()
            fr = compute_family(ProxyState(CONFIG, t.ports[4], t.endpoints[4]))
            t1 = time.perf_counter()
            scripts: list[str] = []
            NftWriter(families=(4,), executor=scripts.append).write(Ruleset((fr,)), True)  # text only
            t2 = time.perf_counter()
            nft_in(ns)(scripts[0])
            t3 = time.perf_counter()
            r.setdefault("compute", []).append(t1 - t0)
            r.setdefault("render", []).append(t2 - t1)
            r.setdefault("load", []).append(t3 - t2)
            r.setdefault("sync", []).append(t3 - t0)
            r.setdefault("sync_cpu", []).append(_cpu() - c0)
        fc = m(r["floor_cpu"])
        print(f"{n:>7} | {m(r['floor']):>12.3f} | {m(r['events']):>7.3f} | {m(r['sync']):>6.3f} |"
              f" {m(r['compute']):>8.3f} | {m(r['render']):>7.3f} | {m(r['load']):>8.3f} |"
              f" {m(r['sync']) / m(r['floor']):>5.2f}x | {fc:>9.3f} | {m(r['sync_cpu']):>8.3f} |"
              f" {m(r['sync_cpu']) / fc:>8.2f}x | {(m(r['sync_cpu']) + m(r['events_cpu'])) / fc:>11.2f}x")
    sh(ns, "nft", "flush", "ruleset")


# -- 2. one-service change ---------------------------------------------------------------------------


def bench_partial(n: int, runs: int) -> None:
    print(f"\n## One-service change at {n} services (EndpointSlice event -> rules in the kernel; ms)")
    ns = CREATED[0] if CREATED else netns("rules")
    sh(ns, "nft", "flush", "ruleset")
    # The proxy runs inside the node's namespace: so does this measurement.
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--partial-worker", str(n), str(runs)],
                         text=True, capture_output=True)
    sys.stdout.write(out.stdout)
    if out.returncode:
        print(out.stderr[-2000:])
    sh(ns, "nft", "flush", "ruleset")


def partial_worker(n: int, runs: int) -> None:
    from svcnet.proxy.libnftables import LibNftables
    from svcnet.proxy.nft_writer import run_nft

    objs = objects(n)
    t = tracker_with(objs)
    t.checkpoint()
    executors = {"libnftables in-process": LibNftables(), "nft -f - process": run_nft()}
    writer = NftWriter(families=(4,), executor=executors["libnftables in-process"])
    fr = compute_family(ProxyState(CONFIG, t.ports[4], t.endpoints[4]))
    writer.write(Ruleset((fr,)), True)
    target = f"svc-{n // 2}"
    import resource

    def cpu() -> float:  # this process and its finished children: user + system
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    results: dict[str, dict[str, list[float]]] = {k: {"total": [], "nft": [], "ops": [], "cpu": []}
                                                  for k in executors}
    for r in range(runs):
        for name, ex in executors.items():
            writer.execute = ex
            ips = [f"10.{210 + len(name) % 5}.{r}.{k + 1}" for k in range(3)]
            c0 = cpu()
            t0 = time.perf_counter()
            t.on_endpoint_slice_update({}, slice_(target, ips))
            changes = t.checkpoint()
            fr = compute_family(ProxyState(CONFIG, t.ports[4], t.endpoints[4]), fr, changes.services)
            t1 = time.perf_counter()
            stats = writer.write(Ruleset((fr,)), False)
            t2 = time.perf_counter()
            res = results[name]
            res["cpu"].append((cpu() - c0) * 1000)
            res["total"].append((t2 - t0) * 1000); res["nft"].append((t2 - t1) * 1000); res["ops"].append(stats.ops)
    m = statistics.median
    for name, res in results.items():
        print(f"{name:>24}: total {m(res['total']):6.1f} ms (python {m(res['total']) - m(res['nft']):5.1f} ms"
              f" + transaction {m(res['nft']):6.1f} ms), CPU {m(res['cpu']):5.1f} ms, {int(m(res['ops']))} ops;"
              f" vs target 100 ms: {m(res['total']) / 100:.2f}x")
    print("  floors measured here (perf-floors.md): fresh nft -f 173 ms, libnftables 137 ms, kube-proxy ~141 ms")


# -- 3. data path ------------------------------------------------------------------------------------


def bench_conn(seconds: float, counts: list[int], conn_bin: str, rounds: int, settle: float = 3.0) -> None:
    print(f"\n## New TCP connections/s ({seconds:.0f} s runs, 32 in flight, median of {rounds} rounds)")
    cli, node, srv = netns("cli"), netns("node"), netns("srv")
    for a, aip, b, bip in ((cli, "192.0.2.2/24", node, "192.0.2.1/24"), (node, "198.51.100.1/24", srv, "198.51.100.2/24")):
        na, nb = f"{PREFIX[-6:]}{a[-3:]}a", f"{PREFIX[-6:]}{b[-3:]}b"
        subprocess.run(["ip", "link", "add", na, "netns", a, "type", "veth", "peer", "name", nb, "netns", b], check=True)
        sh(a, "ip", "addr", "add", aip, "dev", na); sh(a, "ip", "link", "set", na, "up")
        sh(b, "ip", "addr", "add", bip, "dev", nb); sh(b, "ip", "link", "set", nb, "up")
    sh(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh(cli, "ip", "route", "add", "default", "via", "192.0.2.1")
    sh(srv, "ip", "route", "add", "default", "via", "198.51.100.1")
    for ip in ("198.19.250.1", "198.19.250.2", "198.19.250.3"):
        sh(srv, "ip", "addr", "add", f"{ip}/32", "dev", "lo")
    sh(node, "ip", "route", "add", "198.19.250.0/24", "via", "198.51.100.2")
    for k, v in (("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1"),
                 ("net.netfilter.nf_conntrack_tcp_timeout_close", "1"),
                 ("net.netfilter.nf_conntrack_tcp_timeout_fin_wait", "1")):
        subprocess.run(["ip", "netns", "exec", node, "sysctl", "-qw", f"{k}={v}"], capture_output=True)
    sh(cli, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
    server = subprocess.Popen(["ip", "netns", "exec", srv, "taskset", "-c", "1", conn_bin, "server", "8080"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        # Rulesets computed once; each round loads each in turn and measures it next
        # to a no-rules floor, so ratios come from the same few seconds of a noisy host.
        # The client plays a pod (its network is in the cluster CIDR), as in
        # perf-floors.md: no masquerade on either side, so the comparison is the rule
        # lookup and DNAT, not SNAT port allocation.
        pod_config = dataclasses.replace(CONFIG, cluster_cidrs=("192.0.2.0/24",))
        rulesets = {}
        for n in counts:
            t = tracker_with(objects(n, n // 2, ["198.19.250.1", "198.19.250.2", "198.19.250.3"]))
            t.checkpoint()
            rulesets[n] = (Ruleset((compute_family(ProxyState(pod_config, t.ports[4], t.endpoints[4])),)),
                           svc_ip(n // 2 + 1))

        def run(ip: str, port: str) -> float:
            subprocess.run(["ip", "netns", "exec", node, "conntrack", "-F"], capture_output=True)
            done, secs, failed = sh(cli, "taskset", "-c", "0", conn_bin, "client", ip, port, "32",
                                    str(seconds)).split()
            if int(failed):
                print(f"  warning: {failed} failed connections to {ip}:{port}")
            return int(done) / float(secs)

        rows: dict[str, list[float]] = {}
        for _ in range(rounds):
            sh(node, "nft", "flush", "ruleset")
            floor = run("198.19.250.1", "8080")
            rows.setdefault("floor", []).append(floor)
            cluster = {}
            for n in counts:
                sh(node, "nft", "flush", "ruleset")
                rs, cip = rulesets[n]
                NftWriter(families=(4,), executor=nft_in(node), reader=None).write(rs, True)
                time.sleep(settle)  # let the kernel finish freeing the previous ruleset (RCU)
                cluster[n] = run(cip, "80")
                direct = run("198.19.250.1", "8080")
                rows.setdefault(f"cluster {n}", []).append(cluster[n])
                rows.setdefault(f"direct {n}", []).append(direct)
                rows.setdefault(f"cluster/floor {n}", []).append(cluster[n] / floor)
                rows.setdefault(f"cluster/direct {n}", []).append(cluster[n] / direct)
            rows.setdefault("flat", []).append(cluster[counts[-1]] / cluster[counts[0]])
        m = statistics.median
        print(f"floor (no rules loaded, direct pod IP): {m(rows['floor']):.0f} conn/s")
        print(f"{'N':>7} | {'ClusterIP conn/s':>16} | {'direct pod IP conn/s':>20} | {'ClusterIP/direct':>16} |"
              f" {'ClusterIP/floor':>15}")
        for n in counts:
            print(f"{n:>7} | {m(rows[f'cluster {n}']):>16.0f} | {m(rows[f'direct {n}']):>20.0f} |"
                  f" {m(rows[f'cluster/direct {n}']):>15.2f}x | {m(rows[f'cluster/floor {n}']):>14.2f}x")
        print(f"ClusterIP at {counts[-1]} vs {counts[0]} services (median of per-round ratios): "
              f"{m(rows['flat']):.2f}x (target >= 0.95x: flat); rounds: "
              + ", ".join(f"{x:.2f}" for x in rows["flat"]))
    finally:
        server.kill()
        server.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,30000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partial-runs", type=int, default=10)
    ap.add_argument("--conn-seconds", type=float, default=3)
    ap.add_argument("--conn-rounds", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: full,partial,conn")
    ap.add_argument("--partial-worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.partial_worker:
        partial_worker(*args.partial_worker)
        return 0
    if os.geteuid() != 0:
        print("bench/proxy.py needs root (network namespaces)", file=sys.stderr)
        return 1
    skip = set(args.skip.split(","))
    tmp = tempfile.mkdtemp(prefix="svcnet-bench-")
    try:
        if "full" not in skip:
            bench_full([int(x) for x in args.sizes.split(",")], args.runs)
        if "partial" not in skip:
            bench_partial(10_000, args.partial_runs)
        if "conn" not in skip:
            conn_bin = os.path.join(tmp, "proxy_conn")
            subprocess.run(["cc", "-O2", "-o", conn_bin, str(Path(__file__).with_name("proxy_conn.c"))], check=True)
            bench_conn(args.conn_seconds, [10, 10_000], conn_bin, args.conn_rounds)
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
