"""The HTTP layer end to end over a real socket, with an in-memory registry double:
routing, auth, errors as Status, body decoding, tables, warnings, watch streaming."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from svcnet.controlplane.apiserver.app import build_app, parse_resource_path
from svcnet.controlplane.apiserver.auth import Tokens
from svcnet.controlplane.apiserver.protobuf import encode_unknown, field_bytes as f
from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import schema

from .fake_registry import FakeRegistry

ADMIN = {"Authorization": "Bearer admin-token"}
READONLY = {"Authorization": "Bearer ro-token"}
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
       "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}}


@pytest.fixture
async def env() -> AsyncIterator[tuple[TestClient, FakeRegistry]]:
    registry = FakeRegistry()
    app = build_app(registry, Tokens("admin-token", "ro-token"), "127.0.0.1:6443",  # type: ignore[arg-type]
                    schema.openapi_v3_components)
    async with TestClient(TestServer(app)) as client:
        yield client, registry


def test_parse_resource_path() -> None:
    t = parse_resource_path("", "v1", "namespaces/default/services/web/status")
    assert (t.kind.plural, t.namespace, t.name, t.subresource) == ("services", "default", "web", "status")
    t = parse_resource_path("", "v1", "namespaces/default/status")
    assert (t.kind.plural, t.namespace, t.name, t.subresource) == ("namespaces", None, "default", "status")
    t = parse_resource_path("discovery.k8s.io", "v1", "endpointslices")
    assert (t.kind.plural, t.namespace, t.name) == ("endpointslices", None, None)
    for group, tail in [("", "nosuch"), ("", "namespaces/x/nodes"), ("", "services/web"),
                        ("", "namespaces/x/services/web/nosub"), ("", "namespaces/x/services/a/b/c")]:
        with pytest.raises(APIError) as err:
            parse_resource_path(group, "v1", tail)
        assert err.value.code == 404


async def test_public_and_authenticated_endpoints(env: tuple[TestClient, FakeRegistry]) -> None:
    client, _ = env
    for path in ("/healthz", "/livez", "/readyz"):
        r = await client.get(path)
        assert r.status == 200 and await r.text() == "ok"
    r = await client.get("/version")
    assert (await r.json())["minor"] == "32"
    r = await client.get("/api/v1/namespaces/default/services")
    assert r.status == 401
    body = await r.json()
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "Unauthorized", 401)
    r = await client.get("/api", headers={"Authorization": "Bearer wrong"})
    assert r.status == 401


async def test_readyz_follows_the_storage_check(env: tuple[TestClient, FakeRegistry],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from svcnet.controlplane.apiserver import health

    client, registry = env
    r = await client.get("/readyz?verbose")
    assert r.status == 200
    assert await r.text() == "[+]ping ok\n[+]etcd ok\n[+]shutdown ok\nreadyz check passed\n"
    registry.storage.failure = ConnectionRefusedError("etcd cluster is unreachable")
    r = await client.get("/readyz")
    assert r.status == 500 and r.content_type == "text/plain"
    # kube's text: every check listed, the reason withheld on a public endpoint
    assert await r.text() == ("[+]ping ok\n[-]etcd failed: reason withheld\n[+]shutdown ok\n"
                              "readyz check failed\n")
    r = await client.get("/healthz")
    assert r.status == 500 and "[-]etcd failed: reason withheld" in await r.text()
    r = await client.get("/livez")
    assert (r.status, await r.text()) == (200, "ok")  # an etcd outage is no reason to restart
    r = await client.get("/readyz?exclude=etcd")
    assert (r.status, await r.text()) == (200, "ok")
    r = await client.get("/readyz/etcd", headers=ADMIN)
    assert r.status == 500 and await r.text() == "[-]etcd failed: reason withheld\nreadyz check failed\n"
    r = await client.get("/readyz/etcd")
    assert r.status == 401  # single checks are not public
    r = await client.get("/readyz/nosuch", headers=ADMIN)
    assert r.status == 404
    # a store that does not answer is unready after the check's timeout, not after minutes
    registry.storage.failure = None
    registry.storage.hang = True
    monkeypatch.setattr(health, "STORAGE_CHECK_TIMEOUT", 0.05)
    r = await client.get("/readyz")
    assert r.status == 500 and "[-]etcd failed" in await r.text()
    registry.storage.hang = False
    r = await client.get("/readyz")
    assert (r.status, await r.text()) == (200, "ok")


async def test_readonly_token_reads_but_cannot_write(env: tuple[TestClient, FakeRegistry]) -> None:
    client, _ = env
    r = await client.get("/api/v1/namespaces/default/services", headers=READONLY)
    assert r.status == 200
    r = await client.post("/api/v1/namespaces/default/services", json=SVC, headers=READONLY)
    assert r.status == 403
    body = await r.json()
    assert body["reason"] == "Forbidden"
    assert 'User "svcnet:agent" cannot create resource "services"' in body["message"]


async def test_create_get_table_and_warnings(env: tuple[TestClient, FakeRegistry]) -> None:
    client, registry = env
    registry.warnings = ['unknown field "spec.foo"']
    r = await client.post("/api/v1/namespaces/default/services?fieldManager=kubectl-create"
                          "&fieldValidation=Warn&dryRun=All", json=SVC, headers=ADMIN)
    assert r.status == 201
    assert r.headers.getall("Warning") == ['299 - "unknown field \\"spec.foo\\""']
    assert registry.calls[-1] == ("create", {"dry_run": True, "field_manager": "kubectl-create",
                                             "field_validation": "Warn"})
    assert not registry.objects  # dry run
    r = await client.post("/api/v1/namespaces/default/services", json=SVC, headers=ADMIN)
    assert r.status == 201 and (await r.json())["metadata"]["namespace"] == "default"
    r = await client.get("/api/v1/namespaces/default/services", headers={**ADMIN, "Accept": TABLE})
    assert r.headers["Content-Type"] == "application/json;as=Table;v=v1;g=meta.k8s.io"
    table = await r.json()
    assert table["kind"] == "Table" and table["rows"][0]["cells"][0] == "web"
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    r = await client.get("/api/v1/namespaces/default/services/web", headers={**ADMIN, "Accept": "application/yaml"})
    assert r.headers["Content-Type"] == "application/yaml" and "name: web" in await r.text()


@pytest.mark.parametrize("path,body,ctype,code,reason", [
    ("/api/v1/namespaces/default/services", b"{not json", "application/json", 400, "BadRequest"),
    ("/api/v1/namespaces/default/services", json.dumps({**SVC, "kind": "Pod"}).encode(), "application/json",
     400, "BadRequest"),
    ("/api/v1/namespaces/default/services", json.dumps({**SVC, "apiVersion": "apps/v1"}).encode(),
     "application/json", 400, "BadRequest"),
    ("/api/v1/namespaces/default/services",
     json.dumps({**SVC, "metadata": {"name": "web", "namespace": "other"}}).encode(), "application/json",
     400, "BadRequest"),
    ("/api/v1/namespaces/default/services", b"x", "text/plain", 415, "UnsupportedMediaType"),
    ("/api/v1/namespaces/default/services", b"{}" + b" " * (3 * 1024 * 1024), "application/json",
     413, "RequestEntityTooLarge"),
    ("/api/v1/namespaces/default/widgets", b"{}", "application/json", 404, "NotFound"),
    ("/apis/nosuch.io/v1/things", b"{}", "application/json", 404, "NotFound"),
])
async def test_bad_requests_are_status_objects(env: tuple[TestClient, FakeRegistry], path: str, body: bytes,
                                               ctype: str, code: int, reason: str) -> None:
    client, registry = env
    r = await client.post(path, data=body, headers={**ADMIN, "Content-Type": ctype})
    assert r.status == code
    status = await r.json()
    assert (status["kind"], status["code"], status["reason"]) == ("Status", code, reason)
    assert not registry.objects


async def test_protobuf_body_is_decoded(env: tuple[TestClient, FakeRegistry]) -> None:
    client, registry = env
    raw = f(1, f(1, "team-a"))
    r = await client.post("/api/v1/namespaces", data=encode_unknown("v1", "Namespace", raw),
                          headers={**ADMIN, "Content-Type": "application/vnd.kubernetes.protobuf",
                                   "Accept": "application/vnd.kubernetes.protobuf,application/json"})
    assert r.status == 201 and r.headers["Content-Type"] == "application/json"
    assert registry.objects[("namespaces", None, "team-a")]["kind"] == "Namespace"


async def test_patch_types_and_apply_rules(env: tuple[TestClient, FakeRegistry]) -> None:
    client, registry = env
    await client.post("/api/v1/namespaces/default/services", json=SVC, headers=ADMIN)
    url = "/api/v1/namespaces/default/services/web"
    r = await client.patch(url, data=b'{"metadata":{"labels":{"a":"b"}}}',
                           headers={**ADMIN, "Content-Type": "application/merge-patch+json"})
    assert r.status == 200 and (await r.json())["metadata"]["labels"] == {"a": "b"}
    r = await client.patch(url, data=b"{}", headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status == 415
    r = await client.patch(url, data=b"{}", headers={**ADMIN, "Content-Type": "application/apply-patch+yaml"})
    assert r.status == 400 and "fieldManager" in (await r.json())["message"]
    r = await client.patch(url + "?force=true", data=b"{}",
                           headers={**ADMIN, "Content-Type": "application/merge-patch+json"})
    assert r.status == 400
    r = await client.patch(url + "?fieldManager=kubectl&force=true", data=b"{}",
                           headers={**ADMIN, "Content-Type": "application/apply-patch+yaml"})
    assert r.status == 200
    assert registry.calls[-1][1]["force"] is True and registry.calls[-1][1]["field_manager"] == "kubectl"


async def test_put_name_must_match_url(env: tuple[TestClient, FakeRegistry]) -> None:
    client, _ = env
    await client.post("/api/v1/namespaces/default/services", json=SVC, headers=ADMIN)
    r = await client.put("/api/v1/namespaces/default/services/other", json=SVC, headers=ADMIN)
    assert r.status == 400 and "does not match the name on the URL" in (await r.json())["message"]


async def test_bad_selector_is_400_before_watching(env: tuple[TestClient, FakeRegistry]) -> None:
    client, _ = env
    r = await client.get("/api/v1/services?watch=true&fieldSelector=spec.bogus=1", headers=ADMIN)
    assert r.status == 400 and r.headers["Content-Type"] == "application/json"


async def _read_event(resp: object) -> dict:
    line = await asyncio.wait_for(resp.content.readline(), 5)  # type: ignore[attr-defined]
    return json.loads(line)


async def test_watch_streams_events_and_tables(env: tuple[TestClient, FakeRegistry]) -> None:
    client, _ = env
    await client.post("/api/v1/namespaces/default/services", json=SVC, headers=ADMIN)
    resp = await client.get("/api/v1/namespaces/default/services?watch=true&resourceVersion=0",
                            headers={**ADMIN, "Accept": TABLE})
    assert resp.status == 200
    first = await _read_event(resp)
    assert first["type"] == "ADDED" and first["object"]["kind"] == "Table"
    assert first["object"]["columnDefinitions"] and first["object"]["rows"][0]["cells"][0] == "web"
    await client.patch("/api/v1/namespaces/default/services/web", data=b'{"metadata":{"labels":{"x":"y"}}}',
                       headers={**ADMIN, "Content-Type": "application/merge-patch+json"})
    second = await _read_event(resp)
    assert second["type"] == "MODIFIED" and second["object"]["columnDefinitions"] == []
    await client.delete("/api/v1/namespaces/default/services/web", headers=ADMIN)
    assert (await _read_event(resp))["type"] == "DELETED"
    resp.close()


async def test_watch_timeout_and_expired_error_event(env: tuple[TestClient, FakeRegistry]) -> None:
    client, registry = env
    resp = await client.get("/api/v1/services?watch=1&timeoutSeconds=1", headers=ADMIN)
    assert await asyncio.wait_for(resp.content.read(), 5) == b""  # ends cleanly, no events
    registry.watch_error = APIError(410, "Expired", "too old resource version: 1 (5)")
    resp = await client.get("/api/v1/services?watch=1&resourceVersion=1", headers=ADMIN)
    assert resp.status == 200
    event = await _read_event(resp)
    assert event["type"] == "ERROR"
    assert (event["object"]["kind"], event["object"]["code"], event["object"]["reason"]) == ("Status", 410, "Expired")


async def test_discovery_and_openapi(env: tuple[TestClient, FakeRegistry]) -> None:
    client, _ = env
    r = await client.get("/api", headers={**ADMIN, "Accept": "application/json;g=apidiscovery.k8s.io;v=v2beta1;"
                                                             "as=APIGroupDiscoveryList,application/json"})
    assert r.headers["Content-Type"].endswith("v=v2beta1;as=APIGroupDiscoveryList")
    r = await client.get("/apis/discovery.k8s.io", headers=ADMIN)
    assert (await r.json())["kind"] == "APIGroup"
    r = await client.get("/apis/apps/v1", headers=ADMIN)
    assert (await r.json())["resources"][0]["name"] == "deployments"
    index = await (await client.get("/openapi/v3", headers=ADMIN)).json()
    url = index["paths"]["api/v1"]["serverRelativeURL"]
    r = await client.get(url, headers=ADMIN)
    assert r.headers["Cache-Control"] == "public, immutable"
    doc = await r.json()
    patch = doc["paths"]["/api/v1/namespaces/{namespace}/services/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "", "version": "v1", "kind": "Service"}
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert "io.k8s.api.core.v1.ServicePort" in doc["components"]["schemas"]


async def test_metrics_count_requests(env: tuple[TestClient, FakeRegistry]) -> None:
    client, _ = env
    await client.get("/api/v1/namespaces/default/services/nope", headers=ADMIN)
    text = await (await client.get("/metrics", headers=ADMIN)).text()
    assert 'apiserver_request_total{code="404",group="",resource="services",scope="resource",' \
           'subresource="",verb="GET",version="v1"} 1.0' in text
    assert "apiserver_registered_watchers" in text


async def test_streaming_list_options_validated_as_upstream(env: tuple[TestClient, FakeRegistry]) -> None:
    client, registry = env
    # without allowWatchBookmarks the end of the initial events could not be marked
    r = await client.get("/api/v1/services?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
                         headers=ADMIN)
    body = await r.json()
    assert r.status == 422 and body["reason"] == "Invalid"
    assert [c["field"] for c in body["details"]["causes"]] == ["allowWatchBookmarks"]
    r = await client.get("/api/v1/services?watch=1&sendInitialEvents=true&allowWatchBookmarks=1"
                         "&resourceVersionMatch=Exact", headers=ADMIN)
    causes = (await r.json())["details"]["causes"]
    assert r.status == 422 and [c["reason"] for c in causes] == ["FieldValueForbidden", "FieldValueNotSupported"]
    r = await client.get("/api/v1/services?sendInitialEvents=true", headers=ADMIN)
    assert r.status == 422 and "only supported on watch requests" in (await r.json())["message"]
    resp = await client.get("/api/v1/services?watch=1&sendInitialEvents=true&allowWatchBookmarks=1"
                            "&resourceVersionMatch=NotOlderThan&timeoutSeconds=1", headers=ADMIN)
    assert resp.status == 200
    await resp.read()
    watches = [kw for call, kw in registry.calls if call == "watch"]
    assert watches[-1] == {"label_selector": "", "field_selector": "", "resource_version": "",
                           "allow_bookmarks": True, "send_initial_events": True}


async def test_shutdown_ends_open_watches(env: tuple[TestClient, FakeRegistry]) -> None:
    client, _ = env
    from svcnet.controlplane.apiserver.app import state_of
    resp = await client.get("/api/v1/services?watch=1", headers=ADMIN)
    assert resp.status == 200
    state_of(client.server.app).stopping.set()
    assert await asyncio.wait_for(resp.content.read(), 1.5) == b""
