"""RestClient with several servers (kubeconfig extension `svcnet.io/servers`): moves to
the next server on connection failures only, re-sends what is safe to re-send, and
leaves ambiguous writes to the caller."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from svcnet.apiclient import errors
from svcnet.apiclient.client import RestClient
from svcnet.apiclient.kubeconfig import KubeconfigError, load_kubeconfig, servers_extension
from svcnet.apiclient.resources import SERVICES
from svcnet.apiclient.transport import MockResponse, MockTransport, Request

A, B, C = "https://192.0.2.10:6443", "https://192.0.2.11:6443", "https://192.0.2.12:6443"
SVC_LIST = {"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": []}


def transport(down: set[str], *, connect_failed: bool = True) -> MockTransport:
    def handler(req: Request) -> MockResponse:
        for server in down:
            if req.url.startswith(server + "/"):
                raise errors.TransportError(f"{req.method} {req.url}: refused", connect_failed=connect_failed)
        if "watch=true" in req.url:
            return MockResponse(200, chunks=[])
        if req.method == "POST":
            return MockResponse(201, {**(req.json() or {}), "metadata": {"name": "x", "resourceVersion": "8"}})
        return MockResponse(200, SVC_LIST)
    return MockTransport(handler)


async def test_refused_connection_moves_on_for_any_verb_and_stays() -> None:
    t = transport({A})
    client = RestClient(A, servers=[A, B, C], transport=t)
    await client.create(SERVICES, {"metadata": {"name": "x"}}, "default")
    assert [r.url.split("/api")[0] for r in t.requests] == [A, B]
    assert client.server == B
    await client.list(SERVICES, "default")
    assert t.requests[-1].url.startswith(B + "/api/v1/namespaces/default/services")


async def test_reset_during_a_write_is_the_callers_to_judge_but_the_next_request_moves() -> None:
    t = transport({A}, connect_failed=False)  # the request left: it may have been applied
    client = RestClient(A, servers=[A, B], transport=t)
    with pytest.raises(errors.TransportError):
        await client.create(SERVICES, {"metadata": {"name": "x"}}, "default")
    assert len(t.requests) == 1 and client.server == B
    await client.create(SERVICES, {"metadata": {"name": "x"}}, "default")
    assert t.requests[-1].url.startswith(B)


async def test_reads_are_resent_after_a_reset() -> None:
    t = transport({A}, connect_failed=False)
    client = RestClient(A, servers=[A, B], transport=t)
    out = await client.list(SERVICES, "default")
    assert out["metadata"]["resourceVersion"] == "7" and t.requests[-1].url.startswith(B)


async def test_http_errors_do_not_move_the_client() -> None:
    t = MockTransport(lambda req: MockResponse(500, {"kind": "Status", "code": 500, "reason": "InternalError"}))
    client = RestClient(A, servers=[A, B], transport=t)
    with pytest.raises(errors.ApiError):
        await client.list(SERVICES, "default")
    assert client.server == A and len(t.requests) == 1


async def test_all_down_raises_after_trying_each_once() -> None:
    t = transport({A, B, C})
    client = RestClient(B, servers=[A, B, C], transport=t)
    with pytest.raises(errors.TransportError):
        await client.list(SERVICES, "default")
    assert sorted(r.url.split("/api")[0] for r in t.requests) == [A, B, C]


async def test_watch_opens_on_the_next_server_from_the_same_resource_version() -> None:
    t = transport({A})
    client = RestClient(A, servers=[A, B], transport=t)
    async with client.watch(SERVICES, "default", resource_version="41") as w:
        assert [e async for e in w] == []
    assert t.requests[-1].url.startswith(B) and "resourceVersion=41" in t.requests[-1].url


async def test_default_https_port_is_matched() -> None:
    t = transport({"https://10.96.0.1"})
    client = RestClient("https://10.96.0.1:443", servers=["https://10.96.0.1:443", B], transport=t)
    await client.list(SERVICES, "default")
    assert t.requests[-1].url.startswith(B)


def write(tmp_path: Path, cluster: dict) -> Path:  # type: ignore[type-arg]
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "k", "cluster": cluster}],
           "users": [{"name": "u", "user": {"token": "t"}}],
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}
    p = tmp_path / "kubeconfig"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_kubeconfig_servers_extension(tmp_path: Path) -> None:
    cfg = load_kubeconfig(write(tmp_path, {
        "server": A, "extensions": [{"name": "minikube", "extension": {"provider": "x"}},
                                    servers_extension([A, B, C + "/"])]}))
    assert cfg.server == A and cfg.servers == (A, B, C)
    assert RestClient.from_config(cfg).servers == (A, B, C)
    assert load_kubeconfig(write(tmp_path, {"server": B})).servers == (B,)


def test_kubeconfig_servers_extension_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match=r"svcnet.io/servers.*extension.servers: 'ftp://x'"):
        load_kubeconfig(write(tmp_path, {"server": A, "extensions": [servers_extension(["ftp://x"])]}))
    with pytest.raises(KubeconfigError, match="expected a list of URLs"):
        load_kubeconfig(write(tmp_path, {"server": A, "extensions": [
            {"name": "svcnet.io/servers", "extension": {"servers": A}}]}))


async def test_connecting_is_bounded_apart_when_there_are_other_servers() -> None:
    t = transport(set())
    await RestClient(A, servers=[A, B], transport=t).list(SERVICES, "default")
    await RestClient(A, transport=t).list(SERVICES, "default")
    assert [(r.timeout, r.connect_timeout) for r in t.requests] == [(30.0, 10.0), (30.0, 30.0)]


async def test_a_silent_watch_counts_as_a_gone_server_only_with_somewhere_to_go() -> None:
    t = transport(set())
    for client in (RestClient(A, servers=[A, B], transport=t), RestClient(A, transport=t)):
        async with client.watch(SERVICES, "default", timeout_seconds=600) as w:
            assert [e async for e in w] == []
    assert [r.read_timeout for r in t.requests] == [90.0, 630.0]
