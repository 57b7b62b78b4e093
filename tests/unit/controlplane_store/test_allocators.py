"""ClusterIP / NodePort allocation: honoured requests, 422s, release, concurrency, persistence."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.allocators import OffsetRange, RangeFull, ServiceAllocator
from svcnet.controlplane.registry.store import Registry

from .conftest import causes, svc


async def test_kubernetes_service_holds_the_first_ip(registry: Registry) -> None:
    kube = await registry.get(k.SERVICES, "default", "kubernetes")
    assert kube["spec"]["clusterIP"] == "10.96.0.1"
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("dup", clusterIP="10.96.0.1"))
    assert causes(info.value) == [("spec.clusterIPs", 'Invalid value: []string{"10.96.0.1"}: failed to '
                                   "allocate IP 10.96.0.1: provided IP is already allocated")]


async def test_requested_free_ip_is_honoured(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "kube-system", svc("dns", clusterIP="10.96.0.10"))
    assert out["spec"]["clusterIP"] == "10.96.0.10" and out["spec"]["clusterIPs"] == ["10.96.0.10"]


async def test_ip_outside_the_range_is_422(registry: Registry) -> None:
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("x", clusterIP="10.0.0.5"))
    assert info.value.code == 422
    assert causes(info.value) == [("spec.clusterIPs", 'Invalid value: []string{"10.0.0.5"}: failed to '
                                   "allocate IP 10.0.0.5: the provided IP (10.0.0.5) is not in the "
                                   "valid range. The range of valid IPs is 10.96.0.0/12")]


async def test_dynamic_ips_come_from_the_upper_band(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("web"))
    ip = ipaddress.ip_address(out["spec"]["clusterIP"])
    assert ip in ipaddress.ip_network("10.96.0.0/12")
    assert int(ip) - int(ipaddress.ip_address("10.96.0.0")) > 256  # static band left free


async def test_headless_and_external_name_get_no_ip(registry: Registry) -> None:
    before = set(registry.allocator.ips.used)
    await registry.create(k.SERVICES, "default", svc("hl", clusterIP="None"))
    await registry.create(k.SERVICES, "default", svc("en", type="ExternalName",
                                                      externalName="db.example.com", ports=[]))
    assert registry.allocator.ips.used == before


async def test_node_ports_explicit_taken_and_out_of_range(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc(
        "a", type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080},
                                     {"name": "dns", "port": 53, "protocol": "UDP"}]))
    assert out["spec"]["ports"][0]["nodePort"] == 30080
    assert 30000 <= out["spec"]["ports"][1]["nodePort"] <= 32767
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("b", type="NodePort",
                                                          ports=[{"port": 80, "nodePort": 30080}]))
    assert causes(info.value) == [("spec.ports[0].nodePort",
                                   "Invalid value: 30080: provided port is already allocated")]
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("c", type="NodePort",
                                                          ports=[{"port": 80, "nodePort": 12345}]))
    assert causes(info.value) == [("spec.ports[0].nodePort",
                                   "Invalid value: 12345: provided port is not in the valid range. "
                                   "The range of valid ports is 30000-32767")]


async def test_a_failed_create_gives_its_reservations_back(registry: Registry) -> None:
    before_ips, before_ports = set(registry.allocator.ips.used), set(registry.allocator.ports.used)
    with pytest.raises(APIError):
        # the clusterIP is allocated before the nodePort fails
        await registry.create(k.SERVICES, "default", svc("c", type="NodePort",
                                                          ports=[{"port": 80, "nodePort": 99}]))
    assert registry.allocator.ips.used == before_ips
    assert registry.allocator.ports.used == before_ports


async def test_same_node_port_for_tcp_and_udp_of_one_service(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc(
        "dns", type="NodePort", ports=[{"name": "udp", "port": 53, "protocol": "UDP", "nodePort": 30053},
                                       {"name": "tcp", "port": 53, "protocol": "TCP", "nodePort": 30053}]))
    assert [p["nodePort"] for p in out["spec"]["ports"]] == [30053, 30053]


async def test_health_check_node_port_for_local_load_balancers(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc(
        "lb", type="LoadBalancer", externalTrafficPolicy="Local"))
    hc = out["spec"]["healthCheckNodePort"]
    assert 30000 <= hc <= 32767 and hc != out["spec"]["ports"][0]["nodePort"]
    # switching to Cluster releases it
    out["spec"]["externalTrafficPolicy"] = "Cluster"
    upd, _ = await registry.update(k.SERVICES, "default", "lb", out)
    assert "healthCheckNodePort" not in upd["spec"]
    assert hc not in registry.allocator.ports.used


async def test_type_change_and_delete_release_allocations(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("np", type="NodePort"))
    port, ip = out["spec"]["ports"][0]["nodePort"], out["spec"]["clusterIP"]
    out["spec"]["type"] = "ClusterIP"
    out["spec"].pop("externalTrafficPolicy")
    upd, _ = await registry.update(k.SERVICES, "default", "np", out)
    assert "nodePort" not in upd["spec"]["ports"][0]
    assert port not in registry.allocator.ports.used
    # the released port can be requested again at once
    other, _ = await registry.create(k.SERVICES, "default", svc(
        "other", type="NodePort", ports=[{"port": 80, "nodePort": port}]))
    assert other["spec"]["ports"][0]["nodePort"] == port
    # ExternalName drops the ClusterIP; delete releases everything
    upd["spec"] = {"type": "ExternalName", "externalName": "example.com"}
    en, _ = await registry.update(k.SERVICES, "default", "np", upd)
    assert "clusterIP" not in en["spec"]
    again, _ = await registry.create(k.SERVICES, "default", svc("reuse", clusterIP=ip))
    assert again["spec"]["clusterIP"] == ip
    await registry.delete(k.SERVICES, "default", "reuse")
    await registry.delete(k.SERVICES, "default", "other")
    assert port not in registry.allocator.ports.used
    third, _ = await registry.create(k.SERVICES, "default", svc("third", clusterIP=ip))
    assert third["spec"]["clusterIP"] == ip


async def test_fifty_concurrent_creates_get_distinct_values(registry: Registry) -> None:
    results = await asyncio.gather(*(
        registry.create(k.SERVICES, "default", svc(f"s{i}", type="NodePort")) for i in range(50)))
    ips = {r[0]["spec"]["clusterIP"] for r in results}
    ports = {r[0]["spec"]["ports"][0]["nodePort"] for r in results}
    assert len(ips) == 50 and len(ports) == 50
    assert "10.96.0.1" not in ips


async def test_concurrent_requests_for_one_ip_have_one_winner(registry: Registry) -> None:
    outcomes = await asyncio.gather(*(
        registry.create(k.SERVICES, "default", svc(f"want{i}", clusterIP="10.96.0.53"))
        for i in range(10)), return_exceptions=True)
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    losers = [o for o in outcomes if isinstance(o, APIError)]
    assert len(winners) == 1 and len(losers) == 9
    assert all(e.code == 422 for e in losers)


async def test_allocations_survive_restart(tmp_path: Path) -> None:
    reg = await Registry.open(tmp_path, node_port_range="30000-30001")
    await reg.bootstrap("192.0.2.10", 6443)
    out, _ = await reg.create(k.SERVICES, "default", svc("web", type="NodePort"))
    ip, port = out["spec"]["clusterIP"], out["spec"]["ports"][0]["nodePort"]
    await reg.close()
    reg = await Registry.open(tmp_path, node_port_range="30000-30001")
    try:
        with pytest.raises(APIError) as info:
            await reg.create(k.SERVICES, "default", svc("x", clusterIP=ip))
        assert "already allocated" in causes(info.value)[0][1]
        second, _ = await reg.create(k.SERVICES, "default", svc("y", type="NodePort"))
        assert second["spec"]["ports"][0]["nodePort"] == ({30000, 30001} - {port}).pop()
        with pytest.raises(APIError) as info:
            await reg.create(k.SERVICES, "default", svc("z", type="NodePort"))
        assert info.value.code == 500 and "range is full" in info.value.message
    finally:
        await reg.close()


def test_offset_range_prefers_the_upper_band_then_fills_the_lower() -> None:
    r = OffsetRange(1, 40, 16)
    picks = [r.reserve_next() for _ in range(24)]
    assert all(p > 16 for p in picks)  # [17, 40] first
    rest = [r.reserve_next() for _ in range(16)]
    assert sorted(rest) == list(range(1, 17))
    with pytest.raises(RangeFull):
        r.reserve_next()


def test_bad_ranges_are_rejected() -> None:
    with pytest.raises(ValueError, match="service-cidr"):
        ServiceAllocator("10.96.0.1/12")
    with pytest.raises(ValueError, match="node-port-range"):
        ServiceAllocator(node_port_range="40000-30000")


async def test_two_servers_on_one_store_see_each_others_allocations(registry: Registry) -> None:
    other = await Registry.with_storage(registry.storage, ServiceAllocator())
    try:
        out, _ = await registry.create(k.SERVICES, "default", svc("web", clusterIP="10.96.0.77"))
        # the second server's allocator learns it from the store, not from a failed write
        for _ in range(100):
            if 77 in other.allocator.ips.committed:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(APIError) as info:
            await other.create(k.SERVICES, "default", svc("dup", clusterIP="10.96.0.77"))
        assert info.value.code == 422 and "already allocated" in causes(info.value)[0][1]
        await registry.delete(k.SERVICES, "default", "web")
        for _ in range(100):
            if 77 not in other.allocator.ips.committed:
                break
            await asyncio.sleep(0.01)
        again, _ = await other.create(k.SERVICES, "default", svc("dup", clusterIP="10.96.0.77"))
        assert again["spec"]["clusterIP"] == "10.96.0.77"
    finally:
        for task in other._tasks:
            task.cancel()
        await asyncio.gather(*other._tasks, return_exceptions=True)
        await other.owners.stop()


async def test_a_pick_taken_elsewhere_is_learned_from_the_failed_write(registry: Registry) -> None:
    # Another server wrote the allocation key directly; this server has not heard of it.
    for task in registry._tasks:
        task.cancel()  # stop the follower so only the failed txn can teach the allocator
    await asyncio.gather(*registry._tasks, return_exceptions=True)
    registry._tasks.clear()
    from svcnet.controlplane.registry.allocators import CLUSTER_IP_PREFIX

    await registry.storage.create(CLUSTER_IP_PREFIX + "10.96.0.88", b'{"owner":"elsewhere"}')
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("web", clusterIP="10.96.0.88"))
    assert info.value.code == 422 and "already allocated" in causes(info.value)[0][1]
