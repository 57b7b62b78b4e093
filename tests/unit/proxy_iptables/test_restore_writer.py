"""The iptables-restore writer against a fake iptables with all-or-nothing restores:
full and partial writes must leave exactly the desired rules, partial payloads carry
only what changed, failures keep the last good rules and force a full re-read."""

from __future__ import annotations

from typing import Any

import pytest

from svcnet.proxy.iptables import NAT, SERVICES, TABLES, Ruleset, compute_family
from svcnet.proxy.iptables_restore import IptablesError, RestoreWriter, Tools, detect_tools
from svcnet.proxy.iptables_tracer import IptablesTracer
from tests.unit.proxy.builders import ep, eps, state, svc
from tests.unit.proxy_iptables.fake_iptables import FakeIptables

POD = "10.244.9.9"
KW = {"nodeport_addresses": ("0.0.0.0/0",)}


def objects(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        out.append(svc(f"s{i}", f"10.96.0.{i + 1}", ("p80", 80, "TCP", 30000 + i), type="NodePort",
                       sessionAffinity="ClientIP" if i == 1 else None))
        out.append(eps(f"s{i}", *[ep(f"10.244.{i}.{j + 1}") for j in range(2)]))
    return out


def sync(w: RestoreWriter, objs: list[dict[str, Any]], prev: Ruleset | None, changed: set[str] | None,
         full: bool = False) -> Ruleset:
    st = state(objs, **KW)
    names = None if changed is None else frozenset(
        n for n in {*st.services, *(prev.tables[0].services if prev else {})} if n.name in changed)
    rs = Ruleset((compute_family(st, prev.tables[0] if prev else None, names),))
    w.write(rs, full)
    return rs


def kernel_equals_desired(fake: FakeIptables, rs: Ruleset) -> None:
    table = rs.tables[0]
    for t in TABLES:
        got = {c: r for c, r in fake.tables[4][t].items() if c.startswith("SVCNET-")}
        want = {c: list(r) for c, r in table.chains[t].items()}
        assert set(got) == set(want), (t, set(got) ^ set(want))
        for c in want:  # top-level chains may be in another order: they carry no order
            assert (sorted(got[c]) if c in (SERVICES,) or "NODEPORTS" in c else got[c]) == \
                (sorted(want[c]) if c in (SERVICES,) or "NODEPORTS" in c else want[c]), c
        assert fake.tables[4][NAT][SERVICES][-1] == table.top[(NAT, SERVICES)][-1], "NodePort jump must stay last"


def writer(fake: FakeIptables) -> RestoreWriter:
    return RestoreWriter(families=(4,), execute=fake, set_route_localnet=lambda: None)


def test_detects_the_backend_and_uses_its_restore() -> None:
    assert detect_tools(FakeIptables("legacy")).variant == "legacy"
    fake = FakeIptables("legacy")
    fake.tables[4]["filter"]["INPUT"].append("-j ACCEPT")
    w = writer(fake)
    sync(w, objects(2), None, None, full=True)
    argv = [a for a, _ in fake.calls if "restore" in a[0]][0]
    assert argv[0] in ("iptables-legacy-restore", "iptables-restore") and "--noflush" in argv
    assert any("save" in a[0] for a, _ in fake.calls), "legacy is read back with iptables-legacy-save"
    assert Tools("legacy").restore(6)[0] in ("ip6tables-legacy-restore", "ip6tables-restore")


def test_first_write_inserts_jumps_and_partial_syncs_converge() -> None:
    fake = FakeIptables()
    fake.tables[4]["filter"]["INPUT"].append("-s 192.0.2.1/32 -j ACCEPT")  # someone else's rule
    w = writer(fake)
    objs = objects(4)
    rs = sync(w, objs, None, None, full=True)
    kernel_equals_desired(fake, rs)
    assert fake.tables[4]["nat"]["PREROUTING"] == ['-m comment --comment "svcnet service portals" -j SVCNET-SERVICES']
    assert fake.tables[4]["filter"]["INPUT"][-1] == "-s 192.0.2.1/32 -j ACCEPT"

    objs[1] = eps("s0", ep("10.244.0.7"))          # endpoints of s0 change
    del objs[4:6]                                   # s2 is deleted
    objs += [svc("new", "10.96.0.99", ("p53", 53, "UDP")),
             eps("new", ep("10.244.99.1"), ports=(("p53", 53, "UDP"),))]
    rs = sync(w, objs, rs, {"s0", "s2", "new"})
    kernel_equals_desired(fake, rs)
    payload = fake.restores()[-1]
    assert "ns1/s1:" not in payload and "ns1/s3:" not in payload, "unchanged services were rewritten"
    assert ":SVCNET-SERVICES" not in payload, "a few changed rules are -D/-I, not a rewrite"
    assert "-D SVCNET-SERVICES " in payload and "-I SVCNET-SERVICES 1 " in payload
    assert "-X SVCNET-SVC-" in payload  # s2's chains go in the same payload

    # what the kernel now holds traces like the desired rules
    written = IptablesTracer(rs.tables[0])
    assert written.trace(POD, "udp", "10.96.0.99", 53).endpoints == ["10.244.99.1:53"]
    assert written.trace(POD, "tcp", "10.96.0.3", 80).verdict == "ACCEPT"

    n = len(fake.calls)
    rs = sync(w, objs, rs, set())
    assert len(fake.calls) == n, "a sync with no changes runs nothing"


def test_endpoint_change_touches_only_that_services_chains() -> None:
    fake = FakeIptables()
    w = writer(fake)
    objs = objects(3)
    rs = sync(w, objs, None, None, full=True)
    objs[3] = eps("s1", ep("10.244.1.1"), ep("10.244.1.5"))
    sync(w, objs, rs, {"s1"})
    payload = fake.restores()[-1]
    assert payload.startswith("*nat\n") and "*filter" not in payload
    assert all("ns1/s1:p80" in ln or ln.startswith((":", "-X", "*", "COMMIT")) for ln in payload.splitlines())


def test_kep_3453_mode_rewrites_the_top_level_chains() -> None:
    fake = FakeIptables()
    w = RestoreWriter(families=(4,), execute=fake, set_route_localnet=lambda: None, always_rewrite_top=True)
    objs = objects(3)
    rs = sync(w, objs, None, None, full=True)
    objs[3] = eps("s1", ep("10.244.1.9"))
    rs = sync(w, objs, rs, {"s1"})
    assert ":SVCNET-SERVICES - [0:0]" in fake.restores()[-1]
    kernel_equals_desired(fake, rs)


def test_full_write_removes_stale_chains_and_repairs_jumps() -> None:
    fake = FakeIptables()
    w = writer(fake)
    objs = objects(3)
    sync(w, objs, None, None, full=True)
    # a new process (nothing believed), fewer services, and somebody deleted a jump
    fake.tables[4]["nat"]["OUTPUT"].clear()
    w2 = writer(fake)
    rs = sync(w2, objs[:2], None, None, full=True)
    kernel_equals_desired(fake, rs)
    assert fake.tables[4]["nat"]["OUTPUT"] == ['-m comment --comment "svcnet service portals" -j SVCNET-SERVICES']
    assert fake.tables[4]["nat"]["PREROUTING"] == fake.tables[4]["nat"]["OUTPUT"], "no duplicate jumps"


def test_failed_restore_keeps_rules_raises_typed_error_and_next_write_is_full() -> None:
    fake = FakeIptables()
    w = writer(fake)
    objs = objects(2)
    rs = sync(w, objs, None, None, full=True)
    before = {t: dict(c) for t, c in fake.tables[4].items()}
    objs[1] = eps("s0", ep("10.244.0.8"))
    fake.fail_next = ("iptables-restore v1.8.9 (nf_tables): Couldn't load target `SVCNET-SEP-X':"
                      "No such file or directory\nError occurred at line: 3\n")
    with pytest.raises(IptablesError) as err:
        sync(w, objs, rs, {"s0"})
    assert err.value.is_not_found() and err.value.line == 3 and err.value.line_text
    assert {t: dict(c) for t, c in fake.tables[4].items()} == before
    assert 4 not in w.applied, "after a failure the writer no longer trusts its memory"
    n = len(fake.calls)
    rs2 = sync(w, objs, rs, {"s0"})  # the same partial request is written fully, after a re-read
    assert any("save" in a[0] or a[0] == "nft" for a, _ in fake.calls[n:])
    kernel_equals_desired(fake, rs2)


@pytest.mark.parametrize("stderr,rc,check", [
    pytest.param("Another app is currently holding the xtables lock. Stopped waiting after 5s.", 4,
                 "is_lock_held", id="lock"),
    pytest.param("iptables-restore: line 7 failed: Chain 'SVCNET-X' does not exist", 1, "is_not_found",
                 id="missing chain"),
    pytest.param("CHAIN_USER_DEL failed (Device or resource busy): chain SVCNET-SVC-A", 1, "is_busy",
                 id="referenced chain"),
    pytest.param("iptables: Chain already exists.", 1, "already_exists", id="exists"),
])
def test_error_classes(stderr: str, rc: int, check: str) -> None:
    e = IptablesError("restore failed", stderr, rc, "*nat\n" * 10)
    assert getattr(e, check)()
    assert isinstance(e, RuntimeError)  # BackendError: the engine forces a full sync


def test_cleanup_removes_our_chains_and_jumps_only() -> None:
    fake = FakeIptables()
    fake.tables[4]["filter"]["INPUT"].append("-s 192.0.2.1/32 -j ACCEPT")
    fake.tables[4]["nat"]["OTHER"] = ["-j RETURN"]
    w = writer(fake)
    sync(w, objects(3), None, None, full=True)
    w.cleanup()
    for t in TABLES:
        assert not [c for c in fake.tables[4][t] if c.startswith("SVCNET-")]
        assert not [r for rules in fake.tables[4][t].values() for r in rules if "SVCNET-" in r]
    assert fake.tables[4]["filter"]["INPUT"] == ["-s 192.0.2.1/32 -j ACCEPT"]
    assert fake.tables[4]["nat"]["OTHER"] == ["-j RETURN"]


@pytest.mark.parametrize("variant", ["nf_tables", "legacy"])
def test_tables_holding_only_svcnet_rules_are_replaced_whole(variant: str) -> None:
    fake = FakeIptables(variant)
    w = writer(fake)
    objs = objects(3)
    rs = sync(w, objs, None, None, full=True)
    argv = [a for a, _ in fake.calls if "restore" in a[0]][-1]
    assert "--noflush" not in argv, "empty tables: the fast flushing restore"
    kernel_equals_desired(fake, rs)
    assert fake.tables[4]["nat"]["PREROUTING"] == ['-m comment --comment "svcnet service portals" -j SVCNET-SERVICES']
    # partial writes always use --noflush
    objs[1] = eps("s0", ep("10.244.0.7"))
    rs = sync(w, objs, rs, {"s0"})
    assert "--noflush" in [a for a, _ in fake.calls if "restore" in a[0]][-1]
    kernel_equals_desired(fake, rs)


@pytest.mark.parametrize("foreign", ["rule", "chain", "set"])
def test_anything_foreign_in_the_tables_means_noflush(foreign: str) -> None:
    fake = FakeIptables("nf_tables")
    if foreign == "rule":
        fake.tables[4]["nat"]["INPUT"].append("-s 192.0.2.1/32 -j ACCEPT")
    elif foreign == "chain":
        fake.tables[4]["filter"]["DOCKER"] = []
    else:
        fake.sets = "table ip nat {\n\tset blocked {\n\t\ttype ipv4_addr\n\t}\n}\n"
    w = writer(fake)
    rs = sync(w, objects(2), None, None, full=True)
    assert "--noflush" in [a for a, _ in fake.calls if "restore" in a[0]][-1]
    kernel_equals_desired(fake, rs)
    if foreign == "rule":
        assert fake.tables[4]["nat"]["INPUT"] == ["-s 192.0.2.1/32 -j ACCEPT"]


def test_partial_compute_patches_top_level_rules_like_a_full_compute() -> None:
    two_ports = svc("hc", "10.96.0.200", ("a", 80, "TCP", 30100), ("b", 81, "TCP", 30101), type="NodePort",
                    externalTrafficPolicy="Local", healthCheckNodePort=32100)
    objs = objects(3) + [two_ports, eps("hc", ep("10.244.9.1"), ports=(("a", 80, "TCP"), ("b", 81, "TCP")))]
    rs = Ruleset((compute_family(state(objs, **KW)),))
    steps: list[tuple[list[dict[str, Any]], set[str]]] = [
        (objs[:2] + objs[4:], {"s1"}),                                   # delete a service
        ([o for o in objs[:2] + objs[4:] if o.get("spec", {}).get("ports") != two_ports["spec"]["ports"]]
         + [svc("hc", "10.96.0.200", ("a", 80, "TCP", 30100), type="NodePort", externalTrafficPolicy="Local",
                healthCheckNodePort=32100)], {"hc"}),                   # one of two ports sharing a HC rule goes
        (objs, {"s1", "hc"}),                                             # and everything comes back
    ]
    for step, changed in steps:
        st = state(step, **KW)
        names = frozenset(n for n in {*st.services, *rs.tables[0].services} if n.name in changed)
        partial = compute_family(st, rs.tables[0], names)
        full = compute_family(st)
        assert partial.recomputed == names and partial.base_id == id(rs.tables[0])
        assert {k: set(v) for k, v in partial.top.items()} == {k: set(v) for k, v in full.top.items()}
        assert partial.top[(NAT, SERVICES)][-1] == full.top[(NAT, SERVICES)][-1]
        rs = Ruleset((partial,))
    assert any("health check node port" in r for r in rs.tables[0].top[("filter", "SVCNET-NODEPORTS")])
