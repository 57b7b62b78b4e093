"""Benchmark `svcnet apiserver` on etcd side by side with SQLite: create throughput, list
latency at 10,000 Services, and write-to-watch-event delay (p50/p99) with 100 watchers.

Uses bench/apiserver.py's measuring functions unchanged; only the server is started
with `--storage etcd://…` against a throwaway etcd (1 member, or 3 with --members 3)
on free loopback ports. The floor for the etcd rows is etcd itself: raw txn creates
through the same JSON gateway with the same concurrency, and raw put → watch delay.

    .venv/bin/python bench/apiserver_etcd.py [--services 10000] [--watchers 100] [--writes 200]
                                             [--members 1] [--backends sqlite,etcd]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apiserver import (  # noqa: E402
    NS, TABLE, bench_session, create_many, percentile, start_server, timed_get, watch_delay,
)
from integration.controlplane.apiserver_process import ApiServer  # noqa: E402

from svcnet.controlplane.storage.etcd_process import EtcdCluster, EtcdNotFound, etcd_binary  # noqa: E402


async def measure(args: argparse.Namespace, server: ApiServer) -> dict[str, float]:
    out: dict[str, float] = {}
    async with bench_session(server, args.watchers) as session:
        base = server.server
        seconds = await create_many(session, base, args.services, args.concurrency)
        out["creates/s"] = args.services / seconds
        for label, url, accept in [
            ("list JSON ms", f"{base}/api/v1/namespaces/{NS}/services", "application/json"),
            ("list Table ms", f"{base}/api/v1/namespaces/{NS}/services", TABLE),
            ("list limit=500 ms", f"{base}/api/v1/namespaces/{NS}/services?limit=500", "application/json"),
        ]:
            runs = [await timed_get(session, url, accept) for _ in range(5)]
            out[label] = statistics.median(r[0] for r in runs) * 1000
        delays, misses = await watch_delay(session, base, args.watchers, args.writes)
        out["watch p50 ms"] = percentile(delays, 50) * 1000
        out["watch p99 ms"] = percentile(delays, 99) * 1000
        out["watch missed"] = misses
    return out


async def etcd_floor(cluster: EtcdCluster, n: int, concurrency: int) -> dict[str, float]:
    """Raw etcd through the gateway: guarded creates (txn MOD==0 + put of a ~1 KiB value,
    like a Service) with the same concurrency, and put → watch event delay."""
    ep = f"http://{cluster.endpoints[0]}"
    value = base64.b64encode(b"x" * 1024).decode()
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as s:
        queue = list(range(n))

        async def worker() -> None:
            while queue:
                i = queue.pop()
                key = base64.b64encode(f"/bench-floor/{i}".encode()).decode()
                async with s.post(f"{ep}/v3/kv/txn", json={
                        "compare": [{"result": "EQUAL", "target": "MOD", "key": key, "mod_revision": 0}],
                        "success": [{"request_put": {"key": key, "value": value}}]}) as r:
                    assert (await r.json()).get("succeeded"), "floor create failed"

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        out["creates/s"] = n / (time.perf_counter() - t0)
        wkey = base64.b64encode(b"/bench-floor-watch/").decode()
        wend = base64.b64encode(b"/bench-floor-watch0").decode()
        delays: list[float] = []
        async with s.post(f"{ep}/v3/watch", json={"create_request": {"key": wkey, "range_end": wend}},
                          timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
            await resp.content.readline()  # created
            for i in range(200):
                key = base64.b64encode(f"/bench-floor-watch/{i}".encode()).decode()
                t0 = time.perf_counter()
                async with s.post(f"{ep}/v3/kv/put", json={"key": key, "value": value}) as r:
                    await r.read()
                line = await resp.content.readline()
                assert json.loads(line)["result"].get("events")
                delays.append(time.perf_counter() - t0)
        out["watch p50 ms"] = percentile(delays, 50) * 1000
        out["watch p99 ms"] = percentile(delays, 99) * 1000
    return out


def run_backend(args: argparse.Namespace, name: str, cluster: EtcdCluster | None) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix=f"svcnet-bench-{name}-"))
    extra = [] if cluster is None else ["--storage", cluster.url, "--etcd-prefix", "/bench"]
    server: ApiServer | None = None
    try:
        server = start_server(workdir, extra)
        return asyncio.run(asyncio.wait_for(measure(args, server), args.timeout))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--members", type=int, default=1, choices=(1, 3))
    parser.add_argument("--backends", default="sqlite,etcd")
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    try:
        etcd_binary()
    except EtcdNotFound as err:
        print(f"skipping the etcd rows: {err}")
        backends = [b for b in backends if b != "etcd"]
    results: dict[str, dict[str, float]] = {}
    etcd_dir = Path(tempfile.mkdtemp(prefix="svcnet-bench-etcd-"))
    try:
        if "sqlite" in backends:
            print("== sqlite", flush=True)
            results["sqlite"] = run_backend(args, "sqlite", None)
        if "etcd" in backends:
            with EtcdCluster(etcd_dir, members=args.members) as cluster:
                print(f"== etcd ({args.members} member{'s' if args.members > 1 else ''}, "
                      f"etcd {cluster.endpoints[0]})", flush=True)
                results["etcd"] = run_backend(args, "etcd", cluster)
                results["etcd floor"] = asyncio.run(etcd_floor(cluster, min(args.services, 5000),
                                                               args.concurrency))
    finally:
        shutil.rmtree(etcd_dir, ignore_errors=True)

    cols = list(results)
    rows = ["creates/s", "list JSON ms", "list Table ms", "list limit=500 ms", "watch p50 ms",
            "watch p99 ms", "watch missed"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{args.services} Services, {args.concurrency} creates in flight, {args.watchers} watchers, "
          f"{args.writes} watched writes; {os.cpu_count()} CPUs, load average {load} (figures are "
          "only comparable on a quiet machine)")
    print(f"{'':20s}" + "".join(f"{c:>14s}" for c in cols)
          + ("   etcd/sqlite" if {"etcd", "sqlite"} <= set(cols) else ""))
    for row in rows:
        line = f"{row:20s}"
        for c in cols:
            v = results[c].get(row)
            line += f"{v:14.1f}" if v is not None else f"{'-':>14s}"
        if {"etcd", "sqlite"} <= set(cols) and results["sqlite"].get(row):
            line += f"   {results['etcd'][row] / results['sqlite'][row]:10.2f}x"
        print(line)
    if "etcd floor" in results:
        print(f"svcnet on etcd vs raw etcd creates: "
              f"{results['etcd']['creates/s'] / results['etcd floor']['creates/s'] * 100:.0f}% of the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
