"""EtcdStorage against the storage contract (tests/unit/controlplane_store/test_storage.py
states it for SQLite with absolute revisions from an empty file; etcd's revision is
store-wide, so here every revision is relative to where the test started), plus what is
etcd's own: kube's key layout under the prefix, one etcd watch for many storage watches,
coordinated compaction, relist-and-410 when etcd compacted past the cache."""

from __future__ import annotations

import asyncio
import base64
import re

import aiohttp
import pytest

from svcnet.controlplane.storage import CompactedError, Compare, Delete, FutureRevisionError, Put, WatchClosed
from svcnet.controlplane.storage.etcd import EtcdStorage, parse_etcd_url
from svcnet.controlplane.storage.etcd_process import EtcdCluster

from .conftest import unique_prefix

R = "/registry"  # the logical root the registry writes under


async def raw(etcd: EtcdCluster, method: str, body: dict[str, object]) -> dict[str, object]:
    """A request straight to etcd's gateway, bypassing EtcdStorage."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://{etcd.endpoints[0]}/v3/{method}", json=body) as resp:
            return await resp.json()  # type: ignore[no-any-return]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_every_write_bumps_the_revision_once(etcd_store: EtcdStorage) -> None:
    base = etcd_store.revision
    r1 = await etcd_store.create(f"{R}/r/a", b"1")
    r2 = await etcd_store.txn([], [Put(f"{R}/r/b", b"2"), Put(f"{R}/r/c", b"3")])
    assert (r1.revision, r2.revision, etcd_store.revision) == (base + 1, base + 2, base + 2)
    kv = await etcd_store.get(f"{R}/r/c")
    assert kv is not None and (kv.create_revision, kv.mod_revision, kv.version) == (base + 2, base + 2, 1)


async def test_create_update_delete_are_compare_and_swap(etcd_store: EtcdStorage) -> None:
    created = await etcd_store.create(f"{R}/r/a", b"1")
    again = await etcd_store.create(f"{R}/r/a", b"other")
    assert not again.succeeded and again.current[f"{R}/r/a"].value == b"1"  # type: ignore[union-attr]
    rev = created.revision
    updated = await etcd_store.update(f"{R}/r/a", b"2", rev)
    assert updated.succeeded and updated.prev[f"{R}/r/a"].value == b"1"  # type: ignore[union-attr]
    stale = await etcd_store.update(f"{R}/r/a", b"3", rev)
    assert not stale.succeeded and stale.current[f"{R}/r/a"].mod_revision == updated.revision  # type: ignore[union-attr]
    assert not (await etcd_store.delete(f"{R}/r/a", rev)).succeeded
    kv = await etcd_store.get(f"{R}/r/a")
    assert kv is not None and kv.value == b"2" and kv.version == 2
    gone = await etcd_store.delete(f"{R}/r/a", updated.revision)
    assert gone.succeeded and gone.prev[f"{R}/r/a"].value == b"2"  # type: ignore[union-attr]
    assert await etcd_store.get(f"{R}/r/a") is None


async def test_multi_key_txn_is_all_or_nothing(etcd_store: EtcdStorage) -> None:
    await etcd_store.create(f"{R}/alloc/10.0.0.5", b"x")
    base = etcd_store.revision
    res = await etcd_store.txn([Compare(f"{R}/svc/a", 0), Compare(f"{R}/alloc/10.0.0.5", 0)],
                               [Put(f"{R}/svc/a", b"svc"), Put(f"{R}/alloc/10.0.0.5", b"a")])
    assert not res.succeeded and res.current[f"{R}/alloc/10.0.0.5"] is not None
    assert await etcd_store.get(f"{R}/svc/a") is None and etcd_store.revision == base


async def test_deleting_an_absent_key_writes_nothing(etcd_store: EtcdStorage) -> None:
    base = etcd_store.revision
    res = await etcd_store.txn([], [Delete(f"{R}/nope")])
    assert res.succeeded and etcd_store.revision == base


async def test_a_key_may_appear_once_per_txn(etcd_store: EtcdStorage) -> None:
    with pytest.raises(Exception, match="duplicate key"):
        await etcd_store.txn([], [Put(f"{R}/a", b"1"), Delete(f"{R}/a")])


async def test_range_is_ordered_limited_and_counts_the_rest(etcd_store: EtcdStorage) -> None:
    for name in ("c", "a", "b"):
        await etcd_store.create(f"{R}/p/{name}", name.encode())
    await etcd_store.create(f"{R}/q/z", b"z")
    last = await etcd_store.create(f"{R}/p0", b"not under /p/")
    page = await etcd_store.range(f"{R}/p/", limit=2)
    assert [kv.key for kv in page.kvs] == [f"{R}/p/a", f"{R}/p/b"]
    assert page.more and page.count == 3 and page.revision == last.revision
    rest = await etcd_store.range(f"{R}/p/", start=f"{R}/p/b\x00", revision=page.revision)
    assert [kv.key for kv in rest.kvs] == [f"{R}/p/c"] and not rest.more


async def test_reads_at_a_past_revision_see_that_revision(etcd_store: EtcdStorage) -> None:
    a1 = await etcd_store.create(f"{R}/p/a", b"a1")
    b1 = await etcd_store.create(f"{R}/p/b", b"b1")
    await etcd_store.update(f"{R}/p/a", b"a2", a1.revision)
    await etcd_store.delete(f"{R}/p/b", b1.revision)
    then = await etcd_store.range(f"{R}/p/", revision=b1.revision)  # served by etcd's MVCC
    assert [(kv.key, kv.value) for kv in then.kvs] == [(f"{R}/p/a", b"a1"), (f"{R}/p/b", b"b1")]
    assert then.revision == b1.revision
    now = await etcd_store.range(f"{R}/p/")                          # served by the cache
    assert [(kv.key, kv.value) for kv in now.kvs] == [(f"{R}/p/a", b"a2")]
    old = await etcd_store.get(f"{R}/p/a", revision=b1.revision)
    assert old is not None and old.value == b"a1" and old.mod_revision == a1.revision
    with pytest.raises(FutureRevisionError):
        await etcd_store.get(f"{R}/p/a", revision=etcd_store.revision + 1000)


async def test_watch_replays_history_then_streams_live_events(etcd_store: EtcdStorage) -> None:
    first = await etcd_store.create(f"{R}/w/a", b"1")
    second = await etcd_store.update(f"{R}/w/a", b"2", first.revision)
    await etcd_store.create(f"{R}/other/x", b"x")
    w = etcd_store.watch(f"{R}/w/", start_revision=second.revision)
    ev = await w.next(2)
    assert ev is not None and ev.revision == second.revision and ev.kv is not None and ev.kv.value == b"2"
    assert ev.prev_kv is not None and ev.prev_kv.value == b"1"
    assert await w.next(0.05) is None
    assert w.progress_revision == etcd_store.revision
    gone = await etcd_store.delete(f"{R}/w/a", second.revision)
    ev = await w.next(2)
    assert ev is not None and ev.type == "DELETE" and ev.kv is None and ev.revision == gone.revision
    assert ev.prev_kv is not None and ev.prev_kv.value == b"2"
    w.close()
    with pytest.raises(WatchClosed):
        await w.next(0.01)


async def test_concurrent_writers_are_seen_in_revision_order(etcd_store: EtcdStorage) -> None:
    w = etcd_store.watch(f"{R}/c/")
    results = await asyncio.gather(*(etcd_store.create(f"{R}/c/{i}", b"x") for i in range(40)))
    seen = []
    for _ in range(40):
        ev = await w.next(2)
        assert ev is not None
        seen.append(ev.revision)
    assert seen == sorted(r.revision for r in results) and len(set(seen)) == 40
    w.close()


async def test_keys_are_kube_layout_under_the_prefix(etcd: EtcdCluster) -> None:
    prefix = unique_prefix()
    store = await EtcdStorage.open(etcd.url, prefix=prefix)
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

    before = await etcd_watchers()
    watches = [etcd_store.watch(f"{R}/m/") for _ in range(50)]
    res = await etcd_store.create(f"{R}/m/x", b"1")
    for w in watches:
        ev = await w.next(2)
        assert ev is not None and ev.revision == res.revision
    assert await etcd_watchers() == before  # fan-out from the cache, no new etcd watches
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
