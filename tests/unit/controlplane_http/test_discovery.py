"""Discovery documents and Accept negotiation, as kubectl reads them."""

from __future__ import annotations

import pytest

from svcnet.controlplane.apiserver import discovery, negotiation
from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry.kinds import KINDS

KUBECTL_132_ACCEPT = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
                      "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
                      "application/json")
KUBECTL_128_ACCEPT = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
TABLE_ACCEPT = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;"
                "g=meta.k8s.io,application/json")


def test_core_resource_list_has_short_names_categories_and_subresources() -> None:
    doc = discovery.api_resource_list(KINDS, "", "v1")
    assert doc is not None and doc["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in doc["resources"]}
    svc = by_name["services"]
    assert svc["shortNames"] == ["svc"] and svc["categories"] == ["all"]
    assert svc["singularName"] == "service" and svc["namespaced"] is True and svc["kind"] == "Service"
    assert set(svc["verbs"]) == {"create", "delete", "deletecollection", "get", "list", "patch", "update",
                                 "watch"}
    assert by_name["services/status"]["verbs"] == ["get", "patch", "update"]
    assert by_name["namespaces"]["namespaced"] is False
    assert by_name["namespaces/finalize"]["verbs"] == ["update"]
    assert "endpointslices" not in by_name
    assert discovery.api_resource_list(KINDS, "nosuch.io", "v1") is None


def test_group_list_and_group() -> None:
    groups = {g["name"]: g for g in discovery.api_group_list(KINDS)["groups"]}
    assert "" not in groups
    assert groups["discovery.k8s.io"]["preferredVersion"] == {"groupVersion": "discovery.k8s.io/v1",
                                                              "version": "v1"}
    assert {"apps", "coordination.k8s.io", "networking.k8s.io"} <= set(groups)


def test_aggregated_documents() -> None:
    core = discovery.aggregated(KINDS, core=True, version="v2")
    assert core["apiVersion"] == "apidiscovery.k8s.io/v2" and len(core["items"]) == 1
    assert "name" not in core["items"][0]["metadata"]
    resources = {r["resource"]: r for r in core["items"][0]["versions"][0]["resources"]}
    assert resources["services"]["scope"] == "Namespaced"
    assert resources["services"]["subresources"][0]["subresource"] == "status"
    assert resources["nodes"]["scope"] == "Cluster"
    named = discovery.aggregated(KINDS, core=False, version="v2beta1")
    assert named["apiVersion"] == "apidiscovery.k8s.io/v2beta1"
    es = next(i for i in named["items"] if i["metadata"]["name"] == "discovery.k8s.io")
    assert es["versions"][0]["resources"][0]["responseKind"] == {
        "group": "discovery.k8s.io", "version": "v1", "kind": "EndpointSlice"}


@pytest.mark.parametrize("accept,version", [
    (KUBECTL_132_ACCEPT, "v2"),
    (KUBECTL_128_ACCEPT, "v2beta1"),   # kubectl 1.27-1.29 break on a v2 answer
    ("application/json", ""),
    ("application/json, */*", ""),
    (None, ""),
])
def test_discovery_negotiation_is_honest(accept: str | None, version: str) -> None:
    neg = negotiation.negotiate_discovery(accept)
    assert neg.discovery_version == version
    if version:
        assert neg.content_type == f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
    else:
        assert neg.content_type == "application/json"


def test_table_negotiation() -> None:
    neg = negotiation.negotiate_object(TABLE_ACCEPT, table_ok=True)
    assert neg.table and neg.content_type == "application/json;as=Table;v=v1;g=meta.k8s.io"
    assert not negotiation.negotiate_object(TABLE_ACCEPT, table_ok=False).table
    # kubectl describe: protobuf first, then JSON: JSON wins since we never encode protobuf
    assert negotiation.negotiate_object("application/vnd.kubernetes.protobuf,application/json",
                                        table_ok=True).content_type == "application/json"
    assert negotiation.negotiate_object("application/yaml", table_ok=True).encoding == "yaml"
    with pytest.raises(APIError) as err:
        negotiation.negotiate_object("application/vnd.kubernetes.protobuf", table_ok=True)
    assert err.value.code == 406


def test_decode_body_errors() -> None:
    assert negotiation.decode_body("application/json", b'{"a": 1}') == {"a": 1}
    assert negotiation.decode_body("application/yaml", b"a: 1\n") == {"a": 1}
    for ctype, body, code in [("application/json", b"{nope", 400), ("application/yaml", b"a: [", 400),
                              ("application/json", b"[1]", 400), ("text/plain", b"x", 415),
                              ("application/json", b" " * (3 * 1024 * 1024 + 1), 413)]:
        with pytest.raises(APIError) as err:
            negotiation.decode_body(ctype, body)
        assert err.value.code == code, (ctype, body[:10])
