"""Health endpoints served the way kube-proxy serves them.

* `ProxyHealth`: `/healthz` and `/livez` on `--healthz-bind-address` (default
  0.0.0.0:10256). Healthy unless a sync was queued more than `timeout` ago (kube-proxy
  uses 2 × sync period) and has not happened since. `/healthz` is also 503 when the
  Node is being deleted or tainted `ToBeDeletedByClusterAutoscaler` (KEP-3836), so
  cloud load balancers drain the node.
* `ServiceHealthServers`: for every Service with externalTrafficPolicy Local, an HTTP
  server on its `healthCheckNodePort` answering 200 when this node has at least one
  local ready endpoint (and the proxy is healthy), else 503, with kube-proxy's JSON
  body and `X-Load-Balancing-Endpoint-Weight` header. Load balancers send traffic
  only to nodes that answer 200.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Callable

from aiohttp import web

from svcnet.proxy.metrics import ProxyMetrics

log = logging.getLogger(__name__)


def _go_time(ts: float) -> str:
    """Go's time.Time.String() in UTC, the format kube-proxy's JSON carries."""
    if ts <= 0:
        return "0001-01-01 00:00:00 +0000 UTC"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC")


class ProxyHealth:
    def __init__(self, timeout: float, metrics: ProxyMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self.metrics = metrics
        self.clock = clock
        self.last_updated = 0.0
        self.oldest_pending_queued = 0.0  # 0 = nothing pending
        self.node_eligible = True

    def queued(self) -> None:
        if not self.oldest_pending_queued:
            self.oldest_pending_queued = self.clock()

    def updated(self) -> None:
        self.last_updated = self.clock()
        self.oldest_pending_queued = 0.0

    def healthy(self) -> bool:
        if self.oldest_pending_queued and self.clock() - self.oldest_pending_queued > self.timeout:
            return False
        return True

    def _body(self, with_eligibility: bool) -> str:
        body = f'{{"lastUpdated": {json.dumps(_go_time(self.last_updated))},' \
               f'"currentTime": {json.dumps(_go_time(self.clock()))}'
        if with_eligibility:
            body += f', "nodeEligible": {str(self.node_eligible).lower()}'
        return body + "}"

    async def handle_healthz(self, _: web.Request) -> web.Response:
        ok = self.healthy() and self.node_eligible
        if self.metrics:
            self.metrics.healthz_total.labels("200" if ok else "503").inc()
        return _json(200 if ok else 503, self._body(True))

    async def handle_livez(self, _: web.Request) -> web.Response:
        ok = self.healthy()
        if self.metrics:
            self.metrics.livez_total.labels("200" if ok else "503").inc()
        return _json(200 if ok else 503, self._body(False))


def _json(status: int, body: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=body, content_type="application/json",
                        headers={"X-Content-Type-Options": "nosniff", **(headers or {})})


class ServiceHealthServers:
    """One HTTP listener per healthCheckNodePort, reconciled after every sync."""

    def __init__(self, addresses: list[str], proxy: ProxyHealth) -> None:
        self.addresses = addresses or ["0.0.0.0"]
        self.proxy = proxy
        self._servers: dict[tuple[str, str], tuple[int, web.AppRunner]] = {}
        self.local_endpoints: dict[tuple[str, str], int] = {}

    async def sync(self, wanted: dict[tuple[str, str], int], local_endpoints: dict[tuple[str, str], int]) -> None:
        """`wanted`: (namespace, name) -> healthCheckNodePort; counts of local ready endpoints."""
        self.local_endpoints = dict(local_endpoints)
        for nsn, (port, runner) in list(self._servers.items()):
            if wanted.get(nsn) != port:
                await runner.cleanup()
                del self._servers[nsn]
        for nsn, port in wanted.items():
            if nsn in self._servers or not port:
                continue
            try:
                self._servers[nsn] = (port, await self._start(nsn, port))
            except OSError as e:  # keep serving the others; retried on the next sync
                log.error("cannot serve health check service=%s/%s port=%d: %s", *nsn, port, e)

    async def _start(self, nsn: tuple[str, str], port: int) -> web.AppRunner:
        async def handle(_: web.Request) -> web.Response:
            count = self.local_endpoints.get(nsn, 0)
            healthy = self.proxy.healthy()
            body = json.dumps({"service": {"namespace": nsn[0], "name": nsn[1]},
                               "localEndpoints": count, "serviceProxyHealthy": healthy}, indent="\t")
            return _json(200 if count and healthy else 503, body,
                         {"X-Load-Balancing-Endpoint-Weight": str(count)})

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for addr in self.addresses:
            await web.TCPSite(runner, addr, port, reuse_address=True).start()
        log.info("serving health check service=%s/%s port=%d", nsn[0], nsn[1], port)
        return runner

    async def close(self) -> None:
        for _, runner in self._servers.values():
            await runner.cleanup()
        self._servers.clear()
