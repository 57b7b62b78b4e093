"""Failures in a running lab, as the issue's Proof lists them: a node's agent stops
(its Lease lapses and its endpoints leave the Service, then come back), the
proxy restarts (rules stay in the kernel meanwhile; traffic continues), the DNS
pods are replaced (answers continue)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from .labctl import PY, Lab, lab_process, logged_command, pod_pids, running_lab

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.kubectl]


def connect(lab: Lab, client: str, target: str, port: int, n: int = 6) -> set[str]:
    out = lab.py(client, f"import socket\nfor i in range({n}):\n s=socket.create_connection(('{target}',{port}),"
                         "timeout=3)\n s.sendall(b'hostname\\n'); print(s.recv(200).decode().strip())")
    return set(out.split())


def test_agent_stop_proxy_restart_dns_restart(tmp_path: Path, lab_name: str) -> None:
    with running_lab(tmp_path, lab_name, dns_replicas=1) as lab:
        lab.kubectl("create", "deployment", "web", "--image=svcnet/echo", "--replicas=2")
        lab.kubectl("expose", "deployment", "web", "--port", "80", "--target-port", "8080")
        lab.until("2 ready endpoints", lambda: len(lab.ready_endpoints("web")) == 2)
        pods = lab.json("get", "pods", "-l", "app=web")["items"]
        names = {p["metadata"]["name"] for p in pods}
        by_node = {p["spec"]["nodeName"]: p for p in pods}
        worker = next(n for n in by_node if n.endswith("-worker"))
        cp = next(n for n in by_node if n.endswith("-control-plane"))
        client = by_node[cp]["metadata"]["name"]
        worker_ip = by_node[worker]["status"]["podIP"]

        # 1. the worker's agent stops answering (SIGSTOP: a hung kubelet). After the
        # 40 s Lease timeout the node is NotReady and its endpoint is no longer ready.
        agent = lab_process(lab, f"node-agent-{worker}")
        os.kill(agent, signal.SIGSTOP)
        try:
            lab.until("the worker's endpoint to leave", lambda: worker_ip not in
                      {ep["addresses"][0] for ep in lab.ready_endpoints("web")}, timeout=120)
            node = lab.json("get", "node", worker)
            assert next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["status"] != "True"
            # the proxies follow the EndpointSlice within their sync period
            lab.until("traffic to avoid the worker's pod",
                      lambda: connect(lab, client, "web", 80, 12) == {by_node[cp]["metadata"]["name"]}, timeout=30)
        finally:
            os.kill(agent, signal.SIGCONT)
        lab.until("the worker back", lambda: len(lab.ready_endpoints("web")) == 2, timeout=90)
        lab.until("traffic to both again", lambda: connect(lab, client, "web", 80, 24) == names)

        # 2. the proxy on the client's node stops: its rules stay, traffic continues;
        # started again by hand with the command the lab used, it takes over.
        proxy = lab_process(lab, f"proxy-{cp}")
        cmd = logged_command(lab, f"proxy-{cp}")
        os.kill(proxy, signal.SIGTERM)
        assert connect(lab, client, "web", 80, 24) == names
        log = open(lab.root / lab.name / "logs" / f"proxy-{cp}.log", "ab")
        restarted = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, env=lab.env)
        try:
            assert connect(lab, client, "web", 80, 24) == names

            # 3. the DNS pods are replaced: names keep resolving once the new pod is
            # ready (the restarted proxy follows the new endpoint)
            cluster_ip = lab.json("get", "svc", "web")["spec"]["clusterIP"]
            assert lab.exec(client, "dig", "+short", "+search", "web") == cluster_ip
            lab.kubectl("delete", "pod", "-n", "kube-system", "-l", "k8s-app=kube-dns", "--wait=true")
            lab.until("DNS answering again",
                      lambda: lab.exec(client, "dig", "+short", "+time=1", "+tries=1", "+search", "web",
                                       check=False) == cluster_ip, timeout=90)
        finally:
            restarted.terminate()
            restarted.wait(timeout=10)


def test_static_pod_from_a_manifest_directory(tmp_path: Path, lab_name: str) -> None:
    with running_lab(tmp_path, lab_name, dns_replicas=0) as lab:
        node = f"{lab_name}-worker"
        manifests = lab.root / lab_name / "nodes" / node / "manifests"
        (manifests / "static-echo.yaml").write_text(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: static-echo, namespace: default}\n"
            "spec: {containers: [{name: echo, image: svcnet/echo, ports: [{containerPort: 8080}]}]}\n")
        mirror = f"static-echo-{node}"
        pod = lab.until("the mirror pod Running", lambda: (lambda p: p if (p.get("status") or {}).get("phase")
                                                            == "Running" else None)(lab.json("get", "pod", mirror)))
        assert pod["spec"]["nodeName"] == node
        assert "kubernetes.io/config.mirror" in pod["metadata"]["annotations"]
        ip = pod["status"]["podIP"]
        answer = lab.exec(node, PY, "-m", "svcnet.lab.apps.client", "tcp", ip, "8080", "-m", "hostname")
        assert answer == mirror
        (manifests / "static-echo.yaml").unlink()
        lab.until("the mirror pod gone", lambda: mirror not in lab.kubectl("get", "pods", "-o", "name"))


def test_agent_restart_adopts_running_pods(tmp_path: Path, lab_name: str) -> None:
    """Like a kubelet restart: the pods keep running while the agent is down, and the
    new agent takes them over (same IP, same process) instead of restarting them."""
    with running_lab(tmp_path, lab_name, dns_replicas=0) as lab:
        node = f"{lab_name}-worker"
        lab.kubectl_apply(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: keep, labels: {app: keep}}\n"
            f"spec: {{nodeName: {node}, containers: [{{name: echo, image: svcnet/echo, "
            "ports: [{containerPort: 8080}], readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}}]}\n")
        pod = lab.until("the pod ready", lambda: (lambda p: p if any(
            c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions") or [])
            else None)(lab.json("get", "pod", "keep")))
        ip = pod["status"]["podIP"]

        def echo_pid() -> int:
            pids = pod_pids(lab, "keep")
            assert len(pids) == 1, pids
            return pids[0]

        before = echo_pid()
        agent = lab_process(lab, f"node-agent-{node}")
        cmd = logged_command(lab, f"node-agent-{node}")
        os.kill(agent, signal.SIGTERM)
        # the pod keeps serving while its agent is gone
        assert lab.exec(node, PY, "-m", "svcnet.lab.apps.client", "tcp", ip, "8080", "-m", "hostname") == "keep"
        log = open(lab.root / lab.name / "logs" / f"node-agent-{node}.log", "ab")
        restarted = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, env=lab.env)
        try:
            lab.until("the adoption", lambda: b"adopted pod=default/keep" in
                      (lab.root / lab.name / "logs" / f"node-agent-{node}.log").read_bytes())
            assert echo_pid() == before
            pod = lab.json("get", "pod", "keep")
            assert pod["status"]["podIP"] == ip and pod["status"]["containerStatuses"][0]["restartCount"] == 0
            # an adopted container that dies is noticed (pidfd) and restarted
            os.kill(before, signal.SIGKILL)
            pod = lab.until("the restart", lambda: (lambda p: p if p["status"]["containerStatuses"][0]
                                                    ["restartCount"] == 1 else None)(lab.json("get", "pod", "keep")))
            last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
            assert last["exitCode"] == 137 and last["reason"] == "ContainerStatusUnknown"
            lab.until("serving again", lambda: lab.exec(node, PY, "-m", "svcnet.lab.apps.client", "tcp", ip,
                                                        "8080", "-m", "hostname", check=False) == "keep")
        finally:
            restarted.terminate()
            restarted.wait(timeout=10)
