"""A TCP port forward from the host into a lab namespace, so `kubectl` on the
host reaches the apiserver inside the control-plane node (kind publishes its
apiserver on 127.0.0.1 the same way).

    python -m svcnet.lab.portforward --listen 127.0.0.1:0 --netns svcnet-control-plane \\
        --to 172.18.0.2:6443 --port-file /var/lib/svcnet/labs/svcnet/apiserver.port

The listening socket is bound first, in the host's namespace; then the process
joins the target namespace with setns(2), so every connection it opens from then on
starts there. The listener keeps the namespace it was made in. Nothing in the
host's routing or firewall changes: it is one socket on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from pathlib import Path

from svcnet.common.endpoints import parse_host_port

log = logging.getLogger("svcnet.lab.portforward")


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` to `writer` until EOF or an error, then close `writer` (which
    ends the opposite direction's pipe too: a forwarded connection closes whole).
    Shared with the HA apiserver load balancer (control_plane.py)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


async def serve(listener: socket.socket, host: str, port: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(host, port)
        except OSError as e:
            log.warning("cannot reach %s:%d: %s", host, port, e)
            w.close()
            return
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m svcnet.lab.portforward", description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--netns", required=True)
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    p.add_argument("--port-file", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s portforward: %(message)s")
    lhost, lport = parse_host_port(args.listen)
    thost, tport = parse_host_port(args.to)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((lhost, lport))
    listener.listen(128)
    bound = listener.getsockname()[1]

    from pyroute2 import netns as pr_netns

    pr_netns.setns(f"/run/netns/{args.netns}", flags=0)  # single-threaded here: the whole process moves
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(f"{bound}\n")
        tmp.replace(args.port_file)
    log.info("forwarding %s:%d -> %s:%d in netns %s", lhost, bound, thost, tport, args.netns)
    try:
        asyncio.run(serve(listener, thost, tport))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
