#!/usr/bin/env python3
"""Benchmark: `svcnet dns` against unbound, side by side, each pinned to one core.

Zone: 10,000 ClusterIP Services (`svc-S.ns-N`, 100 namespaces x 100) with a named
port, served by svcnet from an --objects file and by unbound as static local-data
(the same A and SRV records). Query mix (reference/perf-floors.md, section 1): 80% A of
existing services, 10% SRV `_http._tcp.<svc>`, 10% search-path NXDOMAINs as a pod with
ndots:5 produces them.

svcnet runs twice: with its default UDP receive threads and with UDP on the uvloop
event loop (SVCNET_DNS_UDP_LOOP=asyncio), to show why the threads are the default.

Per server: one pass over the query file (cold QPS: svcnet computes each reply the
first time it sees a query), then dnsperf at full speed (max QPS), then at a fixed 10,000
QPS for latency (avg, p99 from dnsperf's per-query output). The servers run one
after the other under `taskset -c 1`, dnsperf under `taskset -c 0`. Prints a table and
the svcnet/unbound ratios. Everything runs on 127.0.0.1 and is cleaned up on exit.

    .venv/bin/python bench/dns.py [--duration 8] [--services 10000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
ZONE = "cluster.local"


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return int(port)


def services(n: int) -> list[tuple[str, str, str]]:
    per_ns = 100
    out = []
    for i in range(n):
        ns, s = f"ns-{i // per_ns}", f"svc-{i % per_ns}"
        ip = f"10.96.{(i >> 8) & 0xFF}.{i & 0xFF}" if i < 65536 else f"10.{97 + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}"
        out.append((ns, s, ip))
    return out


def write_objects(path: Path, svcs: list[tuple[str, str, str]]) -> None:
    items = []
    for ns in sorted({ns for ns, _, _ in svcs}):
        items.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for ns, name, ip in svcs:
        items.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                      "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": {"app": name},
                               "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def write_unbound(path: Path, port: int, svcs: list[tuple[str, str, str]], workdir: Path) -> None:
    lines = [
        "server:",
        "  interface: 127.0.0.1", f"  port: {port}", "  do-ip6: no", "  num-threads: 1",
        "  do-daemonize: no", '  username: ""', '  chroot: ""', f'  directory: "{workdir}"',
        f'  pidfile: "{workdir}/unbound.pid"', "  use-syslog: no", "  logfile: \"\"", "  verbosity: 0",
        "  access-control: 127.0.0.0/8 allow", '  module-config: "iterator"',
        "  so-rcvbuf: 4m", "  msg-cache-size: 64m", "  rrset-cache-size: 64m",
        f'  local-zone: "{ZONE}." static',
        f'  local-data: "{ZONE}. 5 IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 5"',
    ]
    for ns, name, ip in svcs:
        fq = f"{name}.{ns}.svc.{ZONE}."
        lines.append(f'  local-data: "{fq} 5 IN A {ip}"')
        lines.append(f'  local-data: "_http._tcp.{fq} 5 IN SRV 0 100 80 {fq}"')
    lines += ["remote-control:", "  control-enable: no"]
    path.write_text("\n".join(lines) + "\n")


def write_queries(path: Path, svcs: list[tuple[str, str, str]], count: int = 100_000) -> None:
    rnd = random.Random(42)
    nss = sorted({ns for ns, _, _ in svcs})
    out = []
    for _ in range(count):
        r = rnd.random()
        ns, name, _ = svcs[rnd.randrange(len(svcs))]
        if r < 0.8:
            out.append(f"{name}.{ns}.svc.{ZONE} A")
        elif r < 0.9:
            out.append(f"_http._tcp.{name}.{ns}.svc.{ZONE} SRV")
        else:  # ndots:5 search-path misses
            other = rnd.choice(nss)
            out.append(rnd.choice([
                f"{name}.{ns}.svc.{ZONE}.{other}.svc.{ZONE} A",
                f"api.example-{rnd.randrange(10)}.com.{other}.svc.{ZONE} A",
                f"svc-nope-{rnd.randrange(10)}.{other}.svc.{ZONE} A",
                f"{name}.{ns}.svc.{ZONE}.svc.{ZONE} AAAA",
            ]))
    path.write_text("\n".join(out) + "\n")


def query_once(port: int, name: str, timeout: float = 0.5) -> int | None:
    """Send one A query; the reply's rcode, or None without a reply."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    msg = struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(msg, ("127.0.0.1", port))
            data = s.recv(4096)
        except OSError:
            return None
    return data[3] & 0xF


def wait_ready(port: int, proc: subprocess.Popen[bytes], name: str, limit: float = 60) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if query_once(port, name) == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("server did not answer in time")


def dnsperf(port: int, queries: Path, duration: int, rate: int | None = None, once: bool = False) -> dict[str, float]:
    cmd = ["taskset", "-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
           "-T", "1", "-t", "2"]
    cmd += ["-n", "1"] if once else ["-l", str(duration)]
    if rate:
        cmd += ["-c", "4", "-q", "2000", "-Q", str(rate), "-v"]
    else:
        cmd += ["-c", "4", "-q", "200"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    out = res.stdout
    stats: dict[str, float] = {}
    lat: list[float] = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Queries per second:"):
            stats["qps"] = float(line.split(":")[1])
        elif line.startswith("Average Latency (s):"):
            stats["avg_ms"] = float(line.split(":")[1].split()[0]) * 1000
        elif line.startswith("Queries completed:"):
            stats["completed"] = float(line.split(":")[1].split()[0])
        elif line.startswith("Queries lost:"):
            stats["lost_pct"] = float(line.split("(")[1].rstrip("%)"))
        elif rate and line.startswith(">"):
            try:
                lat.append(float(line.split()[-1]))
            except ValueError:
                pass
    if lat:
        lat.sort()
        stats["p50_ms"] = lat[len(lat) // 2] * 1000
        stats["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    if "qps" not in stats:
        raise RuntimeError(f"dnsperf failed: {res.stderr.strip() or out[-500:]}")
    return stats


def _cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies from /proc/stat, for the steal share of a run."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


def _steal_pct(before: tuple[int, int]) -> float:
    after = _cpu_times()
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total else 0.0


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_server(name: str, cmd: list[str], port: int, queries: Path, duration: int,
               probe: str, log: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    with open(log, "wb") as logf:
        proc = subprocess.Popen(["taskset", "-c", "1", *cmd], stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})})
    try:
        t0 = time.time()
        wait_ready(port, proc, probe)
        started = time.time() - t0
        # One pass over the query file first: svcnet computes a reply the first time a
        # query is seen and remembers its bytes, so this is the cold figure; the runs
        # after it measure the steady state a long-running server is in.
        cold = dnsperf(port, queries, duration, once=True)
        steal0 = _cpu_times()
        cpu0 = cpu_seconds(proc.pid)
        top = dnsperf(port, queries, duration)
        cpu = cpu_seconds(proc.pid) - cpu0
        lat = dnsperf(port, queries, duration, rate=10_000)
        return {"cold_qps": cold["qps"], "qps": top["qps"], "qps_per_cpu": top.get("completed", 0.0) / cpu if cpu > 0 else 0.0,
                "cpu_pct": 100.0 * cpu / duration, "lost_pct": top.get("lost_pct", 0.0), "avg_ms": lat.get("avg_ms", 0.0),
                "p50_ms": lat.get("p50_ms", 0.0), "p99_ms": lat.get("p99_ms", 0.0),
                "rate_qps": lat["qps"], "rate_lost_pct": lat.get("lost_pct", 0.0),
                "rss_mb": rss_mb(proc.pid), "startup_s": started, "steal_pct": _steal_pct(steal0)}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per dnsperf run (default 8)")
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=1, help="alternate the servers this many times")
    args = ap.parse_args()
    for tool in ("dnsperf", "unbound", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench/dns.py: skipped: {tool} is not installed")
            return 0
    if (os.cpu_count() or 1) < 2:
        print("bench/dns.py: needs 2 cores (server and client pinned apart)")
        return 0
    svcs = services(args.services)
    probe = f"{svcs[0][1]}.{svcs[0][0]}.svc.{ZONE}"
    results: dict[str, list[dict[str, float]]] = {"svcnet dns": [], "svcnet uvloop": [], "unbound": []}
    with tempfile.TemporaryDirectory(prefix="svcnet-dnsbench-") as tmp:
        work = Path(tmp)
        objects, queries = work / "objects.json", work / "queries.txt"
        write_objects(objects, svcs)
        write_queries(queries, svcs)
        for rnd in range(args.rounds):
            sport, aport, uport = free_port(), free_port(), free_port()
            write_unbound(work / "unbound.conf", uport, svcs, work)

            def svcnet_cmd(port: int) -> list[str]:
                return [PY, "-m", "svcnet", "dns", "--objects", str(objects), "--listen", f"127.0.0.1:{port}",
                        "--upstream", "127.0.0.1:9"]

            unbound_cmd = ["unbound", "-d", "-c", str(work / "unbound.conf")]
            runs = [("svcnet dns", svcnet_cmd(sport), sport, {"SVCNET_DNS_UDP_LOOP": "thread"}),
                    ("svcnet uvloop", svcnet_cmd(aport), aport, {"SVCNET_DNS_UDP_LOOP": "asyncio"}),
                    ("unbound", unbound_cmd, uport, {})]
            for name, cmd, port, env in runs:
                print(f"round {rnd + 1}: {name} ...", flush=True)
                results[name].append(run_server(name, cmd, port, queries, args.duration, probe,
                                                work / f"{name.replace(' ', '-')}.log", env))
    med = {k: {f: sorted(r[f] for r in v)[len(v) // 2] for f in v[0]} for k, v in results.items()}
    print()
    print(f"host load average at the end: {os.getloadavg()[0]:.2f} (other work on these 2 cores skews every figure; "
          "compare the ratios)")
    print(f"{args.services} services in {len({ns for ns, _, _ in svcs})} namespaces; "
          "mix 80% A / 10% SRV / 10% NXDOMAIN; server on cpu 1, dnsperf on cpu 0")
    hdr = f"{'server':<14} {'cold QPS':>9} {'max QPS':>10} {'lost%':>6} {'@10k avg ms':>12} {'p50 ms':>7} {'p99 ms':>7} {'@10k QPS':>9} {'RSS MB':>7} {'start s':>8} {'steal%':>7} {'CPU%':>5} {'QPS/CPU-s':>10}"
    print(hdr)
    print("-" * len(hdr))
    for name, m in med.items():
        print(f"{name:<14} {m['cold_qps']:>9,.0f} {m['qps']:>10,.0f} {m['lost_pct']:>6.2f} {m['avg_ms']:>12.3f} {m['p50_ms']:>7.3f} "
              f"{m['p99_ms']:>7.3f} {m['rate_qps']:>9,.0f} {m['rss_mb']:>7.1f} {m['startup_s']:>8.1f} {m['steal_pct']:>7.1f} {m['cpu_pct']:>5.0f} {m['qps_per_cpu']:>10,.0f}")
    s, u = med["svcnet dns"], med["unbound"]

    def round_ratios(name: str) -> list[float]:
        return [x["qps"] / y["qps"] for x, y in zip(results[name], results["unbound"]) if y["qps"]]

    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2] if xs else 0.0

    thread_r, uv_r = round_ratios("svcnet dns"), round_ratios("svcnet uvloop")
    cpu_r = [x["qps_per_cpu"] / y["qps_per_cpu"] for x, y in zip(results["svcnet dns"], results["unbound"])
             if y["qps_per_cpu"]]
    print()
    print(f"QPS ratio svcnet/unbound, median of per-round ratios: {median(thread_r):.2f} (target >= 0.90) "
          f"rounds: {', '.join(f'{r:.2f}' for r in thread_r)}")
    print(f"  with UDP on uvloop instead of the receive thread: {median(uv_r):.2f} "
          f"rounds: {', '.join(f'{r:.2f}' for r in uv_r)}")
    print(f"  per server CPU-second (robust when other work shares the core): {median(cpu_r):.2f} "
          f"rounds: {', '.join(f'{r:.2f}' for r in cpu_r)}")
    print(f"p99 at 10,000 QPS: svcnet {s['p99_ms']:.2f} ms (target <= 3 ms), unbound {u['p99_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
