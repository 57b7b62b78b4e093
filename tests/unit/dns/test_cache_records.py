"""Forward cache rules, record conversion, zone expansion and AXFR content."""

from __future__ import annotations

import pytest

from svcnet.dns import wire
from svcnet.dns.cache import ForwardCache
from svcnet.dns.records import EndpointAddress, RecordError, endpoint_hostname, service_record, slice_record
from svcnet.dns.transfer import transfer_records
from svcnet.dns.wire import Message
from svcnet.dns.zone import expand_zone

from .harness import HTTP, ep, make_handler, slice_, svc

NAME = wire.name_to_wire("example.com")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(ttl: int) -> Message:
    return Message(1, wire.QR | wire.RD | wire.RA, 0, [(NAME, 1, 1)], [wire.rr_a(NAME, ttl, "192.0.2.1")])


def negative(rcode: int, soa_ttl: int, minimum: int) -> Message:
    soa = wire.rr_soa(wire.name_to_wire("com"), soa_ttl, NAME, NAME, 1, 1, 1, 1, minimum)
    return Message(1, wire.QR, rcode, [(NAME, 1, 1)], [], [soa])


def test_positive_ttl_is_honoured_and_aged() -> None:
    clock = Clock()
    c = ForwardCache(clock=clock)
    key = (NAME, 1, 1, False, False)
    assert c.put(key, answer(300)) == 300
    clock.now += 100
    hit = c.get(key)
    assert hit is not None and hit[0].answer[0].ttl == 200 and hit[1] is False
    clock.now += 200
    assert c.get(key) is None


def test_positive_cap_3600() -> None:
    assert ForwardCache().put((NAME, 1, 1, False, False), answer(86400)) == 3600


@pytest.mark.parametrize("rcode", [wire.NXDOMAIN, wire.NOERROR])
def test_negative_uses_soa_minimum_capped_1800(rcode: int) -> None:
    c = ForwardCache()
    assert c.put((NAME, 1, 1, False, False), negative(rcode, 3600, 900)) == 900
    assert c.put((NAME, 2, 1, False, False), negative(rcode, 60, 900)) == 60
    assert c.put((NAME, 3, 1, False, False), negative(rcode, 86400, 86400)) == 1800


def test_not_cached() -> None:
    c = ForwardCache()
    assert c.put((NAME, 1, 1, False, False), answer(0)) == 0
    assert c.put((NAME, 1, 1, False, False), Message(1, wire.QR, wire.SERVFAIL)) == 0
    assert c.put((NAME, 1, 1, False, False), Message(1, wire.QR, wire.NXDOMAIN)) == 0  # no SOA
    tc = answer(60)
    tc.flags |= wire.TC
    assert c.put((NAME, 1, 1, False, False), tc) == 0


def test_capacity_evicts_oldest() -> None:
    c = ForwardCache(capacity=2)
    for i in range(3):
        c.put((NAME, i, 1, False, False), answer(60))
    assert len(c) == 2 and c.get((NAME, 0, 1, False, False)) is None


@pytest.mark.parametrize("ip,name", [
    ("172.0.0.2", "172-0-0-2"), ("5678:abcd::1", "5678-abcd--1"),
    ("2001:db8::6666:", "2001-db8--6666-0"), ("::1", "--1")])
def test_dashed_endpoint_names(ip: str, name: str) -> None:
    assert endpoint_hostname(EndpointAddress(ip, "", ""), False) == name


def test_pod_name_only_with_the_option() -> None:
    a = EndpointAddress("10.0.0.1", "", "web-0")
    assert endpoint_hostname(a, True) == "web-0"
    assert endpoint_hostname(a, False) == "10-0-0-1"
    assert endpoint_hostname(EndpointAddress("10.0.0.1", "h", "web-0"), True) == "h"


def test_slice_readiness_and_long_pod_names() -> None:
    rec = slice_record(slice_("s", "ns", "svc", [ep("10.0.0.1"), ep("10.0.0.2", ready=True),
                                                ep("10.0.0.3", ready=False), ep("10.0.0.4", pod="p" * 64)], [HTTP]))
    assert [a.ip for a in rec.addresses] == ["10.0.0.1", "10.0.0.2", "10.0.0.4"]
    assert rec.addresses[2].target_pod == ""


def test_bad_objects_say_what_is_wrong() -> None:
    bad = svc("x", "ns", ["10.0.0.1"], [HTTP])
    bad["spec"]["clusterIPs"] = ["not-an-ip"]
    with pytest.raises(RecordError, match="not-an-ip"):
        service_record(bad)
    with pytest.raises(RecordError, match="endpoint address"):
        slice_record(slice_("s", "ns", "svc", [ep("999.0.0.1")]))


def test_records_equal_when_dns_is_equal() -> None:
    a = svc("x", "ns", ["10.0.0.1"], [HTTP])
    b = svc("x", "ns", ["10.0.0.1"], [HTTP])
    b["metadata"]["labels"] = {"unrelated": "change"}
    assert service_record(a) == service_record(b)


def test_cidr_zones_expand_on_octet_and_nibble_boundaries() -> None:
    assert [z.name for z in expand_zone("10.96.0.0/12")][:2] == ["96.10.in-addr.arpa", "97.10.in-addr.arpa"]
    assert len(expand_zone("10.96.0.0/12")) == 16
    assert [z.name for z in expand_zone("10.0.0.0/24")] == ["0.0.10.in-addr.arpa"]
    assert [z.name for z in expand_zone("fd00::/16")] == ["0.0.d.f.ip6.arpa"]
    assert all(z.reverse for z in expand_zone("fd00::/16"))


def test_axfr_content_follows_coredns_order() -> None:
    h = make_handler()
    primary = h.zone.config.primary
    rrs = transfer_records(h.zone, primary)
    text = [(wire.wire_to_text(r.name), r.rtype) for r in rrs]
    assert text[0] == ("cluster.local.", wire.SOA) and text[-1] == ("cluster.local.", wire.SOA)
    assert ("cluster.local.", wire.NS) in text
    assert ("svc1.testns.svc.cluster.local.", wire.A) in text
    assert ("_http._tcp.svc1.testns.svc.cluster.local.", wire.SRV) in text
    assert ("dup-name.hdls1.testns.svc.cluster.local.", wire.A) in text
    assert ("external.testns.svc.cluster.local.", wire.CNAME) in text
    assert not any(n.startswith("extip.") for n, _ in text)
    names = [n for n, t in text if t == wire.A and n.count(".") == 5]
    assert names == sorted(names, key=lambda n: n.split(".")[0])  # services sorted by name
