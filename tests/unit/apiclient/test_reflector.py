"""Reflector against the fake API over a real socket: list then watch, resume after a
disconnect without loss or duplicates, relist on 410 delivering only differences,
bookmarks, backoff with a fake clock (no real sleeps)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest

from svcnet.apiclient.client import RestClient
from svcnet.apiclient.informer import Informer
from svcnet.apiclient.reflector import Backoff, Reflector
from svcnet.apiclient.resources import PODS, SERVICES

from .conftest import FakeClock, eventually
from .fake_api import FakeApi, status


def svc(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "labels": labels}, "spec": {}}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def on_add(self, obj: dict[str, Any]) -> None:
        self.events.append(("add", obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.events.append(("update", new["metadata"]["name"], new["metadata"]["resourceVersion"]))

    def on_delete(self, obj: dict[str, Any]) -> None:
        self.events.append(("delete", obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))


class Running:
    def __init__(self, reflector: Reflector, informer: Informer, rec: Recorder) -> None:
        self.reflector, self.informer, self.rec = reflector, informer, rec


@pytest.fixture
async def running(fake: FakeApi, client: RestClient, clock: FakeClock) -> AsyncIterator[Running]:
    fake.create(SERVICES, svc("a"))
    fake.create(SERVICES, svc("b"))
    informer, rec = Informer(SERVICES), Recorder()
    informer.add_handler(rec)
    refl = Reflector(client, SERVICES, informer, clock=clock, rand=lambda: 0.5, page_size=1)
    task = asyncio.create_task(refl.run())
    await asyncio.wait_for(informer.wait_for_sync(), 5)
    await eventually(lambda: len(fake.watchers) == 1)
    yield Running(refl, informer, rec)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def watch_queries(fake: FakeApi) -> list[dict[str, str]]:
    return [q for m, p, q in fake.requests if q.get("watch") == "true"]


def list_queries(fake: FakeApi) -> list[dict[str, str]]:
    return [q for m, p, q in fake.requests if m == "GET" and "watch" not in q and "continue" not in q]


async def test_list_then_watch_from_the_list_rv(fake: FakeApi, running: Running) -> None:
    assert running.rec.events == [("add", "a", "101"), ("add", "b", "102")]
    # First list at "0" (any), paginated; the watch starts exactly at the list's RV.
    assert list_queries(fake)[0] == {"limit": "1", "resourceVersion": "0"}
    w = watch_queries(fake)[0]
    assert w["resourceVersion"] == "102" and w["allowWatchBookmarks"] == "true"
    assert 300 <= int(w["timeoutSeconds"]) < 600
    fake.create(SERVICES, svc("c"))
    fake.update(SERVICES, {**fake.current(SERVICES)["default/a"], "spec": {"x": 1}})
    fake.delete(SERVICES, "default/b")
    await eventually(lambda: len(running.rec.events) == 5)
    assert running.rec.events[2:] == [("add", "c", "103"), ("update", "a", "104"), ("delete", "b", "105")]
    assert running.reflector.last_resource_version == "105"


async def test_disconnect_mid_watch_resumes_without_loss_or_duplicates(
        fake: FakeApi, running: Running) -> None:
    fake.create(SERVICES, svc("c"))
    await eventually(lambda: len(running.rec.events) == 3)
    # The connection dies, and while it is down the world keeps changing.
    fake.paused = True
    fake.create(SERVICES, svc("d"))
    fake.delete(SERVICES, "default/a")
    await fake.break_watches()
    fake.paused = False
    fake.update(SERVICES, {**fake.current(SERVICES)["default/c"], "spec": {"x": 1}})
    await eventually(lambda: len(running.rec.events) == 6)
    assert running.rec.events == [
        ("add", "a", "101"), ("add", "b", "102"), ("add", "c", "103"),
        ("add", "d", "104"), ("delete", "a", "105"), ("update", "c", "106")]
    assert [q["resourceVersion"] for q in watch_queries(fake)][:2] == ["102", "103"]
    assert running.reflector.stats.lists == 1  # resumed, never relisted
    assert running.reflector.stats.disconnects == 1
    assert sorted(running.informer.keys()) == ["default/b", "default/c", "default/d"]


async def test_410_relists_and_delivers_only_differences(fake: FakeApi, running: Running) -> None:
    fake.create(SERVICES, svc("keep"))
    await eventually(lambda: len(running.rec.events) == 3)
    fake.paused = True  # the watch stalls; history moves on and is compacted away
    fake.create(SERVICES, svc("new"))
    fake.update(SERVICES, {**fake.current(SERVICES)["default/b"], "spec": {"x": 1}})
    fake.delete(SERVICES, "default/a")
    fake.create(SERVICES, svc("short-lived"))
    fake.delete(SERVICES, "default/short-lived")
    fake.compact()
    await fake.break_watches()
    fake.paused = False
    await eventually(lambda: running.reflector.stats.lists == 2)
    await eventually(lambda: len(fake.watchers) == 1)
    # The relist shows only what differs; 'keep' is not re-added, the short-lived
    # object never appears, and the relist asked for "not older than" our last RV.
    # A deletion seen only by relisting carries the last state we knew.
    assert sorted(running.rec.events[3:]) == [("add", "new", "104"), ("delete", "a", "101"),
                                              ("update", "b", "105")]
    assert running.reflector.stats.relists_after_expired == 1
    assert list_queries(fake)[-1] == {"resourceVersion": "103"}
    assert watch_queries(fake)[-1]["resourceVersion"] == "108"
    fake.create(SERVICES, svc("after"))
    await eventually(lambda: running.rec.events[-1][:2] == ("add", "after"))


async def test_410_as_http_status_and_a_refused_relist(fake: FakeApi, running: Running) -> None:
    fake.watch_410_as_http = True
    fake.paused = True
    fake.create(SERVICES, svc("new"))
    fake.compact()
    # The relist at our last RV is refused too: fall back to the latest state.
    fake.fail_next("GET", 410, status(410, "Expired", "The resourceVersion for the provided list is too old."),
                   watch=False)
    await fake.break_watches()
    fake.paused = False
    await eventually(lambda: running.reflector.stats.lists == 2)
    assert list_queries(fake)[-2:] == [{"resourceVersion": "102"}, {"limit": "1"}]
    assert running.rec.events[-1] == ("add", "new", "103")


async def test_bookmarks_move_the_resume_point(fake: FakeApi, running: Running) -> None:
    fake.create(PODS, {"metadata": {"name": "p", "namespace": "default"}})  # rev moves, not ours
    fake.bookmark()
    await eventually(lambda: running.reflector.last_resource_version == "103")
    assert running.reflector.stats.bookmarks == 1
    assert running.rec.events == [("add", "a", "101"), ("add", "b", "102")]
    await fake.break_watches()
    await eventually(lambda: len(watch_queries(fake)) == 2)
    assert watch_queries(fake)[-1]["resourceVersion"] == "103"


async def test_backoff_on_failed_lists_then_sync(fake: FakeApi, client: RestClient, clock: FakeClock) -> None:
    fake.create(SERVICES, svc("a"))
    for _ in range(3):
        fake.fail_next("GET", 503, status(503, "ServiceUnavailable", "etcd is down"), watch=False)
    informer = Informer(SERVICES)
    refl = Reflector(client, SERVICES, informer, clock=clock, rand=lambda: 0.5)
    task = asyncio.create_task(refl.run())
    try:
        await asyncio.wait_for(informer.wait_for_sync(), 5)
        # 0.8, 1.6, 3.2 s, each stretched by half (jitter 1.0 x rand 0.5); no real sleep.
        assert clock.sleeps[:3] == pytest.approx([1.2, 2.4, 4.8])
        assert refl.stats.failures == 3 and informer.keys() == ["default/a"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_survives_forbidden_and_unreachable_servers(clock: FakeClock) -> None:
    client = RestClient("http://127.0.0.1:9", timeout=1.0)
    refl = Reflector(client, SERVICES, Informer(SERVICES), clock=clock, rand=lambda: 0.0)
    task = asyncio.create_task(refl.run())
    try:
        await eventually(lambda: refl.stats.failures >= 4)
        assert not task.done()
        assert clock.sleeps[:4] == [0.8, 1.6, 3.2, 6.4]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()


async def test_watch_that_cannot_start_backs_off_and_keeps_its_rv(fake: FakeApi, running: Running,
                                                                 clock: FakeClock) -> None:
    before = len(clock.sleeps)
    fake.fail_next("GET", 429, status(429, "TooManyRequests", "slow down"), {"Retry-After": "0"}, watch=True)
    fake.fail_next("GET", 429, status(429, "TooManyRequests", "slow down"), {"Retry-After": "0"}, watch=True)
    fake.fail_next("GET", 429, status(429, "TooManyRequests", "slow down"), {"Retry-After": "0"}, watch=True)
    fake.fail_next("GET", 429, status(429, "TooManyRequests", "slow down"), {"Retry-After": "0"}, watch=True)
    await fake.break_watches()
    # 1 + 3 client retries (Retry-After: 0) exhaust four 429s; the reflector backs off
    # and the sixth watch request succeeds.
    await eventually(lambda: len(watch_queries(fake)) == 6 and len(fake.watchers) == 1)
    assert len(clock.sleeps) > before
    assert {q["resourceVersion"] for q in watch_queries(fake)[1:]} == {"102"}
    assert running.reflector.stats.lists == 1


async def test_watch_rv_newer_than_the_server_relists_latest(fake: FakeApi, running: Running) -> None:
    fake.fail_next("GET", 504, status(504, "Timeout", "Too large resource version: 102, current: 90"),
                   {"Retry-After": "0"}, watch=True)
    for _ in range(3):  # the client's own retries of a Retry-After answer see the same
        fake.fail_next("GET", 504, status(504, "Timeout", "Too large resource version: 102, current: 90"),
                       {"Retry-After": "0"}, watch=True)
    await fake.break_watches()
    await eventually(lambda: running.reflector.stats.lists == 2 and len(fake.watchers) == 1)
    assert list_queries(fake)[-1] == {"limit": "1"}  # the latest state, not "not older than 102"


def test_backoff_grows_caps_and_resets_after_quiet(clock: FakeClock) -> None:
    b = Backoff(clock, initial=1, maximum=8, jitter=0.0, reset_after=60)
    assert [b.next() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    clock.now += 61
    assert b.next() == 1
    j = Backoff(clock, initial=1, jitter=1.0, rand=lambda: 0.99)
    assert 1.0 <= j.next() <= 2.0
