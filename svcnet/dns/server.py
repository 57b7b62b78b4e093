"""The UDP and TCP listeners.

UDP: one plain thread per socket runs a blocking `recvfrom` loop. A query whose exact
bytes (minus the ID) were answered before is answered right there from
`Handler.udp_cache`: a dict lookup and a `sendto`, no parsing, no event loop. That is
what makes a Python server keep up with unbound (reference/perf-floors.md: 144k QPS
for a blocking loop against 107k on uvloop and 70k on asyncio, same machine). Every
other query is handed to the event loop (`call_soon_threadsafe`), which owns all
state: the index, the caches' contents, the forwarder. The UDP threads only read the
reply cache; the loop thread is its only writer, and it empties it in place on
every cluster change.

TCP: asyncio streams. Queries on one connection are answered concurrently
(pipelining, RFC 7766), each reply written whole; idle connections close after 10 s;
a client that does not read its replies only stalls its own connection, and is
dropped when a write cannot drain within the same bound.

`SVCNET_DNS_UDP_LOOP=asyncio` serves UDP from the event loop (a DatagramProtocol,
uvloop when installed) instead of the threads, with the same reply cache; bench/dns.py
measures both.

Stopping (`stop()`, on SIGTERM): stop reading new queries, let the ones in flight
finish (bounded), then close the sockets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import struct
import threading
import time
from bisect import bisect_left
from typing import Any, Callable

from svcnet.dns.handler import Handler, Listener
from svcnet.dns.metrics import Metrics

log = logging.getLogger(__name__)

TCP_IDLE_TIMEOUT = 10.0
TCP_WRITE_TIMEOUT = 10.0
TCP_MAX_PIPELINE = 64  # queries in progress per connection before we stop reading
TCP_MAX_CONNECTIONS = 1000
# Queries handed from a UDP thread to the event loop and not answered yet. Above this a
# flood of uncached names (random subdomains) is dropped instead of queueing without
# bound; clients retry, and remembered answers keep flowing from the thread meanwhile.
# (CoreDNS's forward `max_concurrent` plays the same role.)
UDP_MAX_BACKLOG = 2000
UDP_RCVBUF = 4 << 20


class _Backlog:
    """In-flight slow-path queries of one UDP socket. Each counter has a single writer
    (the UDP thread submits, the loop completes), so no lock is needed."""

    __slots__ = ("submitted", "completed", "dropped")

    def __init__(self) -> None:
        self.submitted = 0
        self.completed = 0
        self.dropped = 0


class DnsServer:
    def __init__(self, handler: Handler, metrics: Metrics, addresses: list[tuple[str, int]]) -> None:
        self.handler = handler
        self.metrics = metrics
        self.addresses = addresses
        self.bound: list[tuple[str, int]] = []
        self._udp: list[tuple[socket.socket, threading.Thread]] = []
        self._udp_transports: list[asyncio.DatagramTransport] = []
        self.udp_mode = os.environ.get("SVCNET_DNS_UDP_LOOP", "thread")
        self._tcp: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._tcp_connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_stats = metrics.collector.new_stats()

    # -- start / stop ------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for host, port in self.addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            usock = socket.socket(family, socket.SOCK_DGRAM)
            usock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                usock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                usock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            except OSError:
                pass
            usock.bind((host, port))
            port = usock.getsockname()[1]  # port 0: TCP takes the same port
            tsock = socket.socket(family, socket.SOCK_STREAM)
            tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                tsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            tsock.bind((host, port))
            server_label = f"dns://{host if family == socket.AF_INET else '[' + host + ']'}:{port}"
            fam = "1" if family == socket.AF_INET else "2"
            tcp_where = Listener(server_label, "tcp", fam, self._loop_stats)
            srv = await asyncio.start_server(functools.partial(self._tcp_connection, where=tcp_where),
                                             sock=tsock)
            self._tcp.append(srv)
            loop_where = Listener(server_label, "udp", fam, self._loop_stats)
            if self.udp_mode == "asyncio":
                transport, _ = await self._loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self, loop_where), sock=usock)
                self._udp_transports.append(transport)
            else:
                thread_where = Listener(server_label, "udp", fam, self.metrics.collector.new_stats())
                t = threading.Thread(target=self._udp_loop, args=(usock, thread_where, loop_where),
                                     name=f"dns-udp-{host}:{port}", daemon=True)
                t.start()
                self._udp.append((usock, t))
            self.bound.append((host, port))
            log.info("listening udp+tcp address=%s", server_label[len("dns://"):])

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop reading, finish queries in flight (up to `drain_timeout`), close."""
        self._stopping = True
        for srv in self._tcp:
            srv.close()
        for usock, _ in self._udp:
            try:
                usock.shutdown(socket.SHUT_RD)  # wakes the blocked recvfrom
            except OSError:
                pass  # unconnected UDP says ENOTCONN, but the reader is woken anyway
        for _, t in self._udp:
            await asyncio.get_running_loop().run_in_executor(None, t.join, 2.0)
        if self._tasks:
            log.info("draining queries in flight count=%d", len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_timeout)
            for task in pending:
                task.cancel()
        for srv in self._tcp:
            try:
                await asyncio.wait_for(srv.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
        for usock, _ in self._udp:
            usock.close()
        for tr in self._udp_transports:
            tr.close()

    # -- UDP ---------------------------------------------------------------------

    def _udp_loop(self, sock: socket.socket, where: Listener, loop_where: Listener) -> None:
        """The hot path: answer remembered queries here, hand the rest to the loop."""
        assert self._loop is not None
        submit = self._loop.call_soon_threadsafe
        slow = self._udp_slow
        send = sock.sendto
        backlog = _Backlog()
        get = self.handler.udp_cache.get
        recvfrom, sendto = sock.recvfrom, sock.sendto
        stats = where.stats
        buckets, sums, bounds = stats.buckets, stats.sums, stats.bounds
        perf = time.perf_counter
        while True:
            try:
                data, addr = recvfrom(65535)
            except OSError:
                if self._stopping:
                    return
                continue
            if addr is None:  # woken by shutdown()
                if self._stopping:
                    return
                continue
            start = perf()
            hit = get(data[2:])
            if hit is not None:
                try:
                    sendto(data[:2] + hit[0], addr)
                except OSError:
                    pass
                # QueryStats.observe, inlined: this runs once per query
                dt = perf() - start
                label = hit[1]
                buckets[label][bisect_left(bounds, dt)] += 1
                sums[label] += dt
                continue
            if backlog.submitted - backlog.completed >= UDP_MAX_BACKLOG:
                backlog.dropped += 1
                if backlog.dropped % 10000 == 1:
                    log.warning("dropping queries: %d uncached queries waiting dropped=%d",
                                UDP_MAX_BACKLOG, backlog.dropped)
                continue
            backlog.submitted += 1
            try:
                submit(slow, send, data, addr, loop_where, backlog)
            except RuntimeError:  # the loop is closed: we are shutting down
                return

    def _udp_slow(self, send: Callable[[bytes, Any], Any], data: bytes, addr: Any, where: Listener,
                  backlog: _Backlog) -> None:
        try:
            replies = self.handler.handle_now(data, where, addr[0])
        except Exception:  # a bug costs this query, never the listener
            log.exception("query failed client=%s", addr)
            replies = []
        if replies is not None:  # the common case: a cluster name, no waiting
            backlog.completed += 1
            for reply in replies:
                try:
                    send(reply, addr)
                except OSError as e:
                    log.debug("udp send failed to=%s err=%s", addr, e)
            return
        task = asyncio.ensure_future(self._udp_answer(send, data, addr, where, backlog))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _udp_answer(self, send: Callable[[bytes, Any], Any], data: bytes, addr: Any,
                          where: Listener, backlog: _Backlog) -> None:
        try:
            replies = await self.handler.handle(data, where, addr[0], now_tried=True)
            for reply in replies:
                send(reply, addr)
        except OSError as e:
            log.debug("udp send failed to=%s err=%s", addr, e)
        except Exception:
            log.exception("query failed client=%s", addr)
        finally:
            backlog.completed += 1

    # -- TCP ---------------------------------------------------------------------

    async def _tcp_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              where: Listener) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        if self._tcp_connections >= TCP_MAX_CONNECTIONS:
            writer.close()
            return
        self._tcp_connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        inflight: set[asyncio.Task[None]] = set()
        cache = self.handler.tcp_cache
        try:
            while not self._stopping:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                    (length,) = struct.unpack("!H", head)
                    data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    break
                hit = cache.get(data[2:])
                if hit is not None:
                    start = time.perf_counter()
                    if not _write(writer, data[:2] + hit[0]):
                        break
                    where.stats.observe(hit[1], time.perf_counter() - start)
                else:
                    try:
                        now = self.handler.handle_now(data, where, peer[0])
                    except Exception:  # a bug costs this query, never the connection
                        log.exception("query failed client=%s", peer)
                        now = []
                    if now is not None:
                        if not all(_write(writer, r) for r in now):
                            break
                    else:
                        t = asyncio.ensure_future(self._tcp_answer(data, writer, where, peer[0]))
                        inflight.add(t)
                        t.add_done_callback(inflight.discard)
                if writer.transport.get_write_buffer_size() > 0 or len(inflight) >= TCP_MAX_PIPELINE:
                    # Back-pressure: a client that does not read its replies stalls only itself.
                    await asyncio.wait_for(writer.drain(), TCP_WRITE_TIMEOUT)
                    while len(inflight) >= TCP_MAX_PIPELINE:
                        await asyncio.wait(set(inflight), return_when=asyncio.FIRST_COMPLETED)
            if inflight:
                await asyncio.wait(set(inflight), timeout=TCP_WRITE_TIMEOUT)
            await asyncio.wait_for(writer.drain(), TCP_WRITE_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            log.debug("tcp client dropped peer=%s", peer)
        finally:
            for t in inflight:
                t.cancel()
            writer.close()
            self._tcp_connections -= 1
            if task is not None:
                self._tasks.discard(task)

    async def _tcp_answer(self, data: bytes, writer: asyncio.StreamWriter, where: Listener,
                          client_ip: str) -> None:
        replies = await self.handler.handle(data, where, client_ip, now_tried=True)
        for reply in replies:
            if not _write(writer, reply):
                return


def _write(writer: asyncio.StreamWriter, reply: bytes) -> bool:
    """Queue one length-prefixed reply; False when the client has gone away."""
    if writer.is_closing():
        return False
    try:
        writer.write(struct.pack("!H", len(reply)) + reply)
    except (RuntimeError, ConnectionError):  # uvloop: "the handler is closed"
        return False
    return True


class _UdpProtocol(asyncio.DatagramProtocol):
    """UDP on the event loop: the same reply-cache fast path, misses as tasks."""

    def __init__(self, server: DnsServer, where: Listener) -> None:
        self.server = server
        self.where = where
        self.get = server.handler.udp_cache.get
        self.transport: asyncio.DatagramTransport | None = None
        self.backlog = _Backlog()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        if self.server._stopping:
            return
        start = time.perf_counter()
        hit = self.get(data[2:])
        if hit is not None:
            self.transport.sendto(data[:2] + hit[0], addr)
            self.where.stats.observe(hit[1], time.perf_counter() - start)
            return
        if self.backlog.submitted - self.backlog.completed >= UDP_MAX_BACKLOG:
            self.backlog.dropped += 1
            return
        self.backlog.submitted += 1
        self.server._udp_slow(self.transport.sendto, data, addr, self.where, self.backlog)
