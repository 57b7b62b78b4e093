"""Health endpoints answer like kube-proxy's: status codes and JSON bodies."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from svcnet.proxy.conntrack import Flow, UdpTarget, is_stale
from svcnet.proxy.healthcheck import ProxyHealth, ServiceHealthServers
from svcnet.proxy.metrics import ProxyMetrics


class Clock:
    t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


async def test_healthz_turns_503_when_a_queued_update_is_not_synced_in_time() -> None:
    clock = Clock()
    metrics = ProxyMetrics()
    h = ProxyHealth(timeout=60, metrics=metrics, clock=clock)
    app = web.Application()
    app.router.add_get("/healthz", h.handle_healthz)
    app.router.add_get("/livez", h.handle_livez)
    async with TestClient(TestServer(app)) as client:
        h.updated()
        r = await client.get("/healthz")
        body = json.loads(await r.text())
        assert r.status == 200 and body["nodeEligible"] is True
        assert body["lastUpdated"].endswith("+0000 UTC")
        h.queued()
        clock.t += 61
        assert (await client.get("/healthz")).status == 503
        r = await client.get("/livez")
        assert r.status == 503 and "nodeEligible" not in json.loads(await r.text())
        h.updated()
        h.node_eligible = False  # node being deleted: LBs should drain it
        assert (await client.get("/healthz")).status == 503
        assert (await client.get("/livez")).status == 200
    text = metrics.registry.get_sample_value("kubeproxy_proxy_healthz_total", {"code": "503"})
    assert text == 2.0


async def test_service_health_body_and_status() -> None:
    h = ProxyHealth(timeout=60)
    servers = ServiceHealthServers(["127.0.0.1"], h)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await servers.sync({("ns1", "web"): port}, {("ns1", "web"): 2})
    try:
        from aiohttp import ClientSession

        async with ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as r:
                assert r.status == 200 and r.headers["X-Load-Balancing-Endpoint-Weight"] == "2"
                assert json.loads(await r.text()) == {"service": {"namespace": "ns1", "name": "web"},
                                                      "localEndpoints": 2, "serviceProxyHealthy": True}
            await servers.sync({("ns1", "web"): port}, {("ns1", "web"): 0})
            async with session.get(f"http://127.0.0.1:{port}/") as r:
                assert r.status == 503
    finally:
        await servers.close()


def test_stale_udp_flows() -> None:
    t = UdpTarget(4, frozenset({"10.96.0.10"}), 53, 30053, frozenset({("10.244.0.3", 5353)}))
    assert is_stale(Flow(4, "10.96.0.10", 53, "10.244.0.2", 5353), [t]), "old endpoint"
    assert is_stale(Flow(4, "10.96.0.10", 53, "10.96.0.10", 53), [t]), "made while there were no endpoints"
    assert is_stale(Flow(4, "192.168.0.2", 30053, "10.244.0.2", 5353), [t]), "NodePort"
    assert not is_stale(Flow(4, "10.96.0.10", 53, "10.244.0.3", 5353), [t]), "current endpoint"
    assert not is_stale(Flow(4, "10.96.0.11", 53, "10.244.0.2", 5353), [t]), "another service"
