"""Small aiohttp servers for operations: health, readiness and Prometheus metrics.

Components describe their endpoints as (path -> handler) and call `serve()`; one
function owns binding, so every component parses `HOST:PORT` the same way.
"""

from __future__ import annotations

import ipaddress
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, `:PORT` (all addresses) or a bare host with a default port."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_s = rest.lstrip(":")
    elif value.count(":") == 1:
        host, port_s = value.split(":")
    elif value.count(":") > 1:  # a bare IPv6 address
        host, port_s = value, ""
    else:
        host, port_s = value, ""
    if not port_s:
        if default_port is None:
            raise ValueError(f"{value!r}: expected HOST:PORT")
        port_s = str(default_port)
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"{value!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} out of range 0-65535")
    host = host or "0.0.0.0"
    if host not in ("localhost",):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IP address") from None
    return host, port


def metrics_handler(registry: CollectorRegistry) -> Handler:
    async def handle(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


async def serve(address: str, routes: dict[str, Handler], default_port: int | None = None) -> web.AppRunner:
    """Start an HTTP server for `routes` on `address`; the caller cleans up the runner."""
    host, port = parse_host_port(address, default_port)
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner
