"""The storage contract (`storage/interface.py`): revisions, compare-and-swap, MVCC reads,
watch, compaction. Every revision is counted from `base = store.revision` at the start,
so the same tests hold on any backend: here on a fresh SQLite file, and unchanged on a
shared etcd in tests/integration/controlplane_etcd/test_storage_contract.py, which
imports them and replaces the `store` fixture. SQLite's own behaviour (reopening the
file, the data-dir lock) is in test_sqlite_storage.py.

Keys live under /registry, the registry's root, so on etcd they take the watch-cache
path the apiserver uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from svcnet.controlplane.storage import (
    CompactedError, Compare, Delete, FutureRevisionError, Put, SQLiteStorage, Storage, WatchClosed,
)

R = "/registry"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Storage]:
    s = await SQLiteStorage.open(tmp_path)
    try:
        yield s
    finally:
        await s.close()


async def test_every_write_bumps_the_revision_once(store: Storage) -> None:
    base = store.revision
    r1 = await store.create(f"{R}/r/a", b"1")
    r2 = await store.txn([], [Put(f"{R}/r/b", b"2"), Put(f"{R}/r/c", b"3")])
    assert (r1.revision, r2.revision, store.revision) == (base + 1, base + 2, base + 2)
    kv = await store.get(f"{R}/r/c")
    assert kv is not None and (kv.create_revision, kv.mod_revision, kv.version) == (base + 2, base + 2, 1)
    assert r2.kvs[f"{R}/r/b"].mod_revision == base + 2 and r2.prev == {f"{R}/r/b": None, f"{R}/r/c": None}


async def test_create_fails_when_present_and_reports_the_current_value(store: Storage) -> None:
    created = await store.create(f"{R}/r/a", b"1")
    res = await store.create(f"{R}/r/a", b"other")
    assert not res.succeeded
    current = res.current[f"{R}/r/a"]
    assert current is not None and current.value == b"1" and current.mod_revision == created.revision
    assert store.revision == created.revision


async def test_update_and_delete_are_compare_and_swap_on_mod_revision(store: Storage) -> None:
    created = await store.create(f"{R}/r/a", b"1")
    updated = await store.update(f"{R}/r/a", b"2", created.revision)
    assert updated.succeeded and updated.revision == created.revision + 1
    assert updated.prev[f"{R}/r/a"] is not None and updated.prev[f"{R}/r/a"].value == b"1"  # type: ignore[union-attr]
    stale = await store.update(f"{R}/r/a", b"3", created.revision)
    assert not stale.succeeded and stale.current[f"{R}/r/a"].mod_revision == updated.revision  # type: ignore[union-attr]
    assert not (await store.delete(f"{R}/r/a", created.revision)).succeeded
    kv = await store.get(f"{R}/r/a")
    assert kv is not None and kv.value == b"2" and kv.version == 2
    assert kv.create_revision == created.revision and kv.mod_revision == updated.revision
    gone = await store.delete(f"{R}/r/a", updated.revision)
    assert gone.succeeded and gone.prev[f"{R}/r/a"].value == b"2"  # type: ignore[union-attr]
    assert await store.get(f"{R}/r/a") is None


async def test_multi_key_txn_is_all_or_nothing(store: Storage) -> None:
    await store.create(f"{R}/alloc/10.0.0.5", b"x")
    base = store.revision
    res = await store.txn([Compare(f"{R}/svc/a", 0), Compare(f"{R}/alloc/10.0.0.5", 0)],
                          [Put(f"{R}/svc/a", b"svc"), Put(f"{R}/alloc/10.0.0.5", b"a")])
    assert not res.succeeded
    assert res.current[f"{R}/svc/a"] is None and res.current[f"{R}/alloc/10.0.0.5"] is not None
    assert await store.get(f"{R}/svc/a") is None
    assert store.revision == base


async def test_deleting_an_absent_key_writes_nothing(store: Storage) -> None:
    base = store.revision
    res = await store.txn([], [Delete(f"{R}/nope")])
    assert res.succeeded and res.revision == base and store.revision == base
    assert res.prev == {f"{R}/nope": None}


async def test_a_key_may_appear_once_per_txn(store: Storage) -> None:
    with pytest.raises(Exception, match="duplicate key"):
        await store.txn([], [Put(f"{R}/a", b"1"), Delete(f"{R}/a")])


async def test_range_is_ordered_limited_and_counts_the_rest(store: Storage) -> None:
    for name in ("c", "a", "b"):
        await store.create(f"{R}/p/{name}", name.encode())
    await store.create(f"{R}/q/z", b"z")  # another prefix
    last = await store.create(f"{R}/p0", b"not under /p/")
    page = await store.range(f"{R}/p/", limit=2)
    assert [kv.key for kv in page.kvs] == [f"{R}/p/a", f"{R}/p/b"]
    assert page.more and page.count == 3 and page.revision == last.revision
    rest = await store.range(f"{R}/p/", start=f"{R}/p/b\x00", revision=page.revision)
    assert [kv.key for kv in rest.kvs] == [f"{R}/p/c"] and not rest.more and rest.count == 1


async def test_reads_at_a_past_revision_see_that_revision(store: Storage) -> None:
    a1 = await store.create(f"{R}/p/a", b"a1")
    b1 = await store.create(f"{R}/p/b", b"b1")
    await store.update(f"{R}/p/a", b"a2", a1.revision)
    await store.delete(f"{R}/p/b", b1.revision)
    then = await store.range(f"{R}/p/", revision=b1.revision)
    assert [(kv.key, kv.value) for kv in then.kvs] == [(f"{R}/p/a", b"a1"), (f"{R}/p/b", b"b1")]
    assert then.revision == b1.revision
    now = await store.range(f"{R}/p/")
    assert [(kv.key, kv.value) for kv in now.kvs] == [(f"{R}/p/a", b"a2")]
    old = await store.get(f"{R}/p/a", revision=b1.revision)
    assert old is not None and old.value == b"a1" and old.mod_revision == a1.revision
    with pytest.raises(FutureRevisionError):
        await store.get(f"{R}/p/a", revision=store.revision + 1000)


async def test_watch_replays_history_then_streams_live_events(store: Storage) -> None:
    first = await store.create(f"{R}/w/a", b"1")
    second = await store.update(f"{R}/w/a", b"2", first.revision)
    other = await store.create(f"{R}/other/x", b"x")
    w = store.watch(f"{R}/w/", start_revision=second.revision)
    ev = await w.next(2)
    assert ev is not None and ev.revision == second.revision and ev.kv is not None and ev.kv.value == b"2"
    assert ev.prev_kv is not None and ev.prev_kv.value == b"1" and not ev.is_create
    assert await w.next(0.05) is None
    assert w.progress_revision == other.revision  # nothing under the prefix up to there
    gone = await store.delete(f"{R}/w/a", second.revision)
    ev = await w.next(2)
    assert ev is not None and ev.type == "DELETE" and ev.kv is None and ev.revision == gone.revision
    assert ev.prev_kv is not None and ev.prev_kv.value == b"2"
    w.close()
    with pytest.raises(WatchClosed):
        await w.next(0.01)


async def test_watch_from_now_sees_only_later_writes(store: Storage) -> None:
    await store.create(f"{R}/w/a", b"1")
    w = store.watch(f"{R}/w/")
    later = await store.create(f"{R}/w/b", b"2")
    ev = await w.next(2)
    assert ev is not None and ev.key == f"{R}/w/b" and ev.is_create and ev.revision == later.revision
    w.close()
    with pytest.raises(WatchClosed):
        await w.next(0.01)


async def test_concurrent_writers_are_seen_by_a_watch_in_revision_order(store: Storage) -> None:
    base = store.revision
    w = store.watch(f"{R}/c/", base + 1)
    results = await asyncio.gather(*(store.create(f"{R}/c/{i}", b"x") for i in range(40)))
    assert sorted(r.revision for r in results) == list(range(base + 1, base + 41))
    seen = []
    for _ in range(40):
        ev = await w.next(2)
        assert ev is not None
        seen.append(ev.revision)
    assert seen == list(range(base + 1, base + 41))
    w.close()


async def test_compaction_drops_history_but_keeps_reads_at_the_compact_revision(store: Storage) -> None:
    base = store.revision
    await store.create(f"{R}/p/a", b"1")                 # base+1
    await store.update(f"{R}/p/a", b"2", base + 1)       # base+2
    await store.create(f"{R}/p/b", b"b")                 # base+3
    await store.delete(f"{R}/p/b", base + 3)             # base+4
    await store.update(f"{R}/p/a", b"3", base + 2)       # base+5
    await store.compact(base + 4)
    assert store.compact_revision == base + 4 and store.revision == base + 5
    at4 = await store.range(f"{R}/p/", revision=base + 4)
    assert [(kv.key, kv.value) for kv in at4.kvs] == [(f"{R}/p/a", b"2")]
    with pytest.raises(CompactedError):
        await store.range(f"{R}/p/", revision=base + 3)
    w = store.watch(f"{R}/p/", start_revision=base + 4)
    with pytest.raises(CompactedError):
        await w.next(1)
    w = store.watch(f"{R}/p/", start_revision=base + 5)
    ev = await w.next(2)
    assert ev is not None and ev.revision == base + 5 and ev.prev_kv is not None and ev.prev_kv.value == b"2"
    w.close()
    with pytest.raises(CompactedError):
        await store.compact(base + 4)
    with pytest.raises(FutureRevisionError):
        await store.compact(base + 1000)


async def test_closing_the_store_ends_watches(store: Storage) -> None:
    w = store.watch(f"{R}/x/")
    waiter = asyncio.create_task(w.next())
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(WatchClosed):
        await asyncio.wait_for(waiter, 5)


async def test_the_readiness_check_passes_while_open(store: Storage) -> None:
    await store.check()
    await store.close()
    with pytest.raises(Exception, match="closed"):
        await store.check()
