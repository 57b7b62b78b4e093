"""Defaulting and validation of the other kinds, with kube's field paths."""

from __future__ import annotations

from typing import Any

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.kinds import KindInfo
from svcnet.controlplane.registry.store import Registry

from .conftest import causes

CONTAINERS = [{"name": "app", "image": "busybox:1.36"}]


def deployment(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": CONTAINERS}},
    }
    base.update(spec)
    return {"metadata": {"name": "web"}, "spec": base}


@pytest.mark.parametrize(("kind", "ns", "body", "expected"), [
    pytest.param(k.ENDPOINT_SLICES, "default", {"metadata": {"name": "s"}, "endpoints": []},
                 [("addressType", "Required value")], id="slice-address-type"),
    pytest.param(k.ENDPOINT_SLICES, "default",
                 {"metadata": {"name": "s"}, "addressType": "IPv4",
                  "endpoints": [{"addresses": ["fd00::1"]}, {"addresses": []}]},
                 [("endpoints[0].addresses[0]", 'Invalid value: "fd00::1": must be an IPv4 address'),
                  ("endpoints[1].addresses", "Required value: must contain at least 1 address")],
                 id="slice-addresses"),
    pytest.param(k.ENDPOINT_SLICES, "default",
                 {"metadata": {"name": "s"}, "addressType": "IPv4",
                  "ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2, "protocol": "ICMP"}]},
                 [("ports[1].name", 'Duplicate value: "a"'),
                  ("ports[1].protocol", 'Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"')],
                 id="slice-ports"),
    pytest.param(k.PODS, "default", {"metadata": {"name": "p"}, "spec": {}},
                 [("spec.containers", "Required value")], id="pod-containers"),
    pytest.param(k.PODS, "default",
                 {"metadata": {"name": "p"}, "spec": {"containers": [
                     {"name": "a"}, {"name": "a", "image": "x", "ports": [{"containerPort": 0}]}]}},
                 [("spec.containers[0].image", "Required value"),
                  ("spec.containers[1].name", 'Duplicate value: "a"'),
                  ("spec.containers[1].ports[0].containerPort",
                   "Invalid value: 0: must be between 1 and 65535, inclusive")],
                 id="pod-container-fields"),
    pytest.param(k.PODS, "default",
                 {"metadata": {"name": "p"}, "spec": {"containers": CONTAINERS, "restartPolicy": "Sometimes"}},
                 [("spec.restartPolicy",
                   'Unsupported value: "Sometimes": supported values: "Always", "Never", "OnFailure"')],
                 id="pod-restart-policy"),
    pytest.param(k.DEPLOYMENTS, "default", deployment(selector={"matchLabels": {"app": "other"}}),
                 [("spec.template.metadata.labels", 'Invalid value: map[string]string{"app":"web"}: '
                   "`selector` does not match template `labels`")], id="deploy-selector-mismatch"),
    pytest.param(k.DEPLOYMENTS, "default", deployment(selector=None),
                 [("spec.selector", "Required value")], id="deploy-selector-required"),
    pytest.param(k.DEPLOYMENTS, "default", deployment(replicas=-1),
                 [("spec.replicas", "Invalid value: -1: must be greater than or equal to 0")],
                 id="deploy-replicas"),
    pytest.param(k.NAMESPACES, None, {"metadata": {"name": "Team_A"}},
                 [("metadata.name", "Invalid value: \"Team_A\": a lowercase RFC 1123 label must consist "
                   "of lower case alphanumeric characters or '-', and must start and end with an "
                   "alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation "
                   "is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")], id="namespace-name"),
    pytest.param(k.LEASES, "kube-node-lease",
                 {"metadata": {"name": "n1"}, "spec": {"leaseDurationSeconds": 0}},
                 [("spec.leaseDurationSeconds", "Invalid value: 0: must be greater than 0")],
                 id="lease-duration"),
    pytest.param(k.SERVICE_CIDRS, None, {"metadata": {"name": "extra"}, "spec": {"cidrs": ["10.0.0.1/8"]}},
                 [("spec.cidrs[0]", 'Invalid value: "10.0.0.1/8": must be a valid CIDR value, '
                   "(e.g. 10.9.8.0/24 or 2001:db8::/64)")], id="servicecidr"),
    pytest.param(k.EVENTS, "default",
                 {"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "namespace": "other"}},
                 [("involvedObject.namespace", 'Invalid value: "other": does not match event.namespace')],
                 id="event-namespace"),
    pytest.param(k.NODES, None, {"metadata": {"name": "n1", "labels": {"bad key!": "x"}}},
                 [("metadata.labels", "Invalid value: \"bad key!\": name part must consist of "
                   "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                   "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
                   "for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")], id="label-key"),
])
async def test_validation(registry: Registry, kind: KindInfo, ns: str | None, body: dict[str, Any],
                          expected: list[tuple[str, str]]) -> None:
    with pytest.raises(APIError) as info:
        await registry.create(kind, ns, body)
    assert info.value.code == 422, info.value.message
    assert causes(info.value) == expected


async def test_deployment_defaults_and_immutable_selector(registry: Registry) -> None:
    out, _ = await registry.create(k.DEPLOYMENTS, "default", deployment())
    spec = out["spec"]
    assert spec["replicas"] == 1 and spec["revisionHistoryLimit"] == 10
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert spec["template"]["spec"]["restartPolicy"] == "Always"
    assert spec["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert out["metadata"]["generation"] == 1 and out["status"] == {}
    spec["replicas"] = 3
    scaled, _ = await registry.update(k.DEPLOYMENTS, "default", "web", out)
    assert scaled["metadata"]["generation"] == 2
    scaled["spec"]["selector"] = {"matchLabels": {"app": "web", "x": "y"}}
    scaled["spec"]["template"]["metadata"]["labels"]["x"] = "y"
    with pytest.raises(APIError) as info:
        await registry.update(k.DEPLOYMENTS, "default", "web", scaled)
    assert causes(info.value)[0][0] == "spec.selector"


async def test_endpointslice_address_type_is_immutable(registry: Registry) -> None:
    es = await registry.get(k.ENDPOINT_SLICES, "default", "kubernetes")
    es["addressType"] = "IPv6"
    es["endpoints"] = [{"addresses": ["fd00::1"]}]
    with pytest.raises(APIError) as info:
        await registry.update(k.ENDPOINT_SLICES, "default", "kubernetes", es)
    assert causes(info.value) == [("addressType", 'Invalid value: "IPv6": field is immutable')]


async def test_put_creates_leases_and_slices_but_not_services(registry: Registry) -> None:
    lease = {"metadata": {"name": "node-1"}, "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40}}
    out, _ = await registry.update(k.LEASES, "kube-node-lease", "node-1", lease)
    assert out["metadata"]["uid"]
    with pytest.raises(APIError) as info:
        await registry.update(k.PODS, "default", "ghost", {"metadata": {"name": "ghost"},
                                                          "spec": {"containers": CONTAINERS}})
    assert info.value.code == 404


async def test_wrong_kind_or_namespace_in_body_is_400(registry: Registry) -> None:
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", {"kind": "Pod", "apiVersion": "v1",
                                                      "metadata": {"name": "x"}})
    assert info.value.code == 400
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", {"metadata": {"name": "x", "namespace": "kube-system"},
                                                      "spec": {"ports": [{"port": 1}]}})
    assert info.value.code == 400


async def test_nodes_register_with_their_status(registry: Registry) -> None:
    status = {"addresses": [{"type": "InternalIP", "address": "10.0.0.11"}],
              "conditions": [{"type": "Ready", "status": "True"}]}
    node, _ = await registry.create(k.NODES, None, {"metadata": {"name": "n1"}, "status": status})
    assert node["status"] == status
    node["status"] = {"conditions": []}
    node["metadata"]["labels"] = {"zone": "a"}
    updated, _ = await registry.update(k.NODES, None, "n1", node)
    assert updated["status"] == status  # the main resource does not change status
    with pytest.raises(APIError) as info:
        bad = {**updated, "status": {"addresses": [{"type": "InternalIP", "address": "nope"}]}}
        await registry.update(k.NODES, None, "n1", bad, subresource="status")
    assert causes(info.value)[0][0] == "status.addresses[0].address"


async def test_deployment_scale_subresource(registry: Registry) -> None:
    import json

    await registry.create(k.DEPLOYMENTS, "default", deployment())
    sc = await registry.get(k.DEPLOYMENTS, "default", "web", subresource="scale")
    assert sc["kind"] == "Scale" and sc["apiVersion"] == "autoscaling/v1"
    assert sc["spec"] == {"replicas": 1} and sc["status"] == {"replicas": 0, "selector": "app=web"}
    out, created, _ = await registry.patch(k.DEPLOYMENTS, "default", "web", "application/merge-patch+json",
                                           json.dumps({"spec": {"replicas": 3}}).encode(),
                                           subresource="scale")
    assert not created and out["kind"] == "Scale" and out["spec"]["replicas"] == 3
    dep = await registry.get(k.DEPLOYMENTS, "default", "web")
    assert dep["spec"]["replicas"] == 3 and dep["metadata"]["generation"] == 2
    out["spec"]["replicas"] = 5
    put, _ = await registry.update(k.DEPLOYMENTS, "default", "web", out, subresource="scale")
    assert put["spec"]["replicas"] == 5
    with pytest.raises(APIError) as info:  # the Scale carried a resourceVersion that is now stale
        await registry.update(k.DEPLOYMENTS, "default", "web", out, subresource="scale")
    assert info.value.code == 409
    with pytest.raises(APIError) as info:
        await registry.patch(k.DEPLOYMENTS, "default", "web", "application/merge-patch+json",
                             b'{"spec":{"replicas":-1}}', subresource="scale")
    assert causes(info.value) == [("spec.replicas", "Invalid value: -1: must be greater than or equal to 0")]
    with pytest.raises(APIError) as info:
        await registry.get(k.SERVICES, "default", "kubernetes", subresource="scale")
    assert info.value.code == 404
