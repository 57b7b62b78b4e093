"""Node lifecycle: silence → Unknown, pods unready; heartbeats → back."""

from __future__ import annotations

from typing import Any

from svcnet.controlplane.controllers.clock import FakeClock
from svcnet.controlplane.controllers.node_lifecycle import NodeHealthTracker, plan_pod_updates

Obj = dict[str, Any]


def node(ready: str = "True", reason: str = "KubeletReady") -> Obj:
    return {"metadata": {"name": "n1"}, "status": {"conditions": [
        {"type": "Ready", "status": ready, "reason": reason, "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
        {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"}]}}


def lease(renew: str) -> Obj:
    return {"metadata": {"name": "n1", "namespace": "kube-node-lease"}, "spec": {"renewTime": renew}}


def pod(name: str, ready: bool = True, node_name: str = "n1", reason: str | None = None) -> Obj:
    cond: Obj = {"type": "Ready", "status": "True" if ready else "False"}
    if reason:
        cond["reason"] = reason
    return {"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node_name},
            "status": {"phase": "Running", "conditions": [cond],
                       "containerStatuses": [{"name": "c", "ready": True}]}}


def status_of(n: Obj, ctype: str = "Ready") -> tuple[str, str]:
    c = next(c for c in n["status"]["conditions"] if c["type"] == ctype)
    return c["status"], c["reason"]


def test_lease_silence_marks_unknown_and_recovery_restores() -> None:
    clock = FakeClock()
    t = NodeHealthTracker(grace_period=40)
    n = node()
    t.observe(n, lease("r0"), clock.now())
    clock.step(30)
    t.observe(n, lease("r1"), clock.now())  # renewed at 30 s
    clock.step(39)
    assert t.plan_node(n, clock.now()) is None  # 39 s since the renewal: still fine
    clock.step(2)
    t.observe(n, lease("r1"), clock.now())
    down = t.plan_node(n, clock.now())
    assert down is not None
    assert status_of(down) == ("Unknown", "NodeStatusUnknown")
    assert status_of(down, "MemoryPressure") == ("Unknown", "NodeStatusUnknown")
    assert {c["type"] for c in down["status"]["conditions"]} == \
        {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure"}
    assert t.plan_node(down, clock.now()) is None  # already Unknown: no rewrite
    clock.step(5)
    t.observe(down, lease("r2"), clock.now())
    up = t.plan_node(down, clock.now())
    assert up is not None
    assert status_of(up) == ("True", "KubeletReady")
    assert status_of(up, "MemoryPressure") == ("False", "KubeletHasSufficientMemory")
    # conditions the node never posted stay Unknown (NodeStatusNeverUpdated) until it does
    assert status_of(up, "DiskPressure") == ("Unknown", "NodeStatusNeverUpdated")
    assert t.plan_node(up, clock.now()) is None


def test_ready_heartbeat_counts_like_a_lease() -> None:
    clock = FakeClock()
    t = NodeHealthTracker(grace_period=40)
    n = node()
    t.observe(n, None, clock.now())
    clock.step(35)
    n["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:35Z"
    t.observe(n, None, clock.now())
    clock.step(35)
    assert t.plan_node(n, clock.now()) is None
    assert t.seconds_until_silent(n, clock.now()) == 5


def test_node_without_ready_condition_gets_startup_grace() -> None:
    clock = FakeClock()
    t = NodeHealthTracker(grace_period=40, startup_grace_period=60)
    n: Obj = {"metadata": {"name": "n1"}, "status": {}}
    t.observe(n, None, clock.now())
    clock.step(50)
    assert t.plan_node(n, clock.now()) is None
    clock.step(11)
    down = t.plan_node(n, clock.now())
    assert down is not None and status_of(down) == ("Unknown", "NodeStatusNeverUpdated")


def test_restart_while_node_down_restores_healthy_defaults() -> None:
    clock = FakeClock()
    t = NodeHealthTracker()
    n = node(ready="Unknown", reason="NodeStatusUnknown")
    t.observe(n, lease("r5"), clock.now())
    clock.step(1)
    t.observe(n, lease("r6"), clock.now())
    up = t.plan_node(n, clock.now())
    assert up is not None and status_of(up) == ("True", "KubeletReady")


def test_pods_unready_on_unready_node_and_back() -> None:
    pods = [pod("a"), pod("b", ready=False), pod("c", node_name="n2")]
    down = plan_pod_updates(node(ready="Unknown", reason="NodeStatusUnknown"), pods, 100.0)
    assert [p["metadata"]["name"] for p in down] == ["a"]
    assert down[0]["status"]["conditions"][0]["status"] == "False"
    assert down[0]["status"]["conditions"][0]["reason"] == "NodeNotReady"
    # b was already unready for its own reasons: not ours to restore
    pods2 = [down[0], pod("b", ready=False)]
    up = plan_pod_updates(node(), pods2, 200.0)
    assert [p["metadata"]["name"] for p in up] == ["a"]
    assert up[0]["status"]["conditions"][0]["status"] == "True"
    assert "reason" not in up[0]["status"]["conditions"][0]
    assert plan_pod_updates(node(), [up[0], pod("b", ready=False)], 300.0) == []


def test_pod_whose_container_died_meanwhile_stays_unready() -> None:
    p = pod("a", ready=False, reason="NodeNotReady")
    p["status"]["containerStatuses"][0]["ready"] = False
    [upd] = plan_pod_updates(node(), [p], 1.0)
    assert upd["status"]["conditions"][0]["status"] == "False"
    assert "reason" not in upd["status"]["conditions"][0]
