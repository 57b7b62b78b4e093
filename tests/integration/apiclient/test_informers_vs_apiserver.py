"""Informers through ApiSource against a real `svcnet apiserver` process.

* kill -9 the apiserver mid-watch, restart it on the same data dir and port: the
  informer resumes from its last resourceVersion and ends with exactly the events
  that happened, each once, in order.
* force a 410: while the informer cannot reach the server, writes land (through the
  same data dir served on another port) and history is compacted past the
  informer's resourceVersion; back on the original port the watch gets 410, the
  reflector relists, and only the differences are delivered.

The apiserver is a subprocess on a free loopback port with its own temporary data
dir, always killed at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from svcnet.apiclient.api_source import ApiSource
from svcnet.apiclient.client import RestClient
from svcnet.apiclient.errors import TransportError
from svcnet.apiclient.informer import Informer
from svcnet.apiclient.resources import NAMESPACES, SERVICES

pytestmark = [pytest.mark.root, pytest.mark.slow]

NS = "informer-it"
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiServer:
    """One `svcnet apiserver` process on a data dir; restartable, always killed."""

    def __init__(self, data_dir: Path, port: int, kubeconfig: Path, log: Path) -> None:
        self.data_dir, self.port, self.kubeconfig, self.log = data_dir, port, kubeconfig, log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.kubeconfig.unlink(missing_ok=True)  # written last: its appearance means ready
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "svcnet", "apiserver", "--data-dir", str(self.data_dir),
                 "--listen", f"127.0.0.1:{self.port}", "--kubeconfig-out", str(self.kubeconfig)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.kubeconfig.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"apiserver exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"apiserver not ready in {START_TIMEOUT}s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""


@pytest.fixture
async def apiserver(tmp_path: Path) -> AsyncIterator[ApiServer]:
    server = ApiServer(tmp_path / "data", free_port(), tmp_path / "admin.kubeconfig", tmp_path / "apiserver.log")
    try:
        await server.start()
        yield server
    finally:
        server.kill9()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def on_add(self, obj: dict[str, Any]) -> None:
        self.events.append(("add", obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.events.append(("update", new["metadata"]["name"], new["metadata"]["resourceVersion"]))

    def on_delete(self, obj: dict[str, Any]) -> None:
        self.events.append(("delete", obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))


async def eventually(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": name}}}


class Writer:
    """Writes through a client and remembers what each write should look like to an informer."""

    def __init__(self, client: RestClient) -> None:
        self.client = client
        self.expected: list[tuple[str, str, str]] = []

    async def create(self, name: str) -> None:
        out = await self.client.create(SERVICES, service(name))
        self.expected.append(("add", name, out["metadata"]["resourceVersion"]))

    async def label(self, name: str, value: str) -> None:
        out = await self.client.patch(SERVICES, name, {"metadata": {"labels": {"step": value}}}, NS)
        self.expected.append(("update", name, out["metadata"]["resourceVersion"]))

    async def delete(self, name: str) -> None:
        await self.client.delete(SERVICES, name, NS)
        self.expected.append(("delete", name, ""))  # the RV of a DELETED event is the server's


def same_events(seen: list[tuple[str, str, str]], expected: list[tuple[str, str, str]]) -> bool:
    return len(seen) == len(expected) and all(
        s[:2] == e[:2] and (not e[2] or s[2] == e[2]) for s, e in zip(seen, expected))


async def start_informer(kubeconfig: Path) -> tuple[ApiSource, Informer, Recorder, asyncio.Task[None]]:
    source = ApiSource.from_kubeconfig(str(kubeconfig), max_backoff=2.0)
    informer, rec = source.informer(SERVICES, namespace=NS), Recorder()
    informer.add_handler(rec)
    task = asyncio.create_task(source.run())
    await asyncio.wait_for(informer.wait_for_sync(), 30)
    return source, informer, rec, task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def converged(informer: Informer, client: RestClient) -> bool:
    try:
        truth = await client.list(SERVICES, NS)
    except TransportError:
        return False
    want = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in truth["items"]}
    have = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in informer.list()}
    return want == have


async def test_kill9_mid_watch_restart_resumes_without_loss_or_duplicates(apiserver: ApiServer) -> None:
    async with RestClient.from_kubeconfig(str(apiserver.kubeconfig)) as admin:
        await admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        w = Writer(admin)
        for i in range(5):
            await w.create(f"s{i}")
    source, informer, rec, task = await start_informer(apiserver.kubeconfig)
    try:
        async with RestClient.from_kubeconfig(str(apiserver.kubeconfig)) as admin:
            w.client = admin
            assert sorted(rec.events) == sorted(w.expected)  # a list comes in key order
            await w.create("s5")
            await w.label("s0", "one")
            await w.delete("s1")
            await eventually(lambda: same_events(rec.events, w.expected))

        apiserver.kill9()  # mid-watch: the stream breaks, the reflector starts retrying
        await apiserver.start()

        async with RestClient.from_kubeconfig(str(apiserver.kubeconfig)) as admin:
            w.client = admin
            await w.create("s6")
            await w.label("s2", "two")
            await w.delete("s3")
            await w.label("s0", "three")
            await eventually(lambda: same_events(rec.events, w.expected))
            assert await converged(informer, admin)
        assert len(set(rec.events)) == len(rec.events)  # no duplicates
        refl = source.reflector_for(SERVICES)
        assert refl is not None
        assert refl.stats.lists == 1, "resumed from its resourceVersion, never relisted"
        assert refl.stats.disconnects >= 1
    finally:
        await stop(task)


async def test_forced_410_relists_and_delivers_only_differences(apiserver: ApiServer, tmp_path: Path) -> None:
    from svcnet.controlplane.storage.sqlite import SQLiteStorage

    async with RestClient.from_kubeconfig(str(apiserver.kubeconfig)) as admin:
        await admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        w = Writer(admin)
        for name in ("keep", "change", "gone"):
            await w.create(name)
    source, informer, rec, task = await start_informer(apiserver.kubeconfig)
    try:
        before = list(rec.events)
        assert sorted(before) == sorted(w.expected)  # a list comes in key order
        apiserver.kill9()
        # The same data dir on another port: the informer cannot see these writes.
        side = ApiServer(apiserver.data_dir, free_port(), tmp_path / "side.kubeconfig", apiserver.log)
        try:
            await side.start()
            async with RestClient.from_kubeconfig(str(side.kubeconfig)) as admin:
                w.client, w.expected = admin, []
                await w.create("new")
                await w.label("change", "x")
                await w.delete("gone")
                await w.create("short-lived")
                await w.delete("short-lived")
        finally:
            side.kill9()
        store = await SQLiteStorage.open(apiserver.data_dir)
        try:
            await store.compact(store.revision)  # history before now is gone
        finally:
            await store.close()
        await apiserver.start()
        refl = source.reflector_for(SERVICES)
        assert refl is not None
        await eventually(lambda: refl.stats.lists >= 2)
        async with RestClient.from_kubeconfig(str(apiserver.kubeconfig)) as admin:
            await eventually(lambda: len(rec.events) >= len(before) + 3)
            assert await converged(informer, admin)
            after = sorted(e[:2] for e in rec.events[len(before):])
            assert after == [("add", "new"), ("delete", "gone"), ("update", "change")]
            assert refl.stats.relists_after_expired >= 1
            # And the informer keeps following after the relist.
            w.client, w.expected = admin, []
            await w.create("later")
            await eventually(lambda: rec.events[-1][:2] == ("add", "later"))
    finally:
        await stop(task)


async def test_verbs_and_typed_errors_against_the_apiserver(apiserver: ApiServer) -> None:
    from svcnet.apiclient import errors
    from svcnet.apiclient.client import PatchType
    from svcnet.apiclient.kubeconfig import load_kubeconfig

    async with RestClient.from_kubeconfig(str(apiserver.kubeconfig)) as admin:
        await admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        for i in range(7):
            await admin.create(SERVICES, service(f"p{i}"))
        listed = await admin.list_all(SERVICES, NS, page_size=3)
        assert [o["metadata"]["name"] for o in listed["items"]] == [f"p{i}" for i in range(7)]
        assert all(o["kind"] == "Service" for o in listed["items"])
        with pytest.raises(errors.AlreadyExists):
            await admin.create(SERVICES, service("p0"))
        with pytest.raises(errors.NotFound):
            await admin.get(SERVICES, "nosuch", NS)
        svc = await admin.get(SERVICES, "p0", NS)
        await admin.patch(SERVICES, "p0", {"metadata": {"labels": {"a": "1"}}}, NS)
        with pytest.raises(errors.Conflict):
            await admin.update(SERVICES, svc)  # svc carries the resourceVersion before the patch
        out = await admin.patch(SERVICES, "p0", {"metadata": {"labels": {"b": "2"}}}, NS,
                                patch_type=PatchType.MERGE)
        assert out["metadata"]["labels"] == {"a": "1", "b": "2"}
        out = await admin.patch(SERVICES, "p0", [{"op": "remove", "path": "/metadata/labels/a"}], NS,
                                patch_type=PatchType.JSON)
        assert out["metadata"]["labels"] == {"b": "2"}
        applied = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "p0", "labels": {"c": "3"}}}
        out = await admin.patch(SERVICES, "p0", applied, NS, patch_type=PatchType.APPLY,
                                field_manager="svcnet-it", force=True)
        assert out["metadata"]["labels"]["c"] == "3"
        bad = service("bad")
        bad["spec"]["ports"] = [{"port": 80}, {"port": 81}]  # two ports need names
        with pytest.raises(errors.Invalid) as invalid:
            await admin.create(SERVICES, bad)
        assert any(c.field == "spec.ports[0].name" for c in invalid.value.causes)
        await admin.delete(SERVICES, "p1", NS)
        with pytest.raises(errors.NotFound):
            await admin.delete(SERVICES, "p1", NS)

    readonly = apiserver.kubeconfig.with_name("admin-readonly.kubeconfig")
    async with RestClient.from_kubeconfig(str(readonly)) as agent:
        assert len((await agent.list(SERVICES, NS))["items"]) == 6
        with pytest.raises(errors.Forbidden):
            await agent.create(SERVICES, service("nope"))
    cfg = load_kubeconfig(apiserver.kubeconfig)
    async with RestClient.from_config(dataclasses.replace(cfg, token="not-a-token")) as stranger:
        with pytest.raises(errors.Unauthorized):
            await stranger.list(SERVICES, NS)
