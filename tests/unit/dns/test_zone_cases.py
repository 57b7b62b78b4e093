"""Table-driven answers for the cluster zone, CoreDNS handler_test.go style."""

from __future__ import annotations

import pytest

from .harness import Case, check, make_handler, soa, svc, slice_, ep, ns, pod, HTTP, OBJECTS

Z = "cluster.local."
T = "testns.svc.cluster.local."
SOA = soa()

DEFAULT_CASES = [
    # ClusterIP services
    Case(f"svc1.{T}", "A", answer=[f"svc1.{T} 5 IN A 10.0.0.1"]),
    Case(f"svc1.{T}", "AAAA", ns=[SOA]),  # v4-only: NODATA
    Case(f"svc6.{T}", "AAAA", answer=[f"svc6.{T} 5 IN AAAA 1234:abcd::1"]),
    Case(f"svc6.{T}", "A", ns=[SOA]),
    Case(f"svcempty.{T}", "A", answer=[f"svcempty.{T} 5 IN A 10.0.0.2"]),  # zero endpoints still answers
    Case(f"dual.{T}", "A", answer=[f"dual.{T} 5 IN A 10.0.0.3"]),
    Case(f"dual.{T}", "AAAA", answer=[f"dual.{T} 5 IN AAAA 1234:abcd::3"]),
    Case(f"svc1.{T}", "SRV", answer=[f"svc1.{T} 5 IN SRV 0 100 80 svc1.{T}"],
         extra=[f"svc1.{T} 5 IN A 10.0.0.1"]),
    Case(f"_http._tcp.svc1.{T}", "SRV", answer=[f"_http._tcp.svc1.{T} 5 IN SRV 0 100 80 svc1.{T}"],
         extra=[f"svc1.{T} 5 IN A 10.0.0.1"]),
    # dual-stack: two records back one SRV -> weight 50, glue for both families
    Case(f"_http._tcp.dual.{T}", "SRV", answer=[f"_http._tcp.dual.{T} 5 IN SRV 0 50 80 dual.{T}"],
         extra=[f"dual.{T} 5 IN A 10.0.0.3", f"dual.{T} 5 IN AAAA 1234:abcd::3"]),
    # SRV at the bare name lists every port, unnamed ones included (2 ports x 2 IPs -> 25)
    Case(f"dual.{T}", "SRV", answer=[f"dual.{T} 5 IN SRV 0 25 80 dual.{T}", f"dual.{T} 5 IN SRV 0 25 8080 dual.{T}"],
         extra=[f"dual.{T} 5 IN A 10.0.0.3", f"dual.{T} 5 IN AAAA 1234:abcd::3"]),
    Case(f"_https._tcp.svc1.{T}", "SRV", "NXDOMAIN", ns=[SOA]),
    Case(f"_http._udp.svc1.{T}", "SRV", "NXDOMAIN", ns=[SOA]),
    Case(f"_http._tcp.svc1.{T}", "A", answer=[f"_http._tcp.svc1.{T} 5 IN A 10.0.0.1"]),
    # endpoints of a ClusterIP service resolve too (extension)
    Case(f"172-0-9-1.svc1.{T}", "A", answer=[f"172-0-9-1.svc1.{T} 5 IN A 172.0.9.1"]),
    # headless
    Case(f"hdls1.{T}", "A", answer=[f"hdls1.{T} 5 IN A 172.0.0.2", f"hdls1.{T} 5 IN A 172.0.0.3",
                                    f"hdls1.{T} 5 IN A 172.0.0.4"]),
    Case(f"hdls1.{T}", "AAAA", answer=[f"hdls1.{T} 5 IN AAAA 5678:abcd::1", f"hdls1.{T} 5 IN AAAA 5678:abcd::2"]),
    Case(f"dup-name.hdls1.{T}", "A", answer=[f"dup-name.hdls1.{T} 5 IN A 172.0.0.2",
                                             f"dup-name.hdls1.{T} 5 IN A 172.0.0.3"]),
    Case(f"172-0-0-4.hdls1.{T}", "A", answer=[f"172-0-0-4.hdls1.{T} 5 IN A 172.0.0.4"]),
    Case(f"172-0-0-2.hdls1.{T}", "A", "NXDOMAIN", ns=[SOA]),  # has a hostname: not by dashed IP
    Case(f"172-0-0-5.hdls1.{T}", "A", "NXDOMAIN", ns=[SOA]),  # not ready
    Case(f"5678-abcd--1.hdls1.{T}", "AAAA", answer=[f"5678-abcd--1.hdls1.{T} 5 IN AAAA 5678:abcd::1"]),
    Case(f"5678-abcd--1.hdls1.{T}", "A", ns=[SOA]),
    Case(f"_http._tcp.hdls1.{T}", "SRV",
         answer=[f"_http._tcp.hdls1.{T} 5 IN SRV 0 20 80 dup-name.hdls1.{T}",
                 f"_http._tcp.hdls1.{T} 5 IN SRV 0 20 80 172-0-0-4.hdls1.{T}",
                 f"_http._tcp.hdls1.{T} 5 IN SRV 0 20 80 5678-abcd--1.hdls1.{T}",
                 f"_http._tcp.hdls1.{T} 5 IN SRV 0 20 80 5678-abcd--2.hdls1.{T}"],
         extra=[f"dup-name.hdls1.{T} 5 IN A 172.0.0.2", f"dup-name.hdls1.{T} 5 IN A 172.0.0.3",
                f"172-0-0-4.hdls1.{T} 5 IN A 172.0.0.4", f"5678-abcd--1.hdls1.{T} 5 IN AAAA 5678:abcd::1",
                f"5678-abcd--2.hdls1.{T} 5 IN AAAA 5678:abcd::2"]),
    Case(f"hdlsempty.{T}", "A", "NXDOMAIN", ns=[SOA]),  # headless without ready endpoints
    Case(f"hdlsportless.{T}", "A", answer=[f"hdlsportless.{T} 5 IN A 172.0.1.1"]),
    Case(f"hdlsportless.{T}", "SRV", ns=[SOA]),
    # ExternalName
    Case(f"external-to-service.{T}", "A", answer=[f"external-to-service.{T} 5 IN CNAME svc1.{T}",
                                                  f"svc1.{T} 5 IN A 10.0.0.1"]),
    Case(f"external.{T}", "CNAME", answer=[f"external.{T} 5 IN CNAME ext.interwebs.test."]),
    Case(f"external.{T}", "SRV", ns=[SOA]),
    Case(f"loop.{T}", "A", ns=[SOA]),  # x CNAME x is dropped
    Case(f"sub.external.{T}", "A", "NXDOMAIN", ns=[SOA]),
    Case(f"extip.{T}", "A", "NXDOMAIN", ns=[SOA]),
    # TXT, SOA, NS, apex and subtrees
    Case(f"dns-version.{Z}", "TXT", answer=[f'dns-version.{Z} 28800 IN TXT "1.1.0"']),
    Case(f"dns-version.{Z}", "A", "NXDOMAIN", ns=[SOA]),
    Case(f"svc1.{T}", "TXT", ns=[SOA]),
    Case(f"nope.{T}", "TXT", "NXDOMAIN", ns=[SOA]),
    Case(Z, "SOA", answer=[SOA]),
    Case(f"svc1.{T}", "SOA", ns=[SOA]),
    Case(Z, "NS", answer=[f"{Z} 5 IN NS ns.dns.{Z}"], extra=[f"ns.dns.{Z} 5 IN A 127.0.0.1"]),
    Case(f"ns.dns.{Z}", "A", answer=[f"ns.dns.{Z} 5 IN A 127.0.0.1"]),
    Case(f"svc1.{T}", "NS", ns=[SOA]),
    Case(f"nope.{T}", "NS", "NXDOMAIN", ns=[SOA]),
    Case(Z, "A", ns=[SOA]),
    Case(f"svc.{Z}", "A", ns=[SOA]),
    Case(f"pod.{Z}", "A", ns=[SOA]),
    Case(T, "A", ns=[SOA]),
    Case(f"nons.svc.{Z}", "A", "NXDOMAIN", ns=[SOA]),
    Case(f"foo.{Z}", "A", "NXDOMAIN", ns=[SOA]),
    Case(f"testns.pod.{Z}", "A", "NXDOMAIN", ns=[SOA]),  # pods disabled
    Case(f"1-2-3-4.testns.pod.{Z}", "A", "NXDOMAIN", ns=[SOA]),
    Case(f"a.b.c.svc1.{T}", "A", "NXDOMAIN", ns=[SOA]),  # too long
    Case(f"*.{T}", "A", "NXDOMAIN", ns=[SOA]),  # no wildcards since CoreDNS 1.9
    Case(f"svc1.{T}", "HINFO", ns=[SOA]),
    Case(f"nope.{T}", "MX", "NXDOMAIN", ns=[SOA]),
    # RFC 8482 HINFO "ANY obsoleted" "See RFC 8482" (dnslib prints HINFO in RFC 3597 form)
    Case(f"svc1.{T}", "ANY", answer=[f"svc1.{T} 8482 IN HINFO \\# 27 " + (
        bytes([13]) + b"ANY obsoleted" + bytes([12]) + b"See RFC 8482").hex().upper()]),
    Case(f"nope.{T}", "ANY", "NXDOMAIN", ns=[SOA]),
    # search-path misses a pod with ndots:5 sends
    Case(f"svc1.{T}{T}", "A", "NXDOMAIN", ns=[SOA]),
    Case(f"svc1.testns.svc.{Z}svc.{Z}", "A", "NXDOMAIN", ns=[SOA]),
    Case(f"api.example.com.{T}", "A", "NXDOMAIN", ns=[SOA]),
    # reverse
    Case("1.0.0.10.in-addr.arpa.", "PTR", answer=[f"1.0.0.10.in-addr.arpa. 5 IN PTR svc1.{T}"]),
    Case("2.0.0.172.in-addr.arpa.", "PTR", answer=[f"2.0.0.172.in-addr.arpa. 5 IN PTR dup-name.hdls1.{T}"]),
    Case("4.0.0.172.in-addr.arpa.", "PTR", answer=[f"4.0.0.172.in-addr.arpa. 5 IN PTR 172-0-0-4.hdls1.{T}"]),
    Case("5.0.0.172.in-addr.arpa.", "PTR", "NXDOMAIN", ns=[soa("in-addr.arpa.")]),  # not ready
    Case("9.9.9.9.in-addr.arpa.", "PTR", "NXDOMAIN", ns=[soa("in-addr.arpa.")]),
    Case("99.0.0.10.in-addr.arpa.", "PTR", "NXDOMAIN", ns=[soa("0.0.10.in-addr.arpa.")]),
    Case("1.0.0.10.in-addr.arpa.", "A", "NXDOMAIN", ns=[soa("0.0.10.in-addr.arpa.")]),
    Case("0.0.10.in-addr.arpa.", "SOA", answer=[soa("0.0.10.in-addr.arpa.")]),
    Case("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa.", "PTR",
         answer=[f"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa. 5 IN PTR svc6.{T}"]),
]


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=lambda c: f"{c.qtype}:{c.qname}")
async def test_default_options(case: Case) -> None:
    await check(make_handler(), case)


@pytest.mark.parametrize("case", [
    Case(f"10-0-0-9.testns.pod.{Z}", "A", answer=[f"10-0-0-9.testns.pod.{Z} 5 IN A 10.0.0.9"]),
    Case(f"1234-abcd--9.testns.pod.{Z}", "AAAA",
         answer=[f"1234-abcd--9.testns.pod.{Z} 5 IN AAAA 1234:abcd::9"]),
    Case(f"10-0-0-9.nons.pod.{Z}", "A", "NXDOMAIN", ns=[SOA]),
    Case(f"bad.testns.pod.{Z}", "A", "NXDOMAIN", ns=[SOA]),
    Case(f"testns.pod.{Z}", "A", ns=[SOA]),
], ids=lambda c: c.qname)
async def test_pods_insecure(case: Case) -> None:
    await check(make_handler(pods="insecure"), case)


@pytest.mark.parametrize("case", [
    Case(f"10-244-0-5.podns.pod.{Z}", "A", answer=[f"10-244-0-5.podns.pod.{Z} 5 IN A 10.244.0.5"]),
    Case(f"10-244-0-6.podns.pod.{Z}", "A", "NXDOMAIN", ns=[SOA]),  # no such pod
    Case(f"10-244-0-5.testns.pod.{Z}", "A", "NXDOMAIN", ns=[SOA]),  # other namespace
    Case(f"10-244-0-7.podns.pod.{Z}", "A", "NXDOMAIN", ns=[SOA]),  # finished pod
], ids=lambda c: c.qname)
async def test_pods_verified(case: Case) -> None:
    objs = OBJECTS + [pod("p1", "podns", "10.244.0.5"), pod("p2", "podns", "10.244.0.7", phase="Succeeded")]
    await check(make_handler(objs, pods="verified"), case)


async def test_namespaces_filter() -> None:
    h = make_handler(namespaces=frozenset({"testns"}))
    await check(h, Case(f"svc1.{T}", "A", answer=[f"svc1.{T} 5 IN A 10.0.0.1"]))
    await check(h, Case(f"other.otherns.svc.{Z}", "A", "NXDOMAIN", ns=[SOA]))
    await check(h, Case("9.0.0.10.in-addr.arpa.", "PTR", "NXDOMAIN", ns=[soa("0.0.10.in-addr.arpa.")]))


async def test_endpoint_pod_names() -> None:
    h = make_handler(endpoint_pod_names=True)
    await check(h, Case(f"pod-4.hdls1.{T}", "A", answer=[f"pod-4.hdls1.{T} 5 IN A 172.0.0.4"]))
    await check(h, Case(f"172-0-0-4.hdls1.{T}", "A", "NXDOMAIN", ns=[SOA]))
    await check(h, Case(f"dup-name.hdls1.{T}", "A", answer=[f"dup-name.hdls1.{T} 5 IN A 172.0.0.2",
                                                            f"dup-name.hdls1.{T} 5 IN A 172.0.0.3"]))


async def test_ignore_empty_service() -> None:
    h = make_handler(ignore_empty_service=True)
    await check(h, Case(f"svcempty.{T}", "A", "NXDOMAIN", ns=[SOA]))
    await check(h, Case(f"svc1.{T}", "A", answer=[f"svc1.{T} 5 IN A 10.0.0.1"]))


async def test_ttl_option() -> None:
    h = make_handler(ttl=30)
    await check(h, Case(f"svc1.{T}", "A", answer=[f"svc1.{T} 30 IN A 10.0.0.1"]))
    await check(h, Case(f"nope.{T}", "A", "NXDOMAIN", ns=[soa(ttl=30)]))


async def test_servfail_until_synced() -> None:
    h = make_handler(synced=False)
    await check(h, Case(f"nope.{T}", "A", "SERVFAIL", ns=[SOA]))
    await check(h, Case(f"svc1.{T}", "A", answer=[f"svc1.{T} 5 IN A 10.0.0.1"]))
    h.index.mark_synced()
    await check(h, Case(f"nope.{T}", "A", "NXDOMAIN", ns=[SOA]))


async def test_cname_chain_is_cut_after_ten() -> None:
    objs = [ns("testns"), svc("svc1", "testns", ["10.0.0.1"], [HTTP])]
    for i in range(12):
        objs.append(svc(f"c{i}", "testns", None, external=f"c{i + 1}.testns.svc.cluster.local"))
    objs.append(svc("c12", "testns", None, external="svc1.testns.svc.cluster.local"))
    h = make_handler(objs)
    from .harness import ask
    short = await ask(h, f"c5.{T}", "A")  # 8 CNAMEs then the address: within the limit
    assert [str(r.rtype) for r in short.rr][-1] == "1" and len(short.rr) == 9
    long = await ask(h, f"c0.{T}", "A")  # 13 CNAMEs: stopped, nothing resolved
    assert long.header.rcode == 0 and not long.rr


async def test_case_is_echoed() -> None:
    from .harness import ask
    h = make_handler()
    r = await ask(h, "SvC1.TestNS.svc.CLUSTER.local.", "A")
    assert [x.toZone().split()[0] for x in r.rr] == ["SvC1.TestNS.svc.CLUSTER.local."]
    assert str(r.q.qname) == "SvC1.TestNS.svc.CLUSTER.local."
    r = await ask(h, "nope.testns.svc.CLUSTER.local.", "A")
    assert " ".join(r.auth[0].toZone().split()).startswith(
        "CLUSTER.local. 5 IN SOA ns.dns.CLUSTER.local. hostmaster.CLUSTER.local.")
    r = await ask(h, "_http._tcp.svc1.testns.svc.Cluster.Local.", "SRV")
    # the SRV target: names from the objects, the zone as the client spelled it
    assert str(r.rr[0].rdata.target) == "svc1.testns.svc.Cluster.Local."


async def test_live_changes_are_visible_at_once() -> None:
    """No stale answers: the reply cache is flushed by every change."""
    from .harness import ask
    h = make_handler()
    assert (await ask(h, f"new.{T}", "A")).header.rcode == 3
    assert h.udp_cache  # the NXDOMAIN was remembered ...
    h.index.set_service(("testns", "new"), __import__("svcnet.dns.records", fromlist=["x"]).service_record(
        svc("new", "testns", ["10.0.0.77"], [HTTP])))
    assert not h.udp_cache  # ... and forgotten on change
    r = await ask(h, f"new.{T}", "A")
    assert [str(x.rdata) for x in r.rr] == ["10.0.0.77"]


async def test_ns_names_the_dns_service_that_owns_the_servers_address() -> None:
    objs = [ns("kube-system"), svc("kube-dns", "kube-system", ["10.96.0.10"], [("dns", 53, "UDP")]),
            slice_("kube-dns-1", "kube-system", "kube-dns", [ep("10.244.0.10")], [("dns", 53, "UDP")])]
    h = make_handler(objs, local_ips=("10.244.0.10",))
    await check(h, Case(Z, "NS", answer=[f"{Z} 5 IN NS kube-dns.kube-system.svc.{Z}"],
                        extra=[f"kube-dns.kube-system.svc.{Z} 5 IN A 10.96.0.10"]))
    # behind a headless service the endpoint itself is the name server
    objs[1] = svc("kube-dns", "kube-system", None, [("dns", 53, "UDP")])
    h = make_handler(objs, local_ips=("10.244.0.10",))
    await check(h, Case(Z, "NS", answer=[f"{Z} 5 IN NS 10-244-0-10.kube-dns.kube-system.svc.{Z}"],
                        extra=[f"10-244-0-10.kube-dns.kube-system.svc.{Z} 5 IN A 10.244.0.10"]))


def test_serial_moves_only_on_dns_visible_changes() -> None:
    from svcnet.dns.index import ClusterIndex
    from svcnet.dns.records import service_record

    now = [100.0]
    index = ClusterIndex(clock=lambda: now[0])
    obj = svc("a", "testns", ["10.0.0.1"], [HTTP])
    assert index.set_service(("testns", "a"), service_record(obj)) and index.serial == 100
    now[0] = 200.0
    obj["metadata"]["annotations"] = {"unrelated": "yes"}
    assert not index.set_service(("testns", "a"), service_record(obj)) and index.serial == 100
    obj["spec"]["ports"][0]["port"] = 8080
    assert index.set_service(("testns", "a"), service_record(obj)) and index.serial == 200


async def test_a_change_forgets_only_the_replies_it_can_affect() -> None:
    from svcnet.dns.records import service_record, slice_record
    from .harness import ask
    h = make_handler()
    for name in (f"svc1.{T}", f"dual.{T}", f"hdls1.{T}", f"nope.{T}"):
        await ask(h, name, "A")
    keys = {name: k for k in h.udp_cache for name in (f"svc1.{T}", f"dual.{T}", f"hdls1.{T}", f"nope.{T}")
            if dnslib_name(k) == name}
    assert len(keys) == 4
    # an endpoint of hdls1 goes away: hdls1's answer and every negative one (the SOA
    # serial moved) are forgotten, svc1's and dual's stay
    h.index.set_slice(("testns", "hdls1-v4"), slice_record(slice_("hdls1-v4", "testns", "hdls1", [ep("172.0.0.2")], [HTTP])))
    assert keys[f"svc1.{T}"] in h.udp_cache and keys[f"dual.{T}"] in h.udp_cache
    assert keys[f"hdls1.{T}"] not in h.udp_cache and keys[f"nope.{T}"] not in h.udp_cache
    r = await ask(h, f"hdls1.{T}", "A")
    assert sorted(str(x.rdata) for x in r.rr) == ["172.0.0.2"]
    # a Service change forgets that Service's answers
    h.index.set_service(("testns", "svc1"), service_record(svc("svc1", "testns", ["10.0.0.111"], [HTTP])))
    assert keys[f"svc1.{T}"] not in h.udp_cache and keys[f"dual.{T}"] in h.udp_cache
    assert [str(x.rdata) for x in (await ask(h, f"svc1.{T}", "A")).rr] == ["10.0.0.111"]


def dnslib_name(key: bytes) -> str:
    """The question name of a remembered query (the key is the query without its ID)."""
    import dnslib
    return str(dnslib.DNSRecord.parse(b"\x00\x00" + key).q.qname)
