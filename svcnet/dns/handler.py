"""The query pipeline: from query bytes to reply bytes, in CoreDNS's plugin order.

    query ─ parse (FORMERR / drop) ─ opcode, EDNS version ─┬─ AXFR/IXFR ─ transfer
                                                           ├─ ANY ─ RFC 8482 HINFO
                                                           ├─ autopath (client pod's search list)
                                                           ├─ served zone ─ Zone.answer ─┬ NXDOMAIN / SERVFAIL (not synced)
                                                           │                              ├ fallthrough ─ forward
                                                           │                              └ CNAME chase ─ forward
                                                           └─ elsewhere ─ forward (+ cache)

Reply bytes that depend only on the query bytes (every cluster answer except those
that needed an upstream or autopath) are remembered in `udp_cache`/`tcp_cache`, keyed
by the query without its ID. The server's receive loops answer repeats from there
by prefixing the new ID: that is the hot path, no parsing at all. Both caches are
emptied by every DNS-visible change in the ClusterIndex, so an answer is never older
than the data (they are memoisation, not a TTL cache). The key includes the query's
flags, EDNS buffer size and name spelling, so each reply is exactly right for it.

Case: CoreDNS echoes the query's spelling in owner names and in the zone part of the
names it builds (SOA mname/rname, SRV targets, NS names); `_speller` does the same.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from svcnet.dns import wire
from svcnet.dns.forward import ForwardError, Forwarder
from svcnet.dns.metrics import Metrics, QueryStats
from svcnet.dns.transfer import transfer_records
from svcnet.dns.wire import RR, Query
from svcnet.dns.zone import Result, ServedZone, Zone

log = logging.getLogger(__name__)

ANY_TTL = 8482
RESPONSE_CACHE_LIMIT = 200_000
TRANSFER_CHUNK = 100  # records per AXFR message: well under 64 KiB even with long names


@dataclass
class Listener:
    """Where a query came in: labels for metrics and the stats of the answering thread."""

    server: str  # "dns://127.0.0.1:53"
    proto: str  # "udp" or "tcp"
    family: str  # "1" (IPv4) or "2" (IPv6), as CoreDNS labels it
    stats: QueryStats


@dataclass
class Outcome:
    """A reply before it is written."""

    rcode: int
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    aa: bool = False
    extra_flags: int = 0  # RA / AD / TC passed on from an upstream
    plugin: str = "kubernetes"
    cacheable: bool = True
    zone: ServedZone | None = None


class Handler:
    def __init__(self, zone: Zone, forwarder: Forwarder | None, metrics: Metrics, *,
                 autopath: bool = False, host_search: tuple[str, ...] = (),
                 transfer_to: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()) -> None:
        self.zone = zone
        self.index = zone.index
        self.forwarder = forwarder
        self.metrics = metrics
        self.autopath = autopath
        self.host_search = host_search
        self.transfer_to = transfer_to
        self.udp_cache: dict[bytes, tuple[bytes, int]] = {}
        self.tcp_cache: dict[bytes, tuple[bytes, int]] = {}
        # Which remembered replies to forget on a change. A positive answer for a name
        # under <svc>.<ns>.svc.<zone> depends on that Service and its EndpointSlices
        # only; every other reply (negative ones carry the SOA serial, which moves on
        # any change; PTR, NS, CNAME chains, pods) is forgotten on any change.
        self._by_service: dict[tuple[str, str], list[tuple[dict[bytes, tuple[bytes, int]], bytes]]] = {}
        self._any_change: list[tuple[dict[bytes, tuple[bytes, int]], bytes]] = []
        self.index.add_listener(self.flush)

    def flush(self, services: list[tuple[str, str]] | None = None) -> None:
        """Forget the replies a change may have made wrong (all of them for None)."""
        # Entries are removed in place: the UDP threads hold references to these dicts.
        if services is None:
            self.udp_cache.clear()
            self.tcp_cache.clear()
            self._by_service.clear()
            self._any_change.clear()
            return
        for cache, key in self._any_change:
            cache.pop(key, None)
        self._any_change.clear()
        for svc in services:
            for cache, key in self._by_service.pop(svc, ()):
                cache.pop(key, None)

    def _remember(self, cache: dict[bytes, tuple[bytes, int]], key: bytes, value: tuple[bytes, int],
                  q: Query, out: Outcome) -> None:
        if len(cache) >= RESPONSE_CACHE_LIMIT:
            self.flush(None)  # a flood of distinct spellings must not grow memory
        cache[key] = value
        owner = _owning_service(q.lname, out)
        if owner is None:
            self._any_change.append((cache, key))
        else:
            self._by_service.setdefault(owner, []).append((cache, key))

    # -- entry point -------------------------------------------------------------

    def handle_now(self, data: bytes, where: Listener, client_ip: str) -> list[bytes] | None:
        """Reply messages if they can be made without waiting (everything but forwarding,
        out-of-zone CNAME targets and autopath walks), else None: then await `handle()`.

        Most cache misses are cluster names; answering them here spares the event loop
        a Task per query."""
        start = time.perf_counter()
        data = bytes(data)
        q, early = self._begin(data, where, client_ip, start)
        if q is None:
            return early
        try:
            out = self._resolve_now(q, client_ip)
        except Exception:
            out = self._crashed(q)
        if out is None:
            return None
        return self._finish(data, q, out, where, start)

    async def handle(self, data: bytes, where: Listener, client_ip: str, now_tried: bool = False) -> list[bytes]:
        """Reply messages for one query (several for a zone transfer, none to drop it).

        `now_tried`: the caller already got None from `handle_now` for these bytes."""
        if not now_tried:
            replies = self.handle_now(data, where, client_ip)
            if replies is not None:
                return replies
        start = time.perf_counter()
        data = bytes(data)
        q = wire.parse_query(data)  # handle_now read it already: it parses
        try:
            out = await self._resolve(q, q.lname, client_ip)
        except Exception:
            out = self._crashed(q)
        return self._finish(data, q, out, where, start)

    def _begin(self, data: bytes, where: Listener, client_ip: str,
               start: float) -> tuple[Query | None, list[bytes]]:
        """Parse; the query, or (None, the replies) when it is answered without a lookup."""
        table = self.metrics.table
        try:
            q = wire.parse_query(data)
        except wire.DropError:
            return None, []
        except wire.FormError as e:
            pq = wire.query_of(e)
            reply = wire.simple_reply(pq, wire.FORMERR, edns_ok=False) if pq else wire.formerr_for(data)
            if reply is None:
                return None, []
            qtype = pq.qtype if pq else 0
            where.stats.observe(table.id(where.server, where.proto, where.family, qtype, wire.FORMERR, ""),
                                time.perf_counter() - start)
            return None, [reply]
        if q.opcode != 0:
            replies, rcode, plugin = [wire.simple_reply(q, wire.NOTIMP)], wire.NOTIMP, ""
        elif q.edns is not None and q.edns.version > 0:
            replies, rcode, plugin = [wire.simple_reply(q, wire.BADVERS)], wire.BADVERS, ""
        elif q.qtype in (wire.AXFR, wire.IXFR):
            replies, rcode = self._transfer(q, where.proto, client_ip)
            plugin = "transfer"
        else:
            return q, []
        label = table.id(where.server, where.proto, where.family, q.qtype, rcode, plugin)
        where.stats.observe(label, time.perf_counter() - start)
        return None, replies

    def _crashed(self, q: Query) -> Outcome:
        # A bug must cost one SERVFAIL, never the server (CoreDNS counts panics).
        log.exception("answering failed name=%s type=%d", wire.wire_to_text(q.qname), q.qtype)
        self.metrics.panics.inc()
        return Outcome(wire.SERVFAIL, plugin="", cacheable=False)

    def _finish(self, data: bytes, q: Query, out: Outcome, where: Listener, start: float) -> list[bytes]:
        """Write the reply, remember it when it depends only on the query bytes, count it."""
        max_size = wire.MAX_TCP if where.proto == "tcp" else (q.edns.limit if q.edns else wire.MIN_UDP)
        reply = self._encode(q, out, max_size)
        label = self.metrics.table.id(where.server, where.proto, where.family, q.qtype, out.rcode, out.plugin)
        if out.cacheable:
            cache = self.tcp_cache if where.proto == "tcp" else self.udp_cache
            self._remember(cache, data[2:], (reply[2:], label), q, out)
        where.stats.observe(label, time.perf_counter() - start)
        return [reply]

    # -- resolution --------------------------------------------------------------

    def _resolve_now(self, q: Query, client_ip: str) -> Outcome | None:
        """`_resolve` for the cases that need no waiting; None for the others."""
        lname = q.lname
        zone = self.zone.match(lname)
        if q.qtype == wire.ANY:
            return self._any(lname, zone)
        if zone is None:
            return None
        if q.qclass != wire.IN:
            return Outcome(wire.REFUSED, zone=zone)
        if self.autopath and self._autopath_search(lname, zone, client_ip) is not None:
            return None
        res = self.zone.answer(lname, q.qtype, zone)
        if res.chase is not None or (res.name_error and self.forwarder is not None
                                     and self.zone.falls_through(lname)):
            return None
        return self._authoritative_outcome(zone, res)

    async def _resolve(self, q: Query, lname: bytes, client_ip: str) -> Outcome:
        zone = self.zone.match(lname)
        if q.qtype == wire.ANY:
            return self._any(lname, zone)
        if zone is None:
            return await self._forward(q, lname)
        if q.qclass != wire.IN:
            return Outcome(wire.REFUSED, zone=zone)
        if self.autopath:
            walked = await self._autopath(q, lname, zone, client_ip)
            if walked is not None:
                return walked
        return await self._authoritative(q, lname, zone)

    async def _authoritative(self, q: Query, lname: bytes, zone: ServedZone) -> Outcome:
        res = self.zone.answer(lname, q.qtype, zone)
        if res.name_error and self.forwarder is not None and self.zone.falls_through(lname):
            return await self._forward(q, lname)
        out = self._authoritative_outcome(zone, res)
        if res.chase is not None and not res.name_error:
            out.cacheable = False
            target, qtype = res.chase
            try:
                up = await self._upstream(target, qtype)
            except ForwardError as e:
                log.debug("ExternalName target unresolved name=%s err=%s", wire.wire_to_text(target), e)
                out.answer = []  # CoreDNS drops the CNAME when the lookup fails
            else:
                out.answer.extend(up.answer)
                out.extra_flags |= up.flags & wire.TC
            if not out.answer:
                out.authority = [self.zone.soa(zone)]
        return out

    def _authoritative_outcome(self, zone: ServedZone, res: Result) -> Outcome:
        """Rcode, sections and flags of an answer from the zone (no upstream needed)."""
        soa = [self.zone.soa(zone)]
        if res.name_error:
            if not self.index.synced:
                # CoreDNS handler.go: no NXDOMAIN before the first sync, or pods would
                # cache "does not exist" for names that do.
                return Outcome(wire.SERVFAIL, authority=soa, aa=True, zone=zone, cacheable=False)
            # With autopath the same NXDOMAIN bytes may deserve a different answer
            # for another client, so they are not remembered.
            return Outcome(wire.NXDOMAIN, authority=soa, aa=True, zone=zone, cacheable=not self.autopath)
        out = Outcome(wire.NOERROR, list(res.answer), [], list(res.additional), aa=True, zone=zone)
        if not out.answer and res.chase is None:
            out.authority = soa
        return out

    async def _upstream(self, name: bytes, qtype: int) -> wire.Message:
        if self.forwarder is None:
            raise ForwardError("no upstream")
        return await self.forwarder.resolve(name, qtype)

    async def _forward(self, q: Query, lname: bytes) -> Outcome:
        if self.forwarder is None:
            # CoreDNS without a forward plugin: "no next plugin found", SERVFAIL.
            return Outcome(wire.SERVFAIL, plugin="", cacheable=True)
        do = bool(q.edns and q.edns.do)
        try:
            msg = await self.forwarder.resolve(lname, q.qtype, q.qclass, bool(q.flags & wire.RD),
                                               bool(q.flags & wire.CD), do)
        except ForwardError as e:
            log.debug("forward failed name=%s err=%s", wire.wire_to_text(q.qname), e)
            return Outcome(wire.SERVFAIL, plugin="forward", cacheable=False)
        return Outcome(msg.rcode, msg.answer, msg.authority, msg.additional,
                       aa=bool(msg.flags & wire.AA), extra_flags=msg.flags & (wire.AD | wire.TC | wire.RA),
                       plugin="forward", cacheable=False)

    def _any(self, lname: bytes, zone: ServedZone | None) -> Outcome:
        """RFC 8482: one HINFO instead of everything; names in our zones must exist."""
        if zone is not None:
            res = self.zone.answer(lname, wire.HINFO, zone)  # a fake lookup: exists or not
            if res.name_error:
                rcode = wire.NXDOMAIN if self.index.synced else wire.SERVFAIL
                return Outcome(rcode, authority=[self.zone.soa(zone)], aa=True, zone=zone,
                               plugin="any", cacheable=self.index.synced and not self.autopath)
        hinfo = wire.rr_hinfo(lname, ANY_TTL, "ANY obsoleted", "See RFC 8482")
        return Outcome(wire.NOERROR, [hinfo], aa=zone is not None, zone=zone, plugin="any")

    def _autopath_search(self, lname: bytes, zone: ServedZone, client_ip: str) -> list[str] | None:
        """The client pod's search list if autopath applies to this name, else None."""
        if zone.reverse:
            return None
        pods = self.index.pods_with_ip(client_ip)
        if not pods:
            return None
        ns = pods[0].namespace
        search = [f"{ns}.svc.{zone.name}", f"svc.{zone.name}", zone.name, *self.host_search, ""]
        first = wire.name_to_wire(search[0])
        if lname == first or not wire.is_subdomain(lname, first):
            return None
        return search

    async def _autopath(self, q: Query, lname: bytes, zone: ServedZone, client_ip: str) -> Outcome | None:
        """CoreDNS autopath: walk the client pod's search list here, in one round trip."""
        search = self._autopath_search(lname, zone, client_ip)
        if search is None:
            return None
        first = wire.name_to_wire(search[0])
        base = lname[:len(lname) - len(first)]  # the labels the client asked, with no root
        first_out: Outcome | None = None
        for i, suffix in enumerate(search):
            cand = base + wire.name_to_wire(suffix)
            czone = self.zone.match(cand)
            if czone is None:
                out = await self._forward(q, cand)
            else:
                out = await self._authoritative(q, cand, czone)
            out.cacheable = False
            if i == 0:
                first_out = out
            if out.rcode in (wire.NXDOMAIN, wire.SERVFAIL, wire.REFUSED):
                continue
            if i == 0:
                return out
            # cnamer: the client asked for lname; say how it became cand
            if out.answer and out.answer[0].name.lower() != lname:
                out.answer.insert(0, wire.rr_cname(lname, out.answer[0].ttl, out.answer[0].name))
            out.plugin = "autopath"
            self.metrics.autopath_success.labels("").inc()
            return out
        return first_out

    # -- zone transfer -----------------------------------------------------------

    def transfer_allowed(self, client_ip: str) -> bool:
        try:
            ip = ipaddress.ip_address(client_ip.split("%")[0])
        except ValueError:
            return False
        return any(ip in net for net in self.transfer_to if net.version == ip.version)

    def _transfer(self, q: Query, proto: str, client_ip: str) -> tuple[list[bytes], int]:
        zone = self.zone.match(q.lname)
        if (proto != "tcp" or zone is None or q.lname != zone.wire or zone.reverse
                or not self.transfer_allowed(client_ip)):
            return [wire.simple_reply(q, wire.REFUSED)], wire.REFUSED
        if not self.index.synced:
            return [wire.simple_reply(q, wire.SERVFAIL)], wire.SERVFAIL
        soa = self.zone.soa(zone)
        if q.qtype == wire.IXFR and q.ixfr_serial is not None and q.ixfr_serial >= self.index.serial:
            records = [soa]
        else:
            records = transfer_records(self.zone, zone)
        flags = wire.reply_flags(q.flags, authoritative=True)
        replies = []
        for i in range(0, len(records), TRANSFER_CHUNK):
            replies.append(wire.encode(q.id, flags, wire.NOERROR, (q.qname, q.qtype, q.qclass),
                                       records[i:i + TRANSFER_CHUNK]))
        return replies, wire.NOERROR

    # -- writing -----------------------------------------------------------------

    def _encode(self, q: Query, out: Outcome, max_size: int) -> bytes:
        spell = _speller(q.qname, q.lname, out.zone)
        answer, authority, additional = out.answer, out.authority, out.additional
        if spell is not None:
            answer = [_respell(r, spell) for r in answer]
            authority = [_respell(r, spell) for r in authority]
            additional = [_respell(r, spell) for r in additional]
        flags = wire.reply_flags(q.flags, authoritative=out.aa) | out.extra_flags
        edns = q.edns
        return wire.encode(q.id, flags, out.rcode, (q.qname, q.qtype, q.qclass), answer, authority,
                           additional, edns=edns, max_size=max_size)


def _owning_service(lname: bytes, out: Outcome) -> tuple[str, str] | None:
    """(namespace, service) when the reply is a positive answer about that Service's own
    names (no CNAME to elsewhere, no SOA), else None."""
    if out.zone is None or out.rcode != wire.NOERROR or not out.answer or out.authority:
        return None
    if any(rr.rtype == wire.CNAME for rr in out.answer):
        return None
    labels = wire.wire_labels(lname[:len(lname) - len(out.zone.wire)] + b"\x00")
    if len(labels) < 3 or labels[-1] != b"svc":
        return None
    return labels[-2].decode("latin-1"), labels[-3].decode("latin-1")


def _speller(asked: bytes, lname: bytes, zone: ServedZone | None) -> Callable[[bytes], bytes] | None:
    """A function giving a lower-case name the client's spelling, or None if it asked in lower case."""
    if asked == lname:
        return None
    zl = len(zone.wire) if zone is not None else 0
    zone_asked = asked[len(asked) - zl:] if zone is not None and asked.lower().endswith(zone.wire) else b""

    def spell(name: bytes) -> bytes:
        low = name.lower()
        if low == lname:
            return asked
        if zone is not None and zone_asked and wire.is_subdomain(low, zone.wire):
            return name[:len(name) - zl] + zone_asked
        return name

    return spell


def _respell(rr: RR, spell: Callable[[bytes], bytes]) -> RR:
    names = tuple(spell(n) for n in rr.names) if rr.names else rr.names
    return RR(spell(rr.name), rr.rtype, rr.ttl, rr.pre, names, rr.post, rr.rclass)
