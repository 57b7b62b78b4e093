"""The writer against a fake nft with transaction semantics: partial syncs must leave
exactly what a full load of the same state would, and touch only what changed."""

from __future__ import annotations

import pytest

from svcnet.proxy.fake_nft import FakeNft
from svcnet.proxy.model import ServicePortName
from svcnet.proxy.nft_ruleset import Ruleset
from svcnet.proxy.nft_writer import NftError, NftWriter
from svcnet.proxy.nftables import compute_family
from svcnet.proxy.tracer import Tracer
from tests.unit.proxy.builders import ep, eps, state, svc

POD = "10.244.9.9"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def objects(n: int, eps_per: int = 2) -> list[dict]:  # type: ignore[type-arg]
    out: list[dict] = []  # type: ignore[type-arg]
    for i in range(n):
        out.append(svc(f"s{i}", f"10.96.0.{i + 1}", ("p80", 80, "TCP", 30000 + i), type="NodePort",
                       sessionAffinity="ClientIP" if i == 1 else None))
        out.append(eps(f"s{i}", *[ep(f"10.244.{i}.{j + 1}") for j in range(eps_per)]))
    return out


def kernel_equals_desired(fake: FakeNft, desired: Ruleset) -> None:
    for table in desired.tables:
        got = fake.tables[table.family]
        want_chains = {n: list(c.rules) for n, c in table.chains.items()}
        assert {n: r for n, r in got.chains.items() if n in want_chains} == want_chains
        leftovers = [n for n, r in got.chains.items() if n not in want_chains]
        assert all(not got.chains[n] for n in leftovers), "stale chains must be empty"
        # affinity sets are filled by the kernel (dynamic): compare which exist, not contents
        assert {k: (v if not k.startswith("affinity-") else {}) for k, v in got.sets.items()} == \
            {k: dict(v) for k, v in table.set_elements.items()}


def sync(writer: NftWriter, st_objects: list[dict], prev: Ruleset | None, changed: set[str] | None,  # type: ignore[type-arg]
         full: bool = False) -> tuple[Ruleset, int]:
    st = state(st_objects)
    names = None if changed is None else frozenset(n for n in {*st.services, *(prev.tables[0].services if prev else {})}
                                                   if n.name in changed)
    rs = Ruleset((compute_family(st, prev.tables[0] if prev else None, names),))
    stats = writer.write(rs, full)
    return rs, stats.ops


def test_partial_syncs_converge_to_the_full_ruleset() -> None:
    fake, clock = FakeNft(), Clock()
    w = NftWriter(executor=fake, families=(4,), clock=clock)
    objs = objects(4)
    rs, _ = sync(w, objs, None, None, full=True)
    kernel_equals_desired(fake, rs)

    # change one service's endpoints, delete another, add a third
    objs[1] = eps("s0", ep("10.244.0.7"))
    del objs[4:6]
    objs += [svc("new", "10.96.0.99", ("p53", 53, "UDP")), eps("new", ep("10.244.99.1"), ports=(("p53", 53, "UDP"),))]
    rs, ops = sync(w, objs, rs, {"s0", "s2", "new"})
    kernel_equals_desired(fake, rs)
    script = fake.scripts[-1]
    assert "/s1/" not in script and "/s3/" not in script, "unchanged services were rewritten"
    assert "flush table" not in script
    # what the kernel now holds traces like the desired state
    fresh = Tracer(rs.tables[0])
    written = Tracer(fake.table(4), local_ips=("192.168.0.2",))  # type: ignore[arg-type]
    for dst, port in (("10.96.0.1", 80), ("10.96.0.3", 80), ("10.96.0.99", 53), ("192.168.0.2", 30001)):
        proto = "udp" if port == 53 else "tcp"
        assert written.trace(POD, proto, dst, port).endpoints == fresh.trace(POD, proto, dst, port).endpoints
    assert written.trace(POD, "tcp", "10.96.0.3", 80).verdict == "DROP"  # deleted: unallocated now

    # a sync with no changes writes nothing
    before = len(fake.scripts)
    rs, ops = sync(w, objs, rs, set())
    assert ops == 0 and len(fake.scripts) == before


def test_stale_chains_are_deleted_only_after_the_delay() -> None:
    fake, clock = FakeNft(), Clock()
    w = NftWriter(executor=fake, families=(4,), clock=clock)
    objs = objects(2)
    rs, _ = sync(w, objs, None, None, full=True)
    rs, _ = sync(w, objs[:2], rs, {"s1"})
    stale = [n for n in fake.tables[4].chains if "/s1/" in n]
    assert stale and all(not fake.tables[4].chains[n] for n in stale), "flushed, not yet deleted"
    clock.t += 0.5
    rs, _ = sync(w, objs[:2], rs, set())
    assert all(n in fake.tables[4].chains for n in stale)
    clock.t += 1.0
    rs, _ = sync(w, objs[:2], rs, set())
    assert not [n for n in fake.tables[4].chains if "/s1/" in n]
    assert w.pending_stale() == []


def test_failure_keeps_the_last_good_rules_and_full_resync_repairs() -> None:
    fake, clock = FakeNft(), Clock()
    w = NftWriter(executor=fake, families=(4,), clock=clock)
    objs = objects(3)
    rs, _ = sync(w, objs, None, None, full=True)
    good = {n: list(r) for n, r in fake.tables[4].chains.items()}
    fake.fail_next = "Error: Could not process rule: No buffer space available"
    objs[1] = eps("s0", ep("10.244.0.9"))
    with pytest.raises(NftError) as e:
        sync(w, objs, rs, {"s0"})
    assert not e.value.is_not_found()
    assert fake.tables[4].chains == good and w.applied is rs
    rs2, _ = sync(w, objs, None, None, full=True)
    kernel_equals_desired(fake, rs2)
    assert "flush table ip svcnet" in fake.scripts[-1]


def test_full_resync_keeps_affinity_sets() -> None:
    fake, clock = FakeNft(), Clock()
    w = NftWriter(executor=fake, families=(4,), clock=clock)
    objs = objects(2)
    rs, _ = sync(w, objs, None, None, full=True)
    aff = next(n for n in fake.tables[4].sets if n.startswith("affinity-"))
    fake.tables[4].sets[aff]["10.244.9.9"] = ""  # a client the kernel remembered
    rs, _ = sync(w, objs, None, None, full=True)
    assert fake.tables[4].sets[aff] == {"10.244.9.9": ""}
    assert f"flush set ip svcnet {aff}" not in fake.scripts[-1]


def test_fake_rejects_what_the_kernel_would() -> None:
    fake = FakeNft()
    fake("add table ip svcnet\nadd chain ip svcnet a\nadd rule ip svcnet a goto b\nadd chain ip svcnet b\n")
    with pytest.raises(NftError) as e:
        fake("delete chain ip svcnet b\n")
    assert e.value.is_busy()
    with pytest.raises(NftError) as e:
        fake("add rule ip svcnet a goto missing\n")
    assert e.value.is_not_found()
    assert fake.tables[4].chains == {"a": ["goto b"], "b": []}


def test_service_port_names_print_like_kube_proxy() -> None:
    assert str(ServicePortName("ns1", "svc1", "p80", "TCP")) == "ns1/svc1:p80"
    assert str(ServicePortName("ns1", "svc1", "", "TCP")) == "ns1/svc1"


def test_changing_an_affinity_timeout_redefines_its_sets() -> None:
    fake, clock = FakeNft(), Clock()
    w = NftWriter(executor=fake, families=(4,), clock=clock)
    objs = objects(2)
    rs, _ = sync(w, objs, None, None, full=True)
    objs[2] = svc("s1", "10.96.0.2", ("p80", 80, "TCP", 30001), type="NodePort", sessionAffinity="ClientIP",
                  sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
    rs, _ = sync(w, objs, rs, {"s1"})
    kernel_equals_desired(fake, rs)
    aff = [d for n, d in fake.tables[4].set_defs.items() if n.startswith("affinity-")]
    assert aff and all("timeout 60s" in d for d in aff)


def test_a_restart_reuses_the_table_and_keeps_affinity_clients() -> None:
    fake, clock = FakeNft(), Clock()
    objs = objects(3)
    rs, _ = sync(NftWriter(executor=fake, families=(4,), clock=clock, reader=fake.read), objs, None, None, True)
    aff = next(n for n in fake.tables[4].sets if n.startswith("affinity-"))
    fake.tables[4].sets[aff]["10.244.9.9"] = ""
    # a new process: knows nothing, reads what is there; s2 was deleted meanwhile
    w = NftWriter(executor=fake, families=(4,), clock=clock, reader=fake.read)
    rs, _ = sync(w, objs[:4], None, None, full=True)
    assert "delete table" not in fake.scripts[-1]
    assert fake.tables[4].sets[aff] == {"10.244.9.9": ""}
    kernel_equals_desired(fake, rs)
    assert [n for n in fake.tables[4].chains if "/s2/" in n], "left for the deferred delete"
    clock.t += 2
    sync(w, objs[:4], rs, set())
    assert not [n for n in fake.tables[4].chains if "/s2/" in n]
