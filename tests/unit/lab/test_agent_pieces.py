from pathlib import Path

import pytest

from svcnet.lab.agent.agent import static_pod
from svcnet.lab.agent.node import NodeConfig, node_object, node_status
from svcnet.lab.agent.pod_worker import Backoff, ContainerState, PodWorker, WorkerContext, build_status
from svcnet.lab.agent.podspec import ClusterDNS, ProbeSpec
from svcnet.lab.agent.probes import ProbeResult, ProbeState
from svcnet.lab.agent.sandbox import HostLocalIPAM, IPAMExhausted, Sandbox, SandboxManager
from svcnet.lab.state import StateFile


def test_ipam_skips_gateway_reuses_last_and_is_idempotent_per_owner():
    ipam = HostLocalIPAM("10.244.1.0/29")  # hosts .1-.6, .1 is the gateway
    ips = [ipam.allocate(f"p{i}") for i in range(5)]
    assert ips == ["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6"]
    assert ipam.allocate("p0") == "10.244.1.2"
    with pytest.raises(IPAMExhausted):
        ipam.allocate("p9")
    ipam.release("10.244.1.3")
    assert ipam.allocate("p9") == "10.244.1.3"


def test_backoff_doubles_to_max_and_resets_after_a_long_run():
    b = Backoff(initial=10, maximum=40, reset_after=600)
    assert [b.next(1) for _ in range(4)] == [10, 20, 40, 40]
    assert b.next(700) == 10


def test_probe_thresholds():
    ready = ProbeState(ProbeSpec("tcp", success_threshold=2, failure_threshold=2), initially_ok=False)
    assert not ready.observe(ProbeResult(True)) and not ready.ok
    assert ready.observe(ProbeResult(True)) and ready.ok
    assert not ready.observe(ProbeResult(False, "refused")) and ready.ok
    assert ready.observe(ProbeResult(False, "refused")) and not ready.ok
    assert ready.last_message == "refused"
    live = ProbeState(ProbeSpec("tcp"), initially_ok=True)
    assert live.ok


def worker(tmp_path: Path, containers: list[dict]) -> PodWorker:
    sandboxes = SandboxManager("n1", "10.244.0.0/24", StateFile(tmp_path / "s"), ClusterDNS())
    ctx = WorkerContext("n1", "172.18.0.2", "k", sandboxes, tmp_path, report=lambda w: None)
    return PodWorker({"metadata": {"name": "p", "namespace": "default", "uid": "u"},
                      "spec": {"containers": containers}}, ctx)


def test_status_pending_without_sandbox(tmp_path):
    w = worker(tmp_path, [{"name": "c", "image": "svcnet/echo"}])
    st = build_status(w)
    assert st["phase"] == "Pending" and "podIP" not in st
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "ContainersNotReady"
    assert conds["PodReadyToStartContainers"]["status"] == "False"
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}


def test_status_running_ready_and_failed(tmp_path):
    w = worker(tmp_path, [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}])
    w.sandbox = Sandbox("u", "default", "p", "ns", "veth0", "10.244.0.2", "10.244.0.1")
    for s in w.containers.values():
        s.state, s.ready, s.started = {"running": {"startedAt": "t"}}, True, True
    st = build_status(w)
    assert st["phase"] == "Running" and st["podIP"] == "10.244.0.2" and st["podIPs"] == [{"ip": "10.244.0.2"}]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"
    w.containers["b"].ready = False
    assert "[b]" in next(c for c in build_status(w)["conditions"] if c["type"] == "Ready")["message"]
    for s in w.containers.values():
        s.done = True
        s.state = {"terminated": {"exitCode": 0}}
    assert build_status(w)["phase"] == "Succeeded"
    w.containers["a"].state = {"terminated": {"exitCode": 2}}
    assert build_status(w)["phase"] == "Failed"


def test_condition_transition_time_is_kept_while_status_holds(tmp_path):
    w = worker(tmp_path, [{"name": "c", "image": "x"}])
    w.pod["status"] = {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "then"}]}
    assert next(c for c in build_status(w)["conditions"] if c["type"] == "Ready")["lastTransitionTime"] == "then"


def test_node_object_and_status():
    cfg = NodeConfig("lab-worker", "172.18.0.3", "10.244.1.0/24", (("zone", "a"),))
    node = node_object(cfg)
    assert node["spec"] == {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "lab-worker"
    assert node["metadata"]["labels"]["zone"] == "a"
    st = node_status(cfg, True)
    assert {"type": "InternalIP", "address": "172.18.0.3"} in st["addresses"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
    again = node_status(cfg, True, {"conditions": [{**ready, "lastTransitionTime": "earlier"}]})
    assert next(c for c in again["conditions"] if c["type"] == "Ready")["lastTransitionTime"] == "earlier"


def test_static_pods_are_named_bound_and_stable(tmp_path):
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "etcd"}, "spec": {"containers": []}}
    a, b = static_pod(obj, "lab-cp", tmp_path), static_pod(obj, "lab-cp", tmp_path)
    assert a["metadata"]["name"] == "etcd-lab-cp" and a["spec"]["nodeName"] == "lab-cp"
    assert a["metadata"]["uid"] == b["metadata"]["uid"]
    assert "kubernetes.io/config.mirror" in a["metadata"]["annotations"]
    assert static_pod(obj, "lab-w", tmp_path)["metadata"]["uid"] != a["metadata"]["uid"]


def test_event_objects_look_like_the_kubelets():
    from svcnet.lab.agent.events import PodEvent, event_object

    pod = {"metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "7"}}
    ev = event_object(PodEvent(pod, "Warning", "BackOff", "Back-off restarting", "echo"), "lab-worker", "now")
    assert ev["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "web-1", "namespace": "shop",
                                    "uid": "u1", "resourceVersion": "7", "fieldPath": "spec.containers{echo}"}
    assert ev["metadata"] == {"generateName": "web-1.", "namespace": "shop"}
    assert ev["source"] == {"component": "kubelet", "host": "lab-worker"} and ev["type"] == "Warning"
