"""`svcnet controller-manager` against a real `svcnet apiserver`, driven by kubectl.

Each test starts its own apiserver and controller-manager processes (dynamic ports, tmp
data dirs, always stopped). What a user does goes through the real kubectl; what the
node agents would report is written through the API by `NodeStandIn`.
"""

from __future__ import annotations

import shutil
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from integration.controlplane.apiserver_process import ApiServer

from .cluster import Api, ControllerManager, NodeStandIn, Obj, ready_of, wait_for

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed"),
]


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(data_dir=tmp_path / "data", kubeconfig=tmp_path / "admin.kubeconfig",
                       cache_dir=tmp_path / "kube-cache", log=tmp_path / "apiserver.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_cm(apiserver: ApiServer, tmp_path: Path) -> Iterator[object]:
    started: list[ControllerManager] = []

    def start(*args: str, name: str = "cm") -> ControllerManager:
        cm = ControllerManager(apiserver.kubeconfig, tmp_path / f"{name}.log", args)
        cm.start()
        started.append(cm)
        return cm

    try:
        yield start
    finally:
        for cm in started:
            cm.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def endpoints(api: Api, service: str) -> dict[str, tuple[Any, Any, Any, Any]]:
    out = {}
    for s in api.slices(service):
        for e in s.get("endpoints") or []:
            c = e.get("conditions") or {}
            out[e["addresses"][0]] = (c.get("ready"), c.get("serving"), c.get("terminating"), e.get("nodeName"))
    return out


def test_deployment_service_and_scheduling_walkthrough(apiserver: ApiServer, start_cm: object) -> None:
    api = Api(apiserver)
    nodes = NodeStandIn(api, {"node-a": "10.244.1.0/24", "node-b": "10.244.2.0/24"})
    nodes.register(zones={"node-a": "zone-1", "node-b": "zone-2"})
    # Node lifecycle is exercised on its own below; here a slow CI must not make nodes NotReady.
    metrics_port = free_port()
    cm = start_cm("--controllers", "*,-node-lifecycle",  # type: ignore[operator]
                  "--metrics-bind-address", f"127.0.0.1:{metrics_port}")

    def logs() -> str:
        return f"--- controller-manager ---\n{cm.log_tail()}\n--- apiserver ---\n{apiserver.log_tail(1500)}"

    apiserver.kubectl("create", "deployment", "web", "--image=svcnet/echo", "--replicas=3")
    def scheduled() -> list[Obj] | None:
        p = api.pods(selector="app=web")
        return p if len(p) == 3 and all(x["spec"].get("nodeName") for x in p) else None

    pods = wait_for(scheduled, what="3 scheduled pods", logs=logs)
    placed = sorted(p["spec"]["nodeName"] for p in pods)
    assert placed in (["node-a", "node-a", "node-b"], ["node-a", "node-b", "node-b"])  # spread
    h = pods[0]["metadata"]["labels"]["pod-template-hash"]
    assert all(p["metadata"]["name"].startswith(f"web-{h}-") for p in pods)
    events = apiserver.kubectl_json("get", "events", "--field-selector", "involvedObject.kind=Deployment")["items"]
    assert sorted(e["message"] for e in events) == sorted(f"Created pod: {p['metadata']['name']}" for p in pods)

    apiserver.kubectl("expose", "deployment", "web", "--port", "80", "--target-port", "8080")
    def three_ready() -> dict[str, tuple[Any, Any, Any, Any]] | None:
        e = endpoints(api, "web")
        return e if len(e) == 3 and all(v[0] for v in e.values()) else None

    eps = wait_for(three_ready, tick=nodes.tick, what="3 ready endpoints", logs=logs)
    [sl] = api.slices("web")
    assert sl["addressType"] == "IPv4"
    assert sl["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    assert sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert sl["metadata"]["ownerReferences"][0]["kind"] == "Service"
    assert {v[3] for v in eps.values()} == {"node-a", "node-b"}
    zones = {e["nodeName"]: e.get("zone") for e in sl["endpoints"]}
    assert zones == {"node-a": "zone-1", "node-b": "zone-2"}
    out = apiserver.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web").stdout
    assert "8080" in out

    # A pod that stops being Ready stays in the slice as not ready.
    victim = sorted(p["metadata"]["name"] for p in api.pods(selector="app=web"))[0]
    nodes.unready_pods.add(victim)
    wait_for(lambda: sum(1 for v in endpoints(api, "web").values() if not v[0]) == 1,
             tick=nodes.tick, what="one not-ready endpoint", logs=logs)
    nodes.unready_pods.clear()

    # Deleting a pod: the Deployment replaces it and the Service follows.
    apiserver.kubectl("delete", "pod", victim, "--wait=false")
    wait_for(lambda: (p := api.pods(selector="app=web")) and len(p) == 3
             and victim not in {x["metadata"]["name"] for x in p}
             and len([v for v in endpoints(api, "web").values() if v[0]]) == 3,
             tick=nodes.tick, what="replacement pod ready in the slice", logs=logs)

    # Scale down, then a rolling update to a new template, watched by kubectl rollout status.
    # (`kubectl scale` needs the deployments/scale subresource, which is the apiserver's part.)
    apiserver.kubectl("patch", "deployment", "web", "-p", '{"spec":{"replicas":2}}')
    wait_for(lambda: len(api.pods(selector="app=web")) == 2 and len(endpoints(api, "web")) == 2,
             tick=nodes.tick, what="scaled to 2", logs=logs)
    apiserver.kubectl("set", "image", "deployment/web", "echo=svcnet/echo:v2")
    seen_total: list[int] = []

    def rolled() -> bool:
        pods = api.pods(selector="app=web")
        seen_total.append(len([p for p in pods if not p["metadata"].get("deletionTimestamp")]))
        return (len(pods) == 2 and all(c["image"] == "svcnet/echo:v2" for p in pods for c in p["spec"]["containers"])
                and all(ready_of(p) == "True" for p in pods))

    wait_for(rolled, tick=nodes.tick, timeout=60, what="rolling update done", logs=logs)
    assert max(seen_total) <= 3  # replicas 2 + maxSurge 25% (rounded up to 1)
    status = apiserver.kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    assert "successfully rolled out" in status.stdout
    new_ips = {p["status"]["podIP"] for p in api.pods(selector="app=web")}
    wait_for(lambda: set(endpoints(api, "web")) == new_ips, tick=nodes.tick, what="slice follows rollout",
             logs=logs)

    # The Service goes, and its slices with it.
    apiserver.kubectl("delete", "service", "web")
    wait_for(lambda: not api.slices("web"), what="slices removed", logs=logs)

    base = f"http://127.0.0.1:{metrics_port}"
    assert urllib.request.urlopen(base + "/readyz", timeout=5).read() == b"ok"
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    assert 'endpoint_slice_controller_changes_total{operation="create"} 1.0' in text
    assert 'scheduler_schedule_attempts_total{result="scheduled"}' in text
    assert 'workqueue_adds_total{name="deployment"}' in text


def test_node_lease_timeout_and_recovery(apiserver: ApiServer, start_cm: object) -> None:
    api = Api(apiserver)
    nodes = NodeStandIn(api, {"node-a": "10.244.1.0/24", "node-b": "10.244.2.0/24"})
    nodes.register()
    cm = start_cm("--node-monitor-grace-period", "2s", "--node-monitor-period", "200ms")  # type: ignore[operator]

    def logs() -> str:
        return f"--- controller-manager ---\n{cm.log_tail()}\n--- apiserver ---\n{apiserver.log_tail(1500)}"

    apiserver.kubectl("create", "deployment", "web", "--image=svcnet/echo", "--replicas=2")
    apiserver.kubectl("expose", "deployment", "web", "--port", "80", "--target-port", "8080")
    wait_for(lambda: (e := endpoints(api, "web")) and len(e) == 2 and all(v[0] for v in e.values())
             and {v[3] for v in e.values()} == {"node-a", "node-b"},
             tick=nodes.tick, what="one ready endpoint per node", logs=logs)

    def node_ready(name: str) -> str:
        return ready_of(api.call("GET", f"/api/v1/nodes/{name}"))

    # Renewing keeps the node Ready for longer than the grace period.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        nodes.tick()
        assert node_ready("node-a") == "True" and node_ready("node-b") == "True"
        time.sleep(0.1)

    # node-b's agent stops: after the grace period it is Unknown, its endpoint not ready.
    nodes.renewing.discard("node-b")
    wait_for(lambda: node_ready("node-b") == "Unknown", tick=nodes.tick, what="node-b Unknown", logs=logs)
    def b_not_ready() -> dict[str, tuple[Any, Any, Any, Any]] | None:
        e = endpoints(api, "web")
        return e if {v[3]: v[0] for v in e.values()} == {"node-a": True, "node-b": False} else None

    eps = wait_for(b_not_ready, tick=nodes.tick, what="node-b's endpoint not ready", logs=logs)
    assert node_ready("node-a") == "True"
    assert len(eps) == 2
    # It comes back when the Lease is renewed again.
    nodes.renewing.add("node-b")
    wait_for(lambda: node_ready("node-b") == "True"
             and all(v[0] for v in endpoints(api, "web").values()),
             tick=nodes.tick, what="node-b and its endpoint back", logs=logs)


def test_leader_election_failover(apiserver: ApiServer, start_cm: object) -> None:
    api = Api(apiserver)
    flags = ("--leader-elect", "--leader-elect-lease-duration", "2s", "--leader-elect-renew-deadline",
             "1500ms", "--leader-elect-retry-period", "200ms", "--controllers", "endpointslice")
    first = start_cm(*flags, name="cm1")  # type: ignore[operator]
    lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/svcnet-controller-manager"
    holder1 = wait_for(lambda: api.call("GET", lease_path, ok=(200, 404)).get("spec", {}).get("holderIdentity"),
                       what="a leader", logs=first.log_tail)
    second = start_cm(*flags, name="cm2")  # type: ignore[operator]
    api.call("POST", "/api/v1/namespaces/default/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "one"},
        "spec": {"selector": {"app": "one"}, "ports": [{"port": 80}]}})
    wait_for(lambda: api.slices("one"), what="slices from the leader", logs=first.log_tail)
    assert "successfully acquired lease" not in second.log_tail()
    first.stop(kill=True)
    holder2 = wait_for(lambda: (h := api.call("GET", lease_path)["spec"]["holderIdentity"]) != holder1 and h,
                       timeout=20, what="failover", logs=second.log_tail)
    assert holder2
    api.call("POST", "/api/v1/namespaces/default/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "two"},
        "spec": {"selector": {"app": "two"}, "ports": [{"port": 80}]}})
    wait_for(lambda: api.slices("two"), what="slices from the new leader", logs=second.log_tail)


HEADLESS = """\
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports:
  - {name: sql, port: 5432, targetPort: sql}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers:
  - {name: db, image: svcnet/echo, ports: [{name: sql, containerPort: 15432}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec:
  hostname: db-1
  subdomain: db
  containers:
  - {name: db, image: svcnet/echo, ports: [{name: sql, containerPort: 25432}]}
"""


def test_headless_named_ports_terminating_and_events(apiserver: ApiServer, start_cm: object) -> None:
    api = Api(apiserver)
    nodes = NodeStandIn(api, {"node-a": "10.244.1.0/24"})
    nodes.register()
    cm = start_cm("--controllers", "endpointslice,scheduler")  # type: ignore[operator]

    def logs() -> str:
        return f"--- controller-manager ---\n{cm.log_tail()}\n--- apiserver ---\n{apiserver.log_tail(1500)}"

    apiserver.kubectl("apply", "-f", "-", input=HEADLESS)
    wait_for(lambda: len(endpoints(api, "db")) == 2 and all(v[0] for v in endpoints(api, "db").values()),
             tick=nodes.tick, what="2 ready endpoints", logs=logs)
    slices = api.slices("db")
    # Pods resolve the named targetPort differently: one slice per port mapping.
    got = sorted((s["ports"][0]["port"], [e["hostname"] for e in s["endpoints"]]) for s in slices)
    assert got == [(15432, ["db-0"]), (25432, ["db-1"])]
    assert all(s["metadata"]["labels"]["service.kubernetes.io/headless"] == "" for s in slices)
    assert all(s["ports"][0]["name"] == "sql" for s in slices)

    # A pod being deleted gracefully stays, serving but not ready, while it shuts down.
    nodes.hold_deletions.add("db-1")
    apiserver.kubectl("delete", "pod", "db-1", "--wait=false")
    wait_for(lambda: sorted(v[:3] for v in endpoints(api, "db").values()) == [(False, True, True), (True, True, False)],
             tick=nodes.tick, what="db-1 terminating", logs=logs)
    nodes.hold_deletions.clear()
    wait_for(lambda: len(endpoints(api, "db")) == 1 and len(api.slices("db")) == 1,
             tick=nodes.tick, what="db-1 gone with its slice", logs=logs)

    events = apiserver.kubectl_json("get", "events", "--field-selector", "involvedObject.name=db-0")["items"]
    assert [(e["reason"], e["message"]) for e in events] == [("Scheduled", "Successfully assigned default/db-0 to node-a")]


def test_rollout_that_makes_no_progress_fails_rollout_status(apiserver: ApiServer, start_cm: object) -> None:
    api = Api(apiserver)
    nodes = NodeStandIn(api, {"node-a": "10.244.1.0/24"}, unready_images={"svcnet/echo:broken"})
    nodes.register()
    cm = start_cm("--controllers", "deployment,scheduler")  # type: ignore[operator]
    apiserver.kubectl("create", "deployment", "web", "--image=svcnet/echo", "--replicas=2")
    apiserver.kubectl("patch", "deployment", "web", "-p", '{"spec":{"progressDeadlineSeconds":2}}')
    wait_for(lambda: apiserver.kubectl("rollout", "status", "deployment/web", "--timeout=1s", check=False).returncode == 0,
             tick=nodes.tick, what="first rollout", logs=cm.log_tail)
    apiserver.kubectl("set", "image", "deployment/web", "echo=svcnet/echo:broken")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        nodes.tick()
        res = apiserver.kubectl("rollout", "status", "deployment/web", "--timeout=1s", check=False)
        if res.returncode != 0 and "exceeded its progress deadline" in res.stderr:
            break
    else:
        raise AssertionError(f"rollout status did not report the deadline\n{cm.log_tail()}")
    # The old pods keep serving: maxUnavailable 25% of 2 rounds down to 0.
    ready_old = [p for p in api.pods(selector="app=web")
                 if ready_of(p) == "True" and p["spec"]["containers"][0]["image"] == "svcnet/echo"]
    assert len(ready_old) == 2
