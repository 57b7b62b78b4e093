"""RestClient: verbs, selectors, pagination and watch streams, against the fake API
over a real socket and against MockTransport for exact wire checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from svcnet.apiclient import errors
from svcnet.apiclient.client import PatchType, RestClient, WatchEvent, label_selector_from_spec
from svcnet.apiclient.resources import ENDPOINT_SLICES, NODES, PODS, SERVICES
from svcnet.apiclient.transport import MockResponse, MockTransport, Request

from .fake_api import FakeApi, status


def svc(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"ports": [{"port": 80}]}}


async def test_create_get_update_status_delete(fake: FakeApi, client: RestClient) -> None:
    created = await client.create(SERVICES, svc("web"))
    assert created["metadata"]["resourceVersion"] == "101"
    got = await client.get(SERVICES, "web", "default")
    assert got == created
    got["spec"]["ports"] = [{"port": 8080}]
    updated = await client.update(SERVICES, got)
    assert updated["spec"]["ports"] == [{"port": 8080}]
    # The RV we sent is stale now: optimistic concurrency says Conflict.
    with pytest.raises(errors.Conflict) as conflict:
        await client.update(SERVICES, got)
    assert conflict.value.code == 409 and "has been modified" in conflict.value.message
    updated["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    st = await client.update_status(SERVICES, updated)
    assert st["status"]["loadBalancer"]["ingress"][0]["ip"] == "192.0.2.1"
    assert fake.requests[-1][1] == "/api/v1/namespaces/default/services/web/status"
    await client.delete(SERVICES, "web", "default")
    with pytest.raises(errors.NotFound) as nf:
        await client.get(SERVICES, "web", "default")
    assert isinstance(nf.value, LookupError) and nf.value.status["details"]["name"] == "web"


async def test_create_existing_is_already_exists(client: RestClient) -> None:
    await client.create(SERVICES, svc("web"))
    with pytest.raises(errors.AlreadyExists) as e:
        await client.create(SERVICES, svc("web"))
    assert e.value.reason == "AlreadyExists" and not isinstance(e.value, errors.Conflict)


async def test_namespace_rules_fail_before_sending(client: RestClient) -> None:
    with pytest.raises(ValueError, match="namespaced"):
        await client.get(SERVICES, "web")
    with pytest.raises(ValueError, match="does not match"):
        await client.create(SERVICES, svc("web", ns="a"), namespace="b")
    node = await client.create(NODES, {"metadata": {"name": "n1"}})
    assert "namespace" not in node["metadata"]
    assert (await client.get(NODES, "n1"))["metadata"]["name"] == "n1"


async def test_all_four_patch_types(fake: FakeApi, client: RestClient) -> None:
    await client.create(SERVICES, svc("web", app="a"))
    out = await client.patch(SERVICES, "web", {"metadata": {"labels": {"app": "b"}}}, "default")
    assert out["metadata"]["labels"] == {"app": "b"}
    out = await client.patch(SERVICES, "web", {"metadata": {"labels": {"tier": "x"}}}, "default",
                             patch_type=PatchType.MERGE)
    assert out["metadata"]["labels"] == {"app": "b", "tier": "x"}
    out = await client.patch(SERVICES, "web", [{"op": "remove", "path": "/metadata/labels/tier"}],
                             "default", patch_type=PatchType.JSON)
    assert out["metadata"]["labels"] == {"app": "b"}
    applied = svc("web", app="c")
    out = await client.patch(SERVICES, "web", applied, "default", patch_type=PatchType.APPLY,
                             field_manager="svcnet-test", force=True)
    assert out["metadata"]["labels"] == {"app": "c"}
    assert fake.requests[-1][2] == {"fieldManager": "svcnet-test", "force": "true"}
    with pytest.raises(ValueError, match="field_manager"):
        await client.patch(SERVICES, "web", applied, "default", patch_type=PatchType.APPLY)


async def test_patch_content_types_on_the_wire() -> None:
    seen: list[Request] = []

    def handler(req: Request) -> MockResponse:
        seen.append(req)
        return MockResponse(200, {"kind": "Service", "metadata": {"name": "web"}})

    client = RestClient("https://k8s.test:6443/prefix", transport=MockTransport(handler))
    for pt, body in ((PatchType.STRATEGIC, {}), (PatchType.MERGE, {}),
                     (PatchType.JSON, []), (PatchType.APPLY, {})):
        await client.patch(SERVICES, "web", body, "ns1", patch_type=pt, field_manager="m")
    assert [r.headers["Content-Type"] for r in seen] == [
        "application/strategic-merge-patch+json", "application/merge-patch+json",
        "application/json-patch+json", "application/apply-patch+yaml"]
    assert seen[0].url == "https://k8s.test:6443/prefix/api/v1/namespaces/ns1/services/web?fieldManager=m"
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p1"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}
    await client.create(PODS, binding, "ns1", subresource="binding")
    assert (seen[-1].method, seen[-1].url) == ("POST", "https://k8s.test:6443/prefix/api/v1/namespaces/ns1/pods/p1/binding")
    await client.delete_collection(SERVICES, "ns1", label_selector={"app": "x"})
    assert (seen[-1].method, seen[-1].url) == ("DELETE", "https://k8s.test:6443/prefix/api/v1/namespaces/ns1/services?labelSelector=app%3Dx")
    await client.delete(SERVICES, "web", "ns1", grace_period_seconds=0, propagation_policy="Background",
                        preconditions={"uid": "u1"}, dry_run=True)
    assert seen[-1].method == "DELETE" and seen[-1].json() == {
        "kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
        "propagationPolicy": "Background", "preconditions": {"uid": "u1"}, "dryRun": ["All"]}


async def test_delete_precondition_conflict(client: RestClient) -> None:
    await client.create(SERVICES, svc("web"))
    with pytest.raises(errors.Conflict, match="Precondition"):
        await client.delete(SERVICES, "web", "default", preconditions={"uid": "not-it"})


async def test_list_selectors_fill_kind_and_paginate(fake: FakeApi, client: RestClient) -> None:
    for i in range(5):
        fake.create(SERVICES, svc(f"s{i}", app="web" if i % 2 else "db"))
    fake.create(ENDPOINT_SLICES, {"metadata": {"name": "x", "namespace": "default"}})
    page = await client.list(SERVICES, "default", label_selector={"app": "web"})
    assert [i["metadata"]["name"] for i in page["items"]] == ["s1", "s3"]
    assert page["items"][0]["kind"] == "Service" and page["items"][0]["apiVersion"] == "v1"
    assert fake.requests[-1][2] == {"labelSelector": "app=web"}
    merged = await client.list_all(SERVICES, page_size=2)
    assert [i["metadata"]["name"] for i in merged["items"]] == [f"s{i}" for i in range(5)]
    assert merged["metadata"] == {"resourceVersion": "106"}
    pages = [q for m, p, q in fake.requests if p == "/api/v1/services"]
    assert pages[0] == {"limit": "2"} and "continue" in pages[1] and "resourceVersion" not in pages[1]


async def test_expired_continue_falls_back_to_one_full_list() -> None:
    calls: list[dict[str, str]] = []

    def handler(req: Request) -> MockResponse:
        from yarl import URL
        q = dict(URL(req.url).query)
        calls.append(q)
        if "continue" in q:
            return MockResponse(410, status(410, "Expired", "The provided continue parameter is too old"))
        if "limit" in q:
            return MockResponse(200, {"metadata": {"resourceVersion": "5", "continue": "tok"},
                                      "items": [{"metadata": {"name": "a"}}]})
        return MockResponse(200, {"metadata": {"resourceVersion": "9"},
                                  "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]})

    client = RestClient("http://k8s.test", transport=MockTransport(handler))
    merged = await client.list_all(SERVICES, page_size=1)
    assert [i["metadata"]["name"] for i in merged["items"]] == ["a", "b"]
    assert merged["metadata"]["resourceVersion"] == "9"
    assert calls == [{"limit": "1"}, {"limit": "1", "continue": "tok"}, {}]


@pytest.mark.parametrize("code,reason,cls,builtin", [
    pytest.param(400, "BadRequest", errors.BadRequest, ValueError, id="400"),
    pytest.param(401, "Unauthorized", errors.Unauthorized, PermissionError, id="401"),
    pytest.param(403, "Forbidden", errors.Forbidden, PermissionError, id="403"),
    pytest.param(404, "NotFound", errors.NotFound, LookupError, id="404"),
    pytest.param(409, "AlreadyExists", errors.AlreadyExists, errors.ApiError, id="409-exists"),
    pytest.param(409, "Conflict", errors.Conflict, errors.ApiError, id="409-conflict"),
    pytest.param(410, "Expired", errors.Expired, errors.Gone, id="410-expired"),
    pytest.param(410, "Gone", errors.Gone, errors.ApiError, id="410-gone"),
    pytest.param(422, "Invalid", errors.Invalid, ValueError, id="422"),
    pytest.param(503, "ServiceUnavailable", errors.ServiceUnavailable, ConnectionError, id="503"),
    pytest.param(504, "Timeout", errors.ServerTimeout, TimeoutError, id="504"),
    pytest.param(418, "SomethingNew", errors.ApiError, Exception, id="unknown"),
])
async def test_typed_errors_from_status_bodies(code: int, reason: str, cls: type, builtin: type) -> None:
    body = status(code, reason, f"it went {reason}", name="web", kind="services")
    client = RestClient("http://k8s.test", transport=MockTransport(lambda r: MockResponse(code, body)),
                        max_retries=0)
    with pytest.raises(cls) as e:
        await client.get(SERVICES, "web", "default")
    assert type(e.value) is cls and isinstance(e.value, builtin)
    assert e.value.code == code and e.value.status == body and e.value.details["name"] == "web"
    assert str(e.value) == f"({reason}) it went {reason}"


async def test_invalid_carries_causes() -> None:
    body = status(422, "Invalid", 'Service "bad" is invalid: spec.ports[0].name: Required value',
                  name="bad", kind="Service",
                  causes=[{"reason": "FieldValueRequired", "message": "Required value",
                           "field": "spec.ports[0].name"}])
    client = RestClient("http://k8s.test", transport=MockTransport(lambda r: MockResponse(422, body)))
    with pytest.raises(ValueError) as e:
        await client.create(SERVICES, svc("bad"))
    assert isinstance(e.value, errors.Invalid)
    assert [str(c) for c in e.value.causes] == ["spec.ports[0].name: Required value"]
    assert e.value.causes[0].reason == "FieldValueRequired"


async def test_a_body_that_is_not_a_status_still_gives_a_typed_error() -> None:
    html = b"<html>502 Bad Gateway</html>"
    client = RestClient("http://k8s.test", transport=MockTransport(lambda r: MockResponse(404, html)))
    with pytest.raises(errors.NotFound) as e:
        await client.get(SERVICES, "web", "default")
    assert e.value.reason == "NotFound" and "502 Bad Gateway" in e.value.message


async def test_retry_after_is_honoured_then_gives_up() -> None:
    answers = [MockResponse(429, status(429, "TooManyRequests", "slow down"), {"Retry-After": "2"}),
               MockResponse(503, status(503, "ServiceUnavailable", "later",
                                        retryAfterSeconds=1), {}),
               MockResponse(200, {"metadata": {"name": "web"}})]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    client = RestClient("http://k8s.test", transport=MockTransport(lambda r: answers.pop(0)), sleep=sleep)
    assert (await client.get(SERVICES, "web", "default"))["metadata"]["name"] == "web"
    assert slept == [2.0, 1.0]
    # 503 without Retry-After is not retried: the server did not ask.
    client = RestClient("http://k8s.test", sleep=sleep, transport=MockTransport(
        lambda r: MockResponse(503, status(503, "ServiceUnavailable", "down"))))
    with pytest.raises(errors.ServiceUnavailable):
        await client.get(SERVICES, "web", "default")
    assert slept == [2.0, 1.0]


async def test_connection_refused_is_a_transport_error() -> None:
    client = RestClient("http://127.0.0.1:9", timeout=2.0)  # discard port: nothing listens
    try:
        with pytest.raises(errors.TransportError):
            await client.get(SERVICES, "web", "default")
    finally:
        await client.close()


def _events(*docs: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


async def test_watch_stream_framing_bookmarks_and_error_event() -> None:
    a = {"type": "ADDED", "object": {"kind": "Service", "metadata": {"name": "a", "resourceVersion": "5"}}}
    b = {"type": "MODIFIED", "object": {"kind": "Service", "metadata": {"name": "a", "resourceVersion": "6"}}}
    bm = {"type": "BOOKMARK", "object": {"kind": "Service", "metadata": {"resourceVersion": "9"}}}
    err = {"type": "ERROR", "object": status(410, "Expired", "too old resource version: 1 (5)")}
    wire = _events(a, b, bm, err)
    # Cut the stream into awkward pieces: mid-event, mid-UTF-8, several events per chunk.
    chunks = [wire[:7], wire[7:60], wire[60:61], wire[61:]]
    requests: list[Request] = []

    def handler(req: Request) -> MockResponse:
        requests.append(req)
        return MockResponse(200, chunks=chunks, headers={"Content-Type": "application/json"})

    client = RestClient("http://k8s.test", transport=MockTransport(handler))
    got: list[WatchEvent] = []
    with pytest.raises(errors.Expired) as e:
        async with client.watch(SERVICES, resource_version="4", timeout_seconds=60,
                                label_selector="app=web") as w:
            async for event in w:
                got.append(event)
    assert [(t, o["metadata"]["resourceVersion"]) for t, o in got] == [
        ("ADDED", "5"), ("MODIFIED", "6"), ("BOOKMARK", "9")]
    assert e.value.code == 410 and "too old" in e.value.message
    assert requests[0].url == ("http://k8s.test/api/v1/services?watch=true&resourceVersion=4"
                               "&labelSelector=app%3Dweb&timeoutSeconds=60&allowWatchBookmarks=true")
    assert requests[0].read_timeout == 90 and requests[0].stream


async def test_watch_garbage_is_a_decode_error() -> None:
    client = RestClient("http://k8s.test", transport=MockTransport(
        lambda r: MockResponse(200, chunks=[b'{"type":"ADDED","object":{}}\n{not json}\n'])))
    events = []
    with pytest.raises(errors.DecodeError):
        async for ev in client.watch(SERVICES):
            events.append(ev)
    assert len(events) == 1


async def test_watch_over_http_delivers_changes_in_order(fake: FakeApi, client: RestClient) -> None:
    fake.split_events = True
    fake.create(SERVICES, svc("a"))
    rv = fake.rev
    fake.create(SERVICES, svc("b"))
    fake.delete(SERVICES, "default/a")
    seen = []
    async with client.watch(SERVICES, "default", resource_version=str(rv), timeout_seconds=1) as w:
        async for t, o in w:
            seen.append((t, o["metadata"].get("name", ""), o["metadata"]["resourceVersion"]))
    # Strictly after rv, then the bookmark the server sends before it closes at timeoutSeconds.
    assert seen == [("ADDED", "b", "102"), ("DELETED", "a", "103"), ("BOOKMARK", "", "103")]


async def test_watch_from_zero_starts_with_synthetic_adds(fake: FakeApi, client: RestClient) -> None:
    fake.create(SERVICES, svc("a"))
    async with client.watch(SERVICES, resource_version="0", allow_watch_bookmarks=False) as w:
        first = await w.__anext__()
    assert first.type == "ADDED" and first.object["metadata"]["name"] == "a"


async def test_broken_watch_connection_is_a_transport_error(fake: FakeApi, client: RestClient) -> None:
    fake.create(SERVICES, svc("a"))
    async with client.watch(SERVICES, resource_version="0") as w:
        await w.__anext__()
        await fake.break_watches()
        with pytest.raises(errors.TransportError):
            await w.__anext__()


async def test_unauthorized_without_the_token(fake: FakeApi) -> None:
    from svcnet.apiclient.kubeconfig import KubeConfig

    fake.token = "s3cret"
    url = fake.url  # type: ignore[attr-defined]
    async with RestClient(url, config=KubeConfig(server=url, token="wrong")) as c:
        with pytest.raises(errors.Unauthorized):
            await c.list(SERVICES)
    async with RestClient(url, config=KubeConfig(server=url, token="s3cret")) as c:
        assert (await c.list(SERVICES))["items"] == []


def test_label_selector_from_spec() -> None:
    spec = {"matchLabels": {"b": "2", "a": "1"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]},
                                 {"key": "x", "operator": "Exists"},
                                 {"key": "y", "operator": "DoesNotExist"},
                                 {"key": "z", "operator": "NotIn", "values": ["q"]}]}
    assert label_selector_from_spec(spec) == "a=1,b=2,tier in (api,web),x,!y,z notin (q)"
