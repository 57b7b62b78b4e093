"""A list or streaming watch at a resourceVersion this API server's store has not reached
yet waits for it (kube's `waitUntilFreshAndBlock`, 3 s) before the 504
ResourceVersionTooLarge: the store here lags on purpose, as a watch cache behind etcd or
behind another API server's write does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.allocators import ServiceAllocator
from svcnet.controlplane.registry.store import Registry
from svcnet.controlplane.registry.watch import FRESHNESS_TIMEOUT
from svcnet.controlplane.storage.sqlite import SQLiteStorage

from .conftest import svc
from .lagging import LaggingStorage


@pytest.fixture
async def lagging(tmp_path: Path) -> AsyncIterator[tuple[Registry, LaggingStorage]]:
    storage = LaggingStorage(await SQLiteStorage.open(tmp_path / "data"))
    reg = await Registry.with_storage(storage, ServiceAllocator("10.96.0.0/12", "30000-32767"))
    await reg.bootstrap("192.0.2.10", 6443)
    try:
        yield reg, storage
    finally:
        await reg.close()


async def _pending(task: asyncio.Future[object]) -> bool:
    """Still waiting after a few loop turns and a short while (it did not 504 at once)."""
    await asyncio.sleep(0.2)
    return not task.done()


def test_kube_waits_three_seconds() -> None:
    assert FRESHNESS_TIMEOUT == 3.0 and Registry.freshness_timeout == 3.0


async def test_list_waits_for_a_lagging_store(lagging: tuple[Registry, LaggingStorage]) -> None:
    reg, storage = lagging
    for limit in (0, 1):  # NotOlderThan from cache, and the legacy exact read with a limit
        storage.hold()
        name = f"web-{limit}"
        created, _ = await reg.create(k.SERVICES, "default", svc(name))
        rv = created["metadata"]["resourceVersion"]
        assert reg.current_revision < int(rv)
        listing = asyncio.ensure_future(reg.list(k.SERVICES, "default", resource_version=rv, limit=limit))
        assert await _pending(listing)
        storage.release()
        out = await asyncio.wait_for(listing, FRESHNESS_TIMEOUT)
        assert int(out["metadata"]["resourceVersion"]) >= int(rv)
        if not limit:
            assert name in [i["metadata"]["name"] for i in out["items"]]


async def test_streaming_watch_waits_for_a_lagging_store(lagging: tuple[Registry, LaggingStorage]) -> None:
    reg, storage = lagging
    storage.hold()
    web, _ = await reg.create(k.SERVICES, "default", svc("web"))
    rv = web["metadata"]["resourceVersion"]
    stream = reg.watch(k.SERVICES, "default", resource_version=rv, send_initial_events=True,
                       allow_bookmarks=True)
    first = asyncio.ensure_future(stream.__anext__())
    assert await _pending(first)
    storage.release()
    names = []
    typ, obj = await asyncio.wait_for(first, FRESHNESS_TIMEOUT)
    while typ != "BOOKMARK":
        names.append(obj["metadata"]["name"])
        typ, obj = await asyncio.wait_for(stream.__anext__(), 2)
    assert names == ["kubernetes", "web"]
    assert int(obj["metadata"]["resourceVersion"]) >= int(rv)
    await stream.aclose()


async def test_too_large_after_the_wait(lagging: tuple[Registry, LaggingStorage]) -> None:
    reg, storage = lagging
    reg.freshness_timeout = 0.3  # the 3 s of kube, shortened: the store never catches up here
    storage.hold()
    web, _ = await reg.create(k.SERVICES, "default", svc("web"))
    rv = web["metadata"]["resourceVersion"]
    listing = asyncio.ensure_future(reg.list(k.SERVICES, "default", resource_version=rv))
    stream = reg.watch(k.SERVICES, "default", resource_version=rv, send_initial_events=True)
    watching = asyncio.ensure_future(stream.__anext__())
    for task in (listing, watching):
        with pytest.raises(APIError) as info:
            await asyncio.wait_for(task, 5)
        err = info.value
        assert err.code == 504
        assert err.message == f"Too large resource version: {rv}, current: {reg.current_revision}"
        assert (err.details or {})["causes"] == [{"reason": "ResourceVersionTooLarge",
                                                   "message": "Too large resource version"}]
        assert (err.details or {})["retryAfterSeconds"] == 1
    await stream.aclose()
