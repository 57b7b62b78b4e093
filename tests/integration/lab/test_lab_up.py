"""`svcnet lab up` end to end, driven exactly as a user drives it: the svcnet CLI
and the real kubectl. A deployment behind a Service, reached by name from a pod on
each node over TCP, UDP and SCTP, a NodePort from the external namespace, a pod
that crashes and comes back, a deleted pod that is replaced; then `svcnet lab down`
leaves no namespace, process, /etc/netns entry or file behind."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from svcnet.lab.netns import list_netns

from .labctl import PY, Lab, pod_pids, running_lab

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.kubectl]

HEADLESS = """
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, targetPort: 8080}]
""" + "".join(f"""---
apiVersion: v1
kind: Pod
metadata: {{name: db-{i}, labels: {{app: db}}}}
spec:
  hostname: db-{i}
  subdomain: db
  containers: [{{name: echo, image: svcnet/echo, ports: [{{containerPort: 8080}}]}}]
""" for i in range(2))


@pytest.fixture(params=["nftables", "iptables"])
def lab(request: pytest.FixtureRequest, tmp_path: Path, lab_name: str):
    with running_lab(tmp_path, lab_name, request.param) as lab:
        yield lab


def test_walkthrough(lab: Lab) -> None:
    lab.kubectl("create", "deployment", "web", "--image=svcnet/echo", "--replicas=3")
    lab.kubectl("expose", "deployment", "web", "--port", "80", "--target-port", "8080")
    lab.kubectl("expose", "deployment", "web", "--name", "web-udp", "--port", "90", "--target-port", "8080",
                "--protocol", "UDP")
    lab.kubectl("expose", "deployment", "web", "--name", "web-sctp", "--port", "91", "--target-port", "8080",
                "--protocol", "SCTP")
    lab.kubectl("expose", "deployment", "web", "--name", "web-np", "--type", "NodePort", "--port", "80",
                "--target-port", "8080")
    lab.until("3 ready endpoints", lambda: len(lab.ready_endpoints("web")) == 3)
    pods = lab.json("get", "pods", "-l", "app=web")["items"]
    names = {p["metadata"]["name"] for p in pods}
    by_node = {p["spec"]["nodeName"]: p["metadata"]["name"] for p in pods}
    assert len(by_node) == 2, "the scheduler spreads pods over both nodes"
    cluster_ip = lab.json("get", "svc", "web")["spec"]["clusterIP"]

    for node, client in by_node.items():
        # DNS through kube-dns, with the pod's own resolv.conf (search path, ndots:5)
        assert lab.exec(client, "dig", "+short", "+search", "web") == cluster_ip
        assert lab.exec(client, "dig", "+short", "web.default.svc.cluster.local") == cluster_ip
        ptr = lab.exec(client, "dig", "+short", "-x", cluster_ip)
        assert ptr == "web.default.svc.cluster.local."
        # TCP, UDP and SCTP by name reach every replica
        tcp = lab.py(client, "import socket\nfor i in range(36):\n s=socket.create_connection(('web',80),timeout=3)"
                             "\n s.sendall(b'hostname\\n'); print(s.recv(200).decode().strip()); s.close()")
        assert set(tcp.split()) == names, f"TCP from {client} reached {Counter(tcp.split())}"
        udp = lab.py(client, "import socket\nfor i in range(36):\n u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)"
                             "\n u.settimeout(3); u.sendto(b'hostname',('web-udp',90)); print(u.recv(200).decode())")
        assert set(udp.split()) == names, f"UDP from {client} reached {Counter(udp.split())}"
        sctp = [lab.exec(client, PY, "-m", "svcnet.lab.apps.sctp", "probe", "web-sctp", "91", "--message", "hostname")
                for _ in range(12)]
        assert set(sctp) <= names and len(set(sctp)) >= 2, f"SCTP from {client}: {Counter(sctp)}"

    # NodePort from outside the cluster, on every node
    node_port = lab.json("get", "svc", "web-np")["spec"]["ports"][0]["nodePort"]
    for node in lab.json("get", "nodes")["items"]:
        ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
        got = lab.py("external", f"import socket; s=socket.create_connection(('{ip}',{node_port}),timeout=3); "
                                 "s.sendall(b'hostname\\n'); print(s.recv(200).decode().strip())")
        assert got in names

    # a LoadBalancer IP from the lab's pool, reached from outside through the nodes
    lab.kubectl("expose", "deployment", "web", "--name", "web-lb", "--type", "LoadBalancer", "--port", "80",
                "--target-port", "8080")
    lb_ip = lab.until("a LoadBalancer IP", lambda: ((lab.json("get", "svc", "web-lb").get("status") or {})
                                                    .get("loadBalancer", {}).get("ingress") or [{}])[0].get("ip"))
    assert lb_ip.startswith("172.19.0.")
    # Until every proxy has programmed the new IP, a node without a rule for it
    # answers "network unreachable" (it has no route for the pool): wait for that.
    probe = f"import socket; socket.create_connection(('{lb_ip}',80),timeout=3)"
    lab.until("the LB IP to be programmed on every node",
              lambda: all(lab.svcnet("exec", "external", "--", PY, "-c", probe, check=False).returncode == 0
                          for _ in range(6)))
    got_lb = lab.py("external", "import socket\nfor i in range(12):\n s=socket.create_connection(('"
                    + lb_ip + "',80),timeout=3)\n s.sendall(b'hostname\\n'); print(s.recv(200).decode().strip())")
    assert set(got_lb.split()) <= names and len(set(got_lb.split())) >= 2

    # a headless Service: A records are the pods, and hostname/subdomain give per-pod names
    lab.kubectl_apply(HEADLESS)
    lab.until("headless endpoints", lambda: len(lab.ready_endpoints("db")) == 2)
    db_ips = {p["status"]["podIP"] for p in lab.json("get", "pods", "-l", "app=db")["items"]}
    client = next(iter(by_node.values()))
    assert set(lab.exec(client, "dig", "+short", "+search", "db").split()) == db_ips
    db0 = lab.json("get", "pod", "db-0")["status"]["podIP"]
    assert lab.exec(client, "dig", "+short", "db-0.db.default.svc.cluster.local") == db0
    assert lab.exec("db-1", "getent", "hosts", "db-1").split()[0] == lab.json("get", "pod", "db-1")["status"]["podIP"]

    # status shows frontends -> endpoints, also as JSON
    status = json.loads(lab.svcnet("status", "--name", lab.name, "--format", "json").stdout)
    web = next(s for s in status["services"] if s["name"] == "web")
    assert f"{cluster_ip}:80/TCP" in web["frontends"] and len(web["endpoints"]) == 3

    # a crashed container restarts and its endpoint comes back
    victim = pods[0]["metadata"]["name"]
    victim_ip = pods[0]["status"]["podIP"]
    for pid in pod_pids(lab, victim):
        os.kill(pid, signal.SIGKILL)
    lab.until("the restart", lambda: lab.json("get", "pod", victim)["status"]["containerStatuses"][0]
              ["restartCount"] >= 1)
    lab.until("the endpoint back", lambda: victim_ip in {ep["addresses"][0] for ep in lab.ready_endpoints("web")})
    events = [(e["reason"], e["source"].get("component")) for e in lab.json("get", "events")["items"]
              if e["involvedObject"].get("name") == victim]
    assert ("Started", "kubelet") in events and ("BackOff", "kubelet") in events

    # a deleted pod is replaced and the Service follows
    lab.kubectl("delete", "pod", victim, "--wait=true", "--timeout=60s")
    lab.until("a replacement", lambda: len(lab.ready_endpoints("web")) == 3 and victim not in
              {ep.get("targetRef", {}).get("name") for ep in lab.ready_endpoints("web")})


def test_down_is_polite_when_nothing_runs(tmp_path: Path, lab_name: str) -> None:
    lab = Lab(lab_name, tmp_path / "labs")
    r = lab.svcnet("down", "--name", lab_name)
    assert "nothing to do" in r.stderr


def test_up_fails_cleanly_on_a_bad_topology(tmp_path: Path, lab_name: str) -> None:
    topo = tmp_path / "bad.lab.yaml"
    topo.write_text("name: x\nproxyMode: ipvs\n")
    r = Lab(lab_name, tmp_path / "labs").svcnet("up", str(topo), check=False)
    assert r.returncode == 2 and "proxyMode: 'ipvs'" in r.stderr


def test_up_dry_run_prints_ip_commands(tmp_path: Path, lab_name: str) -> None:
    topo = tmp_path / "t.lab.yaml"
    topo.write_text(f"name: {lab_name}\n")
    r = Lab(lab_name, tmp_path / "labs").svcnet("up", str(topo), "--dry-run")
    assert f"ip netns add {lab_name}-underlay" in r.stdout
    assert not [n for n in list_netns() if n.startswith(lab_name + "-")]


def test_a_failed_up_cleans_up_unless_retained(tmp_path: Path, lab_name: str) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 99999}]}\n")
    topo = tmp_path / "t.lab.yaml"
    topo.write_text(f"name: {lab_name}\nnodes: [{{role: control-plane}}]\ndns: {{replicas: 0}}\n"
                    f"manifests: [{bad}]\n")
    lab = Lab(lab_name, tmp_path / "labs")
    r = lab.svcnet("up", str(topo), check=False)
    assert r.returncode == 1 and "kubectl apply" in r.stderr and "Removed what was built" in r.stderr
    assert not [n for n in list_netns() if n.startswith(lab_name + "-")]
    assert not (lab.root / lab_name).exists()
    try:
        r = lab.svcnet("up", str(topo), "--retain", check=False)
        assert r.returncode == 1 and "--retain" in r.stderr
        assert f"{lab_name}-control-plane" in list_netns()
        assert "apiserver" in lab.svcnet("logs", "--name", lab_name).stdout.split()
    finally:
        lab.svcnet("down", "--name", lab_name)
    assert not [n for n in list_netns() if n.startswith(lab_name + "-")]
