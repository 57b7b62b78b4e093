"""JSON patch (RFC 6902), merge patch (RFC 7386) and strategic merge patch."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry.patch import (
    json_patch, merge_patch, strategic_merge_patch,
)
from svcnet.controlplane.registry.schema import node_for

SVC = node_for("io.k8s.api.core.v1.Service")
POD = node_for("io.k8s.api.core.v1.Pod")
DEPLOY = node_for("io.k8s.api.apps.v1.Deployment")

DOC: dict[str, Any] = {"metadata": {"name": "web", "labels": {"a": "1", "x/y": "2"}},
                       "spec": {"ports": [{"port": 80}, {"port": 443}], "type": "ClusterIP"}}


# -- JSON patch -----------------------------------------------------------------------------

@pytest.mark.parametrize("ops, want", [
    pytest.param([{"op": "add", "path": "/spec/selector", "value": {"app": "web"}}],
                 {"spec.selector": {"app": "web"}}, id="add-member"),
    pytest.param([{"op": "add", "path": "/spec/ports/1", "value": {"port": 8080}}],
                 {"spec.ports": [{"port": 80}, {"port": 8080}, {"port": 443}]}, id="add-insert"),
    pytest.param([{"op": "add", "path": "/spec/ports/-", "value": {"port": 9}}],
                 {"spec.ports": [{"port": 80}, {"port": 443}, {"port": 9}]}, id="add-append-dash"),
    pytest.param([{"op": "add", "path": "/metadata/labels/x~1y", "value": "3"}],
                 {"metadata.labels": {"a": "1", "x/y": "3"}}, id="add-escaped-slash"),
    pytest.param([{"op": "add", "path": "/metadata/labels/t~0~1", "value": "v"}],
                 {"metadata.labels": {"a": "1", "x/y": "2", "t~/": "v"}}, id="escaped-tilde"),
    pytest.param([{"op": "remove", "path": "/spec/ports/0"}],
                 {"spec.ports": [{"port": 443}]}, id="remove-index"),
    pytest.param([{"op": "remove", "path": "/metadata/labels/a"}],
                 {"metadata.labels": {"x/y": "2"}}, id="remove-key"),
    pytest.param([{"op": "replace", "path": "/spec/type", "value": "NodePort"}],
                 {"spec.type": "NodePort"}, id="replace"),
    pytest.param([{"op": "move", "from": "/metadata/labels/a", "path": "/metadata/labels/b"}],
                 {"metadata.labels": {"x/y": "2", "b": "1"}}, id="move"),
    pytest.param([{"op": "copy", "from": "/spec/ports/0", "path": "/spec/ports/-"}],
                 {"spec.ports": [{"port": 80}, {"port": 443}, {"port": 80}]}, id="copy"),
    pytest.param([{"op": "test", "path": "/spec/ports/0/port", "value": 80.0},
                  {"op": "replace", "path": "/spec/ports/0/port", "value": 81}],
                 {"spec.ports": [{"port": 81}, {"port": 443}]}, id="test-then-replace"),
])
def test_json_patch(ops: list[Any], want: dict[str, Any]) -> None:
    before = copy.deepcopy(DOC)
    out = json_patch(DOC, ops)
    assert DOC == before, "input must not be modified"
    for dotted, value in want.items():
        cur: Any = out
        for part in dotted.split("."):
            cur = cur[part]
        assert cur == value


@pytest.mark.parametrize("ops, code, fragment", [
    pytest.param([{"op": "test", "path": "/spec/type", "value": "NodePort"}], 422,
                 "testing value /spec/type failed", id="test-fails"),
    pytest.param([{"op": "test", "path": "/spec/ports/0/port", "value": True}], 422,
                 "testing value", id="test-bool-is-not-int"),
    pytest.param([{"op": "remove", "path": "/spec/nosuch"}], 422, "missing key", id="remove-missing"),
    pytest.param([{"op": "replace", "path": "/spec/nosuch", "value": 1}], 422, "missing key",
                 id="replace-missing"),
    pytest.param([{"op": "add", "path": "/nosuch/child", "value": 1}], 422, "missing path",
                 id="add-missing-parent"),
    pytest.param([{"op": "add", "path": "/spec/ports/7", "value": 1}], 422, "out of bounds",
                 id="index-out-of-range"),
    pytest.param([{"op": "add", "path": "/spec/ports/01", "value": 1}], 422, "invalid array index",
                 id="leading-zero-index"),
    pytest.param([{"op": "remove", "path": "/spec/ports/-"}], 422, "invalid array index",
                 id="dash-only-for-add"),
    pytest.param([{"op": "add", "path": "spec", "value": 1}], 422, "invalid JSON pointer",
                 id="pointer-without-slash"),
    pytest.param([{"op": "move", "from": "/spec", "path": "/spec/x"}], 422, "is a child of",
                 id="move-into-child"),
    pytest.param([{"op": "frobnicate", "path": "/spec"}], 422, "unexpected kind", id="bad-op"),
    pytest.param([{"op": "add", "path": "/spec/x"}], 422, "missing 'value'", id="no-value"),
    pytest.param({"op": "add"}, 400, "JSON array", id="not-a-list"),
])
def test_json_patch_errors(ops: Any, code: int, fragment: str) -> None:
    with pytest.raises(APIError) as err:
        json_patch(DOC, ops)
    assert err.value.code == code
    assert fragment in err.value.message


def test_json_patch_is_all_or_nothing() -> None:
    with pytest.raises(APIError):
        json_patch(DOC, [{"op": "replace", "path": "/spec/type", "value": "NodePort"},
                         {"op": "test", "path": "/spec/type", "value": "ClusterIP"}])
    assert DOC["spec"]["type"] == "ClusterIP"


# -- merge patch -----------------------------------------------------------------------------

@pytest.mark.parametrize("patch, want", [
    pytest.param({"metadata": {"labels": {"a": None, "b": "2"}}},
                 {"metadata": {"name": "web", "labels": {"x/y": "2", "b": "2"}},
                  "spec": DOC["spec"]}, id="null-deletes-and-adds"),
    pytest.param({"spec": {"ports": [{"port": 1}]}},
                 {"metadata": DOC["metadata"], "spec": {"ports": [{"port": 1}],
                                                        "type": "ClusterIP"}},
                 id="lists-replace"),
    pytest.param({"spec": None}, {"metadata": DOC["metadata"]}, id="delete-subtree"),
    pytest.param({"metadata": {"labels": "flat"}},
                 {"metadata": {"name": "web", "labels": "flat"}, "spec": DOC["spec"]},
                 id="scalar-replaces-object"),
    pytest.param({"status": {"x": {"y": None, "z": 1}}},
                 {**DOC, "status": {"x": {"z": 1}}}, id="nested-new-object-drops-nulls"),
])
def test_merge_patch(patch: dict[str, Any], want: dict[str, Any]) -> None:
    assert merge_patch(DOC, patch) == want


# -- strategic merge patch ------------------------------------------------------------------

LIVE_SVC: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                 "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{old}"},
                 "finalizers": ["a.io/x", "b.io/y"]},
    "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
             "selector": {"app": "web", "tier": "fe"},
             "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                       {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}]},
}


def svc_with(**spec: Any) -> dict[str, Any]:
    out = copy.deepcopy(LIVE_SVC)
    out["spec"].update(spec)
    return out


@pytest.mark.parametrize("patch, check", [
    pytest.param(
        # Exactly what `kubectl apply -f` sends after targetPort changed in the file.
        {"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{new}"}},
         "spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 443}],
                  "ports": [{"port": 80, "targetPort": 9090}]}},
        {"spec.ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9090},
                        LIVE_SVC["spec"]["ports"][1]],
         "metadata.annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{new}"}},
        id="kubectl-apply-targetport"),
    pytest.param(
        {"spec": {"$setElementOrder/ports": [{"port": 80}], "ports": [{"port": 80, "targetPort": 9090}]}},
        {"spec.ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9090},
                        LIVE_SVC["spec"]["ports"][1]]},
        id="set-element-order-keeps-server-only-items"),
    pytest.param(
        {"spec": {"$setElementOrder/ports": [{"port": 443}, {"port": 80}]}},
        {"spec.ports": [LIVE_SVC["spec"]["ports"][1], LIVE_SVC["spec"]["ports"][0]]},
        id="set-element-order-reorders"),
    pytest.param(
        {"spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 8000}, {"port": 443}],
                  "ports": [{"port": 8000, "name": "alt"}]}},
        {"spec.ports": [LIVE_SVC["spec"]["ports"][0], {"port": 8000, "name": "alt"},
                        LIVE_SVC["spec"]["ports"][1]]},
        id="set-element-order-places-new-item"),
    pytest.param(
        {"spec": {"ports": [{"port": 53, "name": "dns", "protocol": "UDP"}]}},
        {"spec.ports": [{"port": 53, "name": "dns", "protocol": "UDP"},
                        *LIVE_SVC["spec"]["ports"]]},
        id="merge-key-new-item-goes-first"),
    pytest.param(
        {"spec": {"ports": [{"$patch": "delete", "port": 443}]}},
        {"spec.ports": [LIVE_SVC["spec"]["ports"][0]]}, id="patch-delete-list-item"),
    pytest.param(
        {"spec": {"ports": [{"port": 7, "name": "echo"}, {"$patch": "replace"}]}},
        {"spec.ports": [{"port": 7, "name": "echo"}]}, id="patch-replace-list"),
    pytest.param(
        {"spec": {"selector": {"$patch": "replace", "app": "db"}}},
        {"spec.selector": {"app": "db"}}, id="patch-replace-map"),
    pytest.param(
        {"metadata": {"labels": {"$patch": "delete"}}},
        {"metadata.labels": {}}, id="patch-delete-map"),
    pytest.param(
        {"spec": {"selector": {"tier": None, "new": "x"}}},
        {"spec.selector": {"app": "web", "new": "x"}}, id="null-deletes-key"),
    pytest.param(
        {"spec": {"clusterIPs": ["10.96.0.21"]}},
        {"spec.clusterIPs": ["10.96.0.21"]}, id="atomic-list-replaced"),
    pytest.param(
        {"metadata": {"finalizers": ["c.io/z", "a.io/x"]}},
        {"metadata.finalizers": ["c.io/z", "a.io/x", "b.io/y"]}, id="primitive-merge-list-union"),
    pytest.param(
        {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.io/x"]}},
        {"metadata.finalizers": ["b.io/y"]}, id="delete-from-primitive-list"),
    pytest.param(
        {"metadata": {"$setElementOrder/finalizers": ["b.io/y", "a.io/x"]}},
        {"metadata.finalizers": ["b.io/y", "a.io/x"]}, id="set-element-order-primitive"),
    pytest.param(
        {"spec": {"ports": [{"port": 80, "targetPort": None}]}},
        {"spec.ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                        LIVE_SVC["spec"]["ports"][1]]}, id="null-inside-merged-item"),
    pytest.param(
        {"spec": {"externalIPs": ["1.2.3.4"], "ipFamilies": None}},
        {"spec.externalIPs": ["1.2.3.4"]}, id="new-list-field"),
])
def test_strategic_merge_patch_service(patch: dict[str, Any], check: dict[str, Any]) -> None:
    before = copy.deepcopy(LIVE_SVC)
    patch_before = copy.deepcopy(patch)
    out = strategic_merge_patch(LIVE_SVC, patch, SVC)
    assert LIVE_SVC == before and patch == patch_before, "inputs must not be modified"
    for dotted, value in check.items():
        cur: Any = out
        for part in dotted.split("."):
            cur = cur[part]
        assert cur == value, json.dumps(out["spec"])
    assert "$" not in json.dumps(out), "no directive may be stored"


LIVE_DEPLOY: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
    "spec": {
        "replicas": 2,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
            {"name": "app", "image": "app:1",
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "volumeMounts": [{"name": "data", "mountPath": "/data"}],
             "ports": [{"containerPort": 8080, "protocol": "TCP"}]},
            {"name": "sidecar", "image": "side:1"}]}}},
}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def test_strategic_containers_by_name_env_by_name() -> None:
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "3"},
                                                  {"name": "C", "value": "4"}],
         "volumeMounts": [{"mountPath": "/cache", "name": "cache"}]}]}}}}
    out = strategic_merge_patch(LIVE_DEPLOY, patch, DEPLOY)
    app, sidecar = containers(out)
    assert app["image"] == "app:2" and sidecar == containers(LIVE_DEPLOY)[1]
    assert {e["name"]: e["value"] for e in app["env"]} == {"A": "1", "B": "3", "C": "4"}
    assert [m["mountPath"] for m in app["volumeMounts"]] == ["/cache", "/data"]
    assert app["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]


def test_strategic_retain_keys_clears_other_strategy_fields() -> None:
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    out = strategic_merge_patch(LIVE_DEPLOY, patch, DEPLOY)
    assert out["spec"]["strategy"] == {"type": "Recreate"}


def test_strategic_pod_conditions_by_type() -> None:
    live = {"status": {"conditions": [{"type": "Ready", "status": "False"},
                                      {"type": "PodScheduled", "status": "True"}]}}
    out = strategic_merge_patch(live, {"status": {"conditions": [
        {"type": "Ready", "status": "True"}]}}, POD)
    assert out["status"]["conditions"] == [{"type": "Ready", "status": "True"},
                                           {"type": "PodScheduled", "status": "True"}]


def test_strategic_unknown_schema_merges_maps_replaces_lists() -> None:
    out = strategic_merge_patch({"a": {"b": 1, "l": [1, 2]}}, {"a": {"c": 2, "l": [3]}}, None)
    assert out == {"a": {"b": 1, "c": 2, "l": [3]}}


@pytest.mark.parametrize("patch, code, fragment", [
    pytest.param({"spec": {"selector": {"$patch": "merge"}}}, 400, "unknown patch type: merge",
                 id="merge-directive-on-map"),
    pytest.param({"spec": {"ports": [{"$patch": "merge"}]}}, 400,
                 "merging lists cannot yet be specified", id="merge-directive-in-list"),
    pytest.param({"spec": {"ports": [{"targetPort": 1}]}}, 400,
                 "does not contain declared merge key: port", id="item-without-merge-key"),
    pytest.param({"spec": {"ports": [{"$patch": "delete", "name": "http"}]}}, 400,
                 "does not contain declared merge key", id="delete-without-merge-key"),
    pytest.param({"spec": {"$setElementOrder/ports": [{"port": 443}],
                           "ports": [{"port": 80, "name": "x"}]}}, 400,
                 "doesn't match $setElementOrder/ports", id="set-order-mismatch"),
    pytest.param({"spec": {"$setElementOrder/ports": "bad"}}, 400,
                 "invalid patch format of setElementOrder list", id="set-order-not-list"),
    pytest.param({"spec": {"$retainKeys": ["type"], "clusterIP": "1.2.3.4", "type": "X"}}, 400,
                 "invalid patch format of retainKeys", id="retain-keys-mismatch"),
    pytest.param({"spec": {"$retainKeys": "type"}}, 400, "invalid patch format of retainKeys",
                 id="retain-keys-not-list"),
    pytest.param({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}}, 400,
                 "invalid patch format of primitive list", id="delete-list-not-list"),
    pytest.param({"metadata": {"finalizers": [["nested"]]}}, 422, "lists of lists",
                 id="list-of-lists"),
    pytest.param({"spec": {"$frob": 1}}, 400, "unknown strategic merge patch directive",
                 id="unknown-directive"),
])
def test_strategic_merge_patch_errors(patch: dict[str, Any], code: int, fragment: str) -> None:
    with pytest.raises(APIError) as err:
        strategic_merge_patch(LIVE_SVC, patch, SVC)
    assert err.value.code == code
    assert fragment in err.value.message
