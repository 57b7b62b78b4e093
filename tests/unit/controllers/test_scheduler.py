"""Scheduler: which node a pod goes to, and why none when none fits."""

from __future__ import annotations

from typing import Any

import pytest

from svcnet.controlplane.controllers.scheduler import binding, count_pods, needs_scheduling, schedule

Obj = dict[str, Any]


def node(name: str, *, ready: str = "True", labels: Obj | None = None, taints: list[Obj] | None = None,
         cordoned: bool = False, max_pods: int | None = None) -> Obj:
    n: Obj = {"metadata": {"name": name, "labels": labels or {}},
              "spec": {"taints": taints or [], "unschedulable": cordoned},
              "status": {"conditions": [{"type": "Ready", "status": ready}]}}
    if max_pods is not None:
        n["status"]["allocatable"] = {"pods": str(max_pods)}
    return n


def pod(name: str = "p", *, node_name: str = "", selector: Obj | None = None,
        tolerations: list[Obj] | None = None, phase: str = "Pending", scheduler: str | None = None) -> Obj:
    spec: Obj = {"nodeName": node_name, "nodeSelector": selector or {}, "tolerations": tolerations or []}
    if scheduler:
        spec["schedulerName"] = scheduler
    return {"metadata": {"name": name, "namespace": "default", "uid": "u1"}, "spec": spec,
            "status": {"phase": phase}}


NODES = [node("a"), node("b"), node("c")]


@pytest.mark.parametrize("p, nodes, counts, expected", [
    pytest.param(pod(), NODES, {}, "a", id="tie-goes-to-first-name"),
    pytest.param(pod(), NODES, {"a": 2, "b": 1, "c": 3}, "b", id="fewest-pods"),
    pytest.param(pod(), [node("a", ready="False"), node("b")], {"b": 9}, "b", id="not-ready-skipped"),
    pytest.param(pod(), [node("a", ready="Unknown"), node("b")], {"b": 9}, "b", id="unknown-skipped"),
    pytest.param(pod(), [node("a", cordoned=True), node("b")], {"b": 9}, "b", id="cordoned-skipped"),
    pytest.param(pod(selector={"disk": "ssd"}), [node("a"), node("b", labels={"disk": "ssd"})],
                 {"b": 5}, "b", id="node-selector"),
    pytest.param(pod(), [node("a", taints=[{"key": "k", "value": "v", "effect": "NoSchedule"}]), node("b")],
                 {"b": 5}, "b", id="untolerated-taint"),
    pytest.param(pod(tolerations=[{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}]),
                 [node("a", taints=[{"key": "k", "value": "v", "effect": "NoSchedule"}]), node("b")],
                 {"b": 5}, "a", id="tolerated-taint"),
    pytest.param(pod(tolerations=[{"operator": "Exists"}]), [node("a", ready="False"), node("b")],
                 {"b": 5}, "a", id="tolerate-everything"),
    pytest.param(pod(), [node("a", taints=[{"key": "k", "effect": "PreferNoSchedule"}])], {}, "a",
                 id="prefer-no-schedule-ignored"),
    pytest.param(pod(), [node("a", max_pods=2), node("b")], {"a": 0, "b": 5}, "a", id="room-left"),
    pytest.param(pod(), [node("a", max_pods=2), node("b")], {"a": 2, "b": 5}, "b", id="full-node"),
])
def test_choice(p: Obj, nodes: list[Obj], counts: dict[str, int], expected: str) -> None:
    assert schedule(p, nodes, counts).node == expected


def test_unschedulable_message_counts_reasons() -> None:
    nodes = [node("a", ready="False"), node("b", labels={"disk": "hdd"}), node("c", labels={"disk": "hdd"})]
    d = schedule(pod(selector={"disk": "ssd"}), nodes, {})
    assert d.node is None
    assert d.message == ("0/3 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, "
                         "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }.")
    assert schedule(pod(), [], {}).message == "0/0 nodes are available."


@pytest.mark.parametrize("p, expected", [
    pytest.param(pod(), True, id="pending"),
    pytest.param(pod(node_name="a"), False, id="bound"),
    pytest.param(pod(phase="Failed"), False, id="finished"),
    pytest.param(pod(scheduler="other"), False, id="other-scheduler"),
    pytest.param(pod(scheduler="default-scheduler"), True, id="default-scheduler"),
])
def test_needs_scheduling(p: Obj, expected: bool) -> None:
    assert needs_scheduling(p) is expected


def test_count_pods_ignores_finished_and_unbound() -> None:
    pods = [pod("1", node_name="a", phase="Running"), pod("2", node_name="a", phase="Succeeded"),
            pod("3"), pod("4", node_name="b", phase="Running")]
    assert count_pods(pods) == {"a": 1, "b": 1}


def test_binding_object() -> None:
    assert binding(pod("web-1"), "b") == {
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "web-1", "namespace": "default", "uid": "u1"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "b"}}
