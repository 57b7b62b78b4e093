"""Forwarding to upstream resolvers (CoreDNS's `forward` plugin, with `prefer_udp`).

* Each query goes over UDP from a fresh socket (a random source port, so spoofed
  replies must guess it); a reply with TC=1 is retried over TCP to the same upstream.
  Replies whose ID or question do not match are ignored, as miekg/dns does.
* The read timeout is 2 s per upstream. Upstreams are tried in random order, healthy
  ones first (CoreDNS's default `policy random`).
* A failed exchange starts a health check: `. IN NS` every 0.5 s until any reply
  (even SERVFAIL or REFUSED counts as healthy). After `max_fails` (2) failed checks the
  upstream is down and is tried only after the healthy ones.
* Identical queries in flight are coalesced into one upstream exchange; answers go
  through `ForwardCache`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from svcnet.dns import wire
from svcnet.dns.cache import CacheKey, ForwardCache
from svcnet.dns.metrics import Metrics
from svcnet.dns.wire import Edns, Message

log = logging.getLogger(__name__)

UPSTREAM_UDP_SIZE = 1232  # what CoreDNS's bufsize defaults to; avoids IP fragmentation


class ForwardError(Exception):
    """No upstream gave a usable answer."""


@dataclass
class Upstream:
    host: str
    port: int = 53
    fails: int = 0
    checking: bool = False
    last_error: str = ""
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def healthy(self) -> bool:
        return self.fails < 2

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_upstreams(spec: str) -> list[Upstream]:
    """`IP[:PORT],[V6]:PORT,...`."""
    from svcnet.common.endpoints import parse_host_port

    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        host, port = parse_host_port(item, 53)
        out.append(Upstream(host, port))
    if not out:
        raise ValueError(f"--upstream {spec!r}: no addresses")
    return out


def resolv_conf_upstreams(path: str = "/etc/resolv.conf") -> list[Upstream]:
    """The nameservers of resolv.conf; a loopback-only list (systemd-resolved's stub)
    is replaced by the real list in /run/systemd/resolve/resolv.conf when it exists,
    since forwarding to the stub loops back to us (coredns#2087)."""
    def read(p: str) -> list[str]:
        try:
            lines = Path(p).read_text().splitlines()
        except OSError:
            return []
        return [ln.split()[1] for ln in lines if ln.split()[:1] == ["nameserver"] and len(ln.split()) > 1]

    servers = read(path)
    if servers and all(s.startswith("127.") or s == "::1" for s in servers):
        real = read("/run/systemd/resolve/resolv.conf")
        if real:
            log.info("resolv.conf points at a local stub %s; forwarding to %s instead", servers, real)
            servers = real
    return [Upstream(s.split("%")[0]) for s in servers]


def build_query(qid: int, name: bytes, qtype: int, qclass: int, rd: bool, cd: bool, do: bool) -> bytes:
    flags = (wire.RD if rd else 0) | (wire.CD if cd else 0)
    return wire.encode(qid, flags, 0, (name, qtype, qclass), edns=Edns(UPSTREAM_UDP_SIZE, do))


class Forwarder:
    def __init__(self, upstreams: list[Upstream], cache: ForwardCache | None, metrics: Metrics,
                 timeout: float = 2.0, health_interval: float = 0.5, max_fails: int = 2) -> None:
        self.upstreams = upstreams
        self.cache = cache
        self.metrics = metrics
        self.timeout = timeout
        self.health_interval = health_interval
        self.max_fails = max_fails
        self._inflight: dict[CacheKey, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self.server_label = ""

    async def resolve(self, lname: bytes, qtype: int, qclass: int = wire.IN, rd: bool = True,
                      cd: bool = False, do: bool = False) -> Message:
        """An upstream answer for the question (from cache when fresh); raises ForwardError."""
        key: CacheKey = (lname, qtype, qclass, do, cd)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                msg, negative = hit
                self.metrics.cache_hits.labels(self.server_label, "denial" if negative else "success", ".", "").inc()
                return msg
            self.metrics.cache_misses.labels(self.server_label, ".", "").inc()
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            task = asyncio.ensure_future(self._fill(key, fut, rd))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(fut)

    async def _fill(self, key: CacheKey, fut: asyncio.Future[Message], rd: bool) -> None:
        lname, qtype, qclass, do, cd = key
        try:
            msg = await self._exchange_any(lname, qtype, qclass, rd, cd, do)
            if self.cache is not None:
                self.cache.put(key, msg)
                pos, neg = self.cache.counts()
                self.metrics.cache_entries.labels(self.server_label, "success", ".", "").set(pos)
                self.metrics.cache_entries.labels(self.server_label, "denial", ".", "").set(neg)
            fut.set_result(msg)
        except Exception as e:  # every waiter must get an answer, even on a bug
            if not fut.done():
                fut.set_exception(e if isinstance(e, ForwardError) else ForwardError(str(e)))
            if not isinstance(e, ForwardError):
                log.exception("forwarding failed name=%s", wire.wire_to_text(lname))
        finally:
            self._inflight.pop(key, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # mark retrieved: nobody may be waiting any more

    def _order(self) -> list[Upstream]:
        ups = list(self.upstreams)
        random.shuffle(ups)
        # Random among equals; an upstream that failed recently goes after those that did not.
        ups.sort(key=lambda u: min(u.fails, self.max_fails))
        return ups

    async def _exchange_any(self, lname: bytes, qtype: int, qclass: int, rd: bool, cd: bool,
                            do: bool) -> Message:
        if not self.upstreams:
            raise ForwardError("no upstream servers configured")
        errors = []
        for up in self._order():
            self.metrics.forward_requests.labels(up.label).inc()
            start = time.perf_counter()
            try:
                msg = await self.exchange(up, lname, qtype, qclass, rd, cd, do)
            except (OSError, asyncio.TimeoutError, wire.WireError, ForwardError) as e:
                up.last_error = str(e) or type(e).__name__
                up.fails = max(up.fails, 1)
                errors.append(f"{up.label}: {up.last_error}")
                log.debug("upstream failed to=%s name=%s err=%s", up.label, wire.wire_to_text(lname), up.last_error)
                self._start_health_check(up)
                continue
            rcode = wire.RCODE_NAMES.get(msg.rcode, str(msg.rcode))
            self.metrics.forward_responses.labels(up.label, rcode).inc()
            self.metrics.forward_duration.labels("forward", up.label, rcode).observe(time.perf_counter() - start)
            return msg
        raise ForwardError("; ".join(errors))

    async def exchange(self, up: Upstream, lname: bytes, qtype: int, qclass: int, rd: bool = True,
                       cd: bool = False, do: bool = False) -> Message:
        """One question to one upstream: UDP, then TCP if the reply was truncated."""
        qid = random.getrandbits(16)
        query = build_query(qid, lname, qtype, qclass, rd, cd, do)
        msg = await self._udp(up, query, qid, lname, qtype)
        if msg.flags & wire.TC:
            qid = random.getrandbits(16)
            query = build_query(qid, lname, qtype, qclass, rd, cd, do)
            msg = await self._tcp(up, query, qid, lname, qtype)
        return msg

    async def _udp(self, up: Upstream, query: bytes, qid: int, lname: bytes, qtype: int) -> Message:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in up.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect((up.host, up.port))
            await loop.sock_sendall(sock, query)
            deadline = loop.time() + self.timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise asyncio.TimeoutError()
                data = await asyncio.wait_for(loop.sock_recv(sock, 65535), remaining)
                msg = _matching(data, qid, lname, qtype)
                if msg is not None:
                    return msg
        finally:
            sock.close()

    async def _tcp(self, up: Upstream, query: bytes, qid: int, lname: bytes, qtype: int) -> Message:
        async def run() -> Message:
            reader, writer = await asyncio.open_connection(up.host, up.port)
            try:
                writer.write(struct.pack("!H", len(query)) + query)
                await writer.drain()
                while True:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    msg = _matching(await reader.readexactly(length), qid, lname, qtype)
                    if msg is not None:
                        return msg
            finally:
                writer.close()

        try:
            return await asyncio.wait_for(run(), self.timeout)
        except asyncio.IncompleteReadError as e:
            raise ForwardError("upstream closed the TCP connection") from e

    # -- health ------------------------------------------------------------------

    def _start_health_check(self, up: Upstream) -> None:
        if up.checking:
            return
        up.checking = True
        up._task = asyncio.ensure_future(self._health_loop(up))

    async def _health_loop(self, up: Upstream) -> None:
        try:
            while True:
                try:
                    await self.exchange(up, wire.ROOT, wire.NS, wire.IN, rd=False)
                    if up.fails:
                        log.info("upstream healthy again to=%s", up.label)
                    up.fails = 0
                    return
                except (OSError, asyncio.TimeoutError, wire.WireError, ForwardError) as e:
                    up.fails += 1
                    up.last_error = str(e) or type(e).__name__
                    self.metrics.healthcheck_failures.labels("forward", up.label).inc()
                    if up.fails == self.max_fails:
                        log.warning("upstream down to=%s err=%s", up.label, up.last_error)
                    if all(u.fails >= self.max_fails for u in self.upstreams):
                        self.metrics.healthcheck_broken.inc()
                await asyncio.sleep(self.health_interval)
        finally:
            up.checking = False

    async def close(self) -> None:
        for up in self.upstreams:
            if up._task is not None:
                up._task.cancel()
        for task in list(self._tasks):
            task.cancel()


def _matching(data: bytes, qid: int, lname: bytes, qtype: int) -> Message | None:
    """The parsed reply if it answers our question, else None (ignored, as miekg does)."""
    try:
        msg = wire.parse_message(data)
    except wire.WireError:
        return None
    if msg.id != qid or not msg.flags & wire.QR:
        return None
    if msg.question and (msg.question[0][0].lower() != lname or msg.question[0][1] != qtype):
        return None
    return msg
