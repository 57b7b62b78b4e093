"""Wire format: strict query parsing, EDNS, truncation, and golden query->reply bytes."""

from __future__ import annotations

import struct

import dnslib
import pytest

from svcnet.dns import wire

from .harness import HTTP, ask, ep, listener, make_handler, ns, slice_, svc


def q(name: str = "svc1.testns.svc.cluster.local", qtype: str = "A") -> bytes:
    return bytes(dnslib.DNSRecord.question(name, qtype).pack())


# -- parsing -----------------------------------------------------------------------


def test_parse_plain_query() -> None:
    pq = wire.parse_query(q("SVC1.testns.svc.cluster.local", "SRV"))
    assert pq.qtype == wire.SRV and pq.qclass == wire.IN and pq.edns is None
    assert pq.qname == wire.name_to_wire("SVC1.testns.svc.cluster.local")
    assert pq.lname == wire.name_to_wire("svc1.testns.svc.cluster.local")


@pytest.mark.parametrize("data", [b"", b"\x00" * 11], ids=["empty", "short-header"])
def test_short_packets_are_dropped(data: bytes) -> None:
    with pytest.raises(wire.DropError):
        wire.parse_query(data)


def test_responses_are_dropped() -> None:
    data = bytearray(q())
    data[2] |= 0x80
    with pytest.raises(wire.DropError):
        wire.parse_query(bytes(data))


def _header(qd: int = 1, an: int = 0, ns_: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", 7, 0x0100, qd, an, ns_, ar)


@pytest.mark.parametrize("body,why", [
    (_header(qd=0), "no question"),
    (_header(qd=2) + b"\x00\x00\x01\x00\x01" * 2, "two questions"),
    (_header() + b"\xc0\x0c\x00\x01\x00\x01", "pointer to itself"),
    (_header() + b"\x01a\xc0\x0e\x00\x01\x00\x01", "pointer forward (loop)"),
    (_header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "label over 63"),
    (_header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", "name over 255"),
    (_header() + b"\x05ab", "label past the end"),
    (_header() + b"\x01a\x00\x00", "question past the end"),
    (_header() + b"\x81a\x00\x00\x01\x00\x01", "reserved label type"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_malformed_queries_raise_formerr(body: bytes, why: str) -> None:
    with pytest.raises(wire.FormError):
        wire.parse_query(body)


def test_compression_loop_in_additional_is_formerr_with_question() -> None:
    base = q()
    at = len(base)  # the additional record's owner name points at itself: a loop
    data = base[:10] + b"\x00\x01" + base[12:] + bytes([0xC0 | (at >> 8), at & 0xFF])
    with pytest.raises(wire.FormError) as e:
        wire.parse_query(data)
    assert wire.query_of(e.value) is not None


def test_edns_is_read() -> None:
    r = dnslib.DNSRecord.question("a.b", "A")
    r.add_ar(dnslib.EDNS0(udp_len=4096, flags="do"))
    pq = wire.parse_query(bytes(r.pack()))
    assert pq.edns == wire.Edns(4096, True, 0)


def test_name_round_trip_with_binary_labels() -> None:
    name = wire.labels_to_wire([b"a.b", b"\x00\xff", b"c"])
    assert wire.wire_labels(name) == [b"a.b", b"\x00\xff", b"c"]
    assert wire.wire_to_text(name) == "a\\.b.\\000\\255.c."


def test_is_subdomain_respects_label_boundaries() -> None:
    zone = wire.name_to_wire("cluster.local")
    assert wire.is_subdomain(wire.name_to_wire("a.cluster.local"), zone)
    assert wire.is_subdomain(zone, zone)
    assert not wire.is_subdomain(wire.name_to_wire("xcluster.local"), zone)


# -- replies -------------------------------------------------------------------------


async def test_formerr_reply_for_garbage_after_header() -> None:
    h = make_handler()
    data = _header(qd=2) + b"\x00\x00\x01\x00\x01" * 2
    (reply,) = await h.handle(data, listener(h), "10.0.0.1")
    r = dnslib.DNSRecord.parse(reply)
    assert r.header.id == 7 and r.header.rcode == wire.FORMERR and r.header.qr == 1


async def test_notimp_for_other_opcodes() -> None:
    h = make_handler()
    data = bytearray(q())
    data[2] |= 2 << 3  # opcode STATUS
    (reply,) = await h.handle(bytes(data), listener(h), "10.0.0.1")
    assert dnslib.DNSRecord.parse(reply).header.rcode == wire.NOTIMP


async def test_badvers_for_edns_version_1() -> None:
    h = make_handler()
    r = dnslib.DNSRecord.question("svc1.testns.svc.cluster.local", "A")
    r.add_ar(dnslib.EDNS0(udp_len=1232, version=1))
    (reply,) = await h.handle(bytes(r.pack()), listener(h), "10.0.0.1")
    parsed = wire.parse_message(reply)
    assert parsed.rcode == wire.BADVERS and parsed.edns is not None


async def test_opt_is_echoed_with_the_clients_size() -> None:
    h = make_handler()
    r = await ask(h, "svc1.testns.svc.cluster.local", "A", bufsize=1400)
    opt = [x for x in r.ar if x.rtype == dnslib.QTYPE.OPT]
    assert len(opt) == 1 and opt[0].rclass == 1400
    r = await ask(h, "svc1.testns.svc.cluster.local", "A")
    assert not [x for x in r.ar if x.rtype == dnslib.QTYPE.OPT]


def _big_headless(n: int = 60) -> list[dict]:
    return [ns("testns"), svc("big", "testns", None, [HTTP]),
            slice_("big-a", "testns", "big", [ep(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(n)], [HTTP])]


@pytest.mark.parametrize("bufsize,proto,expect_tc", [
    (None, "udp", True), (300, "udp", True), (4096, "udp", False), (None, "tcp", False)])
async def test_truncation_fits_the_buffer(bufsize: int | None, proto: str, expect_tc: bool) -> None:
    h = make_handler(_big_headless())
    qmsg = dnslib.DNSRecord.question("big.testns.svc.cluster.local", "A")
    if bufsize:
        qmsg.add_ar(dnslib.EDNS0(udp_len=bufsize))
    (reply,) = await h.handle(bytes(qmsg.pack()), listener(h, proto), "10.0.0.1")
    limit = 65535 if proto == "tcp" else max(bufsize or 512, 512)
    assert len(reply) <= limit
    r = dnslib.DNSRecord.parse(reply)
    assert bool(r.header.tc) == expect_tc
    if expect_tc:
        assert 0 < len(r.rr) < 60  # as many as fit, never an empty useless reply
    else:
        assert len(r.rr) == 60
    if bufsize:
        assert [x for x in r.ar if x.rtype == dnslib.QTYPE.OPT], "the OPT survives truncation"


def test_encode_compresses_names() -> None:
    name = wire.name_to_wire("svc1.testns.svc.cluster.local")
    rrs = [wire.rr_a(name, 5, f"10.0.0.{i}") for i in range(1, 4)]
    data = wire.encode(1, wire.QR, 0, (name, wire.A, wire.IN), rrs)
    assert data.count(b"\x04svc1") == 1
    assert len(dnslib.DNSRecord.parse(data).rr) == 3


# -- golden query -> reply bytes (ExaBGP qa/encoding style) ---------------------------

async def test_golden_a_reply() -> None:
    """The exact bytes of a cluster A answer: header, question, one compressed A record."""
    h = make_handler()
    query = (struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + wire.name_to_wire("svc1.testns.svc.cluster.local")
             + struct.pack("!HH", 1, 1))
    (reply,) = await h.handle(query, listener(h), "10.0.0.1")
    expected = (struct.pack("!6H", 0x1234, 0x8500, 1, 1, 0, 0)  # QR AA RD (no RA, as CoreDNS), 1 answer
                + query[12:]                                      # the question as asked
                + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + bytes([10, 0, 0, 1]))
    assert reply == expected


async def test_golden_nxdomain_reply() -> None:
    h = make_handler()
    qname = wire.name_to_wire("nope.testns.svc.cluster.local")
    query = struct.pack("!6H", 0xBEEF, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    (reply,) = await h.handle(query, listener(h), "10.0.0.1")
    zone_off = 12 + 5 + 7 + 4  # "nope" "testns" "svc" -> the zone suffix inside the question
    soa_rdata = (b"\x02ns\x03dns" + bytes([0xC0, zone_off]) + b"\x0ahostmaster" + bytes([0xC0, zone_off])
                 + struct.pack("!IIIII", 1_700_000_000, 7200, 1800, 86400, 5))
    expected = (struct.pack("!6H", 0xBEEF, 0x8503, 1, 0, 1, 0) + query[12:]
                + bytes([0xC0, zone_off]) + struct.pack("!HHIH", 6, 1, 5, len(soa_rdata)) + soa_rdata)
    assert reply == expected


async def test_cached_reply_is_patched_with_the_new_id() -> None:
    h = make_handler()
    query = q()
    (first,) = await h.handle(query, listener(h), "10.0.0.1")
    cached, _ = h.udp_cache[query[2:]]
    again = b"\xab\xcd" + query[2:]
    assert b"\xab\xcd" + cached == b"\xab\xcd" + first[2:]
    (second,) = await h.handle(again, listener(h), "10.0.0.1")
    assert second == b"\xab\xcd" + first[2:]


async def test_handle_now_answers_cluster_names_and_defers_upstream_work() -> None:
    h = make_handler()
    assert h.handle_now(q("svc1.testns.svc.cluster.local"), listener(h), "10.0.0.1")
    assert h.handle_now(q("www.example.test"), listener(h), "10.0.0.1") is None  # needs the forwarder
    assert h.handle_now(b"\x00", listener(h), "10.0.0.1") == []  # dropped, nothing to wait for
