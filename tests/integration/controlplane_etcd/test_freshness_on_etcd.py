"""Lists and streaming watches at a resourceVersion this API server has not reached yet,
on etcd: they wait for the watch cache (kube's `waitUntilFreshAndBlock`, 3 s) before
the 504 ResourceVersionTooLarge.

The tests of tests/unit/controlplane_store/test_freshness.py run here unchanged over an
EtcdStorage held back by the same `LaggingStorage` double; below them, two API servers'
registries on one etcd prefix, where the lag is the real one of a watch cache: a client
that saw a write on one server lists and watches on the other at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.allocators import ServiceAllocator
from svcnet.controlplane.registry.store import Registry
from svcnet.controlplane.storage.etcd import EtcdStorage
from svcnet.controlplane.storage.etcd_process import EtcdCluster
from unit.controlplane_store.conftest import svc
from unit.controlplane_store.lagging import LaggingStorage
from unit.controlplane_store.test_freshness import (  # noqa: F401 (collected here, on etcd)
    test_list_waits_for_a_lagging_store, test_streaming_watch_waits_for_a_lagging_store,
    test_too_large_after_the_wait,
)

from .conftest import unique_prefix


@pytest.fixture
async def lagging(etcd: EtcdCluster) -> AsyncIterator[tuple[Registry, LaggingStorage]]:
    storage = LaggingStorage(await EtcdStorage.open(etcd.endpoints, prefix=unique_prefix()))
    reg = await Registry.with_storage(storage, ServiceAllocator("10.96.0.0/12", "30000-32767"))
    await reg.bootstrap("192.0.2.10", 6443)
    try:
        yield reg, storage
    finally:
        await reg.close()


async def test_a_write_on_one_server_read_at_once_on_another(etcd: EtcdCluster, tmp_path: Path) -> None:
    prefix = unique_prefix()
    a = await Registry.open(tmp_path / "a", storage=etcd.url, etcd_prefix=prefix)
    b = await Registry.open(tmp_path / "b", storage=etcd.url, etcd_prefix=prefix)
    try:
        await a.bootstrap("192.0.2.10", 6443)
        await b.bootstrap("192.0.2.11", 6443)
        for i in range(20):
            created, _ = await a.create(k.SERVICES, "default", svc(f"web-{i}"))
            rv = created["metadata"]["resourceVersion"]
            listed = await b.list(k.SERVICES, "default", resource_version=rv)
            assert int(listed["metadata"]["resourceVersion"]) >= int(rv)
            assert f"web-{i}" in [s["metadata"]["name"] for s in listed["items"]]
            stream = b.watch(k.SERVICES, "default", resource_version=rv, send_initial_events=True,
                             allow_bookmarks=True)
            names = []
            while True:
                typ, obj = await asyncio.wait_for(stream.__anext__(), 5)
                if typ == "BOOKMARK":
                    break
                names.append(obj["metadata"]["name"])
            await stream.aclose()
            assert f"web-{i}" in names
    finally:
        await b.close()
        await a.close()
