"""Registry semantics: resourceVersions, conflicts, metadata lifecycle, subresources,
finalizers, namespaces, garbage collection, selectors, pagination, dry-run, field validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.store import Registry

from .conftest import svc


def pod(name: str, node: str = "", labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "busybox:1.36"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "labels": labels or {}, **extra}, "spec": spec}


def cm_slice(name: str, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, **meta}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"]}], "ports": [{"name": "http", "port": 8080}]}


async def test_create_sets_server_fields(registry: Registry) -> None:
    out, warnings = await registry.create(k.PODS, "default", pod("p"))
    meta = out["metadata"]
    assert warnings == []
    assert len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) == registry.current_revision
    assert meta["generation"] == 1
    assert out["status"]["phase"] == "Pending"
    assert out["spec"]["restartPolicy"] == "Always" and out["spec"]["dnsPolicy"] == "ClusterFirst"
    assert out["kind"] == "Pod" and out["apiVersion"] == "v1"
    assert await registry.get(k.PODS, "default", "p") == out


async def test_create_twice_is_already_exists(registry: Registry) -> None:
    await registry.create(k.SERVICES, "default", svc("web"))
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("web"))
    assert info.value.code == 409 and info.value.reason == "AlreadyExists"
    assert info.value.message == 'services "web" already exists'


async def test_missing_objects_and_namespaces_are_404(registry: Registry) -> None:
    with pytest.raises(APIError) as info:
        await registry.get(k.ENDPOINT_SLICES, "default", "nope")
    assert info.value.code == 404
    assert info.value.message == 'endpointslices.discovery.k8s.io "nope" not found'
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "nowhere", svc("web"))
    assert info.value.code == 404 and info.value.message == 'namespaces "nowhere" not found'


async def test_resource_version_on_create_is_rejected(registry: Registry) -> None:
    body = svc("web")
    body["metadata"]["resourceVersion"] = "5"
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", body)
    assert info.value.code == 400


async def test_generate_name(registry: Registry) -> None:
    a, _ = await registry.create(k.ENDPOINT_SLICES, "default", cm_slice("", generateName="web-"))
    b, _ = await registry.create(k.ENDPOINT_SLICES, "default", cm_slice("", generateName="web-"))
    for obj in (a, b):
        name = obj["metadata"]["name"]
        assert name.startswith("web-") and len(name) == 9
        assert not set(name[4:]) & set("aeiou")
    assert a["metadata"]["name"] != b["metadata"]["name"]


async def test_stale_resource_version_is_409_and_unset_is_unconditional(registry: Registry) -> None:
    first, _ = await registry.create(k.SERVICES, "default", svc("web"))
    first["metadata"]["labels"] = {"v": "1"}
    second, _ = await registry.update(k.SERVICES, "default", "web", first)
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    first["metadata"]["labels"] = {"v": "2"}
    with pytest.raises(APIError) as info:
        await registry.update(k.SERVICES, "default", "web", first)  # carries the old RV
    assert info.value.code == 409 and info.value.reason == "Conflict"
    assert "the object has been modified" in info.value.message
    first["metadata"].pop("resourceVersion")
    third, _ = await registry.update(k.SERVICES, "default", "web", first)
    assert third["metadata"]["labels"] == {"v": "2"}


async def test_no_op_writes_keep_the_resource_version(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("web"))
    rv = out["metadata"]["resourceVersion"]
    same, _ = await registry.update(k.SERVICES, "default", "web", out)
    assert same["metadata"]["resourceVersion"] == rv
    patched, _, _ = await registry.patch(k.SERVICES, "default", "web", "application/merge-patch+json",
                                         b'{"spec":{"ports":[{"port":80}]}}')
    assert patched["metadata"]["resourceVersion"] == rv
    assert registry.current_revision == int(rv)


async def test_generation_tracks_spec_changes_only(registry: Registry) -> None:
    out, _ = await registry.create(k.ENDPOINT_SLICES, "default", cm_slice("s"))
    assert out["metadata"]["generation"] == 1
    out["metadata"]["labels"] = {"a": "b"}
    out, _ = await registry.update(k.ENDPOINT_SLICES, "default", "s", out)
    assert out["metadata"]["generation"] == 1
    out["endpoints"][0]["addresses"] = ["10.244.1.6"]
    out, _ = await registry.update(k.ENDPOINT_SLICES, "default", "s", out)
    assert out["metadata"]["generation"] == 2


async def test_status_subresource_separation(registry: Registry) -> None:
    out, _ = await registry.create(k.PODS, "default", pod("p", node="n1"))
    # main resource: status changes are ignored
    out["status"] = {"phase": "Running"}
    out["metadata"]["labels"] = {"x": "y"}
    main, _ = await registry.update(k.PODS, "default", "p", out)
    assert main["status"]["phase"] == "Pending" and main["metadata"]["labels"] == {"x": "y"}
    # status: only status changes, and generation does not move
    main["status"] = {"phase": "Running", "podIP": "10.244.1.9"}
    main["metadata"]["labels"] = {"ignored": "yes"}
    main["spec"]["nodeName"] = "elsewhere"
    st, _ = await registry.update(k.PODS, "default", "p", main, subresource="status")
    assert st["status"] == {"phase": "Running", "podIP": "10.244.1.9"}
    assert st["metadata"]["labels"] == {"x": "y"} and st["spec"]["nodeName"] == "n1"
    assert st["metadata"]["generation"] == 1
    patched, _, _ = await registry.patch(k.PODS, "default", "p", "application/merge-patch+json",
                                         b'{"status":{"phase":"Succeeded"}}', subresource="status")
    assert patched["status"]["phase"] == "Succeeded"
    with pytest.raises(APIError) as info:
        await registry.update(k.ENDPOINT_SLICES, "default", "kubernetes",
                              await registry.get(k.ENDPOINT_SLICES, "default", "kubernetes"),
                              subresource="status")
    assert info.value.code == 404


async def test_pod_spec_is_immutable_except_binding(registry: Registry) -> None:
    out, _ = await registry.create(k.PODS, "default", pod("p"))
    bound, _, _ = await registry.patch(k.PODS, "default", "p", "application/merge-patch+json",
                                       b'{"spec":{"nodeName":"node-1"}}')
    assert bound["spec"]["nodeName"] == "node-1"
    with pytest.raises(APIError) as info:
        await registry.patch(k.PODS, "default", "p", "application/merge-patch+json",
                             b'{"spec":{"nodeName":"node-2"}}')
    assert info.value.code == 422


async def test_finalizers_hold_deletion_until_removed(registry: Registry) -> None:
    await registry.create(k.SERVICES, "default", svc("web", selector={"a": "b"}))
    body = cm_slice("held", finalizers=["example.com/hold"])
    await registry.create(k.ENDPOINT_SLICES, "default", body)
    deleting = await registry.delete(k.ENDPOINT_SLICES, "default", "held")
    assert deleting["metadata"]["deletionTimestamp"]
    again = await registry.get(k.ENDPOINT_SLICES, "default", "held")
    assert again["metadata"]["deletionTimestamp"] == deleting["metadata"]["deletionTimestamp"]
    # a second delete changes nothing; adding finalizers now is forbidden
    assert (await registry.delete(k.ENDPOINT_SLICES, "default", "held"))["metadata"]["resourceVersion"] \
        == again["metadata"]["resourceVersion"]
    again["metadata"]["finalizers"].append("example.com/more")
    with pytest.raises(APIError) as info:
        await registry.update(k.ENDPOINT_SLICES, "default", "held", again)
    assert info.value.code == 422
    await registry.patch(k.ENDPOINT_SLICES, "default", "held", "application/merge-patch+json",
                         b'{"metadata":{"finalizers":null}}')
    with pytest.raises(APIError) as info:
        await registry.get(k.ENDPOINT_SLICES, "default", "held")
    assert info.value.code == 404


async def test_pods_are_deleted_gracefully_once_scheduled(registry: Registry) -> None:
    await registry.create(k.PODS, "default", pod("unscheduled"))
    gone = await registry.delete(k.PODS, "default", "unscheduled")
    assert gone["metadata"]["name"] == "unscheduled"
    with pytest.raises(APIError):
        await registry.get(k.PODS, "default", "unscheduled")
    await registry.create(k.PODS, "default", pod("running", node="n1"))
    terminating = await registry.delete(k.PODS, "default", "running")
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 30
    assert (await registry.get(k.PODS, "default", "running"))["metadata"]["deletionTimestamp"]
    await registry.delete(k.PODS, "default", "running", options={"gracePeriodSeconds": 0})
    with pytest.raises(APIError):
        await registry.get(k.PODS, "default", "running")


async def test_delete_preconditions(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("web"))
    with pytest.raises(APIError) as info:
        await registry.delete(k.SERVICES, "default", "web", options={"preconditions": {"uid": "other"}})
    assert info.value.code == 409 and "Precondition failed: UID in precondition: other" in info.value.message
    await registry.delete(k.SERVICES, "default", "web",
                          options={"preconditions": {"uid": out["metadata"]["uid"]}})


async def test_namespace_defaults_and_cascade(registry: Registry) -> None:
    ns, _ = await registry.create(k.NAMESPACES, None, {"metadata": {"name": "team"}})
    assert ns["spec"]["finalizers"] == ["kubernetes"] and ns["status"]["phase"] == "Active"
    assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "team"
    await registry.create(k.SERVICES, "team", svc("web"))
    await registry.create(k.PODS, "team", pod("p"))
    await registry.create(k.ENDPOINT_SLICES, "team", cm_slice("s"))
    await registry.delete(k.NAMESPACES, None, "team")
    for kind, name in ((k.SERVICES, "web"), (k.PODS, "p"), (k.ENDPOINT_SLICES, "s"), (k.NAMESPACES, "team")):
        with pytest.raises(APIError) as info:
            await registry.get(kind, "team", name)
        assert info.value.code == 404


async def test_terminating_namespace_refuses_new_content_and_finishes_later(registry: Registry) -> None:
    await registry.create(k.NAMESPACES, None, {"metadata": {"name": "slow"}})
    await registry.create(k.PODS, "slow", pod("p", node="n1"))   # graceful: stays Terminating
    ns = await registry.delete(k.NAMESPACES, None, "slow")
    assert ns["status"]["phase"] == "Terminating" and ns["metadata"]["deletionTimestamp"]
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "slow", svc("late"))
    assert info.value.code == 403
    assert "unable to create new content in namespace slow because it is being terminated" in info.value.message
    await registry.delete(k.PODS, "slow", "p", options={"gracePeriodSeconds": 0})
    with pytest.raises(APIError):
        await registry.get(k.NAMESPACES, None, "slow")


async def test_system_namespaces_cannot_be_deleted(registry: Registry) -> None:
    with pytest.raises(APIError) as info:
        await registry.delete(k.NAMESPACES, None, "default")
    assert info.value.code == 403


async def test_owner_deletion_collects_dependents(registry: Registry) -> None:
    owner, _ = await registry.create(k.SERVICES, "default", svc("web", selector={"a": "b"}))
    ref = {"apiVersion": "v1", "kind": "Service", "name": "web", "uid": owner["metadata"]["uid"],
           "controller": True, "blockOwnerDeletion": True}
    await registry.create(k.ENDPOINT_SLICES, "default", cm_slice("web-abcde", ownerReferences=[ref]))
    await registry.create(k.ENDPOINT_SLICES, "default", cm_slice("unrelated"))
    await registry.delete(k.SERVICES, "default", "web")
    await registry.wait_for_gc()
    names = [i["metadata"]["name"] for i in (await registry.list(k.ENDPOINT_SLICES, "default"))["items"]]
    assert names == ["kubernetes", "unrelated"]


async def test_orphan_and_shared_owners_keep_dependents(registry: Registry) -> None:
    a, _ = await registry.create(k.SERVICES, "default", svc("a"))
    b, _ = await registry.create(k.SERVICES, "default", svc("b"))

    def ref(o: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service", "name": o["metadata"]["name"],
                "uid": o["metadata"]["uid"]}

    await registry.create(k.ENDPOINT_SLICES, "default", cm_slice("shared", ownerReferences=[ref(a), ref(b)]))
    await registry.create(k.ENDPOINT_SLICES, "default", cm_slice("only-b", ownerReferences=[ref(b)]))
    await registry.delete(k.SERVICES, "default", "a")
    await registry.wait_for_gc()
    shared = await registry.get(k.ENDPOINT_SLICES, "default", "shared")
    assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["b"]
    await registry.delete(k.SERVICES, "default", "b", options={"propagationPolicy": "Orphan"})
    await registry.wait_for_gc()
    for name in ("shared", "only-b"):
        kept = await registry.get(k.ENDPOINT_SLICES, "default", name)
        assert "ownerReferences" not in kept["metadata"]


async def test_node_deletion_collects_its_lease(registry: Registry) -> None:
    node, _ = await registry.create(k.NODES, None, {"metadata": {"name": "n1"}})
    lease = {"metadata": {"name": "n1", "ownerReferences": [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": node["metadata"]["uid"]}]},
             "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}}
    await registry.create(k.LEASES, "kube-node-lease", lease)
    await registry.delete(k.NODES, None, "n1")
    await registry.wait_for_gc()
    with pytest.raises(APIError):
        await registry.get(k.LEASES, "kube-node-lease", "n1")


async def test_label_and_field_selectors(registry: Registry) -> None:
    await registry.create(k.PODS, "default", pod("a", node="n1", labels={"app": "web", "tier": "fe"}))
    await registry.create(k.PODS, "default", pod("b", node="n2", labels={"app": "web"}))
    await registry.create(k.PODS, "default", pod("c", node="n1", labels={"app": "db"}))

    async def names(**sel: str) -> list[str]:
        return [i["metadata"]["name"] for i in (await registry.list(k.PODS, "default", **sel))["items"]]

    assert await names(label_selector="app=web") == ["a", "b"]
    assert await names(label_selector="app in (web,db),!tier") == ["b", "c"]
    assert await names(field_selector="spec.nodeName=n1") == ["a", "c"]
    assert await names(field_selector="metadata.name!=a", label_selector="app=web") == ["b"]
    np, _ = await registry.create(k.SERVICES, "default", svc("np", type="NodePort"))
    items = (await registry.list(k.SERVICES, None, field_selector="spec.type=NodePort"))["items"]
    assert [i["metadata"]["name"] for i in items] == ["np"]
    with pytest.raises(APIError) as info:
        await registry.list(k.SERVICES, None, field_selector="spec.foo=bar")
    assert info.value.code == 400


async def test_event_field_selectors(registry: Registry) -> None:
    ev = {"metadata": {"name": "web.1"}, "involvedObject": {"kind": "Service", "name": "web",
                                                           "namespace": "default", "uid": "u1"},
          "reason": "Created", "type": "Normal", "source": {"component": "svcnet"}}
    await registry.create(k.EVENTS, "default", ev)
    sel = "involvedObject.name=web,involvedObject.namespace=default,involvedObject.kind=Service,involvedObject.uid=u1"
    assert len((await registry.list(k.EVENTS, "default", field_selector=sel))["items"]) == 1
    assert len((await registry.list(k.EVENTS, "default", field_selector="source=svcnet"))["items"]) == 1
    assert not (await registry.list(k.EVENTS, "default", field_selector="involvedObject.uid=u2"))["items"]


async def test_pagination_is_one_consistent_snapshot(registry: Registry) -> None:
    for i in range(7):
        await registry.create(k.SERVICES, "default", svc(f"s{i}"))
    first = await registry.list(k.SERVICES, "default", limit=3)
    rv = first["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in first["items"]] == ["kubernetes", "s0", "s1"]
    assert first["metadata"]["remainingItemCount"] == 5
    await registry.delete(k.SERVICES, "default", "s3")           # after the snapshot
    await registry.create(k.SERVICES, "default", svc("s2a"))
    seen = [i["metadata"]["name"] for i in first["items"]]
    token = first["metadata"]["continue"]
    while token:
        page = await registry.list(k.SERVICES, "default", limit=3, continue_token=token)
        assert page["metadata"]["resourceVersion"] == rv
        seen += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue", "")
    assert seen == ["kubernetes", "s0", "s1", "s2", "s3", "s4", "s5", "s6"]


async def test_pagination_with_a_selector(registry: Registry) -> None:
    for i in range(6):
        await registry.create(k.PODS, "default", pod(f"p{i}", labels={"even": str(i % 2 == 0).lower()}))
    page = await registry.list(k.PODS, "default", label_selector="even=true", limit=2)
    names = [i["metadata"]["name"] for i in page["items"]]
    page = await registry.list(k.PODS, "default", label_selector="even=true", limit=2,
                               continue_token=page["metadata"]["continue"])
    names += [i["metadata"]["name"] for i in page["items"]]
    assert names == ["p0", "p2", "p4"]
    assert "remainingItemCount" not in page["metadata"]


async def test_expired_continue_token_is_410(registry: Registry) -> None:
    for i in range(3):
        await registry.create(k.SERVICES, "default", svc(f"s{i}"))
    first = await registry.list(k.SERVICES, "default", limit=1)
    await registry.create(k.SERVICES, "default", svc("later"))
    await registry.storage.compact(registry.current_revision)
    with pytest.raises(APIError) as info:
        await registry.list(k.SERVICES, "default", limit=1, continue_token=first["metadata"]["continue"])
    assert info.value.code == 410 and info.value.reason == "Expired"
    with pytest.raises(APIError) as info:
        await registry.list(k.SERVICES, "default", limit=1, continue_token="garbage!")
    assert info.value.code == 400


async def test_list_carries_kind_and_revision(registry: Registry) -> None:
    result = await registry.list(k.ENDPOINT_SLICES, None)
    assert result["kind"] == "EndpointSliceList" and result["apiVersion"] == "discovery.k8s.io/v1"
    assert result["metadata"]["resourceVersion"] == str(registry.current_revision)
    assert all(i["kind"] == "EndpointSlice" for i in result["items"])


async def test_dry_run_writes_nothing(registry: Registry) -> None:
    rev = registry.current_revision
    used = set(registry.allocator.ips.used)
    out, _ = await registry.create(k.SERVICES, "default", svc("dry"), dry_run=True)
    assert out["spec"]["clusterIP"] and out["metadata"]["uid"]
    with pytest.raises(APIError):
        await registry.get(k.SERVICES, "default", "dry")
    kube = await registry.get(k.SERVICES, "default", "kubernetes")
    kube["metadata"]["labels"]["x"] = "y"
    await registry.update(k.SERVICES, "default", "kubernetes", kube, dry_run=True)
    await registry.delete(k.SERVICES, "default", "kubernetes", dry_run=True)
    assert registry.current_revision == rev and registry.allocator.ips.used == used
    # a dry-run create answers as the real one would: 409 for an existing name
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("kubernetes"), dry_run=True)
    assert info.value.reason == "AlreadyExists"
    assert registry.allocator.ips.used == used


async def test_field_validation_modes(registry: Registry) -> None:
    body = svc("web")
    body["spec"]["foo"] = 1
    body["spec"]["ports"][0]["bar"] = "x"
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", body)
    assert info.value.code == 400
    # reported in document order, as the strict decoder meets them
    assert info.value.message == ('Service in version "v1" cannot be handled as a Service: strict '
                                  'decoding error: unknown field "spec.ports[0].bar", unknown field '
                                  '"spec.foo"')
    out, warnings = await registry.create(k.SERVICES, "default", body, field_validation="Warn")
    assert warnings == ['unknown field "spec.ports[0].bar"', 'unknown field "spec.foo"']
    assert "foo" not in out["spec"] and "bar" not in out["spec"]["ports"][0]
    out, warnings = await registry.create(k.SERVICES, "default", {**body, "metadata": {"name": "w2"}},
                                          field_validation="Ignore")
    assert warnings == [] and "foo" not in out["spec"]


async def test_patch_types_and_server_side_apply(registry: Registry) -> None:
    await registry.create(k.SERVICES, "default", svc("web", ports=[{"name": "http", "port": 80}]))
    smp = {"spec": {"$setElementOrder/ports": [{"port": 80}],
                    "ports": [{"port": 80, "targetPort": 9090}]}}
    out, created, _ = await registry.patch(k.SERVICES, "default", "web",
                                           "application/strategic-merge-patch+json",
                                           json.dumps(smp).encode(), field_manager="kubectl-client-side-apply")
    assert not created and out["spec"]["ports"][0]["targetPort"] == 9090
    out, _, _ = await registry.patch(k.SERVICES, "default", "web", "application/json-patch+json",
                                     b'[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]')
    assert out["metadata"]["labels"] == {"a": "b"}
    applied = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "ssa"}, "spec": {"ports": [{"name": "dns", "port": 53}]}}
    out, created, _ = await registry.patch(k.SERVICES, "default", "ssa", "application/apply-patch+yaml",
                                           json.dumps(applied).encode(), field_manager="kubectl")
    assert created and out["spec"]["clusterIP"]
    assert [m["manager"] for m in out["metadata"]["managedFields"]] == ["kubectl"]
    with pytest.raises(APIError) as info:
        await registry.patch(k.SERVICES, "default", "nope", "application/merge-patch+json", b"{}")
    assert info.value.code == 404
    stale = json.dumps({"metadata": {"resourceVersion": "1"}}).encode()
    with pytest.raises(APIError) as info:
        await registry.patch(k.SERVICES, "default", "web", "application/merge-patch+json", stale)
    assert info.value.code == 409


async def test_delete_collection(registry: Registry) -> None:
    for i in range(3):
        await registry.create(k.PODS, "default", pod(f"p{i}", labels={"app": "x" if i else "y"}))
    result = await registry.delete_collection(k.PODS, "default", label_selector="app=x")
    assert sorted(i["metadata"]["name"] for i in result["items"]) == ["p1", "p2"]
    left = await registry.list(k.PODS, "default")
    assert [i["metadata"]["name"] for i in left["items"]] == ["p0"]


async def test_bootstrap_is_idempotent_and_repairs(registry: Registry) -> None:
    rev = registry.current_revision
    await registry.bootstrap("192.0.2.10", 6443)
    assert registry.current_revision == rev
    await registry.bootstrap("192.0.2.11", 7443)
    es = await registry.get(k.ENDPOINT_SLICES, "default", "kubernetes")
    assert es["endpoints"][0]["addresses"] == ["192.0.2.11"] and es["ports"][0]["port"] == 7443
    kube = await registry.get(k.SERVICES, "default", "kubernetes")
    assert kube["spec"]["ports"][0]["targetPort"] == 7443
    assert kube["metadata"]["labels"] == {"component": "apiserver", "provider": "kubernetes"}
    names = [n["metadata"]["name"] for n in (await registry.list(k.NAMESPACES, None))["items"]]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
    cidr = await registry.get(k.SERVICE_CIDRS, None, "kubernetes")
    assert cidr["spec"]["cidrs"] == ["10.96.0.0/12"]


async def test_event_expiry(registry: Registry) -> None:
    old = {"metadata": {"name": "old.1"}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
           "lastTimestamp": "2020-01-01T00:00:00Z"}
    await registry.create(k.EVENTS, "default", old)
    await registry.create(k.EVENTS, "default", {**old, "metadata": {"name": "new.1"},
                                                 "lastTimestamp": None})
    assert await registry.expire_events() == 1
    names = [e["metadata"]["name"] for e in (await registry.list(k.EVENTS, "default"))["items"]]
    assert names == ["new.1"]


async def test_concurrent_patches_without_rv_all_land(registry: Registry) -> None:
    import asyncio

    await registry.create(k.SERVICES, "default", svc("web"))
    await asyncio.gather(*(
        registry.patch(k.SERVICES, "default", "web", "application/merge-patch+json",
                       json.dumps({"metadata": {"labels": {f"l{i}": "x"}}}).encode())
        for i in range(20)))
    labels = (await registry.get(k.SERVICES, "default", "web"))["metadata"]["labels"]
    assert sorted(labels) == sorted(f"l{i}" for i in range(20))


async def test_service_status_subresource_for_load_balancers(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("lb", type="LoadBalancer"))
    body = json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}).encode()
    st, _, _ = await registry.patch(k.SERVICES, "default", "lb", "application/merge-patch+json", body,
                                    subresource="status")
    assert st["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.7"}]
    assert st["spec"] == out["spec"]
    # leaving LoadBalancer clears the load-balancer status
    st["spec"]["type"] = "ClusterIP"
    st["spec"].pop("externalTrafficPolicy")
    cip, _ = await registry.update(k.SERVICES, "default", "lb", st)
    assert cip["status"] == {"loadBalancer": {}}
    assert "allocateLoadBalancerNodePorts" not in cip["spec"]
    assert all("nodePort" not in p for p in cip["spec"]["ports"])


async def test_namespace_finalize_subresource(registry: Registry) -> None:
    await registry.create(k.NAMESPACES, None, {"metadata": {"name": "fin"}})
    ns = await registry.get(k.NAMESPACES, None, "fin")
    ns["spec"]["finalizers"] = []
    plain, _ = await registry.update(k.NAMESPACES, None, "fin", ns)
    assert plain["spec"]["finalizers"] == ["kubernetes"]  # spec changes only via /finalize
    done, _ = await registry.update(k.NAMESPACES, None, "fin", ns, subresource="finalize")
    assert done["spec"]["finalizers"] == []


async def test_maintenance_compacts_to_the_previous_mark(registry: Registry) -> None:
    await registry.maintain()                      # sets the mark, compacts what was before
    first_mark = registry.current_revision
    await registry.create(k.SERVICES, "default", svc("web"))
    await registry.maintain()
    assert registry.storage.compact_revision == first_mark  # one interval of history kept
    stream = registry.watch(k.SERVICES, "default", resource_version=str(first_mark))
    typ, obj = await stream.__anext__()
    assert (typ, obj["metadata"]["name"]) == ("ADDED", "web")
    await stream.aclose()


async def test_deleted_kubernetes_service_comes_back(registry: Registry) -> None:
    import asyncio

    registry.bootstrap_interval = 0.05
    await registry.bootstrap("192.0.2.10", 6443)   # restarts the reconcile loop
    await registry.delete(k.SERVICES, "default", "kubernetes")
    for _ in range(200):
        try:
            kube = await registry.get(k.SERVICES, "default", "kubernetes")
            break
        except APIError:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("the kubernetes Service was not recreated")
    assert kube["spec"]["clusterIP"] == "10.96.0.1"


async def test_binding_and_eviction(registry: Registry) -> None:
    await registry.create(k.PODS, "default", pod("p"))
    status = await registry.bind("default", "p", {"kind": "Binding", "metadata": {"name": "p"},
                                                  "target": {"kind": "Node", "name": "node-1"}})
    assert status["status"] == "Success"
    assert (await registry.get(k.PODS, "default", "p"))["spec"]["nodeName"] == "node-1"
    with pytest.raises(APIError) as info:
        await registry.bind("default", "p", {"target": {"kind": "Node", "name": "node-2"}})
    assert info.value.code == 409 and 'already assigned to node "node-1"' in info.value.message
    with pytest.raises(APIError) as info:
        await registry.bind("default", "nope", {"target": {"name": "node-2"}})
    assert info.value.code == 404
    await registry.evict("default", "p", {"kind": "Eviction", "deleteOptions": {"gracePeriodSeconds": 0}})
    with pytest.raises(APIError):
        await registry.get(k.PODS, "default", "p")


async def test_object_counts(registry: Registry) -> None:
    await registry.create(k.SERVICES, "default", svc("web"))
    counts = await registry.object_counts()
    assert counts["services"] == 2 and counts["namespaces"] == 4
    assert counts["endpointslices.discovery.k8s.io"] == 1 and counts["pods"] == 0


async def test_storage_failures_are_api_errors(registry: Registry) -> None:
    await registry.storage.close()
    with pytest.raises(APIError) as info:
        await registry.get(k.SERVICES, "default", "kubernetes")
    assert info.value.code == 500 and info.value.reason == "InternalError"
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("web"))
    assert info.value.code == 500


async def test_empty_metadata_maps_are_dropped_as_kube_omitempty(registry: Registry) -> None:
    obj = svc("web")
    obj["metadata"]["annotations"] = {"a": "1"}
    obj["metadata"]["labels"] = {}
    created, _ = await registry.create(k.SERVICES, "default", obj)
    assert "labels" not in created["metadata"]
    for patch_type, body in (("application/merge-patch+json", b'{"metadata":{"annotations":{"a":null}}}'),
                             ("application/strategic-merge-patch+json",
                              b'{"metadata":{"labels":{"x":"y"}}}'),
                             ("application/json-patch+json",
                              b'[{"op":"remove","path":"/metadata/labels/x"}]')):
        patched, _, _ = await registry.patch(k.SERVICES, "default", "web", patch_type, body)
    assert "annotations" not in patched["metadata"] and "labels" not in patched["metadata"]
    # a dry-run patch (what kubectl diff sends) shows no `annotations: {}` either
    dry, _, _ = await registry.patch(k.SERVICES, "default", "web", "application/merge-patch+json",
                                     b'{"metadata":{"annotations":{}}}', dry_run=True)
    assert "annotations" not in dry["metadata"]
    assert dry["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
