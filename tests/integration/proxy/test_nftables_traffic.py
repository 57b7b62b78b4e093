"""nftables mode with real packets: a node namespace running `svcnet proxy`, pods on
veths running echo servers, an external client. Every row of kube-proxy's feature
table is shown by where connections land and which source the backend saw."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers.netns import NetnsPool
from tests.integration.proxy.lab import (
    CLIENT_POD,
    CLIENT_POD6,
    EXT_IP,
    EXT_IP6,
    GATEWAY,
    GATEWAY6,
    NODE_IP,
    NODE_IP6,
    PODS,
    PODS6,
    PY,
    ProxyLab,
    reached,
    sources,
    wait_for,
)
from tests.unit.proxy.builders import ep, eps, svc

pytestmark = pytest.mark.root

P1, P2, P3 = PODS["pod1"], PODS["pod2"], PODS["pod3"]
TCPUDP = (("tcp", 8080, "TCP"), ("udp", 8053, "UDP"))
ALL = {"pod1", "pod2", "pod3"}
N = 40  # new connections per check: P(missing one of 3 endpoints) = 3 * (2/3)^40 < 3e-7


def pod(ip: str, node: str = "node-b", **kw: Any) -> dict[str, Any]:
    return ep(ip, node=node, **kw)


def objects(udp_backend: str = P2, node_taints: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    return [
        svc("web", "10.96.0.10", ("tcp", 80, "TCP", 30080), ("udp", 53, "UDP", 30053), type="NodePort",
            externalIPs=["198.18.0.10"]),
        eps("web", pod(P1, "node-a"), pod(P2), pod(P3), ports=TCPUDP),
        svc("empty", "10.96.0.11", ("tcp", 80, "TCP", 30081), type="NodePort"),
        svc("local", "10.96.0.12", ("tcp", 80, "TCP", 30082), type="LoadBalancer", externalTrafficPolicy="Local",
            healthCheckNodePort=32082, status={"loadBalancer": {"ingress": [{"ip": "198.18.1.12"}]}}),
        eps("local", pod(P1, "node-a"), pod(P2), ports=TCPUDP),
        svc("nolocal", "10.96.0.13", ("tcp", 80, "TCP", 30083), type="NodePort", externalTrafficPolicy="Local",
            healthCheckNodePort=32083),
        eps("nolocal", pod(P2), ports=TCPUDP),
        svc("lbok", "10.96.0.14", ("tcp", 80, "TCP", 30084), type="LoadBalancer",
            loadBalancerSourceRanges=[f"{EXT_IP}/32"], status={"loadBalancer": {"ingress": [{"ip": "198.18.1.14"}]}}),
        eps("lbok", pod(P2), ports=TCPUDP),
        svc("lbdeny", "10.96.0.15", ("tcp", 80, "TCP", 30085), type="LoadBalancer",
            loadBalancerSourceRanges=["203.0.113.0/24"], status={"loadBalancer": {"ingress": [{"ip": "198.18.1.15"}]}}),
        eps("lbdeny", pod(P2), ports=TCPUDP),
        svc("itp", "10.96.0.16", ("tcp", 80, "TCP"), internalTrafficPolicy="Local"),
        eps("itp", pod(P1, "node-a"), pod(P2), pod(P3), ports=TCPUDP),
        svc("aff", "10.96.0.17", ("tcp", 80, "TCP"), sessionAffinity="ClientIP"),
        eps("aff", pod(P1), pod(P2), pod(P3), ports=TCPUDP),
        svc("hairpin", "10.96.0.18", ("tcp", 80, "TCP")),
        eps("hairpin", pod(P1, "node-a"), ports=TCPUDP),
        svc("term", "10.96.0.19", ("tcp", 80, "TCP")),
        eps("term", pod(P2, ready=False, serving=True, terminating=True),
            pod(P3, ready=False, serving=False, terminating=True), ports=TCPUDP),
        svc("sctp", "10.96.0.20", ("sctp", 80, "SCTP", 30090), type="NodePort"),
        eps("sctp", pod(P2), ports=(("sctp", 8080, "SCTP"),)),
        svc("udpct", "10.96.0.21", ("udp", 53, "UDP")),
        eps("udpct", pod(udp_backend), ports=TCPUDP),
        {**svc("udpct6", "10.96.0.25", ("udp", 53, "UDP")),
         "spec": {**svc("udpct6", "10.96.0.25", ("udp", 53, "UDP"))["spec"],
                  "clusterIPs": ["10.96.0.25", "fd00:96::25"], "ipFamilies": ["IPv4", "IPv6"]}},
        eps("udpct6", pod(PODS6["pod2"] if udp_backend == P2 else PODS6["pod3"]), ports=TCPUDP,
            family="IPv6"),
        {**svc("local6", "10.96.0.26", ("tcp", 80, "TCP", 30026), type="NodePort"),
         "spec": {**svc("local6", "10.96.0.26", ("tcp", 80, "TCP", 30026), type="NodePort")["spec"],
                  "clusterIPs": ["10.96.0.26", "fd00:96::26"], "ipFamilies": ["IPv4", "IPv6"],
                  "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP"}},
        eps("local6", pod(PODS6["pod1"], "node-a"), pod(PODS6["pod2"]), ports=TCPUDP, family="IPv6"),
        {**svc("hairpin6", "10.96.0.27", ("tcp", 80, "TCP")),
         "spec": {**svc("hairpin6", "10.96.0.27", ("tcp", 80, "TCP"))["spec"],
                  "clusterIPs": ["10.96.0.27", "fd00:96::27"], "ipFamilies": ["IPv4", "IPv6"]}},
        eps("hairpin6", pod(PODS6["pod1"], "node-a"), ports=TCPUDP, family="IPv6"),
        # no endpoints until the conntrack test gives it one
        svc("udpnew", "10.96.0.24", ("udp", 53, "UDP")),
        *([eps("udpnew", pod(P1), ports=TCPUDP)] if udp_backend != P2 else []),
        svc("ignored", "10.96.0.22", ("tcp", 80, "TCP"), labels={"service.kubernetes.io/service-proxy-name": "x"}),
        eps("ignored", pod(P1), ports=TCPUDP),
        svc("zoned", "10.96.0.23", ("tcp", 80, "TCP")),
        eps("zoned", pod(P1, zones=("zone-a",)), pod(P2, zones=("zone-b",)), pod(P3, zones=("zone-b",)),
            ports=TCPUDP),
        {**svc("dual", "10.96.0.30", ("tcp", 80, "TCP", 30030), ("udp", 53, "UDP", 30031), type="NodePort"),
         "spec": {**svc("dual", "10.96.0.30", ("tcp", 80, "TCP", 30030), ("udp", 53, "UDP", 30031),
                        type="NodePort")["spec"], "clusterIPs": ["10.96.0.30", "fd00:96::30"],
                  "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}},
        eps("dual", pod(P1), pod(P2), pod(P3), ports=TCPUDP, name="dual-v4"),
        eps("dual", *[pod(ip) for ip in PODS6.values()], ports=TCPUDP, name="dual-v6", family="IPv6"),
        # this node: its zone label is what topology hints are matched against
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
         "spec": {"taints": node_taints or []},
         "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}},
    ]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ProxyLab]:
    with NetnsPool("svpx") as pool:
        lab = ProxyLab(pool, tmp_path_factory.mktemp("proxy"))
        lab.write_objects(objects())
        lab.start_proxy()
        failed_before = request.session.testsfailed
        yield lab
        if request.session.testsfailed > failed_before or request.config.getoption("--keep-artifacts"):
            (lab.workdir / "nft-ruleset.txt").write_text(lab.nft())
            for name, cmd in (("conntrack.txt", ("conntrack", "-L")), ("links.txt", ("ip", "-d", "link"))):
                (lab.workdir / name).write_text(pool.run(lab.node, *cmd, check=False).stdout)
            print(f"\nproxy artifacts in {lab.workdir}\n--- proxy log ---\n{lab.log()}")


def test_cluster_ip_from_a_pod_reaches_every_endpoint_without_masquerade(lab: ProxyLab) -> None:
    r = lab.probe("client", "tcp", "10.96.0.10", 80, N)
    assert reached(r) == ALL and sources(r) == {CLIENT_POD}


def test_cluster_ip_udp_reaches_every_endpoint(lab: ProxyLab) -> None:
    r = lab.probe("client", "udp", "10.96.0.10", 53, N)
    assert reached(r) == ALL and sources(r) == {CLIENT_POD}


def test_cluster_ip_from_the_node_and_from_outside_is_masqueraded(lab: ProxyLab) -> None:
    r = lab.probe("node", "tcp", "10.96.0.10", 80, 6)
    assert reached(r) <= ALL and sources(r) == {GATEWAY}
    r = lab.probe("ext", "tcp", "10.96.0.10", 80, 6)
    assert reached(r) <= ALL and sources(r) == {GATEWAY}


def test_wrong_port_rejected_unallocated_dropped_no_endpoints_rejected(lab: ProxyLab) -> None:
    assert lab.probe("client", "tcp", "10.96.0.10", 81) == [["!refused"]]
    assert lab.probe("client", "tcp", "10.96.0.99", 80, timeout=0.7) == [["!timeout"]]
    assert lab.probe("client", "tcp", "10.96.0.11", 80) == [["!refused"]]
    assert lab.probe("ext", "tcp", NODE_IP, 30081) == [["!refused"]]


def test_nodeport_and_external_ip_from_outside(lab: ProxyLab) -> None:
    for ip, port in ((NODE_IP, 30080), ("198.18.0.10", 80)):
        r = lab.probe("ext", "tcp", ip, port, N)
        assert reached(r) == ALL and sources(r) == {GATEWAY}, (ip, r)
    r = lab.probe("ext", "udp", NODE_IP, 30053, N)
    assert reached(r) == ALL and sources(r) == {GATEWAY}


def test_external_traffic_policy_local_keeps_the_client_ip(lab: ProxyLab) -> None:
    for ip, port in ((NODE_IP, 30082), ("198.18.1.12", 80)):
        r = lab.probe("ext", "tcp", ip, port, 12)
        assert reached(r) == {"pod1"} and sources(r) == {EXT_IP}, (ip, r)
    # pods short-circuit to every endpoint, unmasqueraded
    r = lab.probe("client", "tcp", "198.18.1.12", 80, N)
    assert reached(r) == {"pod1", "pod2"} and sources(r) == {CLIENT_POD}
    # no local endpoint: dropped, not rejected
    assert lab.probe("ext", "tcp", NODE_IP, 30083, timeout=0.7) == [["!timeout"]]


def test_health_check_node_port(lab: ProxyLab) -> None:
    script = ("import json,sys,urllib.request as u\n"
              "try:\n r=u.urlopen(sys.argv[1],timeout=5); c=r.status; b=r.read()\n"
              "except u.HTTPError as e:\n c=e.code; b=e.read()\n"
              "print(json.dumps([c, json.loads(b)]))")

    def get(port: int) -> list[Any]:
        out = lab.pool.run(lab.ext, PY, "-c", script, f"http://{NODE_IP}:{port}/")
        return list(json.loads(out.stdout))

    wait_for(lambda: _port_open(lab, 32082), 10, lambda: "health check port not served")
    code, body = get(32082)
    assert code == 200 and body == {"service": {"namespace": "ns1", "name": "local"}, "localEndpoints": 1,
                                    "serviceProxyHealthy": True}
    code, body = get(32083)
    assert code == 503 and body["localEndpoints"] == 0


def _port_open(lab: ProxyLab, port: int) -> bool:
    out = lab.pool.run(lab.node, "ss", "-Hltn", f"sport = :{port}", check=False)
    return bool(out.stdout.strip())


def test_load_balancer_source_ranges(lab: ProxyLab) -> None:
    r = lab.probe("ext", "tcp", "198.18.1.14", 80, 3)
    assert reached(r) == {"pod2"}
    assert lab.probe("ext", "tcp", "198.18.1.15", 80, timeout=0.7) == [["!timeout"]]
    # the NodePort of the same service is not subject to the ranges
    assert reached(lab.probe("ext", "tcp", NODE_IP, 30085, 3)) == {"pod2"}


def test_internal_traffic_policy_local(lab: ProxyLab) -> None:
    r = lab.probe("client", "tcp", "10.96.0.16", 80, 12)
    assert reached(r) == {"pod1"}


def test_session_affinity_sticks(lab: ProxyLab) -> None:
    r = lab.probe("client", "tcp", "10.96.0.17", 80, 12)
    assert len(reached(r)) == 1, r


def test_hairpin_is_masqueraded(lab: ProxyLab) -> None:
    r = lab.probe("pod1", "tcp", "10.96.0.18", 80, 3)
    assert reached(r) == {"pod1"} and sources(r) == {GATEWAY}


def test_terminating_fallback_uses_serving_endpoints_only(lab: ProxyLab) -> None:
    r = lab.probe("client", "tcp", "10.96.0.19", 80, 12)
    assert reached(r) == {"pod2"}


def test_ignored_service_is_not_translated(lab: ProxyLab) -> None:
    assert lab.probe("client", "tcp", "10.96.0.22", 80, timeout=0.7) == [["!timeout"]]
    assert "10.96.0.22" not in lab.nft()


def test_sctp_init_arrives_translated_at_the_backend(lab: ProxyLab) -> None:
    # No libpcap here: filter in Python. The kernel has no SCTP sockets, but
    # netfilter still tracks and translates SCTP, which is what is under test.
    sniff = ("import sys\nfrom scapy.all import sniff, SCTP, IP\n"
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
    # ClusterIP and NodePort both arrive at pod2:8080, masqueraded (off-cluster client)
    assert sorted(out.split()) == [f"{GATEWAY}>{P2}:8080"] * 2, out


def test_udp_conntrack_cleanup_moves_a_client_to_the_new_endpoint(lab: ProxyLab) -> None:
    first = lab.probe("client", "udp", "10.96.0.21", 53, 2, sport=41000)
    assert reached(first) == {"pod2"}
    assert reached(lab.probe("client", "udp", "fd00:96::25", 53, 2, sport=41002)) == {"pod2"}
    # a service without endpoints rejects (ICMP port unreachable)
    assert lab.probe("client", "udp", "10.96.0.24", 53, 1, sport=41001) == [["!refused"]]
    lab.apply(objects(udp_backend=P3))  # pod2 leaves, pod3 joins; udpnew gets pod1
    # Same client socket (source port): without cleanup its conntrack entry would
    # keep it on pod2 until the entry expired.
    assert reached(lab.probe("client", "udp", "10.96.0.21", 53, 2, sport=41000)) == {"pod3"}
    assert reached(lab.probe("client", "udp", "fd00:96::25", 53, 2, sport=41002)) == {"pod3"}, "IPv6 too"
    # the empty -> non-empty transition: the rejected client is served at once
    assert reached(lab.probe("client", "udp", "10.96.0.24", 53, 2, sport=41001)) == {"pod1"}


def test_topology_hints_keep_traffic_in_the_node_zone(lab: ProxyLab) -> None:
    assert reached(lab.probe("client", "tcp", "10.96.0.23", 80, 12)) == {"pod1"}


def test_dual_stack_service_in_ip6_table(lab: ProxyLab) -> None:
    r = lab.probe("client", "tcp", "fd00:96::30", 80, N)
    assert reached(r) == ALL and sources(r) == {CLIENT_POD6}
    r = lab.probe("client", "udp", "fd00:96::30", 53, N)
    assert reached(r) == ALL and sources(r) == {CLIENT_POD6}
    r = lab.probe("ext", "tcp", NODE_IP6, 30030, 12)
    assert reached(r) <= ALL and sources(r) == {GATEWAY6}, "external IPv6 NodePort is masqueraded"
    assert lab.probe("client", "tcp", "fd00:96::30", 81) == [["!refused"]]
    assert reached(lab.probe("client", "tcp", "10.96.0.30", 80, 6)) <= ALL


def test_ipv6_local_policy_hairpin_and_affinity(lab: ProxyLab) -> None:
    r = lab.probe("ext", "tcp", NODE_IP6, 30026, 6)
    assert reached(r) == {"pod1"} and sources(r) == {EXT_IP6}, "eTP Local keeps the IPv6 client address"
    r = lab.probe("client", "tcp", "fd00:96::26", 80, 8)
    assert len(reached(r)) == 1 and sources(r) == {CLIENT_POD6}, "affinity sticks"
    r = lab.probe("pod1", "tcp", "fd00:96::27", 80, 3)
    assert reached(r) == {"pod1"} and sources(r) == {GATEWAY6}, "IPv6 hairpin is masqueraded"


def test_metrics_carry_kube_proxy_names(lab: ProxyLab) -> None:
    script = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:10249/metrics', timeout=5).read().decode())"
    text = lab.pool.run(lab.node, PY, "-c", script).stdout
    for name in ("kubeproxy_sync_proxy_rules_duration_seconds_count", "kubeproxy_sync_full_proxy_rules_duration_seconds",
                 "kubeproxy_sync_partial_proxy_rules_duration_seconds", "kubeproxy_network_programming_duration_seconds",
                 "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                 "kubeproxy_sync_proxy_rules_no_local_endpoints_total"):
        assert name in text, name
    assert 'kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="external"} 1.0' in text


def test_healthz_reports_a_node_being_removed(lab: ProxyLab) -> None:
    script = ("import json,sys,urllib.request as u\n"
              "try:\n r=u.urlopen(sys.argv[1],timeout=5); c=r.status; b=r.read()\n"
              "except u.HTTPError as e:\n c=e.code; b=e.read()\n"
              "print(json.dumps([c, json.loads(b)]))")

    def get(path: str) -> list[Any]:
        return list(json.loads(lab.pool.run(lab.node, PY, "-c", script, f"http://127.0.0.1:10256{path}").stdout))

    code, body = get("/healthz")
    assert code == 200 and body["nodeEligible"] is True and "lastUpdated" in body
    # the cluster autoscaler marks the node for removal: load balancers must drain it
    lab.write_objects(objects(udp_backend=P3, node_taints=[{"key": "ToBeDeletedByClusterAutoscaler",
                                                             "effect": "NoSchedule"}]))
    wait_for(lambda: get("/healthz")[0] == 503, 20, lab.log)
    assert get("/healthz")[1]["nodeEligible"] is False
    assert get("/livez")[0] == 200, "the proxy itself is alive"
    lab.write_objects(objects(udp_backend=P3))
    wait_for(lambda: get("/healthz")[0] == 200, 20, lab.log)


def test_a_restart_keeps_session_affinity(lab: ProxyLab) -> None:
    first = reached(lab.probe("client", "tcp", "10.96.0.17", 80, 3))
    assert len(first) == 1

    def remembered() -> bool:
        sets = lab.pool.run(lab.node, "nft", "list", "sets", "ip").stdout
        return any(CLIENT_POD in block for block in sets.split("set affinity-")[1:] if "/aff/" in block)

    assert remembered()
    out = lab.once()  # a new process takes over the table the running proxy wrote
    assert out.returncode == 0, out.stderr
    assert remembered(), "the new process kept the affinity sets' clients"
    assert reached(lab.probe("client", "tcp", "10.96.0.17", 80, 6)) == first


def test_masquerade_modes_with_once(lab: ProxyLab) -> None:
    """Last in the module: replaces the running proxy with one-shot runs."""
    assert lab.proxy is not None
    lab.proxy.terminate()
    assert lab.proxy.wait(timeout=10) == 0, "SIGTERM is a clean exit"
    out = lab.once("--masquerade-all")
    assert out.returncode == 0, out.stderr
    r = lab.probe("client", "tcp", "10.96.0.10", 80, 4)
    assert sources(r) == {GATEWAY}, f"pods are masqueraded too: {r}\n{lab.nft()}"
    out = lab.once("--detect-local-mode", "None")
    assert out.returncode == 0, out.stderr
    r = lab.probe("ext", "tcp", "10.96.0.10", 80, 4)
    assert reached(r) <= ALL and sources(r) == {EXT_IP}, "no local detector: off-cluster clients keep their IP"
    assert sources(lab.probe("client", "tcp", "10.96.0.10", 80, 4)) == {CLIENT_POD}


def test_cleanup_removes_the_tables(tmp_path: Path) -> None:
    with NetnsPool("svpc") as pool:
        lab_ns = pool.netns("node")
        pool.run(lab_ns, "nft", "-f", "-", input="table ip svcnet {}\ntable ip6 svcnet {}\ntable ip other {}\n")
        out = pool.run(lab_ns, PY, "-m", "svcnet", "proxy", "--cleanup", check=False)
        assert out.returncode == 0, out.stderr
        assert pool.run(lab_ns, "nft", "list", "tables").stdout.split() == ["table", "ip", "other"]
