"""Change tracking: coalescing, what changed, previous endpoints, trigger times."""

from __future__ import annotations

from svcnet.proxy.change_tracker import ChangeTracker
from tests.unit.proxy.builders import ep, eps, svc


def names(changes) -> set[str]:  # type: ignore[no-untyped-def]
    return {str(n) for n in changes.services}


def test_many_events_for_one_service_coalesce_into_one_change() -> None:
    t = ChangeTracker("node-a", (4,))
    s = svc("a", "10.96.0.1", ("p80", 80, "TCP"))
    t.on_service_add(s)
    t.on_endpoint_slice_add(eps("a", ep("10.244.0.1")))
    t.on_endpoint_slice_update(eps("a", ep("10.244.0.1")), eps("a", ep("10.244.0.2")))
    c = t.checkpoint()
    assert names(c) == {"ns1/a:p80"}
    assert [e.ip for e in t.endpoints[4][next(iter(c.services))]] == ["10.244.0.2"]
    assert not t.checkpoint(), "nothing pending after a checkpoint"


def test_an_update_back_to_the_same_state_is_no_change() -> None:
    t = ChangeTracker("node-a", (4,))
    t.on_service_add(svc("a", "10.96.0.1", ("p80", 80, "TCP")))
    t.on_endpoint_slice_add(eps("a", ep("10.244.0.1")))
    t.checkpoint()
    t.on_endpoint_slice_update(eps("a", ep("10.244.0.1")), eps("a", ep("10.244.0.9")))
    t.on_endpoint_slice_update(eps("a", ep("10.244.0.9")), eps("a", ep("10.244.0.1")))
    assert names(t.checkpoint()) == set()


def test_previous_endpoints_are_reported_for_conntrack_cleanup() -> None:
    t = ChangeTracker("node-a", (4,))
    t.on_service_add(svc("a", "10.96.0.1", ("dns", 53, "UDP")))
    t.on_endpoint_slice_add(eps("a", ep("10.244.0.1"), ports=(("dns", 53, "UDP"),)))
    t.checkpoint()
    t.on_endpoint_slice_delete(eps("a", ep("10.244.0.1"), ports=(("dns", 53, "UDP"),)))
    c = t.checkpoint()
    (name,) = c.services
    assert [e.ip for e in c.previous_endpoints[4][name]] == ["10.244.0.1"]
    assert t.endpoints[4][name] == ()


def test_slices_merge_per_port_name_and_protocol() -> None:
    t = ChangeTracker("node-a", (4,))
    t.on_service_add(svc("a", "10.96.0.1", ("http", 80, "TCP"), ("dns", 53, "UDP")))
    t.on_endpoint_slice_add(eps("a", ep("10.244.0.1"), ports=(("http", 8080, "TCP"),), name="a-1"))
    t.on_endpoint_slice_add(eps("a", ep("10.244.0.2", node="node-a"), ports=(("http", 8080, "TCP"),), name="a-2"))
    t.on_endpoint_slice_add(eps("a", ep("10.244.0.3"), ports=(("dns", 5353, "TCP"),), name="a-3"))
    t.checkpoint()
    by = {str(n): v for n, v in t.endpoints[4].items()}
    assert [(e.address, e.is_local) for e in by["ns1/a:http"]] == [("10.244.0.1:8080", False), ("10.244.0.2:8080", True)]
    assert by["ns1/a:dns"] == (), "protocol must match too"


def test_ignored_services_produce_no_ports() -> None:
    t = ChangeTracker("node-a", (4, 6))
    t.on_service_add(svc("h", "None", ("p", 80, "TCP")))
    t.on_service_add(svc("x", "10.96.0.2", ("p", 80, "TCP"), type="ExternalName", externalName="example.com"))
    t.on_service_add(svc("o", "10.96.0.3", ("p", 80, "TCP"),
                         labels={"service.kubernetes.io/service-proxy-name": "other"}))
    t.on_service_add(svc("v4", "10.96.0.4", ("p", 80, "TCP")))
    t.checkpoint()
    assert [str(n) for n in t.ports[4]] == ["ns1/v4:p"] and t.ports[6] == {}


def test_dual_stack_service_gets_one_port_per_family() -> None:
    t = ChangeTracker("node-a", (4, 6))
    s = svc("d", "10.96.0.5", ("p", 80, "TCP"))
    s["spec"]["clusterIPs"] = ["10.96.0.5", "fd00:96::5"]
    t.on_service_add(s)
    t.on_endpoint_slice_add(eps("d", ep("fd00:244::1"), ports=(("p", 80, "TCP"),), family="IPv6", name="d-6"))
    t.on_endpoint_slice_add(eps("d", ep("10.244.0.5"), ports=(("p", 80, "TCP"),), family="IPv4", name="d-4"))
    t.checkpoint()
    (p4,), (p6,) = t.ports[4].values(), t.ports[6].values()
    assert (p4.cluster_ip, p6.cluster_ip) == ("10.96.0.5", "fd00:96::5")
    assert [e.address for e in t.endpoints[6][p6.name]] == ["[fd00:244::1]:80"]
    assert [e.address for e in t.endpoints[4][p4.name]] == ["10.244.0.5:80"]


def test_trigger_times_are_collected() -> None:
    t = ChangeTracker("node-a", (4,))
    t.on_service_add(svc("a", "10.96.0.1", ("p80", 80, "TCP")))
    e = eps("a", ep("10.244.0.1"))
    e["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"}
    t.on_endpoint_slice_add(e)
    assert t.checkpoint().trigger_times == (1767225600.0,)


def test_leading_zero_ipv4_is_tolerated() -> None:
    t = ChangeTracker("node-a", (4,))
    t.on_service_add(svc("a", "10.96.0.041", ("p80", 80, "TCP"), externalIPs=["198.18.0.01", "bogus"]))
    t.checkpoint()
    (p,) = t.ports[4].values()
    assert (p.cluster_ip, p.external_ips) == ("10.96.0.41", ("198.18.0.1",))


def test_an_address_in_two_slices_prefers_the_ready_copy() -> None:
    t = ChangeTracker("node-a", (4,))
    t.on_service_add(svc("a", "10.96.0.1", ("p80", 80, "TCP")))
    t.on_endpoint_slice_add(eps("a", ep("10.244.0.1", ready=False), name="a-1"))
    t.on_endpoint_slice_add(eps("a", ep("10.244.0.1", ready=True), name="a-2"))
    t.checkpoint()
    (e,) = next(iter(t.endpoints[4].values()))
    assert e.ready
