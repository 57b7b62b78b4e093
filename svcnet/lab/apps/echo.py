"""`svcnet/echo`: a server that says who answered and who asked, on TCP, UDP and SCTP.

    python -m svcnet.lab.apps.echo --name web-1 --tcp 8080 --udp 8080 --sctp 8080

Every answer is one line, so a test (or a person with nc) can see which pod a
Service picked and whether the client's address survived the trip (SNAT or not):

    pod=web-1 client=10.244.1.7:40312 proto=tcp

The commands follow Kubernetes' e2e server, agnhost netexec: a request that is
`hostname` gets just the pod name, `clientip` just `ip:port`, `echo TEXT` gets TEXT
back; anything else gets the full line. On TCP, a request that starts like HTTP
is answered as HTTP (`GET /`, `/hostname`, `/clientip`, `/healthz`, `/echo?msg=`)
so httpGet probes and curl work on the same port. SCTP is answered by sctp.py,
since this kernel may have no SCTP sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from typing import cast
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("svcnet.lab.echo")

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def reply_for(request: str, pod: str, client: tuple[str, int], proto: str) -> str:
    """The answer to one request line (agnhost netexec's UDP/TCP commands)."""
    req = request.strip()
    client_s = f"{client[0]}:{client[1]}"
    if req == "hostname":
        return pod
    if req == "clientip":
        return client_s
    if req.startswith("echo "):
        return req[5:]
    return f"pod={pod} client={client_s} proto={proto}"


def http_reply(path: str, pod: str, client: tuple[str, int]) -> tuple[int, str]:
    url = urlsplit(path)
    if url.path in ("/", ""):
        return 200, reply_for("", pod, client, "http")
    if url.path == "/hostname":
        return 200, pod
    if url.path == "/clientip":
        return 200, f"{client[0]}:{client[1]}"
    if url.path in ("/healthz", "/readyz"):
        return 200, "ok"
    if url.path == "/echo":
        return 200, parse_qs(url.query).get("msg", [""])[0]
    return 404, f"not found: {url.path}"


class EchoServer:
    """TCP and UDP listeners for one pod; `start()` binds, `close()` stops."""

    def __init__(self, pod: str, tcp: list[int], udp: list[int], host: str = "0.0.0.0") -> None:
        self.pod, self.tcp_ports, self.udp_ports, self.host = pod, tcp, udp, host
        self._servers: list[asyncio.base_events.Server] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self.bound_tcp: list[int] = []
        self.bound_udp: list[int] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for port in self.tcp_ports:
            srv = await asyncio.start_server(self._handle_tcp, self.host, port, reuse_address=True)
            self._servers.append(srv)
            self.bound_tcp.append(srv.sockets[0].getsockname()[1])
        for port in self.udp_ports:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpEcho(self.pod), local_addr=(self.host, port), family=socket.AF_INET)
            self._transports.append(transport)
            self.bound_udp.append(transport.get_extra_info("sockname")[1])
        log.info("serving pod=%s tcp=%s udp=%s", self.pod, self.bound_tcp, self.bound_udp)

    def close(self) -> None:
        for srv in self._servers:
            srv.close()
        for t in self._transports:
            t.close()

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[:2]
        try:
            first = await reader.readline()
            if first.startswith(HTTP_METHODS):
                await self._http(first, reader, writer, peer)
                return
            line = first
            while line:
                writer.write((reply_for(line.decode(errors="replace"), self.pod, peer, "tcp") + "\n").encode())
                await writer.drain()
                line = await reader.readline()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server is closing; nothing more to say to this client
        finally:
            writer.close()

    async def _http(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    peer: tuple[str, int]) -> None:
        method, path = first.decode(errors="replace").split()[:2]
        while (await reader.readline()).strip():  # headers; the body (if any) is ignored
            pass
        code, body = http_reply(path, self.pod, peer)
        data = (body + "\n").encode()
        head = (f"HTTP/1.1 {code} {'OK' if code == 200 else 'Not Found'}\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(data)}\r\nConnection: close\r\n"
                f"X-Pod: {self.pod}\r\n\r\n").encode()
        writer.write(head + (b"" if method == "HEAD" else data))
        await writer.drain()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, pod: str) -> None:
        self.pod = pod
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            answer = reply_for(data.decode(errors="replace"), self.pod, addr[:2], "udp")
            self.transport.sendto((answer + "\n").encode(), addr)


def _ports(values: list[str]) -> list[int]:
    out: list[int] = []
    for v in values:
        for part in v.split(","):
            if part.strip():
                port = int(part)
                if not 0 <= port <= 65535:
                    raise argparse.ArgumentTypeError(f"port {port} out of range")
                out.append(port)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="svcnet/echo", description=__doc__.splitlines()[0])
    p.add_argument("--name", default=os.environ.get("POD_NAME") or socket.gethostname(),
                   help="name to answer with (default: $POD_NAME or the hostname)")
    p.add_argument("--port", action="append", default=[], help="TCP, UDP and SCTP port(s)")
    p.add_argument("--tcp", action="append", default=[], help="TCP port(s), comma separated")
    p.add_argument("--udp", action="append", default=[], help="UDP port(s)")
    p.add_argument("--sctp", action="append", default=[], help="SCTP port(s)")
    p.add_argument("--listen", default="0.0.0.0", help="address to bind (default all)")
    args = p.parse_args(argv)
    both = _ports(args.port)
    args.tcp_ports = both + _ports(args.tcp)
    args.udp_ports = both + _ports(args.udp)
    args.sctp_ports = both + _ports(args.sctp)
    if not (args.tcp_ports or args.udp_ports or args.sctp_ports):
        args.tcp_ports = args.udp_ports = args.sctp_ports = [8080]
    return args


async def run(args: argparse.Namespace) -> None:
    server = EchoServer(args.name, args.tcp_ports, args.udp_ports, args.listen)
    await server.start()
    responder = None
    if args.sctp_ports:
        from svcnet.lab.apps.sctp import SctpResponder  # scapy only when SCTP is asked for

        responder = SctpResponder(args.name, args.sctp_ports)
        responder.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready pod={args.name}", flush=True)  # a program's stdout, not library logging
    await stop.wait()
    server.close()
    if responder is not None:
        responder.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s echo: %(message)s", datefmt="%H:%M:%S")
    asyncio.run(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
