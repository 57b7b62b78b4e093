"""The SQLite store against the storage contract: revisions, CAS, MVCC reads, watch, compaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from svcnet.controlplane.storage import (
    CompactedError, Compare, Delete, FutureRevisionError, Put, SQLiteStorage, WatchClosed,
)


@pytest.fixture
async def store(tmp_path: Path):
    s = await SQLiteStorage.open(tmp_path)
    yield s
    await s.close()


async def test_every_write_bumps_the_revision_once(store: SQLiteStorage) -> None:
    assert store.revision == 0
    r1 = await store.create("/r/a", b"1")
    r2 = await store.txn([], [Put("/r/b", b"2"), Put("/r/c", b"3")])
    assert (r1.revision, r2.revision, store.revision) == (1, 2, 2)
    kv = await store.get("/r/c")
    assert kv is not None and (kv.create_revision, kv.mod_revision, kv.version) == (2, 2, 1)


async def test_create_fails_when_present_and_reports_the_current_value(store: SQLiteStorage) -> None:
    await store.create("/r/a", b"1")
    res = await store.create("/r/a", b"other")
    assert not res.succeeded
    assert res.current["/r/a"] is not None and res.current["/r/a"].value == b"1"
    assert store.revision == 1


async def test_update_and_delete_are_compare_and_swap_on_mod_revision(store: SQLiteStorage) -> None:
    await store.create("/r/a", b"1")
    assert (await store.update("/r/a", b"2", 1)).succeeded
    stale = await store.update("/r/a", b"3", 1)
    assert not stale.succeeded and stale.current["/r/a"].mod_revision == 2  # type: ignore[union-attr]
    assert not (await store.delete("/r/a", 1)).succeeded
    kv = await store.get("/r/a")
    assert kv is not None and kv.value == b"2" and kv.version == 2
    assert (await store.delete("/r/a", 2)).succeeded
    assert await store.get("/r/a") is None


async def test_multi_key_txn_is_all_or_nothing(store: SQLiteStorage) -> None:
    await store.create("/alloc/10.0.0.5", b"x")
    res = await store.txn([Compare("/svc/a", 0), Compare("/alloc/10.0.0.5", 0)],
                          [Put("/svc/a", b"svc"), Put("/alloc/10.0.0.5", b"a")])
    assert not res.succeeded
    assert await store.get("/svc/a") is None
    assert store.revision == 1


async def test_deleting_an_absent_key_writes_nothing(store: SQLiteStorage) -> None:
    res = await store.txn([], [Delete("/nope")])
    assert res.succeeded and res.revision == 0 and store.revision == 0


async def test_a_key_may_appear_once_per_txn(store: SQLiteStorage) -> None:
    with pytest.raises(Exception, match="duplicate key"):
        await store.txn([], [Put("/a", b"1"), Delete("/a")])


async def test_range_is_ordered_limited_and_counts_the_rest(store: SQLiteStorage) -> None:
    for name in ("c", "a", "b"):
        await store.create(f"/p/{name}", name.encode())
    await store.create("/q/z", b"z")  # another prefix
    await store.create("/p0", b"not under /p/")
    page = await store.range("/p/", limit=2)
    assert [kv.key for kv in page.kvs] == ["/p/a", "/p/b"]
    assert page.more and page.count == 3 and page.revision == 5
    rest = await store.range("/p/", start="/p/b\x00")
    assert [kv.key for kv in rest.kvs] == ["/p/c"] and not rest.more


async def test_reads_at_a_past_revision_see_that_revision(store: SQLiteStorage) -> None:
    await store.create("/p/a", b"a1")          # 1
    await store.create("/p/b", b"b1")          # 2
    await store.update("/p/a", b"a2", 1)       # 3
    await store.delete("/p/b", 2)              # 4
    at2 = await store.range("/p/", revision=2)
    assert [(kv.key, kv.value) for kv in at2.kvs] == [("/p/a", b"a1"), ("/p/b", b"b1")]
    assert at2.revision == 2
    now = await store.range("/p/")
    assert [(kv.key, kv.value) for kv in now.kvs] == [("/p/a", b"a2")]
    old = await store.get("/p/a", revision=2)
    assert old is not None and old.value == b"a1" and old.mod_revision == 1
    with pytest.raises(FutureRevisionError):
        await store.get("/p/a", revision=9)


async def test_watch_replays_history_then_streams_live_events(store: SQLiteStorage) -> None:
    await store.create("/w/a", b"1")             # 1
    await store.update("/w/a", b"2", 1)          # 2
    await store.create("/other/x", b"x")         # 3
    w = store.watch("/w/", start_revision=2)
    ev = await w.next(1)
    assert ev is not None and ev.revision == 2 and ev.kv.value == b"2"  # type: ignore[union-attr]
    assert ev.prev_kv is not None and ev.prev_kv.value == b"1"
    assert await w.next(0.05) is None
    assert w.progress_revision == 3
    await store.delete("/w/a", 2)                # 4
    ev = await w.next(1)
    assert ev is not None and ev.type == "DELETE" and ev.kv is None and ev.revision == 4
    assert ev.prev_kv is not None and ev.prev_kv.value == b"2"
    w.close()


async def test_watch_from_now_sees_only_later_writes(store: SQLiteStorage) -> None:
    await store.create("/w/a", b"1")
    w = store.watch("/w/")
    await store.create("/w/b", b"2")
    ev = await w.next(1)
    assert ev is not None and ev.key == "/w/b" and ev.is_create
    w.close()
    with pytest.raises(WatchClosed):
        await w.next(0.01)


async def test_concurrent_writers_are_seen_by_a_watch_in_revision_order(store: SQLiteStorage) -> None:
    w = store.watch("/c/", 1)
    await asyncio.gather(*(store.create(f"/c/{i}", b"x") for i in range(40)))
    seen = []
    for _ in range(40):
        ev = await w.next(1)
        assert ev is not None
        seen.append(ev.revision)
    assert seen == list(range(1, 41))
    w.close()


async def test_history_survives_reopen_so_watches_resume(tmp_path: Path) -> None:
    s = await SQLiteStorage.open(tmp_path)
    await s.create("/k/a", b"1")
    await s.update("/k/a", b"2", 1)
    await s.close()
    s = await SQLiteStorage.open(tmp_path)
    try:
        assert s.revision == 2
        w = s.watch("/k/", start_revision=2)
        ev = await w.next(1)
        assert ev is not None and ev.kv is not None and ev.kv.value == b"2"
        res = await s.create("/k/b", b"3")
        assert res.revision == 3  # revisions keep increasing across restarts
        w.close()
    finally:
        await s.close()


async def test_compaction_drops_history_but_keeps_reads_at_the_compact_revision(store: SQLiteStorage) -> None:
    await store.create("/p/a", b"1")      # 1
    await store.update("/p/a", b"2", 1)   # 2
    await store.create("/p/b", b"b")      # 3
    await store.delete("/p/b", 3)         # 4
    await store.update("/p/a", b"3", 2)   # 5
    await store.compact(4)
    assert store.compact_revision == 4 and store.revision == 5
    at4 = await store.range("/p/", revision=4)
    assert [(kv.key, kv.value) for kv in at4.kvs] == [("/p/a", b"2")]
    with pytest.raises(CompactedError):
        await store.range("/p/", revision=3)
    w = store.watch("/p/", start_revision=4)
    with pytest.raises(CompactedError):
        await w.next(0.1)
    w = store.watch("/p/", start_revision=5)
    ev = await w.next(1)
    assert ev is not None and ev.prev_kv is not None and ev.prev_kv.value == b"2"
    w.close()
    with pytest.raises(CompactedError):
        await store.compact(4)


async def test_closing_the_store_ends_watches(tmp_path: Path) -> None:
    s = await SQLiteStorage.open(tmp_path)
    w = s.watch("/x/")
    waiter = asyncio.create_task(w.next())
    await asyncio.sleep(0)
    await s.close()
    with pytest.raises(WatchClosed):
        await waiter


async def test_one_server_per_data_dir(tmp_path: Path) -> None:
    first = await SQLiteStorage.open(tmp_path)
    try:
        with pytest.raises(Exception, match="in use by another svcnet apiserver"):
            await SQLiteStorage.open(tmp_path)
    finally:
        await first.close()
    again = await SQLiteStorage.open(tmp_path)  # the lock went with the first store
    await again.close()


async def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "store.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(Exception, match="cannot open .*store.db"):
        await SQLiteStorage.open(tmp_path)
