"""Forwarding over real sockets to fake upstreams on loopback: caching, failover, TCP
retry on TC, coalescing, ExternalName targets outside the zone, fallthrough and
autopath. Never the real internet, never port 53."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from unit.dns.harness import HTTP, OBJECTS, pod, svc

from .dnsproc import DnsProcess, FakeUpstream, answers, free_port, rcode, start_dns, tcp, udp

T = "testns.svc.cluster.local"
ZONE = {
    "www.example.test.": ["www.example.test. 300 IN A 192.0.2.10"],
    "ext.interwebs.test.": ["ext.interwebs.test. 120 IN A 192.0.2.20"],
    "big.example.test.": [f"big.example.test. 60 IN TXT \"{'x' * 200}-{i}\"" for i in range(8)],
    "slow.example.test.": ["slow.example.test. 60 IN A 192.0.2.30"],
    "1.2.0.192.in-addr.arpa.": ["1.2.0.192.in-addr.arpa. 60 IN PTR host.example.test."],
    "svc1.otherns.svc.cluster.local.": [],
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream(zone=dict(ZONE), truncate_udp={"big.example.test."}).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[DnsProcess]:
    dead = free_port()  # nothing listens there: the first upstream fails fast
    dp = start_dns(tmp_path_factory.mktemp("dns"), OBJECTS, "--upstream",
                   f"127.0.0.1:{dead},127.0.0.1:{upstream.port}", "--zone", "cluster.local",
                   "--zone", "10.0.0.0/24", "--fallthrough-zones", "in-addr.arpa,ip6.arpa",
                   "--zone", "in-addr.arpa")
    yield dp
    assert dp.stop() == 0, dp.logs()
    assert "Traceback" not in dp.logs(), dp.logs()


def test_forwarded_answer_and_failover(server: DnsProcess, upstream: FakeUpstream) -> None:
    r = udp(server.port, "www.example.test", "A")
    assert rcode(r) == "NOERROR" and answers(r) == ["www.example.test. 300 IN A 192.0.2.10"]
    assert r.header.ra  # AA is passed through from the upstream, as CoreDNS forward does
    assert upstream.count("www.example.test.", "A") == 1


def test_forward_cache_positive_and_negative(server: DnsProcess, upstream: FakeUpstream) -> None:
    udp(server.port, "www.example.test", "A")
    before = upstream.count("www.example.test.", "A")
    for _ in range(5):
        r = udp(server.port, "WWW.Example.Test", "A")
        assert answers(r) == ["WWW.Example.Test. 300 IN A 192.0.2.10"] or answers(r)[0].endswith("192.0.2.10")
        assert r.rr[0].ttl <= 300
    assert upstream.count("www.example.test.", "A") == before
    for _ in range(3):
        r = udp(server.port, "missing.example.test", "A")
        assert rcode(r) == "NXDOMAIN" and r.auth and r.auth[0].rtype == 6
    assert upstream.count("missing.example.test.", "A") == 1  # the NXDOMAIN was cached (SOA min 60)


def test_tcp_retry_when_upstream_truncates(server: DnsProcess, upstream: FakeUpstream) -> None:
    r = tcp(server.port, "big.example.test", "TXT")
    assert rcode(r) == "NOERROR" and len(r.rr) == 8
    protos = [p for p, n, _ in upstream.queries if n == "big.example.test."]
    assert protos[:2] == ["udp", "tcp"]
    small = udp(server.port, "big.example.test", "TXT")  # to a 512-byte client: TC so it retries
    assert small.header.tc == 1


def test_identical_queries_in_flight_are_coalesced(tmp_path: Path) -> None:
    # Queries that arrive while the first is in flight join it; later ones hit the cache.
    # Either way the upstream sees exactly one, however the threads are scheduled.
    up = FakeUpstream(zone=dict(ZONE), delay=1.0).start()
    dp = start_dns(tmp_path, OBJECTS, "--upstream", f"127.0.0.1:{up.port}")
    try:
        results: list[str] = []

        def ask() -> None:
            results.append(answers(udp(dp.port, "slow.example.test", "A"))[0])

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == ["slow.example.test. 60 IN A 192.0.2.30"] * 8
        assert up.count("slow.example.test.", "A") == 1
    finally:
        assert dp.stop() == 0
        up.stop()


def test_all_upstreams_down_is_servfail(tmp_path: Path) -> None:
    dp = start_dns(tmp_path, OBJECTS, "--upstream", f"127.0.0.1:{free_port()}")
    try:
        assert rcode(udp(dp.port, "www.example.test", "A", timeout=6)) == "SERVFAIL"
        assert answers(udp(dp.port, f"svc1.{T}")) == [f"svc1.{T}. 5 IN A 10.0.0.1"]
    finally:
        assert dp.stop() == 0


def test_unresponsive_upstream_times_out_and_fails_over(tmp_path: Path) -> None:
    import socket

    black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # receives, never answers
    black_hole.bind(("127.0.0.1", 0))
    up = FakeUpstream(zone=dict(ZONE)).start()
    dp = start_dns(tmp_path, OBJECTS, "--upstream",
                   f"127.0.0.1:{black_hole.getsockname()[1]},127.0.0.1:{up.port}")
    try:
        for name in ("www.example.test", "ext.interwebs.test"):  # at most one 2 s read timeout each
            r = udp(dp.port, name, "A", timeout=8)
            assert rcode(r) == "NOERROR" and r.rr
    finally:
        assert dp.stop() == 0
        up.stop()
        black_hole.close()


def test_externalname_out_of_zone_through_upstream(server: DnsProcess, upstream: FakeUpstream) -> None:
    r = udp(server.port, f"external.{T}", "A")
    assert [x.rtype for x in r.rr] == [5, 1]
    assert str(r.rr[0].rdata) == "ext.interwebs.test." and str(r.rr[1].rdata) == "192.0.2.20"
    assert r.rr[1].ttl <= 120  # the target keeps the upstream TTL
    assert r.header.aa


def test_search_path_names_are_never_forwarded(server: DnsProcess, upstream: FakeUpstream) -> None:
    for name in (f"www.example.test.{T}", "www.example.test.svc.cluster.local", "www.example.test.cluster.local"):
        assert rcode(udp(server.port, name, "A")) == "NXDOMAIN"
        assert upstream.count(name.lower() + ".") == 0


def test_fallthrough_sends_unknown_ptr_upstream(server: DnsProcess, upstream: FakeUpstream) -> None:
    r = udp(server.port, "1.2.0.192.in-addr.arpa", "PTR")
    assert answers(r) == ["1.2.0.192.in-addr.arpa. 60 IN PTR host.example.test."]
    assert upstream.count("1.2.0.192.in-addr.arpa.") == 1
    r = udp(server.port, "1.0.0.10.in-addr.arpa", "PTR")  # known PTRs stay authoritative
    assert answers(r) == [f"1.0.0.10.in-addr.arpa. 5 IN PTR svc1.{T}."]


def test_autopath_walks_the_pods_search_list(tmp_path: Path, upstream: FakeUpstream) -> None:
    # The client's source address (127.0.0.1) is a pod in testns.
    objs = OBJECTS + [pod("client", "testns", "127.0.0.1"), svc("svc1", "otherns", ["10.0.0.50"], [HTTP])]
    dp = start_dns(tmp_path, objs, "--autopath", "--pods", "verified", "--upstream", f"127.0.0.1:{upstream.port}")
    try:
        # "svc1.otherns" expanded with the first search domain: found as svc1.otherns.svc.cluster.local
        r = udp(dp.port, f"svc1.otherns.{T}", "A")
        assert rcode(r) == "NOERROR"
        assert [x.rtype for x in r.rr] == [5, 1]
        assert str(r.rr[0].rname) == f"svc1.otherns.{T}." and str(r.rr[0].rdata) == "svc1.otherns.svc.cluster.local."
        assert str(r.rr[1].rdata) == "10.0.0.50"
        # an external name: walked to the bare name, which goes upstream
        r = udp(dp.port, f"www.example.test.{T}", "A")
        assert [x.rtype for x in r.rr] == [5, 1] and str(r.rr[1].rdata) == "192.0.2.10"
        # a client that is not a pod gets the plain NXDOMAIN
        assert rcode(udp(dp.port, f"svc1.otherns.{T}", "A", src="127.0.0.2")) == "NXDOMAIN"
        # and the pod's own namespace answers directly
        assert answers(udp(dp.port, f"svc1.{T}")) == [f"svc1.{T}. 5 IN A 10.0.0.1"]
    finally:
        assert dp.stop() == 0
