"""The etcd backend's pure parts: the watch cache (state, history, fan-out, floors,
relist → CompactedError) and the gateway helpers, without an etcd."""

from __future__ import annotations

import asyncio

import pytest

from svcnet.controlplane.storage import CompactedError, KeyValue, WatchClosed, WatchEvent
from svcnet.controlplane.storage.etcd_cache import WatchCache
from svcnet.controlplane.storage.etcd_client import bytes_end, parse_etcd_url


def put(key: str, rev: int, value: bytes = b"v", prev: KeyValue | None = None) -> WatchEvent:
    kv = KeyValue(key, value, prev.create_revision if prev else rev, rev, prev.version + 1 if prev else 1)
    return WatchEvent("PUT", key, rev, kv, prev)


def delete(key: str, rev: int, prev: KeyValue | None = None) -> WatchEvent:
    return WatchEvent("DELETE", key, rev, None, prev)


def loaded(revision: int = 10, history_from: int | None = None) -> WatchCache:
    cache = WatchCache(max_history=5)
    cache.load([KeyValue("/r/s/a", b"a", 3, 3, 1), KeyValue("/r/s/c", b"c", 5, 5, 1)], revision,
               revision if history_from is None else history_from, relist=False)
    return cache


async def test_state_follows_events_and_ranges_are_ordered_and_counted() -> None:
    cache = loaded()
    cache.apply([put("/r/s/b", 11), put("/r/t/x", 11)])
    cache.apply([delete("/r/s/a", 12)])
    page = cache.range("/r/s/", "/r/s/", limit=1)
    assert [kv.key for kv in page.kvs] == ["/r/s/b"] and page.more and page.count == 2
    assert page.revision == 12 == cache.state_rev == cache.delivered
    rest = cache.range("/r/s/", "/r/s/b\x00", limit=0)
    assert [kv.key for kv in rest.kvs] == ["/r/s/c"] and not rest.more


async def test_a_delete_without_prev_kv_gets_the_cached_value() -> None:
    cache = loaded()
    w = cache.watch("/r/s/", 11)
    cache.apply([delete("/r/s/a", 11)])
    ev = await w.next(0)
    assert ev is not None and ev.prev_kv is not None and ev.prev_kv.value == b"a"


async def test_watches_replay_history_then_get_live_events_for_their_prefix() -> None:
    cache = loaded()
    cache.apply([put("/r/s/b", 11)])
    cache.apply([put("/r/t/x", 12)])
    w = cache.watch("/r/s/", 11)
    other = cache.watch("/r/t/", 13)
    cache.apply([put("/r/s/d", 13), put("/r/t/y", 13)])
    assert [(await w.next(0)).key, (await w.next(0)).key] == ["/r/s/b", "/r/s/d"]  # type: ignore[union-attr]
    assert await w.next(0.01) is None and w.progress_revision == 13
    assert (await other.next(0)).key == "/r/t/y"  # type: ignore[union-attr]
    w.close()
    with pytest.raises(WatchClosed):
        await w.next(0)


async def test_start_up_replay_fills_history_but_not_state() -> None:
    cache = loaded(revision=10, history_from=6)          # state at 10, replay from 7
    w = cache.watch("/r/s/", 7)
    assert w.progress_revision == 6                      # nothing delivered yet
    cache.apply([put("/r/s/z", 8)])                      # history only: state is newer
    assert "/r/s/z" not in cache.kvs and cache.state_rev == 10
    assert (await w.next(0)).revision == 8  # type: ignore[union-attr]
    cache.apply([put("/r/s/y", 11)])
    assert "/r/s/y" in cache.kvs and cache.state_rev == 11


async def test_history_is_bounded_and_older_starts_are_compacted() -> None:
    cache = loaded()
    for rev in range(11, 19):
        cache.apply([put(f"/r/s/k{rev}", rev)])
    assert len(cache.history) == 5 and cache.floor == 13
    w = cache.watch("/r/s/", 13)
    with pytest.raises(CompactedError):
        await w.next(0)
    assert (await cache.watch("/r/s/", 14).next(0)).revision == 14  # type: ignore[union-attr]


async def test_relist_ends_every_watch_with_compacted() -> None:
    cache = loaded()
    w = cache.watch("/r/s/", 11)
    cache.load([KeyValue("/r/s/q", b"q", 20, 20, 1)], 25, 25, relist=True)
    with pytest.raises(CompactedError):
        await w.next(0)
    assert list(cache.kvs) == ["/r/s/q"] and cache.floor == 25 and not cache.history


async def test_consistent_reads_wait_for_the_revision_or_our_own_foreign_writes() -> None:
    cache = loaded()
    assert cache.caught_up(10) and not cache.caught_up(11)
    waiter = asyncio.create_task(cache.wait(12, 2))
    await asyncio.sleep(0)
    cache.note_foreign(11)                     # our compaction bookkeeping, outside the prefix
    assert not waiter.done()
    cache.apply([put("/r/s/b", 12)])
    assert await waiter
    cache.note_foreign(13)
    assert cache.caught_up(13) and not await cache.wait(14, 0.01)


def test_gateway_helpers() -> None:
    assert bytes_end(b"/registry/") == b"/registry0" and bytes_end(b"a\xff") == b"b"
    assert bytes_end(b"\xff") == b"\x00"
    assert parse_etcd_url("etcd://10.0.0.1:2379,10.0.0.2:2379") == ["http://10.0.0.1:2379",
                                                                    "http://10.0.0.2:2379"]
    assert parse_etcd_url("https://[fd00::1]:2379") == ["https://[fd00::1]:2379"]
    for bad in ("", "etcd://", "etcd://host", "etcd://h:0", "ftp://h:1"):
        with pytest.raises(ValueError):
            parse_etcd_url(bad)
