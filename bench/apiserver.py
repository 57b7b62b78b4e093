"""Benchmark `svcnet apiserver`: create throughput, list latency at 10,000 Services, and the
delay from a write to its watch event with 100 concurrent watchers.

Starts the real server as a subprocess (HTTPS, SQLite) in a temporary data dir, drives
it over aiohttp with the admin token, prints figures, and removes everything. Bounded:
each phase has a fixed amount of work and an overall timeout.

    .venv/bin/python bench/apiserver.py [--services 10000] [--watchers 100] [--writes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from integration.controlplane.apiserver_process import ApiServer  # noqa: E402

NS = "bench"
WATCH_NS = "bench-watch"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def service(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": {"bench": "1", **labels}},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def start_server(workdir: Path, extra: Sequence[str] = ()) -> ApiServer:
    """`svcnet apiserver` on a free loopback port with its data in `workdir` (the same
    launcher as the integration tests); `extra` adds flags (e.g. `--storage etcd://…`)."""
    server = ApiServer(data_dir=workdir / "data", kubeconfig=workdir / "kubeconfig",
                       cache_dir=workdir / "cache", log=workdir / "apiserver.log", extra_args=tuple(extra))
    server.start()
    return server


async def create_many(session: aiohttp.ClientSession, base: str, n: int, concurrency: int) -> float:
    """Create n Services with `concurrency` requests in flight; returns seconds."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            async with session.post(f"{base}/api/v1/namespaces/{NS}/services", json=service(f"svc-{i:05d}")) as r:
                if r.status != 201:
                    raise SystemExit(f"create failed: {r.status} {await r.text()}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def timed_get(session: aiohttp.ClientSession, url: str, accept: str = "application/json"
                    ) -> tuple[float, float, int]:
    """(seconds to the full body, seconds to decode it client-side, item count)."""
    start = time.perf_counter()
    async with session.get(url, headers={"Accept": accept}) as r:
        body = await r.read()
    elapsed = time.perf_counter() - start
    t0 = time.perf_counter()
    doc = json.loads(body)
    decode = time.perf_counter() - t0
    return elapsed, decode, len(doc.get("items") or doc.get("rows") or [])


async def watch_delay(session: aiohttp.ClientSession, base: str, watchers: int, writes: int
                      ) -> tuple[list[float], int]:
    """Open `watchers` watches, then create `writes` Services one by one; each watcher records
    when it saw each ADDED event. Returns delays (s) from issuing the write, and misses."""
    async with session.post(f"{base}/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                               "metadata": {"name": WATCH_NS}}) as r:
        assert r.status == 201, await r.text()
    async with session.get(f"{base}/api/v1/namespaces/{WATCH_NS}/services") as r:
        rv = (await r.json())["metadata"]["resourceVersion"]
    issued: dict[str, float] = {}
    seen: list[dict[str, float]] = [{} for _ in range(watchers)]
    ready = asyncio.Event()
    opened = 0

    async def watch(idx: int) -> None:
        nonlocal opened
        url = f"{base}/api/v1/namespaces/{WATCH_NS}/services?watch=true&resourceVersion={rv}&timeoutSeconds=120"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
            opened += 1
            if opened == watchers:
                ready.set()
            async for line in resp.content:
                now = time.perf_counter()
                event = json.loads(line)
                name = event["object"]["metadata"]["name"]
                seen[idx][name] = now
                if len(seen[idx]) == writes:
                    return

    tasks = [asyncio.create_task(watch(i)) for i in range(watchers)]
    await asyncio.wait_for(ready.wait(), 60)
    await asyncio.sleep(0.5)  # let the server register the last subscriptions (headers precede it)
    for i in range(writes):
        name = f"w-{i:04d}"
        issued[name] = time.perf_counter()
        async with session.post(f"{base}/api/v1/namespaces/{WATCH_NS}/services", json=service(name)) as r:
            assert r.status == 201, await r.text()
    done, pending = await asyncio.wait(tasks, timeout=60)
    for t in pending:
        t.cancel()
    delays = [seen_at[name] - issued[name] for seen_at in seen for name in seen_at if name in issued]
    misses = watchers * writes - len(delays)
    return delays, misses


@contextlib.asynccontextmanager
async def bench_session(server: ApiServer, watchers: int) -> AsyncIterator[aiohttp.ClientSession]:
    """An admin session with room for `watchers` streams, after creating namespace NS."""
    conn = aiohttp.TCPConnector(ssl=server.ssl_context(), limit=watchers + 64)
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
        async with session.post(f"{server.server}/api/v1/namespaces", json={
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}) as r:
            assert r.status == 201, await r.text()
        yield session


async def run(args: argparse.Namespace, server: ApiServer) -> None:
    async with bench_session(server, args.watchers) as session:
        base = server.server
        print(f"== create: {args.services} Services, {args.concurrency} in flight")
        seconds = await create_many(session, base, args.services, args.concurrency)
        print(f"   {args.services / seconds:8.0f} creates/s   ({seconds:.1f} s total, "
              f"{seconds / args.services * 1000:.2f} ms per create amortised)")

        print(f"== list latency with {args.services} Services (5 runs each)")
        for label, url, accept in [
            ("list JSON, all", f"{base}/api/v1/namespaces/{NS}/services", "application/json"),
            ("list Table (kubectl get)", f"{base}/api/v1/namespaces/{NS}/services", TABLE),
            ("list page limit=500", f"{base}/api/v1/namespaces/{NS}/services?limit=500", "application/json"),
            ("list labelSelector, all", f"{base}/api/v1/namespaces/{NS}/services?labelSelector=bench%3D1",
             "application/json"),
        ]:
            runs = [await timed_get(session, url, accept) for _ in range(5)]
            lat = [r[0] for r in runs]
            print(f"   {label:28s} p50 {statistics.median(lat) * 1000:7.1f} ms  max {max(lat) * 1000:7.1f} ms"
                  f"  items {runs[0][2]:6d}  (client json.loads alone: {statistics.median(r[1] for r in runs) * 1000:.1f} ms)")

        print(f"== write-to-watch-event delay: {args.watchers} watchers, {args.writes} sequential creates")
        delays, misses = await watch_delay(session, base, args.watchers, args.writes)
        print(f"   p50 {percentile(delays, 50) * 1000:7.1f} ms   p99 {percentile(delays, 99) * 1000:7.1f} ms   "
              f"max {max(delays) * 1000:7.1f} ms   events {len(delays)}   missed {misses}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=900, help="overall bound in seconds")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="svcnet-bench-apiserver-"))
    server: ApiServer | None = None
    try:
        server = start_server(workdir)
        asyncio.run(asyncio.wait_for(run(args, server), args.timeout))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
