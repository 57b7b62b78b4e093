"""A client for `svcnet/echo`: one line per answer, so a spread over pods shows.

    python -m svcnet.lab.apps.client tcp web 80 -n 6
    python -m svcnet.lab.apps.client udp web.default.svc.cluster.local 80
    python -m svcnet.lab.apps.client sctp 172.19.0.1 80

Each attempt is a new connection (TCP, SCTP) or a new socket (UDP), so each is a
new conntrack entry and the proxy picks an endpoint afresh. Names resolve with the
caller's resolver (in a pod: the pod's resolv.conf). Exit status 1 if any attempt
failed; the failure is printed in place of the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys


def tcp_once(host: str, port: int, message: str, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall((message + "\n").encode())
        return s.recv(4096).decode(errors="replace").strip()


def udp_once(host: str, port: int, message: str, timeout: float) -> str:
    addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0][4]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(timeout)
        u.sendto(message.encode() or b"\n", addr)
        return u.recv(4096).decode(errors="replace").strip()


def sctp_once(host: str, port: int, message: str, timeout: float) -> str:
    from svcnet.lab.apps.sctp import sctp_probe

    reply = asyncio.run(sctp_probe(host, port, message, timeout))
    return reply.data if message else reply.cookie


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m svcnet.lab.apps.client", description=__doc__.splitlines()[0])
    p.add_argument("proto", choices=("tcp", "udp", "sctp"))
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("-n", "--count", type=int, default=1, help="attempts, each a new connection")
    p.add_argument("-m", "--message", default="", help="hostname, clientip, echo TEXT (default: the full line)")
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    once = {"tcp": tcp_once, "udp": udp_once, "sctp": sctp_once}[args.proto]
    failed = False
    for _ in range(args.count):
        try:
            print(once(args.host, args.port, args.message, args.timeout), flush=True)
        except OSError as e:
            failed = True
            print(f"error: {args.proto} {args.host}:{args.port}: {e}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
