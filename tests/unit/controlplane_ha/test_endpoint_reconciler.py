"""The lease endpoint reconciler with several API servers on one store: the
`kubernetes` EndpointSlice lists every live server, is rewritten only when the live set
changes (no back-and-forth between servers), drops a server whose lease expired, and
follows the longest-held lease when ports disagree."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import AsyncIterator

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.endpoint_reconciler import (
    EndpointReconciler, Member, desired_slice, identity_for, member_of,
)
from svcnet.controlplane.registry.store import Registry


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await Registry.open(tmp_path / "data")
    await reg.bootstrap("192.0.2.10", 6443)
    try:
        yield reg
    finally:
        await reg.close()


async def kubernetes_slice(reg: Registry) -> dict:  # type: ignore[type-arg]
    return await reg.get(k.ENDPOINT_SLICES, "default", "kubernetes")


def addresses(es: dict) -> list[str]:  # type: ignore[type-arg]
    return [e["addresses"][0] for e in es["endpoints"]]


async def test_two_servers_share_the_slice_without_rewriting_it(registry: Registry) -> None:
    # the fixture's server is 192.0.2.10:6443; a second one joins on the same store
    other = EndpointReconciler(registry, "192.0.2.11", 6443, lease_duration=30)
    await other.reconcile()
    es = await kubernetes_slice(registry)
    assert addresses(es) == ["192.0.2.10", "192.0.2.11"]
    assert es["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]
    rv = es["metadata"]["resourceVersion"]
    first = registry._endpoints
    assert first is not None
    for _ in range(3):  # both keep reconciling: leases renew, the slice stays as it is
        await first.reconcile()
        await other.reconcile()
    assert (await kubernetes_slice(registry))["metadata"]["resourceVersion"] == rv
    leases = await registry.list(k.LEASES, "kube-system")
    assert sorted(lease["metadata"]["name"] for lease in leases["items"]) == [
        "apiserver-192.0.2.10-6443", "apiserver-192.0.2.11-6443"]


async def test_an_expired_server_drops_out_and_its_lease_goes(registry: Registry) -> None:
    dead = EndpointReconciler(registry, "192.0.2.11", 6443, lease_duration=1)
    await dead.reconcile()
    assert addresses(await kubernetes_slice(registry)) == ["192.0.2.10", "192.0.2.11"]
    first = registry._endpoints
    assert first is not None
    delay = await first.reconcile()
    assert delay <= 1.1  # wakes when the peer's lease would expire
    await asyncio.sleep(1.2)  # `dead` renews no more
    await first.reconcile()
    assert addresses(await kubernetes_slice(registry)) == ["192.0.2.10"]
    with pytest.raises(APIError) as err:
        await registry.get(k.LEASES, "kube-system", dead.identity)
    assert err.value.code == 404


async def test_clean_stop_leaves_at_once(registry: Registry) -> None:
    other = EndpointReconciler(registry, "192.0.2.11", 6443, lease_duration=30)
    await other.reconcile()
    await other.remove()
    assert addresses(await kubernetes_slice(registry)) == ["192.0.2.10"]


async def test_ports_disagree_longest_held_lease_wins(registry: Registry) -> None:
    odd = EndpointReconciler(registry, "192.0.2.11", 7443, lease_duration=30)
    await odd.reconcile()
    es = await kubernetes_slice(registry)
    assert addresses(es) == ["192.0.2.10"] and es["ports"][0]["port"] == 6443
    svc = await registry.get(k.SERVICES, "default", "kubernetes")
    assert svc["spec"]["ports"][0]["targetPort"] == 6443
    first = registry._endpoints
    assert first is not None
    await first.remove()  # the longest-held leaves: the other takes the slice and targetPort
    await odd.reconcile()
    es = await kubernetes_slice(registry)
    assert addresses(es) == ["192.0.2.11"] and es["ports"][0]["port"] == 7443
    svc = await registry.get(k.SERVICES, "default", "kubernetes")
    assert svc["spec"]["ports"][0]["targetPort"] == 7443


def test_desired_slice_is_the_same_whoever_computes_it() -> None:
    t = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    ms = [Member("b", "192.0.2.12", 6443, "2029-01-02T00:00:00.000000Z", t),
          Member("a", "192.0.2.11", 6443, "2029-01-01T00:00:00.000000Z", t),
          Member("v6", "fd00::1", 6443, "2029-01-03T00:00:00.000000Z", t)]
    body, left = desired_slice(ms)
    assert body == desired_slice(list(reversed(ms)))[0]
    assert [e["addresses"] for e in body["endpoints"]] == [["192.0.2.11"], ["192.0.2.12"]]
    assert [m.name for m in left] == ["v6"]


def test_identity_and_foreign_leases() -> None:
    assert identity_for("fd00::1", 6443) == "apiserver-fd00--1-6443"
    assert member_of({"metadata": {"name": "x"}, "spec": {"renewTime": "2030-01-01T00:00:00Z"}}) is None


async def test_the_last_server_out_leaves_no_endpoints(tmp_path: Path) -> None:
    reg = await Registry.open(tmp_path / "data")
    await reg.bootstrap("192.0.2.10", 6443)
    await reg.close()  # a clean stop
    reg = await Registry.open(tmp_path / "data")
    try:
        es = await kubernetes_slice(reg)
        assert es["endpoints"] == [] and es["ports"][0]["port"] == 6443
        await reg.bootstrap("192.0.2.10", 6443)  # back: the slice lists it again at once
        assert addresses(await kubernetes_slice(reg)) == ["192.0.2.10"]
    finally:
        await reg.close()
