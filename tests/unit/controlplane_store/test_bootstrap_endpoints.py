"""`Registry.bootstrap` promises the `kubernetes` EndpointSlice when it returns, also on
a store whose lists lag behind its own writes (a watch cache behind etcd): the endpoint
reconciler counts its own Lease as written, not as a possibly stale list shows it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from svcnet.controlplane.registry import codec
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.allocators import ServiceAllocator
from svcnet.controlplane.registry.store import Registry
from svcnet.controlplane.storage.sqlite import SQLiteStorage

from .lagging import LaggingStorage


async def test_bootstrap_writes_the_slice_while_lease_lists_lag(tmp_path: Path) -> None:
    storage = LaggingStorage(await SQLiteStorage.open(tmp_path / "data"),
                             stale_prefix=codec.kind_prefix(k.LEASES, "kube-system"))
    reg = await Registry.with_storage(storage, ServiceAllocator("10.96.0.0/12", "30000-32767"))
    try:
        storage.hold()  # lists of Leases will not show the Lease bootstrap is about to write
        await reg.bootstrap("192.0.2.10", 6443)
        assert (await reg.list(k.LEASES, "kube-system"))["items"] == []  # the lag is real
        es = await reg.get(k.ENDPOINT_SLICES, "default", "kubernetes")
        assert [e["addresses"] for e in es["endpoints"]] == [["192.0.2.10"]]
        assert es["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]
        kube = await reg.get(k.SERVICES, "default", "kubernetes")
        assert kube["spec"]["ports"][0]["targetPort"] == 6443
        storage.release()
        lease = await reg.get(k.LEASES, "kube-system", "apiserver-192.0.2.10-6443")
        assert lease["spec"]["holderIdentity"] == "apiserver-192.0.2.10-6443"
    finally:
        await reg.close()


async def test_two_apiservers_bootstrapping_one_store_at_once(tmp_path: Path) -> None:
    """HA: two apiservers bootstrap one empty store at the same moment; the loser of
    each create race rereads instead of exiting with `namespaces "default" already
    exists`."""
    storage = await SQLiteStorage.open(tmp_path / "data")
    a = await Registry.with_storage(storage, ServiceAllocator("10.96.0.0/12", "30000-32767"))
    b = await Registry.with_storage(storage, ServiceAllocator("10.96.0.0/12", "30000-32767"))
    try:
        await asyncio.gather(a.bootstrap("192.0.2.10", 6443), b.bootstrap("192.0.2.11", 6443))
        names = {o["metadata"]["name"] for o in (await a.list(k.NAMESPACES, None))["items"]}
        assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names
        kube = await b.get(k.SERVICES, "default", "kubernetes")
        assert kube["spec"]["ports"][0]["port"] == 443
    finally:
        await b.close()
        await a.close()
