"""A lab with an HA control plane (3 etcd members, 2 apiservers, each in its own
namespace) loses an apiserver to kill -9 while Services are being created: kubectl
carries on through the lab's apiserver load balancer, the agents through the
kubeconfig listing both apiservers, the `kubernetes` EndpointSlice drops the dead
one, and DNS (dig in a pod) and TCP through every Service, made before and after the
kill, answer correctly. `lab down` then leaves nothing: namespaces, processes, the
etcd data dirs.

Real everything: etcd, `svcnet apiserver`, agents and proxies in network namespaces,
the installed kubectl and dig.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from integration.lab.labctl import Lab
from svcnet.lab.netns import list_netns
from svcnet.lab.state import StateFile, process_start_time

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("etcd") is None and not os.access("/usr/bin/etcd", os.X_OK),
                                 reason="etcd is not installed (Debian package etcd-server)"),
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed"),
              pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed")]

COUNT = 8  # Services created while the apiserver is killed


def service(name: str) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})


def try_apply(lab: Lab, text: str) -> bool:
    r = subprocess.run(["kubectl", "apply", "-f", "-"], input=text, env=lab.env, capture_output=True, text=True,
                       timeout=30)
    return r.returncode == 0


def state_processes(lab: Lab) -> dict[str, tuple[int, int]]:
    recs = StateFile(lab.root / lab.name / "state.jsonl").records()
    return {r.name: (r.pid, r.start_time) for r in recs if r.kind == "process"}


def test_apiserver_killed_while_creating_services(tmp_path: Path, lab_name: str) -> None:
    topo = tmp_path / "ha.lab.yaml"
    topo.write_text(f"name: {lab_name}\nnodes: [{{role: control-plane}}, {{role: worker}}]\n"
                    "controlPlane: {apiservers: 2, etcd: 3}\ndns: {replicas: 2}\n")
    lab = Lab(lab_name, tmp_path / "labs")
    procs: dict[str, tuple[int, int]] = {}
    try:
        lab.svcnet("up", str(topo))
        procs = state_processes(lab)
        first, second = f"{lab_name}-apiserver1", f"{lab_name}-apiserver2"
        agents_cfg = yaml.safe_load((lab.root / lab_name / "admin.kubeconfig").read_text())
        listed = [s for c in agents_cfg["clusters"] for e in c["cluster"].get("extensions") or []
                  if e["name"] == "svcnet.io/servers" for s in e["extension"]["servers"]]
        assert len(listed) == 2, f"the agents' kubeconfig lists both apiservers: {listed}"
        ips = {first: listed[0].split("//")[1].rsplit(":", 1)[0], second: listed[1].split("//")[1].rsplit(":", 1)[0]}
        lab.until("both apiservers in the kubernetes EndpointSlice",
                  lambda: sorted(e["addresses"][0] for e in lab.json("get", "endpointslice", "kubernetes")["endpoints"])
                  == sorted(ips.values()), timeout=20)

        lab.kubectl("create", "deployment", "web", "--image=svcnet/echo", "--replicas=2")
        lab.kubectl("expose", "deployment", "web", "--port", "80", "--target-port", "8080")
        lab.until("2 ready endpoints", lambda: len(lab.ready_endpoints("web")) == 2, timeout=40)
        pods = {p["metadata"]["name"] for p in lab.json("get", "pods", "-l", "app=web")["items"]}

        # Services are created one after another (kubectl apply: idempotent, so a retry
        # is safe) while apiserver1, the one the load balancer prefers, is killed.
        names = [f"svc{i}" for i in range(COUNT)]
        failures: list[str] = []

        def create_all() -> None:
            for name in names:
                for _ in range(3):
                    if try_apply(lab, service(name)):
                        break
                    failures.append(name)  # the request in flight when the server died
                else:
                    return

        creator = threading.Thread(target=create_all)
        creator.start()
        lab.until("the first Service", lambda: _exists(lab, names[0]), timeout=20)
        pid, start = procs[f"apiserver-{first}"]
        assert process_start_time(pid) == start
        os.kill(pid, signal.SIGKILL)
        before_kill = {s["metadata"]["name"] for s in lab.json("get", "services")["items"]}
        after_kill = [n for n in names if n not in before_kill]
        creator.join(60)
        assert not creator.is_alive()
        assert len(failures) <= 1, f"kubectl failed more than the one request in flight: {failures}"
        created = {s["metadata"]["name"] for s in lab.json("get", "services")["items"]}
        assert set(names) <= created, f"every Service exists: {sorted(created)}"
        assert after_kill, "some Services were created after the kill (else raise COUNT)"

        lab.until("the kubernetes EndpointSlice drops the dead apiserver",
                  lambda: [e["addresses"][0] for e in lab.json("get", "endpointslice", "kubernetes")["endpoints"]]
                  == [ips[second]], timeout=20)

        services = ["web", *names]
        cluster_ips = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in lab.json("get", "services")["items"]}
        client = sorted(pods)[0]
        fqdns = [f"{s}.default.svc.cluster.local" for s in services]

        def dns_ok() -> bool:
            got = lab.exec(client, "dig", "+short", *fqdns, check=False).split()
            return got == [cluster_ips[s] for s in services]

        lab.until("dig in a pod answers every Service's ClusterIP", dns_ok, timeout=15)

        probe = ("import socket,sys\nfor name in sys.argv[1:]:\n seen=set()\n for i in range(8):\n"
                 "  s=socket.create_connection((name,80),timeout=3); s.sendall(b'hostname\\n')\n"
                 "  seen.add(s.recv(200).decode().strip()); s.close()\n print(name, *sorted(seen))")

        def tcp_ok() -> bool:
            out = lab.exec(client, sys.executable, "-c", probe, *services, check=False)
            lines = {ln.split()[0]: set(ln.split()[1:]) for ln in out.splitlines() if ln.strip()}
            return set(lines) == set(services) and all(v <= pods and v for v in lines.values())

        lab.until("TCP through every Service reaches the web pods", tcp_ok, timeout=15)
    finally:
        down = lab.svcnet("down", "--name", lab_name, check=False)
        assert down.returncode == 0, down.stderr
    assert not [n for n in list_netns() if n.startswith(lab_name + "-")]
    assert not (lab.root / lab_name).exists(), "the lab directory (etcd data dirs with it) is removed"
    # Down returns only once every process is gone (etcd members stopped last, one at
    # a time; anything SIGKILLed waited for): nothing may be left running now.
    alive = [name for name, (pid, start) in procs.items() if _running(pid, start)]
    assert not alive, f"processes left running: {alive}"


def _running(pid: int, start: int) -> bool:
    """Alive and not a zombie (an exited child its new parent has not reaped yet)."""
    if process_start_time(pid) != start:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _exists(lab: Lab, name: str) -> bool:
    r = subprocess.run(["kubectl", "get", "service", name], env=lab.env, capture_output=True, text=True, timeout=30)
    return r.returncode == 0
