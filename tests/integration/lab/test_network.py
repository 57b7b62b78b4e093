"""The lab's network, built with the plan builder in real namespaces: an underlay
bridge in the lab's own namespace, two nodes, routed pods on each, and real TCP,
UDP and SCTP between pods on different nodes; then teardown leaves nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from svcnet.lab.names import LabNames, pod_host_veth
from svcnet.lab.netns import Netns, get_sysctl, list_netns, netns_exists, netns_inode
from svcnet.lab.plan import apply_plan, lab_network_plan, pod_sandbox_plan
from svcnet.lab.state import Record
from svcnet.lab.teardown import teardown
from svcnet.lab.topology import parse_topology

from .conftest import netns_python, wait_ready

pytestmark = pytest.mark.root


async def test_pods_on_two_nodes_talk_tcp_udp_sctp_and_down_leaves_nothing(lab_name, lab_state):
    topo = parse_topology(f"name: {lab_name}\nnodes: [{{role: control-plane}}, {{role: worker}}]\n")
    names = LabNames(lab_name)
    await apply_plan(lab_network_plan(topo), lab_state, owner="lab")
    cp, worker = topo.nodes

    # a pod on each node, made the way the node agent makes them
    pods = {}
    for node, pod in ((cp, "a"), (worker, "b")):
        ns = f"{node.name}-default-{pod}"
        ip = str(node.pod_gateway + 1)
        await apply_plan(pod_sandbox_plan(node.name, ns, pod_host_veth(pod), ip, str(node.pod_gateway),
                                          names.alias(pod=f"default/{pod}")), lab_state, owner=f"pod/{pod}")
        pods[pod] = (ns, ip)

    assert get_sysctl(worker.name, "net.ipv4.ip_forward") == "1"
    async with Netns(names.underlay_netns) as under:
        assert names.bridge in await under.links()
        assert await under.link_alias(names.bridge) == f"svcnet lab={lab_name} role=underlay"

    server = subprocess.Popen(
        ["ip", "netns", "exec", pods["a"][0], sys.executable, "-m", "svcnet.lab.apps.echo",
         "--name", "pod-a", "--port", "8080"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    lab_state.record_process("echo pod-a", server.pid)
    wait_ready(server)

    a_ip, b_ip = pods["a"][1], pods["b"][1]
    b_ns = pods["b"][0]
    tcp = netns_python(b_ns, f"import socket; s=socket.create_connection(('{a_ip}',8080),timeout=5); "
                             "s.sendall(b'x\\n'); print(s.recv(200).decode())")
    assert tcp.startswith(f"pod=pod-a client={b_ip}:") and tcp.endswith("proto=tcp")
    udp = netns_python(b_ns, "import socket; u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
                             f"u.settimeout(5); u.sendto(b'hostname',('{a_ip}',8080)); print(u.recv(200).decode())")
    assert udp == "pod-a"
    sctp = subprocess.run(["ip", "netns", "exec", b_ns, sys.executable, "-m", "svcnet.lab.apps.sctp", "probe",
                           a_ip, "8080"], capture_output=True, text=True, timeout=30)
    assert sctp.returncode == 0, sctp.stderr
    assert sctp.stdout.startswith(f"pod=pod-a client={b_ip}:") and "proto=sctp" in sctp.stdout

    # the external namespace reaches a node (its host network) over the underlay bridge
    on_node = subprocess.Popen(
        ["ip", "netns", "exec", worker.name, sys.executable, "-m", "svcnet.lab.apps.echo",
         "--name", "node", "--tcp", "9000"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    lab_state.record_process("echo on node", on_node.pid)
    wait_ready(on_node)
    ext = netns_python(names.external_netns,
                       f"import socket; s=socket.create_connection(('{worker.underlay_ip}',9000),timeout=5); "
                       "s.sendall(b'clientip\\n'); print(s.recv(200).decode())")
    assert ext.startswith(f"{topo.external_ip}:")
    async with Netns(names.external_netns) as ext_ns:
        routes = {r["dst"] for r in await ext_ns.routes()}
    assert str(topo.networking.load_balancer_pool) in routes
    # pods are not reachable from outside the cluster: only Services make them so
    unreachable = subprocess.run(["ip", "netns", "exec", names.external_netns, sys.executable, "-c",
                                  f"import socket; socket.create_connection(('{a_ip}',8080),timeout=2)"],
                                 capture_output=True, text=True, timeout=20)
    assert "Network is unreachable" in unreachable.stderr

    report = await teardown(lab_state, grace=2.0)
    assert report.ok, report.errors
    assert server.wait(timeout=5) is not None and on_node.wait(timeout=5) is not None
    assert not [n for n in list_netns() if n.startswith(lab_name + "-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert lab_name not in links
    assert not lab_state.exists()


async def test_teardown_after_a_half_finished_up(lab_name, lab_state):
    """A crash right after a record was written (object never created) and one
    after half the plan: teardown removes what exists and shrugs at the rest."""
    topo = parse_topology(f"name: {lab_name}\nnodes: [{{role: control-plane}}]\n")
    steps = lab_network_plan(topo)
    await apply_plan(steps[: len(steps) // 2], lab_state, owner="lab")
    lab_state.record(Record("netns", f"{lab_name}-never-created"))
    lab_state.record(Record("link", "ghost0", netns=f"{lab_name}-never-created"))
    assert netns_exists(f"{lab_name}-underlay")
    report = await teardown(lab_state, grace=1.0)
    assert report.ok, report.errors
    assert not netns_exists(f"{lab_name}-underlay")
    # and a second teardown is a polite no-op
    again = await teardown(lab_state, grace=1.0)
    assert again.ok and again.removed == []


async def test_processes_left_in_a_lab_namespace_are_stopped(lab_name, lab_state):
    """A pod process whose agent crashed is not in any journal, but it lives in a
    recorded namespace: teardown finds it by namespace identity, not by name."""
    topo = parse_topology(f"name: {lab_name}\nnodes: [{{role: control-plane}}]\n")
    await apply_plan(lab_network_plan(topo), lab_state, owner="lab")
    orphan = subprocess.Popen(["ip", "netns", "exec", topo.nodes[0].name, "sleep", "300"],
                              start_new_session=True)
    ino = netns_inode(topo.nodes[0].name)
    deadline = time.monotonic() + 10
    while os.stat(f"/proc/{orphan.pid}/ns/net").st_ino != ino:  # until it has entered the namespace
        assert time.monotonic() < deadline, "the orphan never entered the node's namespace"
        time.sleep(0.02)
    try:
        report = await teardown(lab_state, grace=2.0)
        assert report.ok
        assert orphan.wait(timeout=5) is not None
    finally:
        if orphan.poll() is None:
            orphan.kill()
