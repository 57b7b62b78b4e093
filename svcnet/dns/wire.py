"""DNS wire format: just the parts svcnet needs, written for the hot path.

Why not dnslib for everything: parsing and building every reply with dnslib costs
~130 us per query (3k-7k QPS, see reference/perf-floors.md). svcnet instead builds a
reply once, keeps its bytes, and answers repeats by patching the 2-byte ID. This module
holds the pieces that make those bytes:

* names travel as uncompressed wire bytes (`b"\\x03svc\\x05local\\x00"`), so any label,
  even binary ones from upstream, round-trips; `.lower()` on bytes is exactly DNS's
  ASCII-only case folding;
* `RR` is a resource record whose rdata is `pre + names + post`, so names inside rdata
  (CNAME, NS, PTR, SOA, MX, SRV) can be decompressed on input and compressed on output;
* `encode()` writes a message with name compression and fits it to the client's buffer
  the way miekg/dns `Truncate` (CoreDNS's library) does: records in order, answer then
  authority then additional, stop at the first one that does not fit, TC=1 if any
  was left out; the OPT record is always kept;
* `parse_query()` reads a query strictly: bad packets raise `FormError` (answer FORMERR)
  or `DropError` (no answer), compression loops and over-long names included;
* `parse_message()` reads a full reply (from an upstream) into RRs.

Case: names are written exactly as given (compression is case-sensitive), so the
caller decides where the query's spelling is echoed (see `handler.py`).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

# Types and classes
A, NS, CNAME, SOA, PTR, HINFO, MX, TXT, AAAA, SRV, OPT = 1, 2, 5, 6, 12, 13, 15, 16, 28, 33, 41
IXFR, AXFR, ANY = 251, 252, 255
IN = 1
TYPE_NAMES = {A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", PTR: "PTR", HINFO: "HINFO", MX: "MX",
              TXT: "TXT", AAAA: "AAAA", SRV: "SRV", OPT: "OPT", IXFR: "IXFR", AXFR: "AXFR", ANY: "ANY",
              43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 65: "HTTPS", 64: "SVCB", 257: "CAA"}

# Response codes (BADVERS is an extended rcode carried partly in OPT)
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
RCODE_NAMES = {NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN",
               NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS"}

# Header flag bits
QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010

MAX_NAME = 255
MIN_UDP = 512
MAX_TCP = 65535

ROOT = b"\x00"


class WireError(ValueError):
    """A packet svcnet cannot read."""


class FormError(WireError):
    """A query we can parse far enough to answer FORMERR."""


class DropError(WireError):
    """A packet that gets no answer at all (too short, or a response)."""


# -- names -----------------------------------------------------------------------


def name_to_wire(text: str) -> bytes:
    """`svc.ns.svc.cluster.local` (trailing dot optional, "" or "." = root) to wire bytes."""
    text = text.rstrip(".")
    if not text:
        return ROOT
    out = bytearray()
    for label in text.split("."):
        raw = label.encode("latin-1")
        if not 0 < len(raw) < 64:
            raise WireError(f"bad label {label!r} in {text!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise WireError(f"name {text!r} longer than 255 bytes")
    return bytes(out)


def wire_labels(name: bytes) -> list[bytes]:
    """The labels of an uncompressed wire name, left to right."""
    labels, i = [], 0
    while name[i]:
        n = name[i]
        labels.append(name[i + 1:i + 1 + n])
        i += 1 + n
    return labels


def wire_to_text(name: bytes) -> str:
    """Presentation form with a trailing dot (non-printable bytes as \\DDD)."""
    labels = wire_labels(name)
    if not labels:
        return "."
    parts = []
    for label in labels:
        s = []
        for b in label:
            c = chr(b)
            if c in ".\\\"();@$ " :
                s.append("\\" + c)
            elif 33 <= b < 127:
                s.append(c)
            else:
                s.append("\\%03d" % b)
        parts.append("".join(s))
    return ".".join(parts) + "."


def labels_to_wire(labels: list[bytes] | tuple[bytes, ...]) -> bytes:
    out = bytearray()
    for label in labels:
        out.append(len(label))
        out += label
    out.append(0)
    return bytes(out)


def is_subdomain(name: bytes, zone: bytes) -> bool:
    """Whether `name` equals or is below `zone` (both lower-case wire names)."""
    if zone == ROOT:
        return True
    if not name.endswith(zone):
        return False
    if len(name) == len(zone):
        return True
    # the suffix must start at a label boundary
    i = 0
    cut = len(name) - len(zone)
    while i < cut:
        i += 1 + name[i]
    return i == cut


# -- records ---------------------------------------------------------------------


@dataclass(frozen=True)
class RR:
    """A resource record; rdata = pre + names (compressible domain names) + post."""

    name: bytes
    rtype: int
    ttl: int
    pre: bytes = b""
    names: tuple[bytes, ...] = ()
    post: bytes = b""
    rclass: int = IN

    def with_ttl(self, ttl: int) -> "RR":
        return RR(self.name, self.rtype, ttl, self.pre, self.names, self.post, self.rclass)

    def with_name(self, name: bytes) -> "RR":
        return RR(name, self.rtype, self.ttl, self.pre, self.names, self.post, self.rclass)

    @property
    def target(self) -> bytes:
        """The (first) domain name in the rdata, for CNAME/NS/PTR/SRV/MX."""
        return self.names[0] if self.names else b""

    def address(self) -> str:
        return str(ipaddress.ip_address(self.post)) if self.rtype in (A, AAAA) else ""


def rr_a(name: bytes, ttl: int, ip: str) -> RR:
    addr = ipaddress.ip_address(ip)
    return RR(name, A if addr.version == 4 else AAAA, ttl, post=addr.packed)


def rr_cname(name: bytes, ttl: int, target: bytes) -> RR:
    return RR(name, CNAME, ttl, names=(target,))


def rr_ptr(name: bytes, ttl: int, target: bytes) -> RR:
    return RR(name, PTR, ttl, names=(target,))


def rr_ns(name: bytes, ttl: int, target: bytes) -> RR:
    return RR(name, NS, ttl, names=(target,))


def rr_srv(name: bytes, ttl: int, priority: int, weight: int, port: int, target: bytes) -> RR:
    return RR(name, SRV, ttl, pre=struct.pack("!HHH", priority, weight, port & 0xFFFF), names=(target,))


def rr_soa(name: bytes, ttl: int, mname: bytes, rname: bytes, serial: int, refresh: int,
           retry: int, expire: int, minimum: int) -> RR:
    return RR(name, SOA, ttl, names=(mname, rname),
              post=struct.pack("!IIIII", serial & 0xFFFFFFFF, refresh, retry, expire, minimum))


def rr_txt(name: bytes, ttl: int, *strings: str) -> RR:
    data = b"".join(bytes([len(s.encode())]) + s.encode() for s in strings)
    return RR(name, TXT, ttl, post=data)


def rr_hinfo(name: bytes, ttl: int, cpu: str, os_: str) -> RR:
    return RR(name, HINFO, ttl, post=bytes([len(cpu)]) + cpu.encode() + bytes([len(os_)]) + os_.encode())


def soa_serial(rr: RR) -> int:
    return int(struct.unpack_from("!I", rr.post, 0)[0])


def soa_minimum(rr: RR) -> int:
    return int(struct.unpack_from("!I", rr.post, 16)[0])


# rdata layouts whose domain names we decompress: type -> (fixed prefix length, names)
_NAME_RDATA = {NS: (0, 1), CNAME: (0, 1), PTR: (0, 1), 39: (0, 1), MX: (2, 1), SRV: (6, 1), SOA: (0, 2)}
# RFC 3597 section 4: only these well-known types may be compressed on output.
_COMPRESS_RDATA = {NS, CNAME, PTR, SOA, MX}


# -- messages --------------------------------------------------------------------


@dataclass(frozen=True)
class Edns:
    udp_size: int  # as the client wrote it
    do: bool = False
    version: int = 0

    @property
    def limit(self) -> int:
        return max(self.udp_size, MIN_UDP)


@dataclass
class Query:
    """A parsed query. `qname` keeps the client's spelling; `key` is lower-case."""

    id: int
    flags: int
    qname: bytes
    qtype: int
    qclass: int
    edns: Edns | None
    question_end: int
    lname: bytes = b""
    ixfr_serial: int | None = None
    opt_count: int = 0

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


@dataclass
class Message:
    """A full message as read from an upstream."""

    id: int
    flags: int
    rcode: int
    question: list[tuple[bytes, int, int]] = field(default_factory=list)
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    edns: Edns | None = None


def _read_name(data: bytes, off: int) -> tuple[bytes, int]:
    """Read a possibly compressed name; returns (uncompressed wire name, offset after it).

    Pointers must point strictly backwards, which rules out loops; the name is capped
    at 255 bytes and labels at 63, as RFC 1035 demands.
    """
    out = bytearray()
    end = -1
    limit = off  # a pointer must go before the start of the part it continues
    n = len(data)
    while True:
        if off >= n:
            raise FormError("name runs past the end of the packet")
        length = data[off]
        if length == 0:
            out.append(0)
            off += 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if off + 1 >= n:
                raise FormError("truncated compression pointer")
            ptr = ((length & 0x3F) << 8) | data[off + 1]
            if ptr >= limit:
                raise FormError("compression pointer does not point backwards (loop)")
            if end < 0:
                end = off + 2
            limit = ptr
            off = ptr
            continue
        if kind:
            raise FormError("unsupported label type")
        if off + 1 + length > n:
            raise FormError("label runs past the end of the packet")
        out += data[off:off + 1 + length]
        off += 1 + length
        if len(out) + 1 > MAX_NAME:
            raise FormError("name longer than 255 bytes")
    return bytes(out), (end if end >= 0 else off)


def _read_rr(data: bytes, off: int) -> tuple[RR, int]:
    name, off = _read_name(data, off)
    if off + 10 > len(data):
        raise FormError("record header runs past the end")
    rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, off)
    off += 10
    end = off + rdlen
    if end > len(data):
        raise FormError("rdata runs past the end")
    layout = _NAME_RDATA.get(rtype)
    if layout is None or rtype == OPT:
        return RR(name, rtype, ttl, post=data[off:end], rclass=rclass), end
    fixed, count = layout
    pre = data[off:off + fixed]
    p = off + fixed
    names = []
    for _ in range(count):
        nm, p = _read_name(data, p)
        names.append(nm)
    if p > end:
        raise FormError("rdata names run past rdlength")
    return RR(name, rtype, ttl, pre, tuple(names), data[p:end], rclass), end


def parse_query(data: bytes) -> Query:
    """Read a query. Raises DropError (send nothing) or FormError (send FORMERR)."""
    if len(data) < 12:
        raise DropError("shorter than a DNS header")
    qid, flags, qd, an, ns, ar = struct.unpack_from("!6H", data, 0)
    if flags & QR:
        raise DropError("a response, not a query")
    if qd != 1:
        raise FormError(f"{qd} questions")
    qname, off = _read_name(data, 12)
    if off + 4 > len(data):
        raise FormError("question runs past the end")
    qtype, qclass = struct.unpack_from("!HH", data, off)
    off += 4
    q = Query(qid, flags, qname, qtype, qclass, None, off, qname.lower())
    try:
        for i in range(an + ns + ar):
            rr, off = _read_rr(data, off)
            if i >= an + ns and rr.rtype == OPT:
                q.opt_count += 1
                if rr.name != ROOT:
                    raise FormError("OPT record not at the root")
                q.edns = Edns(rr.rclass, bool(rr.ttl & 0x8000), (rr.ttl >> 16) & 0xFF)
            elif an <= i < an + ns and rr.rtype == SOA and qtype == IXFR:
                q.ixfr_serial = soa_serial(rr)
    except FormError:
        # A broken record after an intact question: answer FORMERR but echo the
        # question, as CoreDNS's server does for unparseable trailing sections.
        q.edns = None
        raise _QueryFormError(q) from None
    if q.opt_count > 1:
        raise _QueryFormError(q)
    return q


class _QueryFormError(FormError):
    def __init__(self, query: Query) -> None:
        super().__init__("malformed records after the question")
        self.query = query


def query_of(err: FormError) -> Query | None:
    """The partly parsed query behind a FormError, when the question was readable."""
    return err.query if isinstance(err, _QueryFormError) else None


def parse_message(data: bytes) -> Message:
    """Read a full message (an upstream reply). Raises FormError on malformed input."""
    if len(data) < 12:
        raise FormError("shorter than a DNS header")
    qid, flags, qd, an, ns, ar = struct.unpack_from("!6H", data, 0)
    msg = Message(qid, flags, flags & 0xF)
    off = 12
    for _ in range(qd):
        name, off = _read_name(data, off)
        if off + 4 > len(data):
            raise FormError("question runs past the end")
        qtype, qclass = struct.unpack_from("!HH", data, off)
        off += 4
        msg.question.append((name, qtype, qclass))
    for section, count in ((msg.answer, an), (msg.authority, ns), (msg.additional, ar)):
        for _ in range(count):
            rr, off = _read_rr(data, off)
            if rr.rtype == OPT:
                msg.edns = Edns(rr.rclass, bool(rr.ttl & 0x8000), (rr.ttl >> 16) & 0xFF)
                msg.rcode |= ((rr.ttl >> 24) & 0xFF) << 4
                continue
            section.append(rr)
    return msg


class _Writer:
    """A message under construction with a case-sensitive compression table."""

    __slots__ = ("buf", "table")

    def __init__(self, header: bytes) -> None:
        self.buf = bytearray(header)
        self.table: dict[bytes, int] = {}

    def name(self, name: bytes, compress: bool = True) -> None:
        buf, table = self.buf, self.table
        i = 0
        while name[i]:
            suffix = name[i:]
            if compress:
                ptr = table.get(suffix)
                if ptr is not None:
                    buf += (0xC000 | ptr).to_bytes(2, "big")
                    return
            if len(buf) < 0x3FFF:
                table.setdefault(suffix, len(buf))
            n = name[i]
            buf += name[i:i + 1 + n]
            i += 1 + n
        buf.append(0)

    def rr(self, rr: RR) -> None:
        buf = self.buf
        self.name(rr.name)
        buf += struct.pack("!HHIH", rr.rtype, rr.rclass, rr.ttl & 0xFFFFFFFF, 0)
        start = len(buf)
        buf += rr.pre
        compress = rr.rtype in _COMPRESS_RDATA
        for nm in rr.names:
            self.name(nm, compress)
        buf += rr.post
        rdlen = len(buf) - start
        buf[start - 2:start] = rdlen.to_bytes(2, "big")


def opt_bytes(edns: Edns, rcode: int = 0) -> bytes:
    ttl = ((rcode >> 4) & 0xFF) << 24 | (0x8000 if edns.do else 0)
    return b"\x00" + struct.pack("!HHIH", OPT, edns.udp_size, ttl, 0)


def encode(qid: int, flags: int, rcode: int, question: tuple[bytes, int, int] | None,
           answer: list[RR] | tuple[RR, ...] = (), authority: list[RR] | tuple[RR, ...] = (),
           additional: list[RR] | tuple[RR, ...] = (), edns: Edns | None = None,
           max_size: int = MAX_TCP) -> bytes:
    """Write a message that fits `max_size`; TC=1 when records had to be left out.

    `flags` are the header bits other than the rcode (QR, AA, RD, RA, ...).
    """
    opt = opt_bytes(edns, rcode) if edns is not None else b""
    budget = max_size - len(opt)
    w = _Writer(b"\x00" * 12)
    if question is not None:
        w.name(question[0])
        w.buf += struct.pack("!HH", question[1], question[2])
    counts = [0, 0, 0]
    full = False
    for si, section in enumerate((answer, authority, additional)):
        for rr in section:
            if full:
                break
            mark = len(w.buf)
            w.rr(rr)
            if len(w.buf) > budget:
                del w.buf[mark:]
                full = True
                break
            counts[si] += 1
    truncated = full
    w.buf += opt
    if truncated:
        flags |= TC
    struct.pack_into("!6H", w.buf, 0, qid, (flags & ~0xF) | (rcode & 0xF),
                     1 if question is not None else 0, counts[0], counts[1], counts[2] + (1 if opt else 0))
    return bytes(w.buf)


def reply_flags(query_flags: int, authoritative: bool = False, recursion_available: bool = False) -> int:
    """Header bits of a reply: QR, the query's opcode, RD and CD copied, AA and RA as asked.

    RA is off by default: CoreDNS's own answers (miekg SetReply) do not set it, only
    forwarded replies carry the upstream's RA."""
    flags = QR | (query_flags & (0x7800 | RD | CD))
    if authoritative:
        flags |= AA
    if recursion_available:
        flags |= RA
    return flags


def simple_reply(q: Query, rcode: int, edns_ok: bool = True) -> bytes:
    """An empty reply with just the question: FORMERR, SERVFAIL, REFUSED, NOTIMP, BADVERS."""
    edns = q.edns if edns_ok else None
    if rcode == BADVERS and edns is not None:
        edns = Edns(edns.udp_size, edns.do, 0)
    return encode(q.id, reply_flags(q.flags), rcode, (q.qname, q.qtype, q.qclass), edns=edns,
                  max_size=edns.limit if edns else MIN_UDP)


def formerr_for(data: bytes) -> bytes | None:
    """FORMERR for a packet whose question could not be read (header only), or None."""
    if len(data) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", data, 0)
    if flags & QR:
        return None
    return struct.pack("!6H", qid, reply_flags(flags) | FORMERR, 0, 0, 0, 0)
