"""The HA control-plane shape: topology parsing (`controlPlane:`), the underlay plan
for its namespaces, the etcd and apiserver command lines, and the load balancer's
failover over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from svcnet.lab import control_plane as cpl
from svcnet.lab.plan import AddrAdd, NetnsAdd, RouteAdd, lab_network_plan
from svcnet.lab.topology import TopologyError, load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[3]
HA = "name: lab\ncontrolPlane: {apiservers: 2, etcd: 3}\n"


def test_default_is_one_apiserver_on_sqlite() -> None:
    cp = parse_topology("name: lab").control_plane_spec
    assert (cp.apiservers, cp.etcd, cp.members, cp.ha) == (1, 0, (), False)


def test_members_get_namespaces_and_addresses_after_the_nodes() -> None:
    topo = parse_topology(HA)
    cp = topo.control_plane_spec
    assert cp.ha
    assert [(m.name, m.role, m.index, str(m.underlay_ip)) for m in cp.members] == [
        ("lab-etcd1", "etcd", 1, "172.18.0.5"), ("lab-etcd2", "etcd", 2, "172.18.0.6"),
        ("lab-etcd3", "etcd", 3, "172.18.0.7"),
        ("lab-apiserver1", "apiserver", 1, "172.18.0.8"), ("lab-apiserver2", "apiserver", 2, "172.18.0.9")]
    # the nodes keep the addresses they have without a controlPlane section
    assert [str(n.underlay_ip) for n in topo.nodes] == ["172.18.0.2", "172.18.0.3", "172.18.0.4"]


@pytest.mark.parametrize("section, message", [
    ("{apiservers: 2}", "need shared storage"),
    ("{apiservers: 2, etcd: 2}", "controlPlane.etcd: 2: expected one of 0, 1, 3, 5"),
    ("{apiservers: 0, etcd: 3}", "controlPlane.apiservers"),
    ("{apiserver: 2, etcd: 3}", "did you mean 'apiservers'"),
    ("[2, 3]", "expected a mapping"),
])
def test_bad_control_plane_is_named(section: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message.replace("(", r"\(")):
        parse_topology(f"name: lab\ncontrolPlane: {section}\n")


def test_too_small_underlay_is_refused() -> None:
    with pytest.raises(TopologyError, match="no address left for"):
        parse_topology(HA + "networking: {underlaySubnet: 172.18.0.0/29}\n")


def test_shipped_ha_topology_loads() -> None:
    topo = load_topology(ROOT / "netns-lab" / "ha.yaml")
    assert (topo.control_plane_spec.apiservers, topo.control_plane_spec.etcd) == (2, 3)


def test_plan_puts_each_member_on_the_underlay_and_routes_pods_to_apiservers() -> None:
    topo = parse_topology(HA)
    steps = lab_network_plan(topo)
    made = [s.name for s in steps if isinstance(s, NetnsAdd)]
    for m in topo.control_plane_spec.members:
        assert m.name in made
        assert AddrAdd(m.name, "eth0", f"{m.underlay_ip}/24") in steps
    routes = {(s.netns, s.dst, s.via) for s in steps if isinstance(s, RouteAdd)}
    for node in topo.nodes:
        assert ("lab-apiserver1", str(node.pod_cidr), str(node.underlay_ip)) in routes
        assert not any(r[0] == "lab-etcd1" for r in routes)  # etcd talks to apiservers only
    # the default lab's plan is unchanged by the feature
    assert not any("etcd" in s.name for s in lab_network_plan(parse_topology("name: lab"))
                   if isinstance(s, NetnsAdd))


def test_command_lines(tmp_path: Path) -> None:
    topo = parse_topology(HA)
    etcd2, api1 = topo.control_plane_spec.of("etcd")[1], topo.control_plane_spec.of("apiserver")[0]
    argv = cpl.etcd_argv(topo, etcd2, tmp_path / "d", tmp_path / "log")
    opt = dict(zip(argv[1::2], argv[2::2]))
    assert opt["--name"] == "etcd2"
    assert opt["--listen-client-urls"] == "http://172.18.0.6:2379"
    assert opt["--initial-cluster"] == ("etcd1=http://172.18.0.5:2380,etcd2=http://172.18.0.6:2380,"
                                        "etcd3=http://172.18.0.7:2380")
    assert opt["--initial-cluster-token"] == "svcnet-lab-lab"
    api = cpl.apiserver_argv(topo, api1, tmp_path / "a1", tmp_path / "pki", tmp_path / "a1.kubeconfig")
    opt = dict(zip(api[1::2], api[2::2]))
    assert opt["--storage"] == "etcd://172.18.0.5:2379,172.18.0.6:2379,172.18.0.7:2379"
    assert opt["--advertise-address"] == "172.18.0.8"
    assert opt["--apiserver-peers"] == "172.18.0.9:6443"  # the others, not itself
    assert opt["--pki-dir"] == str(tmp_path / "pki")
    assert opt["--endpoint-lease-duration"] == str(cpl.ENDPOINT_LEASE_SECONDS)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_load_balancer_moves_to_the_next_server_and_stays() -> None:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"second\n")
        await w.drain()
        w.close()

    alive = await asyncio.start_server(answer, "127.0.0.1", 0)
    alive_port = alive.sockets[0].getsockname()[1]
    dead = ("127.0.0.1", _closed_port())
    failover = cpl.Failover([dead, ("127.0.0.1", alive_port)])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    lb_port = listener.getsockname()[1]
    task = asyncio.create_task(cpl.serve(listener, failover))
    try:
        async with alive:
            for _ in range(2):
                r, w = await asyncio.open_connection("127.0.0.1", lb_port)
                assert await asyncio.wait_for(r.readline(), 5) == b"second\n"
                w.close()
            assert failover.order()[0] == ("127.0.0.1", alive_port)
    finally:
        task.cancel()
        listener.close()


async def test_load_balancer_with_no_server_closes_the_connection() -> None:
    failover = cpl.Failover([("127.0.0.1", _closed_port())])
    with pytest.raises(ConnectionError, match="no apiserver accepted"):
        await failover.connect()
    with pytest.raises(ValueError):
        cpl.Failover([])
