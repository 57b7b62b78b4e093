"""Registry watches: initial events, resume from a resourceVersion (also after restart),
selector transitions, DELETED with a new RV, 410 once compacted, bookmarks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.store import Registry

from .conftest import svc


async def take(stream: AsyncIterator[tuple[str, dict[str, Any]]], n: int,
               timeout: float = 2.0) -> list[tuple[str, str, str]]:
    """n events as (type, name, resourceVersion)."""
    out = []
    for _ in range(n):
        typ, obj = await asyncio.wait_for(stream.__anext__(), timeout)
        out.append((typ, obj["metadata"].get("name", ""), obj["metadata"]["resourceVersion"]))
    return out


async def test_rv_zero_starts_with_synthetic_added_events(registry: Registry) -> None:
    await registry.create(k.SERVICES, "default", svc("web"))
    stream = registry.watch(k.SERVICES, "default", resource_version="0")
    events = await take(stream, 2)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "kubernetes"), ("ADDED", "web")]
    await registry.create(k.SERVICES, "default", svc("api"))
    (typ, name, rv), = await take(stream, 1)
    assert (typ, name) == ("ADDED", "api") and int(rv) == registry.current_revision
    await stream.aclose()


async def test_watch_from_rv_replays_exactly_what_followed(registry: Registry) -> None:
    listed = await registry.list(k.SERVICES, "default")
    rv = listed["metadata"]["resourceVersion"]
    web, _ = await registry.create(k.SERVICES, "default", svc("web"))
    web["metadata"]["labels"] = {"x": "y"}
    await registry.update(k.SERVICES, "default", "web", web)
    await registry.delete(k.SERVICES, "default", "web")
    stream = registry.watch(k.SERVICES, "default", resource_version=rv)
    events = await take(stream, 3)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "web"), ("MODIFIED", "web"), ("DELETED", "web")]
    rvs = [int(r) for _, _, r in events]
    assert rvs == sorted(rvs) and rvs[-1] == registry.current_revision  # DELETED carries a new RV
    await stream.aclose()


async def test_namespace_scoping(registry: Registry) -> None:
    await registry.create(k.NAMESPACES, None, {"metadata": {"name": "other"}})
    stream = registry.watch(k.SERVICES, "other", resource_version=str(registry.current_revision))
    await registry.create(k.SERVICES, "default", svc("not-mine"))
    await registry.create(k.SERVICES, "other", svc("mine"))
    (typ, name, _), = await take(stream, 1)
    assert (typ, name) == ("ADDED", "mine")
    await stream.aclose()


async def test_selector_transitions_become_added_and_deleted(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("web"))
    stream = registry.watch(k.SERVICES, "default", label_selector="app=web",
                            resource_version=out["metadata"]["resourceVersion"])
    out["metadata"]["labels"] = {"app": "web"}
    out, _ = await registry.update(k.SERVICES, "default", "web", out)          # enters
    out["metadata"]["labels"] = {"app": "web", "v": "2"}
    out, _ = await registry.update(k.SERVICES, "default", "web", out)          # stays
    out["metadata"]["labels"] = {"app": "other"}
    left, _ = await registry.update(k.SERVICES, "default", "web", out)         # leaves
    events = await take(stream, 3)
    assert [t for t, _, _ in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[2][2] == left["metadata"]["resourceVersion"]
    await stream.aclose()


async def test_single_object_watch_by_field_selector(registry: Registry) -> None:
    await registry.create(k.SERVICES, "default", svc("a"))
    await registry.create(k.SERVICES, "default", svc("b"))
    stream = registry.watch(k.SERVICES, "default", field_selector="metadata.name=b", resource_version="0")
    assert [(t, n) for t, n, _ in await take(stream, 1)] == [("ADDED", "b")]
    await registry.patch(k.SERVICES, "default", "a", "application/merge-patch+json",
                         b'{"metadata":{"labels":{"x":"1"}}}')
    await registry.patch(k.SERVICES, "default", "b", "application/merge-patch+json",
                         b'{"metadata":{"labels":{"x":"1"}}}')
    assert [(t, n) for t, n, _ in await take(stream, 1)] == [("MODIFIED", "b")]
    await stream.aclose()


async def test_compacted_rv_is_410_expired(registry: Registry) -> None:
    old = registry.current_revision
    await registry.create(k.SERVICES, "default", svc("web"))
    await registry.create(k.SERVICES, "default", svc("api"))
    await registry.storage.compact(registry.current_revision)
    stream = registry.watch(k.SERVICES, "default", resource_version=str(old))
    with pytest.raises(APIError) as info:
        await stream.__anext__()
    assert info.value.code == 410 and info.value.reason == "Expired"
    assert info.value.message.startswith(f"too old resource version: {old} (")
    # the list RV is still good to watch from
    rv = (await registry.list(k.SERVICES, "default"))["metadata"]["resourceVersion"]
    stream = registry.watch(k.SERVICES, "default", resource_version=rv)
    await registry.delete(k.SERVICES, "default", "api")
    assert [(t, n) for t, n, _ in await take(stream, 1)] == [("DELETED", "api")]
    await stream.aclose()


async def test_bookmarks_when_idle(registry: Registry) -> None:
    registry.bookmark_interval = 0.05
    stream = registry.watch(k.SERVICES, "default", resource_version=str(registry.current_revision),
                            allow_bookmarks=True)
    await registry.create(k.PODS, "default", {"metadata": {"name": "p"},
                                              "spec": {"containers": [{"name": "c", "image": "i"}]}})
    typ, obj = await asyncio.wait_for(stream.__anext__(), 2)
    assert typ == "BOOKMARK"
    assert obj == {"kind": "Service", "apiVersion": "v1",
                   "metadata": {"resourceVersion": str(registry.current_revision)}}
    await stream.aclose()


async def test_watch_resumes_across_restart(tmp_path: Path) -> None:
    reg = await Registry.open(tmp_path)
    await reg.bootstrap("192.0.2.10", 6443)
    rv = str(reg.current_revision)
    await reg.create(k.SERVICES, "default", svc("web"))
    await reg.close()
    reg = await Registry.open(tmp_path)
    try:
        stream = reg.watch(k.SERVICES, "default", resource_version=rv)
        assert [(t, n) for t, n, _ in await take(stream, 1)] == [("ADDED", "web")]
        await stream.aclose()
    finally:
        await reg.close()


async def test_bad_resource_version_is_400(registry: Registry) -> None:
    with pytest.raises(APIError) as info:
        await registry.watch(k.SERVICES, "default", resource_version="abc").__anext__()
    assert info.value.code == 400


async def test_streaming_list_initial_events_then_end_bookmark(registry: Registry) -> None:
    old = registry.current_revision
    await registry.create(k.SERVICES, "default", svc("web", selector={"app": "web"}))
    await registry.create(k.SERVICES, "default", svc("api"))
    await registry.storage.compact(registry.current_revision)
    # NotOlderThan a compacted resourceVersion: the current state, not 410
    stream = registry.watch(k.SERVICES, "default", resource_version=str(old), allow_bookmarks=True,
                            send_initial_events=True, field_selector="metadata.name!=kubernetes")
    events = await take(stream, 3)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "api"), ("ADDED", "web"), ("BOOKMARK", "")]
    assert events[2][2] == str(registry.current_revision)
    await registry.delete(k.SERVICES, "default", "api")
    assert [(t, n) for t, n, _ in await take(stream, 1)] == [("DELETED", "api")]
    await stream.aclose()
    stream = registry.watch(k.SERVICES, "default", allow_bookmarks=True, send_initial_events=True)
    names: list[str] = []
    end: dict[str, Any] = {}
    while True:
        typ, obj = await asyncio.wait_for(stream.__anext__(), 2)
        if typ == "BOOKMARK":
            end = obj
            break
        names.append(obj["metadata"]["name"])
    assert names == ["kubernetes", "web"]
    assert end == {"kind": "Service", "apiVersion": "v1",
                   "metadata": {"resourceVersion": str(registry.current_revision),
                                "annotations": {"k8s.io/initial-events-end": "true"}}}
    await stream.aclose()


async def test_streaming_list_without_initial_events_and_too_new(registry: Registry) -> None:
    stream = registry.watch(k.SERVICES, "default", send_initial_events=False)
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)  # the stream has started: only changes from now on
    await registry.create(k.SERVICES, "default", svc("web"))
    typ, obj = await asyncio.wait_for(first, 2)
    assert (typ, obj["metadata"]["name"]) == ("ADDED", "web")
    await stream.aclose()
    registry.freshness_timeout = 0.1  # it never gets there: no need to wait kube's 3 s
    stream = registry.watch(k.SERVICES, "default", send_initial_events=True, allow_bookmarks=True,
                            resource_version=str(registry.current_revision + 100))
    with pytest.raises(APIError) as info:
        await stream.__anext__()
    assert info.value.code == 504 and "Too large resource version" in info.value.message
