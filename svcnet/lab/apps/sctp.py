"""SCTP without kernel SCTP sockets: a responder and a probe on raw IP sockets,
with scapy building and parsing the packets (and their CRC32c checksums).

Many kernels (this lab's included) are built without CONFIG_IP_SCTP, so
`socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)` fails, yet Services carry SCTP and
conntrack/NAT handle it (nf_conntrack_proto_sctp is separate). A raw socket for
protocol 132 receives every SCTP packet delivered to this namespace *after*
DNAT, and its mere existence stops the kernel from answering "protocol
unreachable".

The responder speaks enough of RFC 9260 for a real association through NAT and
conntrack: INIT → INIT-ACK (the state cookie carries `pod=… client=…`, so the
handshake alone proves which pod answered), COOKIE-ECHO → COOKIE-ACK, DATA →
SACK + a DATA answer (the echo reply line), SHUTDOWN → SHUTDOWN-ACK, ABORT.
An INIT to a port nobody serves gets an ABORT, as a real stack answers.

    python -m svcnet.lab.apps.sctp probe web.default.svc.cluster.local 8080
    pod=web-1 client=10.244.1.7:40312 proto=sctp
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import socket
import sys
from dataclasses import dataclass
from typing import Any

from scapy.layers.inet import IP
from scapy.layers.sctp import (
    SCTP, SCTPChunkAbort, SCTPChunkCookieAck, SCTPChunkCookieEcho, SCTPChunkData, SCTPChunkInit,
    SCTPChunkInitAck, SCTPChunkParamStateCookie, SCTPChunkSACK, SCTPChunkShutdown,
    SCTPChunkShutdownAck, SCTPChunkShutdownComplete,
)

from svcnet.lab.apps.echo import reply_for

log = logging.getLogger("svcnet.lab.sctp")

IPPROTO_SCTP = 132
A_RWND = 65535


def _tag() -> int:
    return random.randint(1, 0xFFFFFFFF)


def _open_raw() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    s.setblocking(False)
    return s


def _parse(packet: bytes) -> tuple[str, str, Any] | None:
    """(src, dst, SCTP layer) of a raw IPv4 packet, or None when it is not SCTP."""
    try:
        ip = IP(packet)
    except Exception:  # scapy raises many kinds on garbage
        return None
    if ip.proto != IPPROTO_SCTP or not ip.haslayer(SCTP):
        return None
    return str(ip.src), str(ip.dst), ip[SCTP]


@dataclass
class _Assoc:
    peer_tag: int
    my_tag: int
    my_tsn: int
    cookie: bytes


class SctpResponder:
    """Answers SCTP on `ports` for pod `pod`; start() in a running event loop."""

    def __init__(self, pod: str, ports: list[int]) -> None:
        self.pod = pod
        self.ports = set(ports)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._assocs: dict[int, _Assoc] = {}  # by our verification tag

    def start(self) -> None:
        self._sock = _open_raw()
        self._task = asyncio.get_running_loop().create_task(self._serve())
        log.info("sctp responder pod=%s ports=%s", self.pod, sorted(self.ports))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._sock is not None:
            self._sock.close()

    async def _serve(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._sock, 65535)
            parsed = _parse(data)
            if parsed is None:
                continue
            try:
                self._handle(*parsed)
            except Exception:  # one bad packet must not stop the responder
                log.exception("sctp packet from %s not handled", parsed[0])

    def _send(self, src: str, dst: str, pkt: Any) -> None:
        assert self._sock is not None
        self._sock.sendto(bytes(IP(src=src, dst=dst) / pkt), (dst, 0))

    def _handle(self, src: str, dst: str, sctp: Any) -> None:
        if sctp.dport not in self.ports:
            if sctp.haslayer(SCTPChunkInit) and sctp.sport not in self.ports:
                # Out of the blue INIT to a closed port: ABORT with the T bit (reflected tag).
                init = sctp[SCTPChunkInit]
                self._send(dst, src, SCTP(sport=sctp.dport, dport=sctp.sport, tag=init.init_tag)
                           / SCTPChunkAbort())
            return
        def reply(tag: int) -> Any:
            return SCTP(sport=sctp.dport, dport=sctp.sport, tag=tag)

        if sctp.haslayer(SCTPChunkInit):
            init = sctp[SCTPChunkInit]
            assoc = _Assoc(peer_tag=init.init_tag, my_tag=_tag(), my_tsn=random.randint(0, 0xFFFFFFF),
                           cookie=reply_for("", self.pod, (src, sctp.sport), "sctp").encode())
            self._assocs[assoc.my_tag] = assoc
            self._send(dst, src, reply(assoc.peer_tag) / SCTPChunkInitAck(
                init_tag=assoc.my_tag, a_rwnd=A_RWND, n_out_streams=1, n_in_streams=1,
                init_tsn=assoc.my_tsn, params=[SCTPChunkParamStateCookie(cookie=assoc.cookie)]))
            log.debug("INIT from %s:%d -> INIT-ACK", src, sctp.sport)
            return
        known = self._assocs.get(sctp.tag)
        if known is None:
            return
        assoc = known
        if sctp.haslayer(SCTPChunkCookieEcho):
            self._send(dst, src, reply(assoc.peer_tag) / SCTPChunkCookieAck())
        if sctp.haslayer(SCTPChunkData):
            chunk = sctp[SCTPChunkData]
            text = reply_for(bytes(chunk.data).decode(errors="replace"), self.pod, (src, sctp.sport), "sctp")
            self._send(dst, src, reply(assoc.peer_tag)
                       / SCTPChunkSACK(cumul_tsn_ack=chunk.tsn, a_rwnd=A_RWND)
                       / SCTPChunkData(tsn=assoc.my_tsn, stream_id=0, stream_seq=0, proto_id=0,
                                       beginning=1, ending=1, data=(text + "\n").encode()))
            assoc.my_tsn += 1
        if sctp.haslayer(SCTPChunkShutdown):
            self._send(dst, src, reply(assoc.peer_tag) / SCTPChunkShutdownAck())
        if sctp.haslayer(SCTPChunkShutdownComplete) or sctp.haslayer(SCTPChunkAbort):
            self._assocs.pop(sctp.tag, None)


@dataclass(frozen=True)
class SctpReply:
    cookie: str  # from INIT-ACK: `pod=… client=… proto=sctp`, proof of who answered
    data: str  # the DATA answer to our message


class SctpError(OSError):
    pass


async def sctp_probe(host: str, port: int, message: str = "", timeout: float = 3.0) -> SctpReply:
    """Open an association to host:port, send `message`, return the answers, ABORT."""
    addr = str(socket.getaddrinfo(host, port, socket.AF_INET)[0][4][0])
    sock = _open_raw()
    loop = asyncio.get_running_loop()
    sport = random.randint(32768, 60999)
    my_tag, my_tsn = _tag(), random.randint(0, 0xFFFFFFF)
    src = _source_for(addr)

    def send(pkt: Any) -> None:
        sock.sendto(bytes(IP(src=src, dst=addr) / pkt), (addr, 0))

    async def expect(layer: Any) -> Any:
        while True:
            parsed = _parse(await loop.sock_recv(sock, 65535))
            if parsed is None:
                continue
            sctp = parsed[2]
            if sctp.sport != port or sctp.dport != sport or sctp.tag != my_tag:
                continue
            if sctp.haslayer(SCTPChunkAbort):
                raise SctpError(111, f"{host}:{port}/sctp: association aborted by peer (nothing listening?)")
            if sctp.haslayer(layer):
                return sctp

    try:
        async with asyncio.timeout(timeout):
            send(SCTP(sport=sport, dport=port, tag=0) / SCTPChunkInit(
                init_tag=my_tag, a_rwnd=A_RWND, n_out_streams=1, n_in_streams=1, init_tsn=my_tsn))
            ack = (await expect(SCTPChunkInitAck))[SCTPChunkInitAck]
            peer_tag = ack.init_tag
            cookie = b"".join(bytes(p.cookie) for p in ack.params if isinstance(p, SCTPChunkParamStateCookie))
            send(SCTP(sport=sport, dport=port, tag=peer_tag) / SCTPChunkCookieEcho(cookie=cookie))
            await expect(SCTPChunkCookieAck)
            send(SCTP(sport=sport, dport=port, tag=peer_tag) / SCTPChunkData(
                tsn=my_tsn, stream_id=0, stream_seq=0, proto_id=0, beginning=1, ending=1,
                data=(message or "\n").encode()))
            data = (await expect(SCTPChunkData))[SCTPChunkData]
            send(SCTP(sport=sport, dport=port, tag=peer_tag) / SCTPChunkAbort())
            return SctpReply(cookie.decode(errors="replace"), bytes(data.data).decode(errors="replace").strip())
    except TimeoutError:
        raise SctpError(110, f"{host}:{port}/sctp: no answer within {timeout:g}s") from None
    finally:
        sock.close()


def _source_for(dst: str) -> str:
    """The source address the kernel would pick for `dst` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))
        return str(s.getsockname()[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m svcnet.lab.apps.sctp", description="SCTP probe and responder")
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("probe", help="open an association, print who answered")
    pr.add_argument("host")
    pr.add_argument("port", type=int)
    pr.add_argument("--message", default="", help="DATA to send (hostname, clientip, echo X)")
    pr.add_argument("--timeout", type=float, default=3.0)
    sv = sub.add_parser("serve", help="answer SCTP on ports")
    sv.add_argument("--name", default=socket.gethostname())
    sv.add_argument("ports", type=int, nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "probe":
        try:
            r = asyncio.run(sctp_probe(args.host, args.port, args.message, args.timeout))
        except (SctpError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(r.data if args.message else r.cookie)
        return 0

    async def serve() -> None:
        SctpResponder(args.name, args.ports).start()
        await asyncio.Event().wait()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
