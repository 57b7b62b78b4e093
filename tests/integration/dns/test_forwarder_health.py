"""Forwarder health checks and ordering, against in-process UDP servers on loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import dnslib

from svcnet.dns import wire
from svcnet.dns.forward import Forwarder, Upstream
from svcnet.dns.metrics import Metrics


class _Answering(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        q = dnslib.DNSRecord.parse(data)
        self.seen.append(str(q.q.qname))
        r = q.reply()
        if str(q.q.qname) != ".":
            r.add_answer(*dnslib.RR.fromZone(f"{q.q.qname} 60 IN A 192.0.2.1"))
        self.transport.sendto(bytes(r.pack()), addr)


async def _wait_until(cond: Any, timeout: float = 10.0) -> bool:
    """Poll `cond` (bounded): health checks run on their own schedule."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_failed_upstream_is_checked_marked_down_and_recovers() -> None:
    loop = asyncio.get_running_loop()
    dead = Upstream("127.0.0.1", _dead_port())
    transport, good_proto = await loop.create_datagram_endpoint(_Answering, local_addr=("127.0.0.1", 0))
    good = Upstream("127.0.0.1", transport.get_extra_info("sockname")[1])
    fwd = Forwarder([dead, good], None, Metrics(), timeout=0.5, health_interval=0.05)
    try:
        for _ in range(50):  # random order: go on until the dead one has been tried first
            msg = await fwd.resolve(wire.name_to_wire("a.example.test"), wire.A)
            assert msg.answer and msg.answer[0].address() == "192.0.2.1"  # from the good one
            if dead.fails:
                break
        assert await _wait_until(lambda: dead.fails >= 2), dead
        assert not dead.healthy and good.healthy
        assert fwd._order()[0] is good  # a down upstream is tried last
        # it comes back: the next health check sees a reply and clears the failures
        transport2, _ = await loop.create_datagram_endpoint(_Answering, local_addr=("127.0.0.1", dead.port))
        try:
            assert await _wait_until(lambda: dead.fails == 0), dead
            assert dead.healthy
        finally:
            transport2.close()
    finally:
        await fwd.close()
        transport.close()


async def test_mismatched_replies_are_ignored() -> None:
    """A reply with the wrong ID is not taken for the answer (spoofing)."""
    loop = asyncio.get_running_loop()

    class Spoofer(_Answering):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            q = dnslib.DNSRecord.parse(data)
            bad = q.reply()
            bad.header.id = (q.header.id + 1) & 0xFFFF
            bad.add_answer(*dnslib.RR.fromZone(f"{q.q.qname} 60 IN A 203.0.113.66"))
            self.transport.sendto(bytes(bad.pack()), addr)
            super().datagram_received(data, addr)

    transport, _ = await loop.create_datagram_endpoint(Spoofer, local_addr=("127.0.0.1", 0))
    fwd = Forwarder([Upstream("127.0.0.1", transport.get_extra_info("sockname")[1])], None, Metrics(), timeout=1)
    try:
        msg = await fwd.resolve(wire.name_to_wire("b.example.test"), wire.A)
        assert [r.address() for r in msg.answer] == ["192.0.2.1"]
    finally:
        await fwd.close()
        transport.close()
