"""Schema navigation, unknown-field detection and OpenAPI v3 components."""

from __future__ import annotations

from typing import Any

import pytest

from svcnet.controlplane.registry.schema import (
    definition_for_gvk, node_for, openapi_v3_components, schema_release, unknown_fields,
)

SERVICE = "io.k8s.api.core.v1.Service"
DEPLOYMENT = "io.k8s.api.apps.v1.Deployment"


def test_release_serves_service_cidr() -> None:
    assert definition_for_gvk("networking.k8s.io", "v1", "ServiceCIDR") == \
        "io.k8s.api.networking.v1.ServiceCIDR"
    major, minor = (int(x) for x in schema_release().lstrip("v").split(".")[:2])
    assert (major, minor) >= (1, 33)


@pytest.mark.parametrize("definition, path, attrs", [
    pytest.param(SERVICE, ("spec", "ports"),
                 {"type": "array", "merge_key": "port", "patch_strategy": "merge",
                  "list_type": "map", "list_map_keys": ("port", "protocol")}, id="service-ports"),
    pytest.param(SERVICE, ("spec", "selector"), {"type": "object", "map_type": "atomic",
                                                 "is_map": True}, id="service-selector"),
    pytest.param(SERVICE, ("spec", "clusterIPs"), {"list_type": "atomic", "patch_strategy": ""},
                 id="cluster-ips-atomic"),
    pytest.param(SERVICE, ("metadata", "finalizers"), {"list_type": "set",
                                                       "patch_strategy": "merge"}, id="finalizers"),
    pytest.param(SERVICE, ("metadata", "labels"), {"is_map": True, "map_type": "granular"},
                 id="labels"),
    pytest.param("io.k8s.api.core.v1.PodSpec", ("containers",),
                 {"merge_key": "name", "list_map_keys": ("name",)}, id="containers"),
    pytest.param("io.k8s.api.core.v1.PodStatus", ("conditions",), {"merge_key": "type"},
                 id="pod-conditions"),
    pytest.param("io.k8s.api.core.v1.Container", ("volumeMounts",), {"merge_key": "mountPath"},
                 id="volume-mounts"),
    pytest.param("io.k8s.api.apps.v1.DeploymentSpec", ("strategy",),
                 {"retain_keys": True, "patch_strategy": ""}, id="deployment-strategy-retain-keys"),
    pytest.param("io.k8s.api.core.v1.ServicePort", ("targetPort",), {"type": "int-or-string"},
                 id="int-or-string"),
    pytest.param("io.k8s.api.core.v1.ServicePort", ("port",), {"type": "integer"},
                 id="non-nullable-integer"),
    pytest.param("io.k8s.api.core.v1.ServicePort", ("protocol",),
                 {"type": "string", "default": "TCP"}, id="protocol-default"),
])
def test_node_navigation(definition: str, path: tuple[str, ...], attrs: dict[str, Any]) -> None:
    node = node_for(definition)
    for name in path:
        child = node.field(name)
        assert child is not None, name
        node = child
    for attr, want in attrs.items():
        assert getattr(node, attr) == want, attr


def test_items_resolve_ref_and_description() -> None:
    ports = node_for(SERVICE).field("spec").field("ports")  # type: ignore[union-attr]
    assert ports is not None and ports.items is not None
    assert ports.items.ref == "io.k8s.api.core.v1.ServicePort"
    assert "port" in ports.items.properties
    assert ports.description.startswith("The list of ports")
    assert node_for(SERVICE).field("nosuch") is None


@pytest.mark.parametrize("definition, obj, want", [
    pytest.param(SERVICE, {"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": "web", "labels": {"any/key": "v"},
                                        "annotations": {"x": "y"}, "creationTimestamp": None},
                           "spec": {"ports": [{"port": 80, "targetPort": "http"}],
                                    "selector": {"app": "web"}},
                           "status": {"loadBalancer": {}}}, [], id="clean-service"),
    pytest.param(SERVICE, {"spec": {"foo": 1, "ports": [{"port": 80}, {"port": 81, "bar": 2}]}},
                 ["spec.foo", "spec.ports[1].bar"], id="service-unknown"),
    pytest.param(SERVICE, {"metadata": {"name": "x", "nmae": "typo"}, "status": {"zzz": 1}},
                 ["metadata.nmae", "status.zzz"], id="metadata-and-status"),
    pytest.param(SERVICE, {"metadata": {"managedFields": [{"manager": "m", "fieldsV1": {
        "f:spec": {"f:anything": {}}}}]}}, [], id="fieldsv1-is-free-form"),
    pytest.param(SERVICE, {"spec": "not-an-object"}, [], id="wrong-type-left-to-validation"),
    pytest.param(DEPLOYMENT, {"spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                                       "template": {"metadata": {"labels": {"a": "b"}},
                                                    "spec": {"containers": [
                                                        {"name": "c", "image": "i",
                                                         "resources": {"limits": {"cpu": "1"}},
                                                         "env": [{"name": "A", "valu": "1"}]}],
                                                        "bogus": True}},
                                       "strategy": {"type": "RollingUpdate",
                                                    "rollingUpdate": {"maxSurge": "25%",
                                                                      "x": 1}}}},
                 ["spec.template.spec.containers[0].env[0].valu", "spec.template.spec.bogus",
                  "spec.strategy.rollingUpdate.x"], id="deployment-nested"),
])
def test_unknown_fields(definition: str, obj: dict[str, Any], want: list[str]) -> None:
    assert unknown_fields(definition, obj) == want


def test_openapi_components_closure_and_form() -> None:
    comps = openapi_v3_components([SERVICE])
    assert {SERVICE, "io.k8s.api.core.v1.ServiceSpec", "io.k8s.api.core.v1.ServicePort",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString"} <= set(comps)
    assert "io.k8s.api.core.v1.Pod" not in comps
    svc = comps[SERVICE]
    assert svc["x-kubernetes-group-version-kind"] == [{"group": "", "kind": "Service",
                                                       "version": "v1"}]
    # A referenced field keeps its description beside the reference (allOf), as upstream.
    assert svc["properties"]["spec"]["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.api.core.v1.ServiceSpec"}]
    assert svc["properties"]["spec"]["description"].startswith("Spec defines")
    ports = comps["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"]
    assert ports["type"] == "array"
    assert ports["items"] == {"$ref": "#/components/schemas/io.k8s.api.core.v1.ServicePort"}
    assert ports["x-kubernetes-patch-merge-key"] == "port"
    port = comps["io.k8s.api.core.v1.ServicePort"]
    assert port["properties"]["name"]["type"] == "string"          # ["string","null"] folded
    assert port["properties"]["protocol"]["default"] == "TCP"
    assert port["required"] == ["port"]
    assert comps["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] == {
        "oneOf": [{"type": "string"}, {"type": "integer"}], "format": "int-or-string"}

    def no_defs_refs(value: Any) -> None:
        if isinstance(value, dict):
            assert not str(value.get("$ref", "")).startswith("#/$defs/")
            assert not isinstance(value.get("type"), list)
            for v in value.values():
                no_defs_refs(v)
        elif isinstance(value, list):
            for v in value:
                no_defs_refs(v)
    no_defs_refs(comps)


def test_unknown_definition() -> None:
    with pytest.raises(KeyError):
        node_for("io.k8s.api.core.v1.NoSuchKind")
