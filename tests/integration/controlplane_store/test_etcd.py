"""The storage contract and the Registry on a real etcd member (skipped without etcd)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.store import Registry
from svcnet.controlplane.storage import CompactedError, Compare, Put
from svcnet.controlplane.storage.etcd import EtcdStorage

from .etcd_member import etcd_member

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed")


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_member(tmp_path_factory.mktemp("etcd")) as url:
        yield url


@pytest.fixture
async def store(etcd_url: str) -> AsyncIterator[EtcdStorage]:
    s = await EtcdStorage.open(etcd_url)
    yield s
    await s.close()


async def test_cas_revisions_and_ranges(store: EtcdStorage, request: pytest.FixtureRequest) -> None:
    p = f"/t/{request.node.name}/"
    r1 = await store.create(p + "a", b"1")
    assert r1.succeeded and r1.kvs[p + "a"].version == 1
    assert not (await store.create(p + "a", b"x")).succeeded
    stale = await store.update(p + "a", b"2", r1.revision - 1)
    assert not stale.succeeded and stale.current[p + "a"].value == b"1"  # type: ignore[union-attr]
    r2 = await store.update(p + "a", b"2", r1.revision)
    assert r2.succeeded and r2.revision > r1.revision
    assert r2.prev[p + "a"].value == b"1"  # type: ignore[union-attr]
    await store.txn([Compare(p + "b", 0), Compare(p + "c", 0)], [Put(p + "b", b"b"), Put(p + "c", b"c")])
    page = await store.range(p, limit=2)
    assert [kv.key for kv in page.kvs] == [p + "a", p + "b"] and page.more and page.count == 3
    old = await store.range(p, revision=r1.revision)
    assert [(kv.key, kv.value) for kv in old.kvs] == [(p + "a", b"1")]
    deleted = await store.delete(p + "a", r2.revision)
    assert deleted.succeeded and await store.get(p + "a") is None


async def test_watch_replay_live_and_compaction(store: EtcdStorage, request: pytest.FixtureRequest) -> None:
    p = f"/t/{request.node.name}/"
    first = await store.create(p + "a", b"1")
    second = await store.update(p + "a", b"2", first.revision)
    w = store.watch(p, first.revision)
    evs = [await w.next(5), await w.next(5)]
    assert [e.revision for e in evs if e] == [first.revision, second.revision]
    assert evs[1] is not None and evs[1].prev_kv is not None and evs[1].prev_kv.value == b"1"
    gone = await store.delete(p + "a", second.revision)
    ev = await w.next(5)
    assert ev is not None and ev.type == "DELETE" and ev.revision == gone.revision
    assert ev.prev_kv is not None and ev.prev_kv.value == b"2"
    w.close()
    await store.compact(gone.revision)
    assert store.compact_revision == gone.revision
    with pytest.raises(CompactedError):
        await store.range(p, revision=first.revision)
    w = store.watch(p, first.revision)
    with pytest.raises(CompactedError):
        await w.next(5)
    w.close()


async def test_registry_on_etcd(etcd_url: str, tmp_path: Path) -> None:
    reg = await Registry.open(tmp_path, storage=etcd_url)
    try:
        await reg.bootstrap("192.0.2.10", 6443)
        rv = (await reg.list(k.SERVICES, "default"))["metadata"]["resourceVersion"]
        stream = reg.watch(k.SERVICES, "default", resource_version=rv)
        results = await asyncio.gather(*(
            reg.create(k.SERVICES, "default", {"metadata": {"name": f"s{i}"},
                                               "spec": {"type": "NodePort", "ports": [{"port": 80}]}})
            for i in range(20)))
        assert len({r[0]["spec"]["clusterIP"] for r in results}) == 20
        seen = set()
        for _ in range(20):
            typ, obj = await asyncio.wait_for(stream.__anext__(), 5)
            assert typ == "ADDED"
            seen.add(obj["metadata"]["name"])
        assert seen == {f"s{i}" for i in range(20)}
        await stream.aclose()
    finally:
        await reg.close()
    # a second server on the same etcd sees the allocations
    reg = await Registry.open(tmp_path, storage=etcd_url)
    try:
        taken = (await reg.get(k.SERVICES, "default", "s0"))["spec"]["clusterIP"]
        with pytest.raises(Exception, match="already allocated"):
            await reg.create(k.SERVICES, "default", {"metadata": {"name": "dup"},
                                                     "spec": {"clusterIP": taken, "ports": [{"port": 80}]}})
    finally:
        await reg.close()
