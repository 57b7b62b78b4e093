"""iptables mode with real packets: the nftables integration lab (node namespace running
`svcnet proxy --proxy-mode iptables`, pods on veths with echo servers, an external
client) and the same Services, reused from tests/integration/proxy. Where iptables mode
differs from nftables mode by design (kube-proxy's), the test says so: NodePorts on
every local address including 127.0.0.1, wrong ports and unallocated service IPs left
untouched."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers.netns import NetnsPool
from tests.integration.proxy.lab import CLIENT_POD, EXT_IP, GATEWAY, NODE_IP, PY, ProxyLab, reached, sources, wait_for
from tests.integration.proxy.test_nftables_traffic import ALL, N, P2, P3, objects
from tests.unit.proxy.builders import ep, eps, svc

pytestmark = pytest.mark.root


def iptables_save(lab: ProxyLab, ns: str | None = None) -> str:
    out = lab.pool.run(ns or lab.node, "iptables-save", check=False).stdout
    return out + lab.pool.run(ns or lab.node, "ip6tables-save", check=False).stdout


def no_answer(r: list[list[str]]) -> bool:
    """Not reached and not refused (dropped, or routed away unanswered)."""
    return len(r) == 1 and r[0][0].startswith("!") and r[0][0] != "!refused"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ProxyLab]:
    with NetnsPool("svpi") as pool:
        lab = ProxyLab(pool, tmp_path_factory.mktemp("proxy-iptables"))
        lab.write_objects(objects())
        lab.start_proxy("--proxy-mode", "iptables")
        failed_before = request.session.testsfailed
        yield lab
        if request.session.testsfailed > failed_before or request.config.getoption("--keep-artifacts"):
            (lab.workdir / "iptables-save.txt").write_text(iptables_save(lab))
            ct = lab.pool.run(lab.node, "conntrack", "-L", check=False)
            (lab.workdir / "conntrack.txt").write_text(ct.stdout + ct.stderr)
            print(f"\nproxy artifacts in {lab.workdir}\n--- proxy log ---\n{lab.log()}")


def test_rules_are_iptables_chains_not_an_nft_table(lab: ProxyLab) -> None:
    saved = iptables_save(lab)
    assert "-A PREROUTING -m comment --comment \"svcnet service portals\" -j SVCNET-SERVICES" in saved
    assert '--comment "ns1/web:tcp cluster IP"' in saved and "--random-fully" in saved
    assert "table ip svcnet" not in lab.nft()


def test_cluster_ip_from_a_pod_reaches_every_endpoint_without_masquerade(lab: ProxyLab) -> None:
    r = lab.probe("client", "tcp", "10.96.0.10", 80, N)
    assert reached(r) == ALL and sources(r) == {CLIENT_POD}
    r = lab.probe("client", "udp", "10.96.0.10", 53, N)
    assert reached(r) == ALL and sources(r) == {CLIENT_POD}


def test_cluster_ip_from_the_node_and_from_outside_is_masqueraded(lab: ProxyLab) -> None:
    for where in ("node", "ext"):
        r = lab.probe(where, "tcp", "10.96.0.10", 80, 6)
        assert reached(r) <= ALL and len(reached(r)) >= 1 and sources(r) == {GATEWAY}, (where, r)


def test_no_endpoints_rejected_and_wrong_port_left_alone(lab: ProxyLab) -> None:
    assert lab.probe("client", "tcp", "10.96.0.11", 80) == [["!refused"]]
    assert lab.probe("ext", "tcp", NODE_IP, 30081) == [["!refused"]]
    # iptables mode (as kube-proxy's) does not reject wrong ports: nothing answers
    assert no_answer(lab.probe("client", "tcp", "10.96.0.10", 81, timeout=0.7))


def test_nodeport_and_external_ip_from_outside(lab: ProxyLab) -> None:
    for ip, port in ((NODE_IP, 30080), ("198.18.0.10", 80)):
        r = lab.probe("ext", "tcp", ip, port, N)
        assert reached(r) == ALL and sources(r) == {GATEWAY}, (ip, r)
    r = lab.probe("ext", "udp", NODE_IP, 30053, N)
    assert reached(r) == ALL and sources(r) == {GATEWAY}


def test_nodeports_on_every_local_address_and_localhost(lab: ProxyLab) -> None:
    # default --nodeport-addresses in iptables mode: all local IPs, so the node's
    # pod-facing address answers too; and 127.0.0.1 with route_localnet
    r = lab.probe("client", "tcp", GATEWAY, 30080, 6)
    assert reached(r) <= ALL and len(reached(r)) >= 1
    r = lab.probe("node", "tcp", "127.0.0.1", 30080, 6)
    assert reached(r) <= ALL and len(reached(r)) >= 1 and sources(r) == {GATEWAY}, r
    sysctl = lab.pool.run(lab.node, "sysctl", "-n", "net.ipv4.conf.all.route_localnet").stdout.strip()
    assert sysctl == "1"
    assert "block incoming localnet connections" in iptables_save(lab)


def test_external_traffic_policy_local_keeps_the_client_ip(lab: ProxyLab) -> None:
    for ip, port in ((NODE_IP, 30082), ("198.18.1.12", 80)):
        r = lab.probe("ext", "tcp", ip, port, 12)
        assert reached(r) == {"pod1"} and sources(r) == {EXT_IP}, (ip, r)
    r = lab.probe("client", "tcp", "198.18.1.12", 80, N)
    assert reached(r) == {"pod1", "pod2"} and sources(r) == {CLIENT_POD}
    # no local endpoint: dropped (silence), not rejected
    assert lab.probe("ext", "tcp", NODE_IP, 30083, timeout=0.7) == [["!timeout"]]


def test_health_check_node_port(lab: ProxyLab) -> None:
    script = ("import json,sys,urllib.request as u\n"
              "try:\n r=u.urlopen(sys.argv[1],timeout=5); c=r.status; b=r.read()\n"
              "except u.HTTPError as e:\n c=e.code; b=e.read()\n"
              "print(json.dumps([c, json.loads(b)]))")

    def get(port: int) -> list[Any]:
        return list(json.loads(lab.pool.run(lab.ext, PY, "-c", script, f"http://{NODE_IP}:{port}/").stdout))

    wait_for(lambda: bool(lab.pool.run(lab.node, "ss", "-Hltn", "sport = :32082").stdout.strip()), 10,
             lambda: "health check port not served")
    code, body = get(32082)
    assert code == 200 and body["localEndpoints"] == 1
    assert get(32083)[0] == 503
    assert '--comment "ns1/local health check node port" -m tcp --dport 32082 -j ACCEPT' in iptables_save(lab)


def test_load_balancer_source_ranges(lab: ProxyLab) -> None:
    assert reached(lab.probe("ext", "tcp", "198.18.1.14", 80, 3)) == {"pod2"}
    assert lab.probe("ext", "tcp", "198.18.1.15", 80, timeout=0.7) == [["!timeout"]]
    assert reached(lab.probe("ext", "tcp", NODE_IP, 30085, 3)) == {"pod2"}


def test_internal_policy_affinity_hairpin_terminating(lab: ProxyLab) -> None:
    assert reached(lab.probe("client", "tcp", "10.96.0.16", 80, 12)) == {"pod1"}
    r = lab.probe("client", "tcp", "10.96.0.17", 80, 12)
    assert len(reached(r)) == 1, r
    r = lab.probe("pod1", "tcp", "10.96.0.18", 80, 3)
    assert reached(r) == {"pod1"} and sources(r) == {GATEWAY}
    assert reached(lab.probe("client", "tcp", "10.96.0.19", 80, 12)) == {"pod2"}


def test_ignored_service_is_not_translated(lab: ProxyLab) -> None:
    assert no_answer(lab.probe("client", "tcp", "10.96.0.22", 80, timeout=0.7))
    assert "10.96.0.22" not in iptables_save(lab)


def test_sctp_init_arrives_translated_at_the_backend(lab: ProxyLab) -> None:
    sniff = ("from scapy.all import sniff, SCTP, IP\n"
             "p = sniff(lfilter=lambda x: SCTP in x, count=2, timeout=10,"
             " started_callback=lambda: print('ready', flush=True))\n"
             "print(' '.join(f'{x[IP].src}>{x[IP].dst}:{x[SCTP].dport}' for x in p), flush=True)")
    sniffer = lab.pool.popen(lab.ns["pod2"], PY, "-c", sniff, stdout=subprocess.PIPE, text=True)
    assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready"
    send = ("from scapy.all import IP, SCTP, SCTPChunkInit, send\n"
            "for sport, dst, port in ((40000, '10.96.0.20', 80), (40001, '192.168.0.2', 30090)):\n"
            " send(IP(dst=dst)/SCTP(sport=sport, dport=port, tag=0)/SCTPChunkInit(init_tag=7, a_rwnd=65535,"
            " n_out_streams=1, n_in_streams=1, init_tsn=1), verbose=0)\n")
    lab.pool.run(lab.ext, PY, "-c", send)
    out, _ = sniffer.communicate(timeout=20)
    assert sorted(out.split()) == [f"{GATEWAY}>{P2}:8080"] * 2, out


def test_udp_conntrack_cleanup_moves_a_client_to_the_new_endpoint(lab: ProxyLab) -> None:
    assert reached(lab.probe("client", "udp", "10.96.0.21", 53, 2, sport=41000)) == {"pod2"}
    lab.apply(objects(udp_backend=P3))
    assert reached(lab.probe("client", "udp", "10.96.0.21", 53, 2, sport=41000)) == {"pod3"}


def test_service_changes_are_partial_syncs_that_land(lab: ProxyLab) -> None:
    objs = objects(udp_backend=P3)
    objs += [svc("late", "10.96.0.40", ("tcp", 80, "TCP")), eps("late", ep(P3, node="node-b"),
                                                                   ports=(("tcp", 8080, "TCP"),))]
    objs = [o for o in objs if o["metadata"]["name"] != "aff"]  # delete a Service and its slice
    lab.apply(objs)
    assert [ln for ln in lab.log().splitlines() if "synced rules" in ln][-1].count("partial") == 1
    assert reached(lab.probe("client", "tcp", "10.96.0.40", 80, 3)) == {"pod3"}
    saved = iptables_save(lab)
    assert "ns1/aff:" not in saved and "10.96.0.17" not in saved


def test_cleanup_removes_every_svcnet_chain_and_nothing_else(tmp_path: Path) -> None:
    with NetnsPool("svpic") as pool:
        lab = ProxyLab.__new__(ProxyLab)  # only the objects file and commands, no pods
        lab.pool, lab.workdir = pool, tmp_path
        lab.objects_file = tmp_path / "objects.yaml"
        lab.node = pool.netns("node")
        lab.write_objects(objects())
        pool.run(lab.node, "iptables", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
        pool.run(lab.node, "iptables", "-t", "nat", "-N", "OTHER-CHAIN")
        out = lab.once("--proxy-mode", "iptables")
        assert out.returncode == 0, out.stderr
        assert iptables_save(lab).count("SVCNET-") > 50
        out = pool.run(lab.node, PY, "-m", "svcnet", "proxy", "--cleanup", check=False)
        assert out.returncode == 0, out.stderr
        saved = iptables_save(lab)
        assert "SVCNET" not in saved
        assert "-A INPUT -s 192.0.2.1/32 -j ACCEPT" in saved and ":OTHER-CHAIN" in saved


LEGACY_WRITE = """
import sys, yaml
from svcnet.proxy.change_tracker import ChangeTracker
from svcnet.proxy.iptables import Ruleset, compute_family
from svcnet.proxy.iptables_restore import RestoreWriter, Tools
from svcnet.proxy.model import ProxyConfig, ProxyState
t = ChangeTracker("node-a", (4,))
for o in yaml.safe_load_all(open(sys.argv[1])):
    (t.on_service_add if o["kind"] == "Service" else t.on_endpoint_slice_add)(o)
t.checkpoint()
cfg = ProxyConfig(family=4, node_name="node-a", node_ips=("192.168.0.2",), cluster_cidrs=("10.244.0.0/16",),
                  nodeport_addresses=("0.0.0.0/0",))
w = RestoreWriter(families=(4,), tools=Tools("legacy"))
w.write(Ruleset((compute_family(ProxyState(cfg, t.ports[4], t.endpoints[4])),)), True)
"""


def test_legacy_backend_writes_rules_that_carry_traffic(tmp_path: Path) -> None:
    """The writer on iptables-legacy (the host default here is nf_tables): the same
    payload through iptables-legacy-restore, seen by iptables-legacy-save, carrying
    real connections; --cleanup removes it from the legacy tables as well."""
    with NetnsPool("svpil") as pool:
        lab = ProxyLab(pool, tmp_path)
        lab.write_objects(objects())
        out = pool.run(lab.node, PY, "-c", LEGACY_WRITE, str(lab.objects_file), check=False)
        assert out.returncode == 0, out.stderr
        saved = pool.run(lab.node, "iptables-legacy-save").stdout
        assert "-A PREROUTING -m comment --comment \"svcnet service portals\" -j SVCNET-SERVICES" in saved
        assert "SVCNET" not in pool.run(lab.node, "iptables-nft-save").stdout
        r = lab.probe("client", "tcp", "10.96.0.10", 80, N)
        assert reached(r) == ALL and sources(r) == {CLIENT_POD}
        r = lab.probe("ext", "tcp", NODE_IP, 30080, 6)
        assert reached(r) <= ALL and sources(r) == {GATEWAY}
        out = pool.run(lab.node, PY, "-m", "svcnet", "proxy", "--cleanup", check=False)
        assert out.returncode == 0, out.stderr
        assert "SVCNET" not in pool.run(lab.node, "iptables-legacy-save").stdout


def test_ipv6_cluster_ip_through_ip6tables(tmp_path: Path) -> None:
    """The IPv6 family: ip6tables rules from an IPv6 Service and slice, real TCP over
    IPv6 to the ClusterIP reaching both pods, unmasqueraded from a pod."""
    gw, client_ip = "fd00:244::1", "fd00:244::20"
    pods = {"pod1": "fd00:244::11", "pod2": "fd00:244::12"}
    with NetnsPool("svpi6") as pool:
        node = pool.netns("node")
        pool.run(node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        where: dict[str, str] = {}
        for name, ip in [*pods.items(), ("client", client_ip)]:
            ns = where[name] = pool.netns(name)
            node_dev, pod_dev = pool.veth(node, None, ns, None)
            pool.run(node, "ip", "-6", "addr", "add", f"{gw}/128", "dev", node_dev, "nodad")
            pool.run(ns, "ip", "-6", "addr", "add", f"{ip}/128", "dev", pod_dev, "nodad")
            pool.run(node, "ip", "-6", "route", "add", f"{ip}/128", "dev", node_dev)
            pool.run(ns, "ip", "-6", "route", "add", gw, "dev", pod_dev)
            pool.run(ns, "ip", "-6", "route", "add", "default", "via", gw, "dev", pod_dev)
        for name in pods:
            p = pool.popen(where[name], PY, str(Path(__file__).parents[1] / "proxy" / "echo_server.py"), name,
                           "8080", "8053", "::", stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        # Fresh IPv6 links resolve neighbours lazily; a first SYN lost to that is not
        # the proxy's doing, so wait until the client reaches each pod directly.
        for ip in pods.values():
            connect = f"import socket; socket.create_connection(('{ip}', 8080), timeout=1).close()"
            wait_for(lambda: pool.run(where["client"], PY, "-c", connect, check=False).returncode == 0,
                     10, lambda: f"client cannot reach {ip} directly")
        objs = [svc("web6", "fd00:96::10", ("tcp", 80, "TCP"), clusterIPs=["fd00:96::10"], ipFamilies=["IPv6"]),
                eps("web6", ep(pods["pod1"]), ep(pods["pod2"]), ports=(("tcp", 8080, "TCP"),), family="IPv6")]
        lab = ProxyLab.__new__(ProxyLab)
        lab.pool, lab.workdir, lab.node = pool, tmp_path, node
        lab.objects_file = tmp_path / "objects.yaml"
        lab.write_objects(objs)
        out = pool.run(node, PY, "-m", "svcnet", "proxy", "--objects", str(lab.objects_file), "--hostname-override",
                       "node-a", "--node-ip", "fd00::2", "--cluster-cidr", "fd00:244::/64", "--proxy-mode", "iptables",
                       "--once", check=False)
        assert out.returncode == 0, out.stderr
        assert '--comment "ns1/web6:tcp cluster IP"' in pool.run(node, "ip6tables-save").stdout
        probe = str(Path(__file__).parents[1] / "proxy" / "probe.py")
        res = json.loads(pool.run(where["client"], PY, probe, "tcp", "fd00:96::10", "80", str(N), "2").stdout)
        assert reached(res) == {"pod1", "pod2"} and sources(res) == {client_ip}, res
