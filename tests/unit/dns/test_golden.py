"""Wire-level golden cases, in the spirit of ExaBGP's qa/encoding: query bytes in,
exact reply bytes out, for the corner cases of RFC 2181 and the Kubernetes DNS spec
(SRV, PTR, headless, ExternalName CNAME, NODATA vs NXDOMAIN, truncation with TC).

Each case in golden/cases.txt holds the query, the reply, and the reply as dig-like
text (written by dnslib, an independent parser) so a reader sees what the bytes say.
After a deliberate change to the encoding, regenerate with

    SVCNET_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/unit/dns/test_golden.py

and review the text diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import dnslib
import pytest

from .harness import listener, make_handler

GOLDEN = Path(__file__).parent / "golden" / "cases.txt"

CASES = [  # (id, name, type, EDNS buffer size or None)
    ("a-clusterip", "svc1.testns.svc.cluster.local", "A", None),
    ("a-mixed-case", "SvC1.TestNS.svc.Cluster.Local", "A", None),
    ("aaaa-nodata", "svc1.testns.svc.cluster.local", "AAAA", None),
    ("nxdomain-search-path", "svc1.testns.svc.cluster.local.testns.svc.cluster.local", "A", None),
    ("srv-named-port", "_http._tcp.svc1.testns.svc.cluster.local", "SRV", None),
    ("srv-headless", "_http._tcp.hdls1.testns.svc.cluster.local", "SRV", 1232),
    ("a-headless", "hdls1.testns.svc.cluster.local", "A", None),
    ("ptr-clusterip", "1.0.0.10.in-addr.arpa", "PTR", None),
    ("ptr-endpoint", "2.0.0.172.in-addr.arpa", "PTR", None),
    ("cname-externalname-in-zone", "external-to-service.testns.svc.cluster.local", "A", None),
    ("cname-query", "external.testns.svc.cluster.local", "CNAME", None),
    ("txt-dns-version", "dns-version.cluster.local", "TXT", None),
    ("soa-apex", "cluster.local", "SOA", 4096),
    ("ns-apex", "cluster.local", "NS", None),
    ("truncated-udp-512", "big.testns.svc.cluster.local", "A", None),
]


def _objects() -> list[dict]:
    from .harness import HTTP, OBJECTS, ep, slice_, svc
    return OBJECTS + [svc("big", "testns", None, [HTTP]),
                      slice_("big-a", "testns", "big", [ep(f"10.1.0.{i}") for i in range(1, 61)], [HTTP])]


def _query(name: str, qtype: str, bufsize: int | None) -> bytes:
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.id = 0x2A2A
    if bufsize:
        q.add_ar(dnslib.EDNS0(udp_len=bufsize))
    return bytes(q.pack())


def _load() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    if not GOLDEN.exists():
        return out
    for block in GOLDEN.read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(";"))
        if "case" in fields:
            out[fields["case"]] = (fields["query"], fields["reply"])
    return out


async def _replies() -> dict[str, tuple[bytes, bytes]]:
    h = make_handler(_objects())
    out = {}
    for cid, name, qtype, bufsize in CASES:
        query = _query(name, qtype, bufsize)
        (reply,) = await h.handle(query, listener(h), "10.9.9.9")
        out[cid] = (query, reply)
    return out


async def test_golden_replies() -> None:
    got = await _replies()
    if os.environ.get("SVCNET_REGEN_GOLDEN"):
        blocks = []
        for cid, (query, reply) in got.items():
            text = "\n".join("; " + line for line in str(dnslib.DNSRecord.parse(reply)).splitlines())
            blocks.append(f"case: {cid}\nquery: {query.hex()}\nreply: {reply.hex()}\n{text}")
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text("\n\n".join(blocks) + "\n")
        pytest.skip("golden file regenerated; review the diff")
    golden = _load()
    assert sorted(golden) == sorted(got), "golden/cases.txt is missing cases: regenerate"
    for cid, (query, reply) in got.items():
        gq, gr = golden[cid]
        assert query.hex() == gq, cid
        assert reply.hex() == gr, f"{cid}:\n{dnslib.DNSRecord.parse(reply)}\n--- golden ---\n" \
                                  f"{dnslib.DNSRecord.parse(bytes.fromhex(gr))}"


def test_golden_truncated_case_really_is() -> None:
    golden = _load()
    reply = bytes.fromhex(golden["truncated-udp-512"][1])
    assert len(reply) <= 512 and dnslib.DNSRecord.parse(reply).header.tc == 1
