"""Packet-flow tables for iptables mode: (source, protocol, destination, port) ->
endpoints, masquerade, verdict, through the computed nat and filter chains. The same
Services and rows as tests/unit/proxy/test_trace.py; where iptables mode differs from
nftables mode by design (as kube-proxy's modes do) the row says so."""

from __future__ import annotations

import pytest

from tests.unit.proxy.builders import NODE_IP, ep, eps, svc
from tests.unit.proxy.test_trace import CLUSTER, ENDPOINT_STATES, EXTERNAL_SVCS
from tests.unit.proxy_iptables.builders import ruleset, tracer

POD = "10.244.9.9"
EXTERNAL = "203.0.113.7"
DNAT, REJECT, DROP, ACCEPT = "DNAT", "REJECT", "DROP", "ACCEPT"
ALL3 = ["10.244.1.1:80", "10.244.2.1:80", "10.244.3.1:80"]


def _row(t, src, proto, dst, port, verdict, endpoints=(), masq=None, from_node=False):  # type: ignore[no-untyped-def]
    tr = t.trace(src, proto, dst, port, from_node=from_node)
    assert tr.verdict == verdict, tr.outcomes
    assert tr.endpoints == sorted(endpoints), tr.outcomes
    if masq is not None:
        assert tr.masquerade == masq, tr.outcomes


@pytest.mark.parametrize("src,proto,dst,port,verdict,endpoints,masq", [
    pytest.param(POD, "tcp", "10.96.0.41", 80, DNAT, ALL3, False, id="pod to ClusterIP: every endpoint, no masquerade"),
    pytest.param(EXTERNAL, "tcp", "10.96.0.41", 80, DNAT, ALL3, True,
                 id="off-cluster source to ClusterIP is masqueraded"),
    pytest.param(POD, "tcp", "10.96.0.41", 81, ACCEPT, [], False,
                 id="wrong port on a live ClusterIP: untouched (nft rejects)"),
    pytest.param(POD, "udp", "10.96.0.41", 80, ACCEPT, [], False, id="wrong protocol: untouched (nft rejects)"),
    pytest.param(POD, "tcp", "10.96.0.99", 80, ACCEPT, [], False, id="unallocated service IP: untouched (nft drops)"),
    pytest.param(POD, "tcp", "10.96.0.50", 80, REJECT, [], None, id="service without endpoints rejects"),
    pytest.param(POD, "tcp", "10.96.0.10", 53, DNAT, ["10.244.1.10:5353"], False, id="TCP 53"),
    pytest.param(POD, "udp", "10.96.0.10", 53, DNAT, ["10.244.1.10:5354"], False, id="UDP 53 maps separately"),
    pytest.param(POD, "sctp", "10.96.0.10", 53, DNAT, ["10.244.1.10:5355"], False, id="SCTP 53 maps separately"),
])
def test_cluster_ip(src, proto, dst, port, verdict, endpoints, masq):  # type: ignore[no-untyped-def]
    _row(tracer(CLUSTER), src, proto, dst, port, verdict, endpoints, masq)


def test_hairpin_is_masqueraded_only_on_the_path_back_to_itself() -> None:
    tr = tracer(CLUSTER).trace("10.244.1.1", "tcp", "10.96.0.41", 80)
    assert {o.endpoint: o.masquerade for o in tr.outcomes} == {
        "10.244.1.1:80": True, "10.244.2.1:80": False, "10.244.3.1:80": False}


def test_node_to_cluster_ip_is_masqueraded() -> None:
    _row(tracer(CLUSTER), NODE_IP, "tcp", "10.96.0.41", 80, DNAT, ALL3, True, from_node=True)


@pytest.mark.parametrize("kw,src,masq", [
    pytest.param({"masquerade_all": True}, POD, True, id="masquerade-all: pods too"),
    pytest.param({"detect_local_mode": "None"}, EXTERNAL, False, id="no local detector: nobody"),
    pytest.param({"detect_local_mode": "NodeCIDR", "node_pod_cidrs": ("10.244.9.0/24",)}, POD, False,
                 id="NodeCIDR: this node's pods are local"),
    pytest.param({"detect_local_mode": "NodeCIDR", "node_pod_cidrs": ("10.244.9.0/24",)}, "10.244.1.5", True,
                 id="NodeCIDR: other nodes' pods are not"),
    pytest.param({"cluster_cidrs": ("10.244.0.0/16", "10.250.0.0/16")}, "10.250.0.9", False,
                 id="two cluster CIDRs: the second is local too"),
    pytest.param({"cluster_cidrs": ("10.244.0.0/16", "10.250.0.0/16")}, EXTERNAL, True,
                 id="two cluster CIDRs: outside both is masqueraded"),
])
def test_masquerade_modes(kw, src, masq):  # type: ignore[no-untyped-def]
    _row(tracer(CLUSTER, **kw), src, "tcp", "10.96.0.41", 80, DNAT, ALL3, masq)


ALL_LOCAL = {"nodeport_addresses": ("0.0.0.0/0",)}  # iptables mode's default


@pytest.mark.parametrize("src,proto,dst,port,from_node,verdict,endpoints,masq", [
    pytest.param(EXTERNAL, "tcp", NODE_IP, 30080, False, DNAT, ["10.244.1.1:80", "10.244.2.1:80"], True,
                 id="NodePort Cluster: all endpoints, masqueraded"),
    pytest.param(EXTERNAL, "tcp", "198.18.0.5", 80, False, DNAT, ["10.244.1.1:80", "10.244.2.1:80"], True,
                 id="externalIP Cluster: all endpoints, masqueraded"),
    pytest.param(EXTERNAL, "tcp", "10.0.0.1", 30080, False, ACCEPT, [], False,
                 id="NodePort not on a foreign address"),
    pytest.param(EXTERNAL, "tcp", NODE_IP, 30081, False, DNAT, ["10.244.1.2:80"], False,
                 id="NodePort Local: local endpoint only, client IP kept"),
    pytest.param(EXTERNAL, "tcp", "198.18.1.1", 80, False, DNAT, ["10.244.1.2:80"], False,
                 id="LB IP Local: local endpoint only"),
    pytest.param(POD, "tcp", "198.18.1.1", 80, False, DNAT, ["10.244.1.2:80", "10.244.2.2:80"], False,
                 id="pod to LB IP Local: short-circuit to all endpoints"),
    pytest.param(NODE_IP, "tcp", "198.18.1.1", 80, True, DNAT, ["10.244.1.2:80", "10.244.2.2:80"], True,
                 id="node to LB IP Local: short-circuit, masqueraded"),
    pytest.param("127.0.0.1", "tcp", "127.0.0.1", 30081, True, DNAT, ["10.244.1.2:80", "10.244.2.2:80"], True,
                 id="localhost NodePort Local: node traffic short-circuits, masqueraded"),
    pytest.param("127.0.0.1", "tcp", "127.0.0.1", 30080, True, DNAT, ["10.244.1.1:80", "10.244.2.1:80"], True,
                 id="localhost NodePort Cluster"),
    pytest.param(EXTERNAL, "tcp", NODE_IP, 30082, False, DROP, [], None,
                 id="NodePort Local without local endpoints drops"),
    pytest.param(POD, "tcp", "10.96.1.3", 80, False, DNAT, ["10.244.2.3:80"], False, id="its ClusterIP still serves"),
    pytest.param("203.0.113.9", "tcp", "198.18.1.4", 80, False, DNAT, ["10.244.2.4:80"], True,
                 id="LB source range allows"),
    pytest.param("203.0.113.200", "tcp", "198.18.1.4", 80, False, DROP, [], None, id="LB source range drops others"),
    pytest.param(POD, "tcp", "198.18.1.4", 80, False, DROP, [], None, id="source ranges apply to pods too"),
    pytest.param("203.0.113.200", "tcp", NODE_IP, 30083, False, DNAT, ["10.244.2.4:80"], True,
                 id="source ranges do not apply to the NodePort"),
    pytest.param(EXTERNAL, "tcp", "198.18.1.44", 80, False, ACCEPT, [], False, id="ipMode Proxy gets no rules"),
    pytest.param(EXTERNAL, "tcp", NODE_IP, 30084, False, REJECT, [], None, id="NodePort without endpoints rejects"),
    pytest.param(POD, "tcp", "10.96.1.6", 80, False, DNAT, ["10.244.1.6:80"], False,
                 id="internalTrafficPolicy Local: local endpoint only"),
    pytest.param(POD, "tcp", "10.96.1.7", 80, False, DROP, [], None,
                 id="internalTrafficPolicy Local without local endpoints drops"),
])
def test_external(src, proto, dst, port, from_node, verdict, endpoints, masq):  # type: ignore[no-untyped-def]
    _row(tracer(EXTERNAL_SVCS, **ALL_LOCAL), src, proto, dst, port, verdict, endpoints, masq, from_node=from_node)


def test_localhost_nodeports_can_be_turned_off() -> None:
    t = tracer(EXTERNAL_SVCS, localhost_nodeports=False, **ALL_LOCAL)
    _row(t, "127.0.0.1", "tcp", "127.0.0.1", 30080, ACCEPT, [], False, from_node=True)
    _row(t, EXTERNAL, "tcp", NODE_IP, 30080, DNAT, ["10.244.1.1:80", "10.244.2.1:80"], True)
    assert not ruleset(EXTERNAL_SVCS, localhost_nodeports=False, **ALL_LOCAL).localhost_nodeports


def test_nodeport_addresses_cidr_selects_local_addresses() -> None:
    kw = {"nodeport_addresses": ("10.0.0.0/8",), "local_addresses": ("10.0.0.1", "127.0.0.1")}
    t = tracer(EXTERNAL_SVCS, **kw)
    _row(t, EXTERNAL, "tcp", "10.0.0.1", 30080, DNAT, ["10.244.1.1:80", "10.244.2.1:80"], True)
    _row(t, EXTERNAL, "tcp", NODE_IP, 30080, ACCEPT, [], False)
    assert not ruleset(EXTERNAL_SVCS, **kw).localhost_nodeports  # 127.0.0.1 is not in 10/8


@pytest.mark.parametrize("dst,verdict,endpoints", [
    pytest.param("10.96.2.1", DNAT, ["10.244.2.1:80"], id="no ready endpoint: fall back to serving+terminating"),
    pytest.param("10.96.2.2", DNAT, ["10.244.2.3:80", "10.244.2.5:80"], id="ready unset counts as ready"),
    pytest.param("10.96.2.3", DNAT, ["10.244.2.6:80"], id="zone hints narrow to this zone"),
    pytest.param("10.96.2.4", ACCEPT, [], id="service-proxy-name: not ours"),
])
def test_endpoint_selection(dst, verdict, endpoints):  # type: ignore[no-untyped-def]
    _row(tracer(ENDPOINT_STATES, node_zone="zone-a"), POD, "tcp", dst, 80, verdict, endpoints)


def test_affinity_checks_every_endpoint_then_draws() -> None:
    objs = [svc("aff", "10.96.3.1", ("p80", 80, "TCP"), sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 300}}),
            eps("aff", ep("10.244.3.1"), ep("10.244.3.2"))]
    _row(tracer(objs), POD, "tcp", "10.96.3.1", 80, DNAT, ["10.244.3.1:80", "10.244.3.2:80"], False)
    rs = ruleset(objs)
    chain = next(c for c in rs.services.values() for c in c.chains if c.name.startswith("SVCNET-SVC-"))
    checks = [r for r in chain.rules if "--rcheck --seconds 300 --reap" in r]
    sets = [r for c in next(iter(rs.services.values())).chains for r in c.rules if "--set" in r]
    assert len(checks) == 2 and len(sets) == 2


def test_statistic_probabilities_are_uniform_and_printed_with_ten_decimals() -> None:
    objs = [svc("four", "10.96.3.4", ("p80", 80, "TCP")),
            eps("four", *[ep(f"10.244.4.{i}") for i in range(1, 5)])]
    chain = next(c for c in ruleset(objs).services.values() for c in c.chains if c.name.startswith("SVCNET-SVC-"))
    probs = [r.split("--probability ")[1].split()[0] for r in chain.rules if "--probability" in r]
    assert probs == ["0.2500000000", "0.3333333333", "0.5000000000"]
    assert "statistic" not in chain.rules[-1]


def test_ipv6_family() -> None:
    objs = [svc("v6", "fd00:96::41", ("p80", 80, "TCP"), clusterIPs=["fd00:96::41"]),
            eps("v6", ep("fd00:244::1"), ep("fd00:244::2"), family="IPv6")]
    t = tracer(objs, family=6, node_ips=("fd00::2",), cluster_cidrs=("fd00:244::/64",), service_cidrs=())
    _row(t, "fd00:244::9", "tcp", "fd00:96::41", 80, DNAT, ["[fd00:244::1]:80", "[fd00:244::2]:80"], False)
    _row(t, "2001:db8::1", "tcp", "fd00:96::41", 80, DNAT, ["[fd00:244::1]:80", "[fd00:244::2]:80"], True)


def test_large_clusters_drop_per_endpoint_comments_and_trace_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    import svcnet.proxy.iptables as ipt

    small = ruleset(CLUSTER)
    monkeypatch.setattr(ipt, "LARGE_CLUSTER_ENDPOINTS", 2)
    large = ruleset(CLUSTER)
    assert large.large and not small.large
    sep = [r for sr in large.services.values() for c in sr.chains if c.name.startswith("SVCNET-SEP-") for r in c.rules]
    assert sep and not any("--comment" in r for r in sep)
    assert any('"ns1/svc1:p80 cluster IP"' in r for r in large.top[("nat", "SVCNET-SERVICES")])
    _row(tracer(CLUSTER), POD, "tcp", "10.96.0.41", 80, DNAT, ALL3, False)
