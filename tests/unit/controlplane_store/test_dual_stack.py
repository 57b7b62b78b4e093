"""Dual-stack clusters (`--service-cidr 10.96.0.0/16,fd00:10:96::/112`): one ClusterIP
per IP family, upgrades and downgrades, and single-stack Services as before."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.allocators import CLUSTER_IP_PREFIX, ServiceAllocator
from svcnet.controlplane.registry.store import Registry

from .conftest import causes, svc

V4, V6 = ipaddress.ip_network("10.96.0.0/16"), ipaddress.ip_network("fd00:10:96::/112")


@pytest.fixture
async def dual(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await Registry.open(tmp_path, service_cidr=f"{V4},{V6}")
    await reg.bootstrap("192.0.2.10", 6443)
    try:
        yield reg
    finally:
        await reg.close()


async def held(reg: Registry) -> set[str]:
    return {kv.key[len(CLUSTER_IP_PREFIX):] for kv in (await reg.storage.range(CLUSTER_IP_PREFIX)).kvs}


async def test_single_stack_by_default_and_kubernetes_on_the_primary(dual: Registry) -> None:
    out, _ = await dual.create(k.SERVICES, "default", svc("web"))
    assert out["spec"]["ipFamilies"] == ["IPv4"] and len(out["spec"]["clusterIPs"]) == 1
    kube = await dual.get(k.SERVICES, "default", "kubernetes")
    assert kube["spec"]["clusterIPs"] == ["10.96.0.1"]
    cidr = await dual.get(k.SERVICE_CIDRS, None, "kubernetes")
    assert cidr["spec"]["cidrs"] == [str(V4), str(V6)]


async def test_prefer_and_require_dual_stack_get_two_ips(dual: Registry) -> None:
    out, _ = await dual.create(k.SERVICES, "default", svc("web", ipFamilyPolicy="PreferDualStack"))
    spec = out["spec"]
    assert spec["ipFamilies"] == ["IPv4", "IPv6"]
    v4, v6 = (ipaddress.ip_address(ip) for ip in spec["clusterIPs"])
    assert v4 in V4 and v6 in V6 and spec["clusterIP"] == str(v4)
    six, _ = await dual.create(k.SERVICES, "default", svc("six", ipFamilyPolicy="RequireDualStack",
                                                          ipFamilies=["IPv6"]))
    assert six["spec"]["ipFamilies"] == ["IPv6", "IPv4"]
    assert ipaddress.ip_address(six["spec"]["clusterIP"]) in V6
    only6, _ = await dual.create(k.SERVICES, "default", svc("only6", ipFamilies=["IPv6"]))
    assert only6["spec"]["ipFamilyPolicy"] == "SingleStack"
    assert len(only6["spec"]["clusterIPs"]) == 1 and ipaddress.ip_address(only6["spec"]["clusterIP"]) in V6


async def test_requested_ips_of_both_families(dual: Registry) -> None:
    want = ["10.96.0.50", "fd00:10:96::50"]
    out, _ = await dual.create(k.SERVICES, "default", svc("web", clusterIPs=want,
                                                          ipFamilyPolicy="RequireDualStack"))
    assert out["spec"]["clusterIPs"] == want and out["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    with pytest.raises(APIError) as info:
        await dual.create(k.SERVICES, "default", svc("dup", clusterIPs=["10.96.0.51", "fd00:10:96::50"],
                                                     ipFamilyPolicy="RequireDualStack"))
    assert causes(info.value)[0][1].endswith("failed to allocate IP fd00:10:96::50: provided IP is "
                                             "already allocated")
    assert "10.96.0.51" not in await held(dual)  # the half that could be taken was given back
    with pytest.raises(APIError) as info:
        await dual.create(k.SERVICES, "default", svc("single", clusterIPs=want))
    assert causes(info.value)[0][0] == "spec.ipFamilyPolicy"


async def test_upgrade_and_downgrade(dual: Registry) -> None:
    out, _ = await dual.create(k.SERVICES, "default", svc("web"))
    first = out["spec"]["clusterIP"]
    out["spec"]["ipFamilyPolicy"] = "PreferDualStack"
    up, _ = await dual.update(k.SERVICES, "default", "web", out)
    assert up["spec"]["clusterIPs"][0] == first and len(up["spec"]["clusterIPs"]) == 2
    second = up["spec"]["clusterIPs"][1]
    assert second in await held(dual)
    up["spec"]["ipFamilyPolicy"] = "SingleStack"
    down, _ = await dual.update(k.SERVICES, "default", "web", up)
    assert down["spec"]["clusterIPs"] == [first] and down["spec"]["ipFamilies"] == ["IPv4"]
    assert second not in await held(dual)
    await dual.delete(k.SERVICES, "default", "web")
    assert first not in await held(dual)


async def test_single_stack_cluster_rejects_the_other_family(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("pref", ipFamilyPolicy="PreferDualStack"))
    assert out["spec"]["ipFamilies"] == ["IPv4"] and len(out["spec"]["clusterIPs"]) == 1
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("v6", clusterIP="fd00::1"))
    assert causes(info.value) == [("spec.ipFamilies[0]", 'Invalid value: "IPv6": not configured on '
                                   "this cluster")]


def test_service_cidr_flag_forms() -> None:
    assert ServiceAllocator(f"{V4},{V6}").families == ("IPv4", "IPv6")
    assert ServiceAllocator(f"{V6},{V4}").families == ("IPv6", "IPv4")
    with pytest.raises(ValueError, match="different IP families"):
        ServiceAllocator("10.96.0.0/16,10.97.0.0/16")
    with pytest.raises(ValueError, match="one CIDR, or two"):
        ServiceAllocator("10.96.0.0/16,fd00::/112,10.97.0.0/16")
