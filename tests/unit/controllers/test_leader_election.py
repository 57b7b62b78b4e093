"""Leader election: one holder; takeover only after the record stood still a lease."""

from __future__ import annotations

from svcnet.apiclient.resources import LEASES
from svcnet.controlplane.controllers.leader_election import LeaderElector

from .fake_cluster import FakeCluster


class Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def test_one_leader_then_takeover_after_silence() -> None:
    c = FakeCluster()
    clock = Mono()
    a = LeaderElector(c.client, "a", lease_duration=15, monotonic=clock)
    b = LeaderElector(c.client, "b", lease_duration=15, monotonic=clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.t += 10
    assert await a.try_acquire_or_renew()  # renews: the record moves
    clock.t += 10
    assert not await b.try_acquire_or_renew()  # b saw the renewal 10 s ago, not 20
    clock.t += 16  # a stopped renewing
    assert await b.try_acquire_or_renew()
    lease = c.store[LEASES]["kube-system/svcnet-controller-manager"]
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    assert not await a.try_acquire_or_renew()  # a comes back: b holds a fresh lease


async def test_conflicting_update_loses() -> None:
    c = FakeCluster()
    clock = Mono()
    a = LeaderElector(c.client, "a", lease_duration=1, monotonic=clock)
    assert await a.try_acquire_or_renew()
    b = LeaderElector(c.client, "b", lease_duration=1, monotonic=clock)
    assert not await b.try_acquire_or_renew()
    clock.t += 2
    # a renews between b's read and b's write: b's conditional update conflicts.
    real_get = c.client.get

    async def get_then_renew(*args, **kw):  # type: ignore[no-untyped-def]
        lease = await real_get(*args, **kw)
        c.client.get = real_get  # type: ignore[method-assign]
        assert await a.try_acquire_or_renew()
        return lease

    c.client.get = get_then_renew  # type: ignore[method-assign]
    assert not await b.try_acquire_or_renew()
