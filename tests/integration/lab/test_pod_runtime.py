"""The pod runtime without an API server: sandboxes and pod workers on a node
namespace, with real processes, real probes and real traffic."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from svcnet.lab.agent.pod_worker import PodWorker, WorkerContext
from svcnet.lab.agent.podspec import ClusterDNS
from svcnet.lab.agent.sandbox import SandboxManager
from svcnet.lab.netns import Netns, netns_exists
from svcnet.lab.plan import apply_plan, lab_network_plan
from svcnet.lab.state import StateFile
from svcnet.lab.topology import parse_topology

from .conftest import netns_python

pytestmark = pytest.mark.root


def pod(name: str, *, containers: list[dict], ns: str = "default", **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
            "spec": {"containers": containers, "terminationGracePeriodSeconds": 2, **spec}}


async def until(cond, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def node(lab_name, lab_state, tmp_path):
    topo = parse_topology(f"name: {lab_name}\nnodes: [{{role: control-plane}}]\n")
    await apply_plan(lab_network_plan(topo), lab_state, owner="lab")
    n = topo.nodes[0]
    agent_state = StateFile(tmp_path / "agent.jsonl")
    from svcnet.lab.state import Record
    lab_state.record(Record("include", str(agent_state.path)))
    etc = tmp_path / "etc-netns"
    sandboxes = SandboxManager(n.name, str(n.pod_cidr), agent_state, ClusterDNS(), node_netns=n.name,
                               etc_netns=etc)
    reports: list[dict] = []
    events: list = []
    ctx = WorkerContext(n.name, str(n.underlay_ip), "/dev/null", sandboxes, tmp_path / "logs",
                        report=lambda w: reports.append(w.status()), backoff_initial=0.2, backoff_max=0.5,
                        event=events.append)
    ctx.events = events  # type: ignore[attr-defined]  # for the tests' eyes only
    yield n, ctx, reports, etc


async def test_echo_pod_ready_by_probe_restarts_and_terminates(node, monkeypatch):
    n, ctx, reports, etc = node
    import svcnet.lab.agent.sandbox as sb_mod
    w = PodWorker(pod("web-1", containers=[{
        "name": "echo", "image": "svcnet/echo",
        "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 8080, "protocol": "UDP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }], subdomain="web", hostname="web-1"), ctx)
    w.start()
    await until(lambda: reports and reports[-1]["conditions"][2]["status"] == "True", what="Ready")
    st = reports[-1]
    assert st["phase"] == "Running" and st["podIP"].startswith("10.244.0.")
    assert st["containerStatuses"][0]["ready"] is True
    sb = w.sandbox
    assert sb is not None

    # The pod's resolv.conf is what a process in the pod sees (mount namespace + bind mounts).
    files = etc / sb.netns
    assert "nameserver 10.96.0.10" in (files / "resolv.conf").read_text()
    # the runtime uses `ip netns exec`, which bind-mounts /etc/netns/<ns>: point it at our tmp files
    real = Path("/etc/netns") / sb.netns
    real.mkdir(parents=True)
    try:
        for f in files.iterdir():
            (real / f.name).write_text(f.read_text())
        seen = subprocess.run(["ip", "netns", "exec", sb.netns, "cat", "/etc/resolv.conf"], capture_output=True,
                              text=True, timeout=10).stdout
        hosts = subprocess.run(["ip", "netns", "exec", sb.netns, "getent", "hosts", "web-1"], capture_output=True,
                               text=True, timeout=10).stdout
    finally:
        for f in real.iterdir():
            f.unlink()
        real.rmdir()
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in seen
    assert "options ndots:5" in seen
    assert hosts.split()[0] == sb.ip and "web-1.web.default.svc.cluster.local" in hosts

    # real traffic from the node to the pod
    out = netns_python(n.name, f"import socket; s=socket.create_connection(('{sb.ip}',8080),timeout=5); "
                               "s.sendall(b'hostname\\n'); print(s.recv(100).decode())")
    assert out == "web-1"

    # kill the process: not ready, restarted with restartCount 1, ready again
    pid = w.processes["echo"].pid
    os.kill(pid, signal.SIGKILL)
    await until(lambda: reports[-1]["containerStatuses"][0]["restartCount"] == 1, what="restart")
    assert reports[-1]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 137
    await until(lambda: reports[-1]["conditions"][2]["status"] == "True", what="Ready again")
    assert w.processes["echo"].pid != pid

    await w.terminate(grace=2)
    reasons = [(e.reason, e.container) for e in ctx.events if e.pod["metadata"]["name"] == "web-1"]
    assert reasons.count(("Started", "echo")) == 2
    assert ("BackOff", "echo") in reasons and reasons[-1] == ("Killing", "echo")
    assert not netns_exists(sb.netns)
    async with Netns(n.name) as node_ns:
        assert sb.host_veth not in await node_ns.links()
    assert not (etc / sb.netns).exists()
    assert ctx.sandboxes.ipam.in_use() == {}


async def test_liveness_failure_restarts_and_never_policy_ends_in_failed(node):
    n, ctx, reports, etc = node
    marker = f"/tmp/svcnet-live-{os.getpid()}"
    w = PodWorker(pod("live", containers=[{
        "name": "c", "image": "busybox",
        "command": [sys.executable, "-c", "import time; time.sleep(300)"],
        "livenessProbe": {"exec": {"command": ["test", "!", "-e", marker]}, "periodSeconds": 1,
                          "failureThreshold": 1},
    }]), ctx)
    w.start()
    await until(lambda: reports and reports[-1]["phase"] == "Running", what="Running")
    Path(marker).touch()
    try:
        await until(lambda: reports[-1]["containerStatuses"][0]["restartCount"] >= 1, what="liveness restart")
    finally:
        Path(marker).unlink()
    assert any(e.reason == "Unhealthy" and e.message.startswith("Liveness probe failed") for e in ctx.events)
    assert any(e.reason == "Killing" and "failed liveness probe" in e.message for e in ctx.events)
    await w.terminate(grace=1)

    w2 = PodWorker(pod("once", restartPolicy="Never", containers=[{
        "name": "c", "image": "x", "command": ["sh", "-c", "exit 3"]}]), ctx)
    w2.start()
    await until(lambda: reports[-1].get("phase") == "Failed", what="Failed")
    term = reports[-1]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    await w2.terminate(grace=1)


async def test_unknown_image_without_command_is_reported(node):
    n, ctx, reports, etc = node
    w = PodWorker(pod("bad", containers=[{"name": "c", "image": "nginx"}]), ctx)
    w.start()
    await until(lambda: reports and reports[-1]["containerStatuses"][0]["state"].get("waiting", {}).get("reason")
                == "CreateContainerError", what="CreateContainerError")
    failed = [e for e in ctx.events if e.reason == "Failed"]
    assert failed and failed[0].type == "Warning" and "not built in" in failed[0].message
    assert "not built in" in reports[-1]["containerStatuses"][0]["state"]["waiting"]["message"]
    await w.terminate(grace=1)


async def test_graceful_deletion_sigterm_then_sigkill_after_the_grace_period(node):
    n, ctx, reports, etc = node
    polite = PodWorker(pod("polite", containers=[{
        "name": "c", "image": "x", "command": ["sleep", "300"]}]), ctx)
    trapped = Path(f"/tmp/svcnet-trapped-{os.getpid()}")
    stubborn = PodWorker(pod("stubborn", containers=[{
        "name": "c", "image": "x",
        "command": ["sh", "-c", f"trap '' TERM; touch {trapped}; while :; do sleep 0.2; done"]}]), ctx)
    for w in (polite, stubborn):
        w.start()
    try:
        # running, and the trap installed (a SIGTERM before that would simply end it)
        await until(lambda: "c" in polite.processes and polite.processes["c"].running() and trapped.exists(),
                    what="both running")
    finally:
        trapped.unlink(missing_ok=True)
    await asyncio.gather(polite.terminate(grace=5), stubborn.terminate(grace=1))
    assert polite.processes["c"].proc.returncode == -signal.SIGTERM  # stopped by SIGTERM within the grace
    assert stubborn.processes["c"].proc.returncode == -signal.SIGKILL  # ignored SIGTERM: killed after it
    for w in (polite, stubborn):
        assert not netns_exists(w.sandbox.netns)
