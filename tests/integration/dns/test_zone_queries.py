"""The cluster zone over real sockets: a `svcnet dns` process queried with dig and a
Python client, UDP and TCP, for every record kind and option of the issue."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from unit.dns.harness import HTTP, OBJECTS, ep, ns, pod, slice_, svc

from .dnsproc import DnsProcess, answers, dig, rcode, start_dns, tcp, udp

T = "testns.svc.cluster.local"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsProcess]:
    dp = start_dns(tmp_path_factory.mktemp("dns"), OBJECTS, "--zone", "cluster.local",
                   "--zone", "10.0.0.0/24", "--zone", "in-addr.arpa", "--zone", "ip6.arpa")
    yield dp
    assert dp.stop() == 0, dp.logs()
    assert "Traceback" not in dp.logs(), dp.logs()


def test_clusterip_a_aaaa_and_dual_stack(server: DnsProcess) -> None:
    assert dig(server.port, "+short", f"svc1.{T}", "A").split() == ["10.0.0.1"]
    assert dig(server.port, "+short", f"svc6.{T}", "AAAA").split() == ["1234:abcd::1"]
    assert dig(server.port, "+short", f"dual.{T}", "A").split() == ["10.0.0.3"]
    assert dig(server.port, "+short", f"dual.{T}", "AAAA").split() == ["1234:abcd::3"]
    assert dig(server.port, "+short", f"svcempty.{T}", "A").split() == ["10.0.0.2"]


def test_nodata_and_nxdomain_carry_soa_and_aa(server: DnsProcess) -> None:
    r = udp(server.port, f"svc1.{T}", "AAAA")
    assert rcode(r) == "NOERROR" and not r.rr and r.header.aa
    assert [str(a.rtype) for a in r.auth] == ["6"]
    for name in (f"nope.{T}", f"svc1.{T}.{T}", f"api.example.com.{T}", f"hdlsempty.{T}", "foo.cluster.local"):
        r = udp(server.port, name, "A")
        assert rcode(r) == "NXDOMAIN" and r.header.aa, name
        assert answers(r) == [] and str(r.auth[0].rname) == "cluster.local."
    out = dig(server.port, f"nope.{T}", "A")
    assert "status: NXDOMAIN" in out and " aa " in out.split("flags:")[1].split(";")[0] + " "


def test_case_is_echoed(server: DnsProcess) -> None:
    r = udp(server.port, "SVC1.TestNS.svc.Cluster.Local", "A")
    assert answers(r) == ["SVC1.TestNS.svc.Cluster.Local. 5 IN A 10.0.0.1"]
    r = udp(server.port, "svc1.testns.svc.cluster.local", "A")  # and the lower-case spelling after it
    assert answers(r) == [f"svc1.{T}. 5 IN A 10.0.0.1"]


def test_headless_endpoints_and_srv(server: DnsProcess) -> None:
    assert sorted(dig(server.port, "+short", f"hdls1.{T}", "A").split()) == ["172.0.0.2", "172.0.0.3", "172.0.0.4"]
    assert sorted(dig(server.port, "+short", f"dup-name.hdls1.{T}").split()) == ["172.0.0.2", "172.0.0.3"]
    assert dig(server.port, "+short", f"5678-abcd--2.hdls1.{T}", "AAAA").split() == ["5678:abcd::2"]
    r = udp(server.port, f"_http._tcp.hdls1.{T}", "SRV")
    assert len(r.rr) == 4 and {str(x.rdata.weight) for x in r.rr} == {"20"}
    assert len([x for x in r.ar if x.rtype in (1, 28)]) == 5
    out = dig(server.port, "+short", f"_http._tcp.svc1.{T}", "SRV")
    assert out.split() == ["0", "100", "80", f"svc1.{T}."]
    assert rcode(udp(server.port, f"_nope._tcp.svc1.{T}", "SRV")) == "NXDOMAIN"


def test_ptr_for_cluster_ips_and_endpoints(server: DnsProcess) -> None:
    assert dig(server.port, "+short", "-x", "10.0.0.1").split() == [f"svc1.{T}."]
    assert dig(server.port, "+short", "-x", "172.0.0.4").split() == [f"172-0-0-4.hdls1.{T}."]
    assert dig(server.port, "+short", "-x", "1234:abcd::1").split() == [f"svc6.{T}."]
    assert rcode(udp(server.port, "9.9.9.9.in-addr.arpa", "PTR")) == "NXDOMAIN"


def test_externalname_in_zone(server: DnsProcess) -> None:
    r = udp(server.port, f"external-to-service.{T}", "A")
    assert [x.rtype for x in r.rr] == [5, 1]  # the CNAME first, then the target's address
    assert str(r.rr[1].rdata) == "10.0.0.1"
    assert dig(server.port, "+short", f"external.{T}", "CNAME").split() == ["ext.interwebs.test."]


def test_txt_soa_ns(server: DnsProcess) -> None:
    assert dig(server.port, "+short", "dns-version.cluster.local", "TXT").split() == ['"1.1.0"']
    soa = dig(server.port, "+short", "cluster.local", "SOA").split()
    assert soa[:2] == ["ns.dns.cluster.local.", "hostmaster.cluster.local."] and soa[3:] == ["7200", "1800", "86400", "5"]
    assert dig(server.port, "+short", "cluster.local", "NS").split() == ["ns.dns.cluster.local."]
    assert dig(server.port, "+short", "ns.dns.cluster.local", "A").split() == ["127.0.0.1"]


def test_any_gets_rfc8482_minimal_answer(server: DnsProcess) -> None:
    r = udp(server.port, f"svc1.{T}", "ANY")
    assert len(r.rr) == 1 and r.rr[0].rtype == 13 and r.rr[0].ttl == 8482


def test_same_answers_over_tcp(server: DnsProcess) -> None:
    assert answers(tcp(server.port, f"svc1.{T}", "A")) == [f"svc1.{T}. 5 IN A 10.0.0.1"]
    assert rcode(tcp(server.port, f"nope.{T}", "A")) == "NXDOMAIN"
    assert dig(server.port, "+tcp", "+short", f"hdls1.{T}").split()


def test_options_pods_namespaces_endpoint_names_empty_service(tmp_path: Path) -> None:
    objs = OBJECTS + [pod("p1", "testns", "10.244.0.5")]
    dp = start_dns(tmp_path, objs, "--pods", "insecure", "--namespaces", "testns", "--endpoint-pod-names",
                   "--ignore-empty-service", "--ttl", "30")
    try:
        assert answers(udp(dp.port, "10-9-9-9.testns.pod.cluster.local")) == [
            "10-9-9-9.testns.pod.cluster.local. 30 IN A 10.9.9.9"]
        assert rcode(udp(dp.port, "other.otherns.svc.cluster.local")) == "NXDOMAIN"  # not exposed
        assert answers(udp(dp.port, f"pod-4.hdls1.{T}")) == [f"pod-4.hdls1.{T}. 30 IN A 172.0.0.4"]
        assert rcode(udp(dp.port, f"svcempty.{T}")) == "NXDOMAIN"
        assert answers(udp(dp.port, f"svc1.{T}")) == [f"svc1.{T}. 30 IN A 10.0.0.1"]
    finally:
        assert dp.stop() == 0
    dp = start_dns(tmp_path, objs, "--pods", "verified")
    try:
        assert answers(udp(dp.port, "10-244-0-5.testns.pod.cluster.local")) == [
            "10-244-0-5.testns.pod.cluster.local. 5 IN A 10.244.0.5"]
        assert rcode(udp(dp.port, "10-9-9-9.testns.pod.cluster.local")) == "NXDOMAIN"
    finally:
        assert dp.stop() == 0


def test_objects_file_reload_is_live(tmp_path: Path) -> None:
    objs = [ns("live"), svc("a", "live", ["10.1.0.1"], [HTTP])]
    dp = start_dns(tmp_path, objs)
    try:
        assert rcode(udp(dp.port, "b.live.svc.cluster.local")) == "NXDOMAIN"
        serial = udp(dp.port, "cluster.local", "SOA").rr[0].rdata.times[0]
        dp.write_objects(objs + [svc("b", "live", None, [HTTP]),
                                 slice_("b-1", "live", "b", [ep("10.2.0.1")], [HTTP])])
        import time
        deadline = time.time() + 10
        while time.time() < deadline and rcode(udp(dp.port, "b.live.svc.cluster.local")) != "NOERROR":
            time.sleep(0.1)
        assert answers(udp(dp.port, "b.live.svc.cluster.local")) == ["b.live.svc.cluster.local. 5 IN A 10.2.0.1"]
        assert udp(dp.port, "cluster.local", "SOA").rr[0].rdata.times[0] >= serial
    finally:
        assert dp.stop() == 0


def test_externalname_loop_is_stopped(server: DnsProcess) -> None:
    r = udp(server.port, f"loop.{T}", "A")
    assert rcode(r) == "NOERROR" and not r.rr and r.auth[0].rtype == 6


def test_compression_loop_and_garbage_get_formerr(server: DnsProcess) -> None:
    import struct

    from .dnsproc import udp_raw
    import dnslib

    looping = struct.pack("!6H", 77, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
    r = dnslib.DNSHeader.parse(dnslib.DNSBuffer(udp_raw(server.port, looping)))
    assert r.id == 77 and r.rcode == 1 and r.qr == 1  # FORMERR
    too_long = struct.pack("!6H", 78, 0x0100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01"
    assert dnslib.DNSHeader.parse(dnslib.DNSBuffer(udp_raw(server.port, too_long))).rcode == 1
    assert answers(udp(server.port, f"svc1.{T}")) == [f"svc1.{T}. 5 IN A 10.0.0.1"]


def test_ns_is_the_service_that_selects_the_server(tmp_path: Path) -> None:
    """The server listens on 127.0.0.1, which is an endpoint of kube-dns: NS names kube-dns."""
    objs = [ns("kube-system"), svc("kube-dns", "kube-system", ["10.96.0.10"], [("dns", 53, "UDP")]),
            slice_("kube-dns-1", "kube-system", "kube-dns", [ep("127.0.0.1")], [("dns", 53, "UDP")])]
    dp = start_dns(tmp_path, objs)
    try:
        r = udp(dp.port, "cluster.local", "NS")
        assert answers(r) == ["cluster.local. 5 IN NS kube-dns.kube-system.svc.cluster.local."]
        assert [" ".join(x.toZone().split()) for x in r.ar] == ["kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10"]
    finally:
        assert dp.stop() == 0
