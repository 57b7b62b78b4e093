"""Informer contract: differences only, tombstones unwrapped, late handlers replayed."""

from __future__ import annotations

from typing import Any

from svcnet.apiclient.informer import Informer, label_index
from svcnet.apiclient.resources import ENDPOINT_SLICES, SERVICES


def svc(name: str, rv: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels}}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_add(self, obj: dict[str, Any]) -> None:
        self.events.append(("add", obj["metadata"]["name"]))

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.events.append(("update", new["metadata"]["name"]))

    def on_delete(self, obj: dict[str, Any]) -> None:
        self.events.append(("delete", obj["metadata"]["name"]))


def test_replace_delivers_only_differences() -> None:
    inf, rec = Informer(SERVICES), Recorder()
    inf.add_handler(rec)
    inf.replace([svc("a", "1"), svc("b", "2")], "2")
    assert inf.has_synced
    inf.replace([svc("a", "1"), svc("b", "5"), svc("c", "6")], "6")
    assert rec.events == [("add", "a"), ("add", "b"), ("update", "b"), ("add", "c")]
    inf.replace([svc("c", "6")], "7")
    assert rec.events[-2:] == [("delete", "a"), ("delete", "b")]


def test_watch_events_and_last_state_on_delete() -> None:
    inf, rec = Informer(SERVICES), Recorder()
    inf.add_handler(rec)
    inf.replace([], "1")
    inf.apply("ADDED", svc("a", "2"))
    inf.apply("MODIFIED", svc("a", "3"))
    inf.apply("DELETED", svc("a", "4"))
    inf.apply("DELETED", svc("never-seen", "5"))
    assert rec.events == [("add", "a"), ("update", "a"), ("delete", "a")]


def test_late_handler_sees_current_state_and_indexes_follow() -> None:
    inf = Informer(ENDPOINT_SLICES, {"service": label_index("kubernetes.io/service-name")})
    slice_a = svc("web-abc", "1", **{"kubernetes.io/service-name": "web"})
    inf.replace([slice_a], "1")
    rec = Recorder()
    inf.add_handler(rec)
    assert rec.events == [("add", "web-abc")]
    assert [o["metadata"]["name"] for o in inf.by_index("service", "web")] == ["web-abc"]
    inf.apply("DELETED", slice_a)
    assert inf.by_index("service", "web") == []


def test_synced_callback_fires_once() -> None:
    inf, calls = Informer(SERVICES), []
    inf.add_synced_callback(lambda: calls.append(1))
    inf.replace([], "1")
    inf.replace([], "2")
    assert calls == [1]
