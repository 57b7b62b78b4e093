"""EtcdStorage against the storage contract, and what is etcd's own.

The contract suite (tests/unit/controlplane_store/test_storage.py, revisions relative
to where each test starts) is imported unchanged and runs here with its `store` fixture
replaced by an EtcdStorage under a fresh prefix on the session's etcd member. Below it:
kube's key layout under the prefix, one etcd watch for many storage watches,
coordinated compaction, history replayed after a restart, keys outside the root.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from svcnet.controlplane.storage import CompactedError, open_storage
from svcnet.controlplane.storage.etcd import EtcdStorage, parse_etcd_url
from svcnet.controlplane.storage.etcd_process import EtcdCluster
from unit.controlplane_store.test_storage import *  # noqa: F401,F403  (the contract suite)

from .conftest import unique_prefix


@pytest.fixture
async def store(etcd_store: EtcdStorage) -> AsyncIterator[EtcdStorage]:
    """The contract suite's store, on etcd."""
    yield etcd_store


R = "/registry"  # the logical root the registry writes under


async def raw(etcd: EtcdCluster, method: str, body: dict[str, object]) -> dict[str, object]:
    """A request straight to etcd's gateway, bypassing EtcdStorage."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://{etcd.endpoints[0]}/v3/{method}", json=body) as resp:
            return await resp.json()  # type: ignore[no-any-return]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_keys_are_kube_layout_under_the_prefix(etcd: EtcdCluster, tmp_path: Path) -> None:
    prefix = unique_prefix()
    store = await open_storage(etcd.url, data_dir=tmp_path, etcd_prefix=prefix)  # as the flags do
    try:
        res = await store.create(f"{R}/services/specs/default/web", b'{"kind":"Service"}')
        got = await raw(etcd, "kv/range", {"key": b64(f"{prefix}/services/specs/default/web")})
        kv = got["kvs"][0]  # type: ignore[index]
        assert base64.b64decode(kv["value"]) == b'{"kind":"Service"}'
        assert int(kv["mod_revision"]) == res.revision
        # nothing leaked under the logical root itself
        assert "kvs" not in await raw(etcd, "kv/range", {"key": b64(f"{R}/services/specs/default/web")})
    finally:
        await store.close()


async def test_many_watches_share_one_etcd_watch(etcd: EtcdCluster, etcd_store: EtcdStorage) -> None:
    async def etcd_watchers() -> int:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{etcd.endpoints[0]}/metrics") as resp:
                text = await resp.text()
        m = re.search(r"^etcd_debugging_mvcc_watcher_total (\d+)", text, re.M)
        assert m, "etcd metrics lack etcd_debugging_mvcc_watcher_total"
        return int(m.group(1))

    for _ in range(100):  # the store's own etcd watch is counted once it is open
        if etcd_store.ready:
            break
        await asyncio.sleep(0.05)
    assert etcd_store.ready
    before = await etcd_watchers()
    watches = [etcd_store.watch(f"{R}/m/") for _ in range(50)]
    res = await etcd_store.create(f"{R}/m/x", b"1")
    for w in watches:
        ev = await w.next(2)
        assert ev is not None and ev.revision == res.revision
    # fan-out from the cache, no new etcd watches (earlier tests' closed ones may still go)
    assert await etcd_watchers() <= before
    for w in watches:
        w.close()


async def test_compaction_is_coordinated_and_ends_older_watches(etcd: EtcdCluster) -> None:
    prefix = unique_prefix()
    a = await EtcdStorage.open(etcd.endpoints, prefix=prefix)
    b = await EtcdStorage.open(etcd.endpoints, prefix=prefix)
    try:
        first = await a.create(f"{R}/k/a", b"1")
        second = await a.update(f"{R}/k/a", b"2", first.revision)
        await a.compact(second.revision)
        assert a.compact_revision == second.revision
        with pytest.raises(CompactedError):
            await a.range(f"{R}/k/", revision=first.revision)
        with pytest.raises(CompactedError):
            await a.compact(second.revision)
        # b has not seen a's compaction: its round is skipped, and it learns the mark
        third = await b.update(f"{R}/k/a", b"3", second.revision)
        await b.compact(third.revision)
        assert b.compact_revision == second.revision
        with pytest.raises(CompactedError):
            await a.watch(f"{R}/k/", first.revision).next(1)
        w = a.watch(f"{R}/k/", second.revision + 1)
        ev = await w.next(2)
        assert ev is not None and ev.revision == third.revision and ev.prev_kv is not None
        w.close()
    finally:
        await a.close()
        await b.close()


async def test_history_is_replayed_after_a_restart(etcd: EtcdCluster) -> None:
    prefix = unique_prefix()
    a = await EtcdStorage.open(etcd.endpoints, prefix=prefix)
    first = await a.create(f"{R}/k/a", b"1")
    second = await a.update(f"{R}/k/a", b"2", first.revision)
    await a.close()
    b = await EtcdStorage.open(etcd.endpoints, prefix=prefix)
    try:
        w = b.watch(f"{R}/k/", first.revision)   # older than b's first list: from replay
        evs = [await w.next(3), await w.next(3)]
        assert [e.revision for e in evs if e] == [first.revision, second.revision]
        w.close()
    finally:
        await b.close()


async def test_keys_outside_the_root_are_served_directly(etcd_store: EtcdStorage) -> None:
    first = await etcd_store.create("/elsewhere/a", b"1")
    w = etcd_store.watch("/elsewhere/", first.revision)
    ev = await w.next(3)
    assert ev is not None and ev.key == "/elsewhere/a" and ev.revision == first.revision
    page = await etcd_store.range("/elsewhere/")
    assert [kv.key for kv in page.kvs] == ["/elsewhere/a"]
    w.close()
    await etcd_store.delete("/elsewhere/a", first.revision)


def test_storage_urls() -> None:
    assert parse_etcd_url("etcd://127.0.0.1:23790,[::1]:23791") == ["http://127.0.0.1:23790",
                                                                    "http://[::1]:23791"]
    for bad in ("127.0.0.1:2379", "etcd://host", "etcd://h:99999", "sqlite"):
        with pytest.raises(ValueError):
            parse_etcd_url(bad)


async def test_unreachable_etcd_fails_fast_with_503() -> None:
    from svcnet.controlplane.errors import APIError
    from svcnet.controlplane.storage.etcd_process import free_port

    with pytest.raises(APIError) as info:
        await EtcdStorage.open([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], timeout=0)
    assert info.value.code == 503 and "unreachable" in info.value.message
