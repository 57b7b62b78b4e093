"""Transport over real sockets: TCP pipelining, EDNS and truncation, zone transfers,
slow clients, and a fuzz run of thousands of bad packets after which the server still
answers correctly."""

from __future__ import annotations

import random
import socket
import struct
from typing import Iterator

import dnslib
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from unit.dns.harness import HTTP, OBJECTS, ep, slice_, svc

from .dnsproc import DnsProcess, answers, build, dig, rcode, start_dns, tcp_exchange, udp, udp_raw

T = "testns.svc.cluster.local"
BIG = [svc("big", "testns", None, [HTTP]),
       slice_("big-a", "testns", "big", [ep(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(80)], [HTTP])]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsProcess]:
    dp = start_dns(tmp_path_factory.mktemp("dns"), OBJECTS + BIG, "--transfer-to", "127.0.0.1/32")
    yield dp
    assert dp.stop() == 0, dp.logs()
    assert "Traceback" not in dp.logs(), dp.logs()


def test_tcp_pipelined_queries_on_one_connection(server: DnsProcess) -> None:
    names = [f"svc1.{T}", f"nope.{T}", f"hdls1.{T}", f"svc6.{T}", f"big.{T}"]
    msgs = [build(n, "AAAA" if n.startswith("svc6") else "A", qid=100 + i) for i, n in enumerate(names)]
    replies = {dnslib.DNSRecord.parse(r).header.id: dnslib.DNSRecord.parse(r) for r in tcp_exchange(server.port, msgs)}
    assert sorted(replies) == [100, 101, 102, 103, 104]
    assert rcode(replies[101]) == "NXDOMAIN"
    assert answers(replies[100]) == [f"svc1.{T}. 5 IN A 10.0.0.1"]
    assert len(replies[104].rr) == 80  # no truncation over TCP


def test_udp_truncation_and_edns(server: DnsProcess) -> None:
    plain = udp(server.port, f"big.{T}", "A")
    assert plain.header.tc == 1 and 0 < len(plain.rr) < 80
    assert len(udp_raw(server.port, build(f"big.{T}", "A"))) <= 512
    edns = udp(server.port, f"big.{T}", "A", bufsize=4096)
    assert edns.header.tc == 0 and len(edns.rr) == 80
    opt = [x for x in edns.ar if x.rtype == 41]
    assert len(opt) == 1 and opt[0].rclass == 4096  # OPT echoed with the client's size
    small = udp(server.port, f"big.{T}", "A", bufsize=1232)
    assert small.header.tc == 1 and len(udp_raw(server.port, build(f"big.{T}", "A", 1232))) <= 1232
    # dig retries over TCP on TC=1 and then gets everything
    assert len(dig(server.port, "+noedns", "+short", f"big.{T}").split()) == 80


def test_axfr_and_ixfr(server: DnsProcess) -> None:
    out = dig(server.port, "AXFR", "cluster.local")
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith(";")]
    assert lines[0].split()[3] == "SOA" and lines[-1].split()[3] == "SOA"
    text = "\n".join(lines)
    assert f"_http._tcp.svc1.{T}." in text and f"external.{T}." in text and "dup-name.hdls1" in text
    serial = int(lines[0].split()[6])
    # IXFR at the current serial: just the SOA
    ixfr = dig(server.port, f"IXFR={serial}", "cluster.local")
    assert len([ln for ln in ixfr.splitlines() if ln and not ln.startswith(";")]) == 1


def test_axfr_refused_over_udp_and_for_other_clients(server: DnsProcess) -> None:
    assert rcode(dnslib.DNSRecord.parse(udp_raw(server.port, build("cluster.local", "AXFR")))) == "REFUSED"
    (reply,) = tcp_exchange(server.port, [build("cluster.local", "AXFR")], src="127.0.0.2")
    assert rcode(dnslib.DNSRecord.parse(reply)) == "REFUSED"


def test_slow_tcp_clients_do_not_block_others(server: DnsProcess) -> None:
    stalled = []
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"\x00")  # half a length prefix, then silence
            stalled.append(s)
        hog = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        q = build(f"big.{T}", "A")
        hog.sendall((struct.pack("!H", len(q)) + q) * 300)  # and never reads a reply
        stalled.append(hog)
        # every one of these has a client timeout of a few seconds: a blocked server fails them
        for _ in range(20):
            assert answers(udp(server.port, f"svc1.{T}")) == [f"svc1.{T}. 5 IN A 10.0.0.1"]
            (r,) = tcp_exchange(server.port, [build(f"svc1.{T}")])
            assert rcode(dnslib.DNSRecord.parse(r)) == "NOERROR"
    finally:
        for s in stalled:
            s.close()


def _still_correct(port: int) -> None:
    assert answers(udp(port, f"svc1.{T}")) == [f"svc1.{T}. 5 IN A 10.0.0.1"]
    assert rcode(udp(port, f"nope.{T}")) == "NXDOMAIN"
    (r,) = tcp_exchange(port, [build(f"hdls1.{T}")])
    assert len(dnslib.DNSRecord.parse(r).rr) == 3


def test_fuzz_mutated_real_queries(server: DnsProcess) -> None:
    """Thousands of broken packets derived from real queries, then correct answers."""
    rnd = random.Random(1234)
    seeds = [build(f"svc1.{T}"), build(f"_http._tcp.hdls1.{T}", "SRV", 1232), build("cluster.local", "AXFR"),
             build("example.com", "A"), build(f"big.{T}", "A", 4096)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for i in range(4000):
            pkt = bytearray(rnd.choice(seeds))
            op = rnd.randrange(5)
            if op == 0:
                pkt = pkt[:rnd.randrange(len(pkt))]
            elif op == 1:
                for _ in range(rnd.randrange(1, 6)):
                    pkt[rnd.randrange(len(pkt))] = rnd.randrange(256)
            elif op == 2:
                pkt += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 40)))
            elif op == 3:  # a compression pointer somewhere, often a loop
                at = rnd.randrange(12, len(pkt))
                pkt[at:at + 2] = bytes([0xC0, rnd.choice([12, at, at + 1, 255])])
            else:  # header counts lie
                struct.pack_into("!4H", pkt, 4, *(rnd.randrange(4) for _ in range(4)))
            try:
                s.sendto(bytes(pkt), ("127.0.0.1", server.port))
            except BlockingIOError:
                pass
            if i % 200 == 0:  # drain replies so our socket buffer does not fill
                try:
                    while True:
                        s.recv(65535)
                except BlockingIOError:
                    pass
    # some of the same over TCP, one connection each
    for i in range(200):
        pkt = bytearray(rnd.choice(seeds))
        pkt[rnd.randrange(len(pkt))] = rnd.randrange(256)
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as c:
                c.sendall(struct.pack("!H", len(pkt) + rnd.choice([0, 0, 5])) + bytes(pkt))
                c.shutdown(socket.SHUT_WR)
                c.recv(65535)
        except OSError:
            pass
    assert server.proc.poll() is None
    _still_correct(server.port)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.binary(min_size=0, max_size=300))
def test_fuzz_random_packets(fuzz_server: DnsProcess, data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, ("127.0.0.1", fuzz_server.port))


@pytest.fixture(scope="module")
def fuzz_server(server: DnsProcess) -> Iterator[DnsProcess]:
    yield server
    assert server.proc.poll() is None, server.logs()
    _still_correct(server.port)
    assert "Traceback" not in server.logs()
