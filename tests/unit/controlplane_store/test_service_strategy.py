"""Service defaulting and validation as kube-apiserver does them (through the Registry)."""

from __future__ import annotations

from typing import Any

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.store import Registry

from .conftest import causes, svc


async def test_clusterip_service_defaults(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("web", selector={"app": "web"}))
    spec = out["spec"]
    assert spec["type"] == "ClusterIP"
    assert spec["sessionAffinity"] == "None"
    assert spec["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert spec["internalTrafficPolicy"] == "Cluster"
    assert "externalTrafficPolicy" not in spec
    assert spec["ipFamilyPolicy"] == "SingleStack" and spec["ipFamilies"] == ["IPv4"]
    assert spec["clusterIPs"] == [spec["clusterIP"]]
    assert out["status"] == {"loadBalancer": {}}
    assert "generation" not in out["metadata"]  # svcStrategy never sets generation


async def test_nodeport_and_loadbalancer_defaults(registry: Registry) -> None:
    np, _ = await registry.create(k.SERVICES, "default", svc("np", type="NodePort"))
    assert np["spec"]["externalTrafficPolicy"] == "Cluster"
    assert 30000 <= np["spec"]["ports"][0]["nodePort"] <= 32767
    lb, _ = await registry.create(k.SERVICES, "default", svc("lb", type="LoadBalancer"))
    assert lb["spec"]["allocateLoadBalancerNodePorts"] is True
    assert lb["spec"]["externalTrafficPolicy"] == "Cluster"
    assert "healthCheckNodePort" not in lb["spec"]


async def test_client_ip_affinity_gets_the_default_timeout(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("aff", sessionAffinity="ClientIP"))
    assert out["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}


async def test_named_target_port_is_kept_and_status_is_reset(registry: Registry) -> None:
    body = svc("named", ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    body["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    out, _ = await registry.create(k.SERVICES, "default", body)
    assert out["spec"]["ports"][0]["targetPort"] == "web"
    assert out["status"] == {"loadBalancer": {}}


async def test_headless_and_external_name(registry: Registry) -> None:
    hl, _ = await registry.create(k.SERVICES, "default", svc("hl", clusterIP="None", selector={"a": "b"}))
    assert hl["spec"]["clusterIP"] == "None" and hl["spec"]["clusterIPs"] == ["None"]
    assert hl["spec"]["ipFamilyPolicy"] == "SingleStack"
    bare, _ = await registry.create(k.SERVICES, "default", svc("bare", clusterIP="None", ports=[]))
    assert bare["spec"]["ipFamilyPolicy"] == "RequireDualStack"
    assert bare["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    en, _ = await registry.create(k.SERVICES, "default",
                                  svc("en", type="ExternalName", externalName="example.com", ports=[]))
    spec = en["spec"]
    assert spec["externalName"] == "example.com"
    for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"):
        assert field not in spec


@pytest.mark.parametrize(("spec", "expected"), [
    pytest.param({"ports": [{"port": 80}, {"port": 81}]},
                 [("spec.ports[0].name", "Required value"), ("spec.ports[1].name", "Required value")],
                 id="names-required-with-two-ports"),
    pytest.param({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
                 [("spec.ports[1].name", 'Duplicate value: "a"')], id="duplicate-port-names"),
    pytest.param({"ports": [{"port": 0}]},
                 [("spec.ports[0].port", "Invalid value: 0: must be between 1 and 65535, inclusive"),
                  # targetPort defaults to port, and kube reports it too
                  ("spec.ports[0].targetPort", "Invalid value: 0: must be between 1 and 65535, inclusive")],
                 id="port-zero"),
    pytest.param({"ports": [{"port": 70000}]},
                 [("spec.ports[0].port", "Invalid value: 70000: must be between 1 and 65535, inclusive"),
                  ("spec.ports[0].targetPort",
                   "Invalid value: 70000: must be between 1 and 65535, inclusive")],
                 id="port-too-big"),
    pytest.param({"ports": [{"port": 80, "protocol": "ICMP"}]},
                 [("spec.ports[0].protocol",
                   'Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"')],
                 id="bad-protocol"),
    pytest.param({"ports": []}, [("spec.ports", "Required value")], id="no-ports"),
    pytest.param({"type": "Magic"},
                 [("spec.type", 'Unsupported value: "Magic": supported values: "ClusterIP", '
                   '"ExternalName", "LoadBalancer", "NodePort"')], id="bad-type"),
    pytest.param({"ports": [{"name": "Http", "port": 80}]},
                 [("spec.ports[0].name", "Invalid value: \"Http\": a lowercase RFC 1123 label must "
                   "consist of lower case alphanumeric characters or '-', and must start and end "
                   "with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
                   "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")], id="bad-port-name"),
    pytest.param({"ports": [{"port": 80, "targetPort": "no_underscores"}]},
                 [("spec.ports[0].targetPort", 'Invalid value: "no_underscores": must contain only '
                   "alpha-numeric characters (a-z, 0-9), and hyphens (-)")], id="bad-named-target"),
    pytest.param({"sessionAffinity": "Sticky"},
                 [("spec.sessionAffinity",
                   'Unsupported value: "Sticky": supported values: "ClientIP", "None"')],
                 id="bad-affinity"),
    pytest.param({"sessionAffinity": "ClientIP",
                  "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}},
                 [("spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                   "Invalid value: 86401: must be greater than 0 and less than 86400")],
                 id="affinity-timeout-too-long"),
    pytest.param({"ports": [{"port": 80, "nodePort": 30080}]},
                 [("spec.ports[0].nodePort", "Forbidden: may not be used when `type` is 'ClusterIP'")],
                 id="nodeport-on-clusterip"),
    pytest.param({"externalTrafficPolicy": "Local"},
                 [("spec.externalTrafficPolicy",
                   'Invalid value: "Local": may only be set for externally-accessible services')],
                 id="etp-on-clusterip"),
    pytest.param({"type": "NodePort", "externalTrafficPolicy": "Nearby"},
                 [("spec.externalTrafficPolicy",
                   'Unsupported value: "Nearby": supported values: "Cluster", "Local"')],
                 id="bad-etp"),
    pytest.param({"internalTrafficPolicy": "Nearby"},
                 [("spec.internalTrafficPolicy",
                   'Unsupported value: "Nearby": supported values: "Cluster", "Local"')],
                 id="bad-itp"),
    pytest.param({"type": "ExternalName", "ports": []},
                 [("spec.externalName", "Required value")], id="externalname-required"),
    pytest.param({"type": "NodePort", "clusterIP": "None"},
                 [("spec.clusterIPs[0]", "Invalid value: \"None\": may not be set to 'None' for "
                   "NodePort services")], id="headless-nodeport"),
    pytest.param({"clusterIP": "10.96.0.300"},
                 [("spec.clusterIPs[0]", 'Invalid value: "10.96.0.300": must be a valid IP address, '
                   "(e.g. 10.9.8.7 or 2001:db8::ffff)")], id="bad-cluster-ip"),
    pytest.param({"ipFamilies": ["IPv6"]},
                 [("spec.ipFamilies[0]", 'Invalid value: "IPv6": not configured on this cluster')],
                 id="ipv6-on-ipv4-cluster"),
    pytest.param({"ipFamilyPolicy": "RequireDualStack"},
                 [("spec.ipFamilyPolicy", 'Invalid value: "RequireDualStack": this cluster is not '
                   "configured for dual-stack services")], id="dual-stack-required"),
    pytest.param({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]},
                 [("spec.ipFamilyPolicy", "Invalid value: \"SingleStack\": must be 'RequireDualStack' "
                   "or 'PreferDualStack' when multiple IP families are specified")],
                 id="single-stack-two-families"),
    pytest.param({"healthCheckNodePort": 30001, "type": "NodePort"},
                 [("spec.healthCheckNodePort",
                   "Invalid value: 30001: may only be set when `type` is 'LoadBalancer'"),
                  ("spec.healthCheckNodePort",
                   "Invalid value: 30001: may only be set when `externalTrafficPolicy` is 'Local'")],
                 id="hcnp-wrong-type"),
])
async def test_service_validation_errors(registry: Registry, spec: dict[str, Any],
                                         expected: list[tuple[str, str]]) -> None:
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("bad", **spec))
    err = info.value
    assert err.code == 422 and err.reason == "Invalid"
    assert causes(err) == expected
    assert err.details is not None and err.details["kind"] == "Service" and err.details["name"] == "bad"


async def test_invalid_name_is_a_dns1035_error(registry: Registry) -> None:
    with pytest.raises(APIError) as info:
        await registry.create(k.SERVICES, "default", svc("1web"))
    (field, message), = causes(info.value)
    assert field == "metadata.name"
    assert message.startswith('Invalid value: "1web": a DNS-1035 label must consist of lower case')
    assert info.value.message.startswith('Service "1web" is invalid: metadata.name: Invalid value')


async def test_cluster_ip_may_not_change(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("web"))
    out["spec"]["clusterIP"] = "10.96.0.99"
    out["spec"]["clusterIPs"] = ["10.96.0.99"]
    with pytest.raises(APIError) as info:
        await registry.update(k.SERVICES, "default", "web", out)
    assert causes(info.value)[0][0] == "spec.clusterIPs[0]"
    assert causes(info.value)[0][1].endswith("may not change once set")


async def test_put_without_allocated_values_keeps_them(registry: Registry) -> None:
    out, _ = await registry.create(k.SERVICES, "default", svc("web", type="NodePort"))
    body = svc("web", type="NodePort", ports=[{"port": 80, "targetPort": 8080}])
    updated, _ = await registry.update(k.SERVICES, "default", "web", body)
    assert updated["spec"]["clusterIP"] == out["spec"]["clusterIP"]
    assert updated["spec"]["ports"][0]["nodePort"] == out["spec"]["ports"][0]["nodePort"]
    assert updated["spec"]["ports"][0]["targetPort"] == 8080
