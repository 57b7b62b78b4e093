"""Faults in the store under real load: kill -9 a member of a 3-member etcd cluster in
the middle of 500 writes from two clients, and stop etcd altogether under a running
API server. Each test brings its own throwaway cluster (free loopback ports, its own
data dirs) and always stops it.

What must hold: every acknowledged write is readable afterwards, nothing is duplicated
(each object once in the store, each ADDED once on a watch), resourceVersions only go
up, the cluster keeps accepting writes with one member dead; with etcd gone requests
fail at once with a 503 Status instead of hanging, and once etcd is back everything
converges with nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from integration.controlplane.apiserver_process import ApiServer
from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.store import Registry
from svcnet.controlplane.storage.etcd import EtcdStorage
from svcnet.controlplane.storage.etcd_process import EtcdCluster

from .conftest import needs_etcd, unique_prefix

pytestmark = [pytest.mark.slow, needs_etcd]


def leader_index(cluster: EtcdCluster) -> int:
    """Which member leads (maintenance/status: leader == header.member_id)."""
    for i, m in enumerate(cluster.nodes):
        if not m.running:
            continue
        req = urllib.request.Request(m.client_url + "/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            st = json.loads(resp.read())
        if st.get("leader") == st["header"]["member_id"]:
            return i
    raise AssertionError("no etcd leader")


def member_revision(cluster: EtcdCluster, i: int) -> int:
    """The member's own (serializable) view of the revision."""
    req = urllib.request.Request(cluster.nodes[i].client_url + "/v3/kv/range", method="POST",
                                 data=b'{"key":"AA==","serializable":true}')
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(json.loads(resp.read())["header"]["revision"])


def service(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}


async def open_registry(endpoints: list[str], prefix: str, data_dir: Path) -> Registry:
    """A Registry as `svcnet apiserver --storage etcd://ENDPOINTS --etcd-prefix PREFIX`
    opens it (members tried in the order given)."""
    return await Registry.open(data_dir, storage="etcd://" + ",".join(endpoints), etcd_prefix=prefix)


async def test_kill_9_one_member_of_three_during_500_writes(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path / "etcd", members=3) as cluster:
        victim = leader_index(cluster)
        eps = cluster.endpoints
        # client a talks to the leader first (its watch stream too); b to a follower
        a = await open_registry([eps[victim]] + [e for i, e in enumerate(eps) if i != victim],
                                unique := unique_prefix(), tmp_path / "a")
        b = await open_registry([e for i, e in enumerate(eps) if i != victim] + [eps[victim]], unique,
                                tmp_path / "b")
        try:
            await a.bootstrap("192.0.2.10", 6443)
            await a.create(k.NAMESPACES, None, {"metadata": {"name": "load"}})
            rv0 = (await a.list(k.SERVICES, "load"))["metadata"]["resourceVersion"]
            stream = a.watch(k.SERVICES, "load", resource_version=rv0)
            watched: list[tuple[str, str, int]] = []

            async def watch() -> None:
                async for typ, obj in stream:
                    watched.append((typ, obj["metadata"]["name"], int(obj["metadata"]["resourceVersion"])))
                    if len(watched) >= 500:
                        return

            watcher = asyncio.create_task(watch())
            acked: dict[str, dict[str, Any]] = {}
            failures: list[str] = []
            total = 0
            killed = asyncio.Event()

            async def writer(reg: Registry, names: list[str]) -> list[int]:
                nonlocal total
                rvs = []
                for name in names:
                    attempts = 0
                    while True:
                        attempts += 1
                        try:
                            out, _ = await reg.create(k.SERVICES, "load", service(name))
                        except APIError as err:
                            if err.code == 409 and err.reason == "AlreadyExists" and attempts > 1:
                                break  # an earlier attempt landed after all: not acknowledged, not lost
                            assert err.code in (503, 504), err.message  # only the store's faults
                            failures.append(f"{name}: {err.code}")
                            await asyncio.sleep(0.1)
                            continue
                        acked[name] = out
                        rvs.append(int(out["metadata"]["resourceVersion"]))
                        break
                    total += 1
                return rvs

            async def killer() -> None:
                while total < 150:
                    await asyncio.sleep(0.001)
                cluster.kill(victim)  # SIGKILL the leader while both clients have writes in flight
                killed.set()

            names = [f"s{i:03d}" for i in range(500)]
            rvs_a, rvs_b, _ = await asyncio.wait_for(
                asyncio.gather(writer(a, names[0::2]), writer(b, names[1::2]), killer()), 120)
            assert killed.is_set()
            # each client's acknowledged writes got increasing resourceVersions
            assert rvs_a == sorted(rvs_a) and len(set(rvs_a)) == len(rvs_a)
            assert rvs_b == sorted(rvs_b) and len(set(rvs_b)) == len(rvs_b)
            # the cluster kept accepting writes with the leader dead
            after_kill = [n for n in names[300:] if n in acked]
            assert len(after_kill) >= 190, failures

            # every acknowledged write is readable, once, as acknowledged (from both servers)
            for reg in (a, b):
                items = (await reg.list(k.SERVICES, "load"))["items"]
                by_name = {s["metadata"]["name"]: s for s in items}
                assert len(items) == len(by_name) == 500
                for name, out in acked.items():
                    assert by_name[name]["metadata"]["uid"] == out["metadata"]["uid"]
                    assert by_name[name]["spec"]["clusterIP"] == out["spec"]["clusterIP"]
                assert len({s["spec"]["clusterIP"] for s in items}) == 500

            # the watch (its etcd stream was on the killed leader) saw each create once, in order
            await asyncio.wait_for(watcher, 30)
            assert [t for t, _, _ in watched] == ["ADDED"] * 500
            assert sorted(n for _, n, _ in watched) == names
            rvs = [rv for _, _, rv in watched]
            assert rvs == sorted(rvs) and len(set(rvs)) == 500

            # the killed member comes back and catches up
            cluster.restart(victim)
            target = a.current_revision
            deadline = time.monotonic() + 30
            while member_revision(cluster, victim) < target:
                assert time.monotonic() < deadline, "restarted member did not catch up"
                await asyncio.sleep(0.1)
        finally:
            await a.close()
            await b.close()


async def test_etcd_down_fails_fast_then_everything_resumes(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path / "etcd", members=1) as cluster:
        reg = await open_registry(cluster.endpoints, unique_prefix(), tmp_path / "data")
        try:
            await reg.bootstrap("192.0.2.10", 6443)
            before, _ = await reg.create(k.SERVICES, "default", service("before"))
            stream = reg.watch(k.SERVICES, "default", resource_version=before["metadata"]["resourceVersion"])
            cluster.kill(0)
            store = reg.storage
            assert isinstance(store, EtcdStorage)
            for call in (lambda: reg.get(k.SERVICES, "default", "before"),
                         lambda: reg.list(k.SERVICES, "default"),
                         lambda: reg.create(k.SERVICES, "default", service("during"))):
                t0 = time.monotonic()
                with pytest.raises(APIError) as info:
                    await call()
                assert info.value.code == 503 and info.value.reason == "ServiceUnavailable"
                assert time.monotonic() - t0 < 5, "an unreachable etcd must fail the request at once"
            for _ in range(100):
                if not store.ready:
                    break
                await asyncio.sleep(0.05)
            assert not store.ready and store.last_error

            cluster.restart(0)
            for _ in range(200):
                if store.ready:
                    break
                await asyncio.sleep(0.05)
            assert store.ready
            after, _ = await reg.create(k.SERVICES, "default", service("after"))
            typ, obj = await asyncio.wait_for(stream.__anext__(), 10)  # the same watch, resumed
            assert (typ, obj["metadata"]["name"]) == ("ADDED", "after")
            assert obj["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
            names = {s["metadata"]["name"] for s in (await reg.list(k.SERVICES, "default"))["items"]}
            assert names == {"kubernetes", "before", "after"}
            await stream.aclose()
        finally:
            await reg.close()


def test_apiserver_answers_503_and_is_unready_while_etcd_is_down(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path / "etcd", members=1) as cluster:
        server = ApiServer(data_dir=tmp_path / "data", kubeconfig=tmp_path / "kubeconfig",
                           cache_dir=tmp_path / "cache", log=tmp_path / "apiserver.log",
                           extra_args=("--storage", cluster.url, "--etcd-prefix", unique_prefix()))
        server.start()
        try:
            server.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080")
            assert server.request("GET", "/readyz", token=None)[::2] == (200, b"ok")
            cluster.kill(0)
            t0 = time.monotonic()
            status, _, body = server.request("GET", "/readyz?verbose", token=None)
            assert time.monotonic() - t0 < 5, "the readiness check must not wait for etcd"
            assert (status, body) == (500, b"[+]ping ok\n[-]etcd failed: reason withheld\n"
                                           b"[+]shutdown ok\nreadyz check failed\n")
            assert server.request("GET", "/livez", token=None)[::2] == (200, b"ok")
            t0 = time.monotonic()
            status, _, body = server.request("GET", "/api/v1/namespaces/default/services")
            assert time.monotonic() - t0 < 5
            st = json.loads(body)
            assert status == 503 and st["kind"] == "Status" and st["reason"] == "ServiceUnavailable"
            res = server.kubectl("get", "svc", "web", check=False, timeout=60)
            assert res.returncode != 0 and "unavailable" in res.stderr.lower()
            cluster.restart(0)
            deadline = time.monotonic() + 30
            while True:
                res = server.kubectl("get", "svc", "web", "-o", "name", check=False)
                if res.returncode == 0:
                    break
                assert time.monotonic() < deadline, res.stderr
                time.sleep(0.2)
            assert res.stdout.strip() == "service/web"
            assert server.request("GET", "/readyz", token=None)[::2] == (200, b"ok")
            server.kubectl("create", "service", "clusterip", "api", "--tcp=80:8080")
        finally:
            server.stop()


class ResponseEater:
    """A loopback TCP proxy in front of an etcd member that forwards the first
    `POST /v3/kv/txn` and then cuts the connection instead of relaying etcd's answer:
    the write lands, the client never hears it did (a member dying right after commit)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.armed = True
        self.eaten = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.upstream)
        eat = asyncio.Event()

        async def to_upstream() -> None:
            while data := await reader.read(65536):
                if self.armed and b"POST /v3/kv/txn" in data:
                    self.armed = False
                    eat.set()
                up_w.write(data)
                await up_w.drain()

        async def to_client() -> None:
            while data := await up_r.read(65536):
                if eat.is_set():
                    self.eaten += 1
                    writer.transport.abort()  # the answer never arrives
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(to_upstream()), asyncio.create_task(to_client())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        writer.transport.abort()
        up_w.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_write_whose_answer_was_lost_is_reported_once(etcd: EtcdCluster) -> None:
    from svcnet.controlplane.storage import Compare, Put

    eater = ResponseEater(etcd.endpoints[0])
    proxy = await eater.start()
    store = await EtcdStorage.open([proxy, etcd.endpoints[0]], prefix=unique_prefix())
    try:
        key = "/registry/services/specs/default/web"
        before = store.revision
        res = await store.txn([Compare(key, 0)], [Put(key, b"mine"), Put("/registry/allocations/x", b"a")])
        assert eater.eaten == 1                      # the first answer was lost...
        assert res.succeeded                         # ...yet the write is acknowledged, once
        kv = await store.get(key)
        assert kv is not None and kv.value == b"mine" and kv.version == 1
        assert res.revision == kv.mod_revision == before + 1 == store.revision
        assert res.kvs[key].mod_revision == kv.mod_revision
        # and a genuine conflict is still a conflict
        again = await store.txn([Compare(key, 0)], [Put(key, b"other")])
        assert not again.succeeded and again.current[key] is not None
    finally:
        await store.close()
        await eater.close()


class Cutter:
    """A loopback TCP proxy to an etcd member that can cut every connection through it
    and refuse new ones (a partition between one API server and etcd), then heal."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut = False
        self.conns: set[asyncio.StreamWriter] = set()
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def partition(self) -> None:
        self.cut = True
        for w in list(self.conns):
            w.transport.abort()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.transport.abort()
            return
        up_r, up_w = await asyncio.open_connection(*self.upstream)
        self.conns |= {writer, up_w}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

        tasks = [asyncio.create_task(pipe(reader, up_w)), asyncio.create_task(pipe(up_r, writer))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (writer, up_w):
                w.transport.abort()
                self.conns.discard(w)

    async def close(self) -> None:
        self.partition()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_cache_relists_when_etcd_compacted_past_it(etcd: EtcdCluster) -> None:
    """A server cut off from etcd while another compacts: on return its cache relists
    (converges on the other's writes) and ends its open watches with CompactedError
    (the API's 410), so clients relist too instead of silently missing events."""
    from svcnet.controlplane.storage import CompactedError

    cutter = Cutter(etcd.endpoints[0])
    proxy = await cutter.start()
    prefix = unique_prefix()
    a = await EtcdStorage.open([proxy], prefix=prefix, deadline=1.0)
    b = await EtcdStorage.open(etcd.endpoints, prefix=prefix)
    try:
        key = "/registry/services/specs/default/"
        first = await a.create(key + "web", b"1")
        watch = a.watch(key, first.revision + 1)
        cutter.partition()
        with pytest.raises(APIError) as info:
            await a.get(key + "web")
        assert info.value.code in (503, 504)
        for _ in range(100):
            if not a.ready:
                break
            await asyncio.sleep(0.05)
        assert not a.ready
        second = await b.update(key + "web", b"2", first.revision)
        third = await b.create(key + "api", b"3")
        await b.compact(third.revision)
        cutter.cut = False  # heal
        with pytest.raises(CompactedError):
            await asyncio.wait_for(watch.next(), 15)
        page = await a.range(key)
        assert [(kv.key, kv.value) for kv in page.kvs] == [(key + "api", b"3"), (key + "web", b"2")]
        assert page.revision >= third.revision and a.compact_revision >= third.revision
        # new watches from the cache's revision work again
        w2 = a.watch(key, page.revision + 1)
        fourth = await b.delete(key + "api", third.revision)
        ev = await w2.next(5)
        assert ev is not None and ev.type == "DELETE" and ev.revision == fourth.revision
        assert second.succeeded
        w2.close()
    finally:
        await a.close()
        await b.close()
        await cutter.close()


async def test_lost_quorum_fails_fast_and_recovers(tmp_path: Path) -> None:
    """Two of three members dead: the survivor has no leader. Requests carry gRPC
    metadata `hasleader`, so it refuses at once ("no leader") instead of holding each
    request for etcd's 7 s timeout; after an election's grace the API answers 503."""
    with EtcdCluster(tmp_path / "etcd", members=3) as cluster:
        reg = await open_registry(cluster.endpoints, unique_prefix(), tmp_path / "data")
        try:
            await reg.bootstrap("192.0.2.10", 6443)
            before, _ = await reg.create(k.SERVICES, "default", service("before"))
            survivor = leader_index(cluster)  # keep the leader; it steps down without quorum
            for i in range(3):
                if i != survivor:
                    cluster.kill(i)
            for call in (lambda: reg.create(k.SERVICES, "default", service("during")),
                         lambda: reg.get(k.SERVICES, "default", "before")):
                t0 = time.monotonic()
                with pytest.raises(APIError) as info:
                    await call()
                assert info.value.code in (503, 504), info.value.message
                assert time.monotonic() - t0 < 6.5, "a cluster without quorum must not hold requests"
            for i in range(3):
                if i != survivor:
                    cluster.restart(i, wait=False)
            for i in range(3):
                cluster.wait_healthy(cluster.nodes[i])
            after = None
            for _ in range(100):
                try:
                    after, _ = await reg.create(k.SERVICES, "default", service("after"))
                    break
                except APIError as err:
                    assert err.code in (503, 504)
                    await asyncio.sleep(0.1)
            assert after is not None
            names = {s["metadata"]["name"] for s in (await reg.list(k.SERVICES, "default"))["items"]}
            assert {"before", "after"} <= names  # "during" may or may not have landed: it was not acked
            assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
        finally:
            await reg.close()
