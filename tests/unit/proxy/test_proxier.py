"""The engine end to end without root: informers -> tracker -> sync -> fake nft."""

from __future__ import annotations

from typing import Any

from svcnet.apiclient.informer import Informer
from svcnet.apiclient.resources import Resource
from svcnet.proxy.backend import BackendOptions
from svcnet.proxy.fake_nft import FakeNft
from svcnet.proxy.nftables import NftablesBackend
from svcnet.proxy.nft_writer import NftWriter
from svcnet.proxy.proxier import Proxier, ProxierOptions
from svcnet.proxy.runner import FakeClock
from svcnet.proxy.tracer import Tracer
from tests.unit.proxy.builders import ep, eps, svc


class Source:
    def __init__(self) -> None:
        self.informers: dict[Resource, Informer] = {}

    def informer(self, resource: Resource, indexers: Any = None) -> Informer:
        return self.informers.setdefault(resource, Informer(resource))

    async def run(self) -> None:  # pragma: no cover - not used
        pass


def make() -> tuple[Proxier, FakeNft, Source]:
    fake = FakeNft()
    backend = NftablesBackend.__new__(NftablesBackend)
    backend.options = BackendOptions(families=(4,))
    backend.writer = NftWriter(executor=fake, families=(4,))
    p = Proxier(backend, ProxierOptions(node_name="node-a", node_ips=("192.168.0.2",),
                                         cluster_cidrs=("10.244.0.0/16",), families=(4,), conntrack_cleanup=False),
                clock=FakeClock(), local_addresses=lambda: [])
    src = Source()
    p.attach(src)
    by_kind(src, "nodes").replace([])
    by_kind(src, "servicecidrs").replace([])
    return p, fake, src


def by_kind(src: Source, plural: str) -> Informer:
    return next(i for r, i in src.informers.items() if r.plural == plural)


async def test_nothing_is_programmed_before_both_lists_arrive() -> None:
    p, fake, src = make()
    by_kind(src, "services").replace([svc("a", "10.96.0.1", ("p80", 80, "TCP"))])
    assert await p.sync() is None and fake.scripts == []
    by_kind(src, "endpointslices").replace([eps("a", ep("10.244.0.1"))])
    r = await p.sync()
    assert r is not None and r.full and not r.error
    assert Tracer(fake.table(4)).trace("10.244.9.9", "tcp", "10.96.0.1", 80).endpoints == ["10.244.0.1:80"]  # type: ignore[arg-type]


async def test_partial_after_change_and_full_after_failure() -> None:
    p, fake, src = make()
    by_kind(src, "services").replace([svc("a", "10.96.0.1", ("p80", 80, "TCP")),
                                      svc("b", "10.96.0.2", ("p80", 80, "TCP"))])
    slices = by_kind(src, "endpointslices")
    slices.replace([eps("a", ep("10.244.0.1")), eps("b", ep("10.244.0.2"))])
    await p.sync()
    slices.apply("MODIFIED", eps("a", ep("10.244.0.9")))
    r = await p.sync()
    assert r is not None and not r.full and r.changed == 1
    assert "/b/" not in fake.scripts[-1]
    r = await p.sync()
    assert r is not None and r.ops == 0, "no changes: nothing written"

    fake.fail_next = "Error: Could not process rule: Cannot allocate memory"
    slices.apply("MODIFIED", eps("b", ep("10.244.0.8")))
    r = await p.sync()
    assert r is not None and r.error and p.metrics.sync_failures.labels("IPv4")._value.get() == 1
    t = Tracer(fake.table(4))  # type: ignore[arg-type]
    assert t.trace("10.244.9.9", "tcp", "10.96.0.2", 80).endpoints == ["10.244.0.2:80"], "last good rules kept"
    r = await p.sync()
    assert r is not None and r.full and not r.error
    t = Tracer(fake.table(4))  # type: ignore[arg-type]
    assert t.trace("10.244.9.9", "tcp", "10.96.0.2", 80).endpoints == ["10.244.0.8:80"]


async def test_network_programming_latency_comes_from_the_slice_trigger_time() -> None:
    import time
    from datetime import datetime, timezone

    p, fake, src = make()
    by_kind(src, "services").replace([svc("a", "10.96.0.1", ("p80", 80, "TCP"))])
    e = eps("a", ep("10.244.0.1"))
    stamp = datetime.fromtimestamp(time.time() - 2.0, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    e["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": stamp}
    by_kind(src, "endpointslices").replace([e])
    await p.sync()
    reg = p.metrics.registry
    assert reg.get_sample_value("kubeproxy_network_programming_duration_seconds_count", {"ip_family": "IPv4"}) == 1
    total = reg.get_sample_value("kubeproxy_network_programming_duration_seconds_sum", {"ip_family": "IPv4"})
    assert total is not None and 1.0 <= total < 60


async def test_first_sync_waits_briefly_for_node_and_service_cidr_lists() -> None:
    fake = FakeNft()
    backend = NftablesBackend.__new__(NftablesBackend)
    backend.options = BackendOptions(families=(4,))
    backend.writer = NftWriter(executor=fake, families=(4,))
    clock = FakeClock()
    p = Proxier(backend, ProxierOptions(node_name="node-a", families=(4,), conntrack_cleanup=False),
                clock=clock, local_addresses=lambda: [])
    src = Source()
    p.attach(src)
    by_kind(src, "services").replace([])
    by_kind(src, "endpointslices").replace([])
    assert await p.sync() is None, "nodes and servicecidrs not listed yet"
    await clock.advance(2.5)
    assert await p.sync() is not None, "but never waits for them for long"
