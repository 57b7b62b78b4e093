"""Packet-flow tables: (source, protocol, destination, port) -> endpoints, masquerade.

Each row follows a new connection through the computed nftables ruleset with the
tracer, as kube-proxy's TestClusterIPGeneral / TestExternalTrafficPolicy* do.
Sources: 10.244.x.x are pods (cluster CIDR), 192.168.0.2 is this node,
203.0.113.x / 198.18.x.x are outside the cluster.
"""

from __future__ import annotations

import pytest

from tests.unit.proxy.builders import NODE, NODE_IP, ep, eps, svc, tracer

POD = "10.244.9.9"
EXTERNAL = "203.0.113.7"
DNAT, REJECT, DROP, ACCEPT = "DNAT", "REJECT", "DROP", "ACCEPT"

CLUSTER = [
    svc("svc1", "10.96.0.41", ("p80", 80, "TCP")),
    eps("svc1", ep("10.244.1.1"), ep("10.244.2.1"), ep("10.244.3.1")),
    # one Service, TCP/UDP/SCTP 53 mapped to different target ports
    svc("dns", "10.96.0.10", ("tcp", 53, "TCP"), ("udp", 53, "UDP"), ("sctp", 53, "SCTP")),
    eps("dns", ep("10.244.1.10"), ports=(("tcp", 5353, "TCP"), ("udp", 5354, "UDP"), ("sctp", 5355, "SCTP"))),
    svc("empty", "10.96.0.50", ("p80", 80, "TCP")),
]


def _row(t, src, proto, dst, port, verdict, endpoints=(), masq=None, from_node=False):  # type: ignore[no-untyped-def]
    tr = t.trace(src, proto, dst, port, from_node=from_node)
    assert tr.verdict == verdict, tr.outcomes
    assert tr.endpoints == sorted(endpoints), tr.outcomes
    if masq is not None:
        assert tr.masquerade == masq, tr.outcomes


@pytest.mark.parametrize("src,proto,dst,port,verdict,endpoints,masq", [
    pytest.param(POD, "tcp", "10.96.0.41", 80, DNAT, ["10.244.1.1:80", "10.244.2.1:80", "10.244.3.1:80"], False,
                 id="pod to ClusterIP: every endpoint, no masquerade"),
    pytest.param(EXTERNAL, "tcp", "10.96.0.41", 80, DNAT, ["10.244.1.1:80", "10.244.2.1:80", "10.244.3.1:80"], True,
                 id="off-cluster source to ClusterIP is masqueraded"),
    pytest.param(POD, "tcp", "10.96.0.41", 81, REJECT, [], None, id="wrong port on a live ClusterIP is rejected"),
    pytest.param(POD, "udp", "10.96.0.41", 80, REJECT, [], None, id="wrong protocol on a live ClusterIP is rejected"),
    pytest.param(POD, "tcp", "10.96.0.99", 80, DROP, [], None, id="unallocated IP in the service CIDR is dropped"),
    pytest.param(POD, "tcp", "10.97.0.1", 80, ACCEPT, [], False, id="outside the service CIDR is untouched"),
    pytest.param(POD, "tcp", "10.96.0.50", 80, REJECT, [], None, id="service without endpoints rejects"),
    pytest.param(POD, "tcp", "10.96.0.10", 53, DNAT, ["10.244.1.10:5353"], False, id="TCP 53"),
    pytest.param(POD, "udp", "10.96.0.10", 53, DNAT, ["10.244.1.10:5354"], False, id="UDP 53 maps separately"),
    pytest.param(POD, "sctp", "10.96.0.10", 53, DNAT, ["10.244.1.10:5355"], False, id="SCTP 53 maps separately"),
])
def test_cluster_ip(src, proto, dst, port, verdict, endpoints, masq):  # type: ignore[no-untyped-def]
    _row(tracer(CLUSTER), src, proto, dst, port, verdict, endpoints, masq)


def test_hairpin_is_masqueraded_only_on_the_path_back_to_itself() -> None:
    tr = tracer(CLUSTER).trace("10.244.1.1", "tcp", "10.96.0.41", 80)
    by_ep = {o.endpoint: o.masquerade for o in tr.outcomes}
    assert by_ep == {"10.244.1.1:80": True, "10.244.2.1:80": False, "10.244.3.1:80": False}


def test_node_to_cluster_ip_is_masqueraded() -> None:
    _row(tracer(CLUSTER), NODE_IP, "tcp", "10.96.0.41", 80, DNAT,
         ["10.244.1.1:80", "10.244.2.1:80", "10.244.3.1:80"], True, from_node=True)


@pytest.mark.parametrize("kw,src,masq", [
    pytest.param({"masquerade_all": True}, POD, True, id="masquerade-all: pods too"),
    pytest.param({"detect_local_mode": "None"}, EXTERNAL, False, id="no local detector: nobody"),
    pytest.param({"detect_local_mode": "NodeCIDR", "node_pod_cidrs": ("10.244.9.0/24",)}, POD, False,
                 id="NodeCIDR: this node's pods are local"),
    pytest.param({"detect_local_mode": "NodeCIDR", "node_pod_cidrs": ("10.244.9.0/24",)}, "10.244.1.5", True,
                 id="NodeCIDR: other nodes' pods are not"),
])
def test_masquerade_modes(kw, src, masq):  # type: ignore[no-untyped-def]
    _row(tracer(CLUSTER, **kw), src, "tcp", "10.96.0.41", 80, DNAT,
         ["10.244.1.1:80", "10.244.2.1:80", "10.244.3.1:80"], masq)


EXTERNAL_SVCS = [
    svc("np", "10.96.1.1", ("p80", 80, "TCP", 30080), type="NodePort", externalIPs=["198.18.0.5"]),
    eps("np", ep("10.244.1.1", node=NODE), ep("10.244.2.1")),
    svc("local", "10.96.1.2", ("p80", 80, "TCP", 30081), type="LoadBalancer", externalTrafficPolicy="Local",
        healthCheckNodePort=32000, status={"loadBalancer": {"ingress": [{"ip": "198.18.1.1"}]}}),
    eps("local", ep("10.244.1.2", node=NODE), ep("10.244.2.2")),
    svc("nolocal", "10.96.1.3", ("p80", 80, "TCP", 30082), type="NodePort", externalTrafficPolicy="Local"),
    eps("nolocal", ep("10.244.2.3")),
    svc("lb", "10.96.1.4", ("p80", 80, "TCP", 30083), type="LoadBalancer",
        loadBalancerSourceRanges=["203.0.113.0/25"],
        status={"loadBalancer": {"ingress": [{"ip": "198.18.1.4"}, {"ip": "198.18.1.44", "ipMode": "Proxy"}]}}),
    eps("lb", ep("10.244.2.4")),
    svc("npempty", "10.96.1.5", ("p80", 80, "TCP", 30084), type="NodePort"),
    svc("itp", "10.96.1.6", ("p80", 80, "TCP"), internalTrafficPolicy="Local"),
    eps("itp", ep("10.244.1.6", node=NODE), ep("10.244.2.6")),
    svc("itpnone", "10.96.1.7", ("p80", 80, "TCP"), internalTrafficPolicy="Local"),
    eps("itpnone", ep("10.244.2.7")),
]


@pytest.mark.parametrize("src,proto,dst,port,from_node,verdict,endpoints,masq", [
    pytest.param(EXTERNAL, "tcp", NODE_IP, 30080, False, DNAT, ["10.244.1.1:80", "10.244.2.1:80"], True,
                 id="NodePort Cluster: all endpoints, masqueraded"),
    pytest.param(EXTERNAL, "tcp", "198.18.0.5", 80, False, DNAT, ["10.244.1.1:80", "10.244.2.1:80"], True,
                 id="externalIP Cluster: all endpoints, masqueraded"),
    pytest.param(EXTERNAL, "tcp", "10.0.0.1", 30080, False, ACCEPT, [], False,
                 id="NodePort only on --nodeport-addresses"),
    pytest.param(EXTERNAL, "tcp", NODE_IP, 30081, False, DNAT, ["10.244.1.2:80"], False,
                 id="NodePort Local: local endpoint only, client IP kept"),
    pytest.param(EXTERNAL, "tcp", "198.18.1.1", 80, False, DNAT, ["10.244.1.2:80"], False,
                 id="LB IP Local: local endpoint only"),
    pytest.param(POD, "tcp", "198.18.1.1", 80, False, DNAT, ["10.244.1.2:80", "10.244.2.2:80"], False,
                 id="pod to LB IP Local: short-circuit to all endpoints"),
    pytest.param(NODE_IP, "tcp", "198.18.1.1", 80, True, DNAT, ["10.244.1.2:80", "10.244.2.2:80"], True,
                 id="node to LB IP Local: short-circuit, masqueraded"),
    pytest.param(EXTERNAL, "tcp", NODE_IP, 30082, False, DROP, [], None,
                 id="NodePort Local without local endpoints drops"),
    pytest.param(POD, "tcp", "10.96.1.3", 80, False, DNAT, ["10.244.2.3:80"], False,
                 id="its ClusterIP still serves"),
    pytest.param("203.0.113.9", "tcp", "198.18.1.4", 80, False, DNAT, ["10.244.2.4:80"], True,
                 id="LB source range allows"),
    pytest.param("203.0.113.200", "tcp", "198.18.1.4", 80, False, DROP, [], None,
                 id="LB source range drops others"),
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
    _row(tracer(EXTERNAL_SVCS), src, proto, dst, port, verdict, endpoints, masq, from_node=from_node)


def test_nodeport_addresses_cidr_selects_local_addresses() -> None:
    t = tracer(EXTERNAL_SVCS, nodeport_addresses=("10.0.0.0/8",), local_addresses=("10.0.0.1", "127.0.0.1"))
    _row(t, EXTERNAL, "tcp", "10.0.0.1", 30080, DNAT, ["10.244.1.1:80", "10.244.2.1:80"], True)
    _row(t, EXTERNAL, "tcp", NODE_IP, 30080, ACCEPT, [], False)


ENDPOINT_STATES = [
    svc("term", "10.96.2.1", ("p80", 80, "TCP")),
    eps("term", ep("10.244.2.1", ready=False, serving=True, terminating=True),
        ep("10.244.2.2", ready=False, serving=False, terminating=True)),
    svc("mixed", "10.96.2.2", ("p80", 80, "TCP")),
    eps("mixed", ep("10.244.2.3"), ep("10.244.2.4", ready=False, serving=True, terminating=True),
        ep("10.244.2.5", ready=None)),
    svc("zones", "10.96.2.3", ("p80", 80, "TCP")),
    eps("zones", ep("10.244.2.6", zones=("zone-a",)), ep("10.244.2.7", zones=("zone-b",))),
    svc("headless", "None", ("p80", 80, "TCP")),
    eps("headless", ep("10.244.2.8")),
    svc("other", "10.96.2.4", ("p80", 80, "TCP"), labels={"service.kubernetes.io/service-proxy-name": "x"}),
    eps("other", ep("10.244.2.9")),
]


@pytest.mark.parametrize("dst,verdict,endpoints", [
    pytest.param("10.96.2.1", DNAT, ["10.244.2.1:80"], id="no ready endpoint: fall back to serving+terminating"),
    pytest.param("10.96.2.2", DNAT, ["10.244.2.3:80", "10.244.2.5:80"], id="ready unset counts as ready"),
    pytest.param("10.96.2.3", DNAT, ["10.244.2.6:80"], id="zone hints narrow to this zone"),
    pytest.param("10.96.2.4", DROP, [], id="service-proxy-name: not ours (unallocated IP)"),
])
def test_endpoint_selection(dst, verdict, endpoints):  # type: ignore[no-untyped-def]
    _row(tracer(ENDPOINT_STATES, node_zone="zone-a"), POD, "tcp", dst, 80, verdict, endpoints)


def test_hints_ignored_when_not_every_endpoint_has_them() -> None:
    objs = [svc("z", "10.96.2.3", ("p80", 80, "TCP")),
            eps("z", ep("10.244.2.6", zones=("zone-a",)), ep("10.244.2.7"))]
    _row(tracer(objs, node_zone="zone-a"), POD, "tcp", "10.96.2.3", 80, DNAT, ["10.244.2.6:80", "10.244.2.7:80"])


def test_affinity_rules_check_then_update_the_client_set() -> None:
    objs = [svc("aff", "10.96.3.1", ("p80", 80, "TCP"), sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 300}}),
            eps("aff", ep("10.244.3.1"), ep("10.244.3.2"))]
    t = tracer(objs)
    _row(t, POD, "tcp", "10.96.3.1", 80, DNAT, ["10.244.3.1:80", "10.244.3.2:80"], False)
    sets = [s for s in t.table.sets.values() if s.name.startswith("affinity-")]
    assert len(sets) == 2 and all(s.timeout == 300 and "dynamic" in s.flags for s in sets)


def test_local_policy_falls_back_to_local_terminating_endpoints() -> None:
    objs = [svc("l", "10.96.4.1", ("p80", 80, "TCP", 30400), type="NodePort", externalTrafficPolicy="Local"),
            eps("l", ep("10.244.4.1", node=NODE, ready=False, serving=True, terminating=True),
                ep("10.244.4.2", node=NODE, ready=False, serving=False, terminating=True),
                ep("10.244.4.3"))]
    t = tracer(objs)
    _row(t, EXTERNAL, "tcp", NODE_IP, 30400, DNAT, ["10.244.4.1:80"], False)
    _row(t, POD, "tcp", "10.96.4.1", 80, DNAT, ["10.244.4.3:80"], False)  # ClusterIP: the ready one


def test_hints_are_ignored_for_local_policy() -> None:
    objs = [svc("l", "10.96.4.2", ("p80", 80, "TCP"), internalTrafficPolicy="Local"),
            eps("l", ep("10.244.4.4", node=NODE, zones=("zone-b",)), ep("10.244.4.5", zones=("zone-a",)))]
    _row(tracer(objs, node_zone="zone-a"), POD, "tcp", "10.96.4.2", 80, DNAT, ["10.244.4.4:80"])


def test_an_endpoint_talking_to_itself_directly_is_not_masqueraded() -> None:
    # a host-network endpoint (the apiserver on 127.0.0.1) reached without a Service
    objs = [svc("kubernetes", "10.96.0.1", ("https", 443, "TCP"), ns="default"),
            eps("kubernetes", ep("127.0.0.1"), ports=(("https", 6443, "TCP"),), ns="default")]
    t = tracer(objs)
    _row(t, "127.0.0.1", "tcp", "127.0.0.1", 6443, ACCEPT, [], False, from_node=True)
    _row(t, NODE_IP, "tcp", "10.96.0.1", 443, DNAT, ["127.0.0.1:6443"], True, from_node=True)


def test_nodeport_addresses_of_the_other_family_only_mean_every_local_address() -> None:
    """kube-proxy filters --nodeport-addresses per family; a family left with no CIDR
    matches every local address of that family (never loopback)."""
    from svcnet.proxy.model import ProxyConfig

    v6 = ProxyConfig(family=6, node_name="n1", node_ips=("fd00::2",),
                     nodeport_addresses=("10.0.0.0/8",), local_addresses=("fd00::2", "::1"))
    assert v6.nodeport_ips() is None
    v4 = ProxyConfig(family=4, node_name="n1", node_ips=("10.0.0.1",),
                     nodeport_addresses=("10.0.0.0/8",), local_addresses=("10.0.0.1", "192.168.1.1"))
    assert v4.nodeport_ips() == ("10.0.0.1",)
