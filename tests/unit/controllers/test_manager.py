"""The controllers' write side over an in-memory API: events in, objects out."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from svcnet.apiclient.objects import Obj
from svcnet.apiclient.resources import DEPLOYMENTS, ENDPOINT_SLICES, LEASES, NODES, PODS, SERVICES
from svcnet.controlplane.controllers.base import StaleCache, WriteTracker
from svcnet.controlplane.controllers.clock import FakeClock
from svcnet.controlplane.controllers.manager import ControllerManager, ManagerConfig

from .fake_cluster import FakeCluster


async def eventually(pred: Callable[[], Any], timeout: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def service(name: str = "web") -> Obj:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "clusterIP": "10.96.0.20", "ipFamilies": ["IPv4"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}


def pod(name: str, ip: str, ready: bool = True, node: str = "n1", app: str = "web") -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "svcnet/echo"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "lastTransitionTime": "2026-01-01T00:00:01Z"}],
                       "containerStatuses": [{"name": "c", "ready": ready}]}}


def node(name: str, ready: str = "True") -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {}},
            "spec": {}, "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady"}]}}


def deployment(replicas: int) -> Obj:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "svcnet/echo"}]}}}}


def slice_ips(c: FakeCluster) -> dict[str, bool]:
    return {e["addresses"][0]: e["conditions"]["ready"]
            for s in c.objects(ENDPOINT_SLICES) for e in s["endpoints"]}


@pytest.fixture
async def running() -> Any:
    made: list[asyncio.Task[None]] = []

    def start(c: FakeCluster, clock: FakeClock | None = None, **cfg: Any) -> ControllerManager:
        m = ControllerManager(c, ManagerConfig(node_monitor_period=0.02, **cfg), clock or FakeClock())
        made.append(asyncio.create_task(m.run()))
        return m

    yield start
    for t in made:
        t.cancel()
    await asyncio.gather(*made, return_exceptions=True)


async def test_endpointslices_follow_pods_and_service(running: Any) -> None:
    c = FakeCluster()
    c.put(SERVICES, service())
    c.put(PODS, pod("a", "10.244.1.2"))
    c.put(PODS, pod("other", "10.244.1.9", app="other"))
    running(c, controllers=("endpointslice",))
    await eventually(lambda: slice_ips(c) == {"10.244.1.2": True})
    [s] = c.objects(ENDPOINT_SLICES)
    assert s["metadata"]["name"].startswith("web-")
    assert s["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]
    c.put(PODS, pod("a", "10.244.1.2", ready=False))
    c.put(PODS, pod("b", "10.244.1.3"))
    await eventually(lambda: slice_ips(c) == {"10.244.1.2": False, "10.244.1.3": True})
    assert len(c.objects(ENDPOINT_SLICES)) == 1  # updated in place
    c.remove(SERVICES, "default/web")
    await eventually(lambda: not c.objects(ENDPOINT_SLICES))


async def test_no_rewrites_when_nothing_changed(running: Any) -> None:
    c = FakeCluster()
    c.put(SERVICES, service())
    c.put(PODS, pod("a", "10.244.1.2"))
    m = running(c, controllers=("endpointslice",))
    await eventually(lambda: slice_ips(c))
    writes = len(c.client.calls)
    c.put(PODS, {**pod("a", "10.244.1.2"), "metadata": {**pod("a", "x")["metadata"], "annotations": {"x": "y"}}})
    await eventually(lambda: m.controllers["endpointslice"].syncs >= 3)
    await asyncio.sleep(0.05)
    assert len(c.client.calls) == writes


@pytest.mark.parametrize("binding", [True, False], ids=["binding", "update-nodename"])
async def test_scheduler_binds_pending_pods_spread(running: Any, binding: bool) -> None:
    c = FakeCluster()
    c.serve_binding = binding
    c.put(NODES, node("n1"))
    c.put(NODES, node("n2"))
    c.put(NODES, node("n3", ready="False"))
    for i in range(4):
        p = pod(f"p{i}", f"10.244.1.{i + 2}", node="")
        c.put(PODS, p)
    running(c, controllers=("scheduler",))
    await eventually(lambda: all(p["spec"].get("nodeName") for p in c.objects(PODS)))
    placed = sorted(p["spec"]["nodeName"] for p in c.objects(PODS))
    assert placed == ["n1", "n1", "n2", "n2"]
    assert any(k == ("bind" if binding else "update") for k, _, _ in c.client.calls)


async def test_unschedulable_pod_gets_condition_then_scheduled(running: Any) -> None:
    c = FakeCluster()
    c.put(NODES, node("n1", ready="False"))
    c.put(PODS, pod("p", "10.244.1.2", node=""))
    running(c, controllers=("scheduler",))

    def condition() -> Any:
        conds = c.store[PODS]["default/p"]["status"]["conditions"]
        return next((x for x in conds if x["type"] == "PodScheduled"), None)

    cond = await eventually(condition)
    assert cond["reason"] == "Unschedulable" and "1 node(s) had untolerated taint" in cond["message"]
    c.put(NODES, node("n1"))
    await eventually(lambda: c.store[PODS]["default/p"]["spec"].get("nodeName") == "n1")


async def test_deployment_creates_replaces_scales(running: Any) -> None:
    c = FakeCluster()
    c.put(DEPLOYMENTS, deployment(3))
    running(c, controllers=("deployment",))
    await eventually(lambda: len(c.objects(PODS)) == 3)
    names = sorted(p["metadata"]["name"] for p in c.objects(PODS))
    assert all(n.startswith("web-") and len(n.split("-")) == 3 for n in names)
    c.remove(PODS, f"default/{names[0]}")
    await eventually(lambda: len(c.objects(PODS)) == 3 and names[0] not in {p["metadata"]["name"] for p in c.objects(PODS)})
    d = c.store[DEPLOYMENTS]["default/web"]
    c.put(DEPLOYMENTS, {**d, "spec": {**d["spec"], "replicas": 1}})
    await eventually(lambda: len(c.objects(PODS)) == 1)
    await eventually(lambda: c.store[DEPLOYMENTS]["default/web"].get("status", {}).get("replicas") == 1)
    c.remove(DEPLOYMENTS, "default/web")
    await eventually(lambda: not c.objects(PODS))


async def test_deployment_waits_for_its_own_creations_to_show() -> None:
    c = FakeCluster()
    c.put(DEPLOYMENTS, deployment(2))
    m = ControllerManager(c, ManagerConfig(controllers=("deployment",)), FakeClock())
    for inf in c.informers.values():
        inf.replace([dict(o) for o in c.store[inf.resource].values()])
    ctl = m.controllers["deployment"]
    c.deliver = False  # the watch lags: our creations are not in the cache yet
    await ctl.sync("default/web")
    await ctl.sync("default/web")
    assert len(c.objects(PODS)) == 2  # not 4
    c.flush()
    await ctl.sync("default/web")
    assert len(c.objects(PODS)) == 2


async def test_node_lifecycle_lease_timeout_and_recovery(running: Any) -> None:
    c = FakeCluster()
    clock = FakeClock()
    c.put(NODES, node("n1"))
    lease: Obj = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                  "metadata": {"name": "n1", "namespace": "kube-node-lease"},
                  "spec": {"holderIdentity": "n1", "renewTime": "2026-01-01T00:00:00.000000Z"}}
    c.put(LEASES, lease)
    c.put(PODS, pod("a", "10.244.1.2"))
    c.put(PODS, pod("b", "10.244.2.2", node="n2"))
    m = running(c, clock, controllers=("node-lifecycle",), node_monitor_grace_period=40.0)
    ctl = m.controllers["node-lifecycle"]
    await eventually(lambda: ctl.syncs >= 2)
    clock.step(39)
    await eventually(lambda: ctl.syncs >= 6)
    assert c.store[NODES]["n1"]["status"]["conditions"][0]["status"] == "True"

    def ready(kind: Any, key: str) -> str:
        return str(next(x["status"] for x in c.store[kind][key]["status"]["conditions"] if x["type"] == "Ready"))

    clock.step(2)
    await eventually(lambda: ready(NODES, "n1") == "Unknown" and ready(PODS, "default/a") == "False")
    assert ready(PODS, "default/b") == "True"  # other node
    c.put(LEASES, {**lease, "spec": {**lease["spec"], "renewTime": "2026-01-01T00:00:45.000000Z"}})
    await eventually(lambda: ready(NODES, "n1") == "True" and ready(PODS, "default/a") == "True")


async def test_endpointslices_not_planned_from_a_cache_behind_our_writes() -> None:
    c = FakeCluster()
    c.put(SERVICES, service())
    c.put(PODS, pod("a", "10.244.1.2"))
    m = ControllerManager(c, ManagerConfig(controllers=("endpointslice",)), FakeClock())
    for inf in c.informers.values():
        inf.replace([dict(o) for o in c.store[inf.resource].values()])
    ctl = m.controllers["endpointslice"]
    c.deliver = False  # our slice is created, but the watch has not brought it yet
    await ctl.sync("default/web")
    with pytest.raises(StaleCache):
        await ctl.sync("default/web")  # planning now would create a second slice
    assert len(c.objects(ENDPOINT_SLICES)) == 1
    c.flush()
    await ctl.sync("default/web")
    assert len(c.objects(ENDPOINT_SLICES)) == 1


def test_write_tracker() -> None:
    t = WriteTracker(ttl=60)
    t.wrote("k", "a", "10")
    t.wrote("k", "b", None)
    with pytest.raises(StaleCache):
        t.check("k", {"a": "9", "b": "5"})
    t.observed("k", "a", "12")  # a newer version than ours: settled
    with pytest.raises(StaleCache):
        t.check("k", {"a": "12", "b": "5"})  # b is deleted by us but still cached
    t.check("k", {"a": "12"})
    t.wrote("k", "c", "20")
    t.observed("k", "c", None)  # deleted by someone else before we looked: settled
    t.check("k", {})
    expired = WriteTracker(ttl=0)
    expired.wrote("k", "a", "10")
    expired.check("k", {})
