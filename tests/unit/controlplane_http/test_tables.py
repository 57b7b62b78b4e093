"""Server-side printing: the cells kubectl shows for each kind."""

from __future__ import annotations

import datetime

import pytest

from svcnet.controlplane.apiserver import tables

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
CREATED = "2026-01-01T11:00:00Z"  # one hour before NOW


def cells(group: str, plural: str, obj: dict) -> dict[str, object]:
    table = tables.to_table(group, plural, [obj], now=NOW)
    names = [c["name"] for c in table["columnDefinitions"]]
    return dict(zip(names, table["rows"][0]["cells"]))


@pytest.mark.parametrize("seconds,text", [
    (5, "5s"), (119, "119s"), (125, "2m5s"), (300, "5m"), (1000, "16m"), (3 * 3600 + 600, "3h10m"),
    (20 * 3600, "20h"), (3 * 86400 + 4 * 3600, "3d4h"), (40 * 86400, "40d"),
    (3 * 365 * 86400 + 10 * 86400, "3y10d"), (9 * 365 * 86400, "9y"), (-1, "0s"), (-5, "<invalid>"),
])
def test_human_duration(seconds: int, text: str) -> None:
    assert tables.human_duration(seconds) == text


def test_service_columns_and_wide_selector() -> None:
    svc = {"metadata": {"name": "web", "namespace": "default", "creationTimestamp": CREATED,
                        "labels": {"app": "web"}},
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "selector": {"tier": "fe", "app": "web"},
                    "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"},
                              {"port": 53, "protocol": "UDP"}]}}
    table = tables.to_table("", "services", [svc], now=NOW)
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"]
    assert [c["priority"] for c in table["columnDefinitions"]] == [0, 0, 0, 0, 0, 0, 1]
    assert table["rows"][0]["cells"] == ["web", "NodePort", "10.96.0.20", "<none>", "80:30080/TCP,53/UDP",
                                         "60m", "app=web,tier=fe"]
    obj = table["rows"][0]["object"]
    assert obj["kind"] == "PartialObjectMetadata" and obj["apiVersion"] == "meta.k8s.io/v1"
    assert obj["metadata"]["labels"] == {"app": "web"}


@pytest.mark.parametrize("spec,status,external", [
    ({"type": "LoadBalancer"}, {}, "<pending>"),
    ({"type": "LoadBalancer"}, {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}, "192.0.2.9"),
    ({"type": "ExternalName", "externalName": "example.org"}, {}, "example.org"),
    ({"type": "ClusterIP", "externalIPs": ["198.51.100.1"]}, {}, "198.51.100.1"),
])
def test_service_external_ip(spec: dict, status: dict, external: str) -> None:
    assert tables.service_external_ip({"spec": spec, "status": status}) == external


def test_headless_and_portless_service() -> None:
    c = cells("", "services", {"metadata": {"name": "h", "creationTimestamp": CREATED},
                               "spec": {"clusterIP": "None", "type": "ClusterIP"}})
    assert c["Cluster-IP"] == "None" and c["Port(s)"] == "<none>" and c["Selector"] == "<none>"


def test_endpointslice_columns_truncate_after_three() -> None:
    es = {"metadata": {"name": "web-abc", "creationTimestamp": CREATED}, "addressType": "IPv4",
          "ports": [{"port": 8080, "name": "http"}],
          "endpoints": [{"addresses": [f"10.244.0.{i}"]} for i in range(1, 6)]}
    c = cells("discovery.k8s.io", "endpointslices", es)
    assert c == {"Name": "web-abc", "AddressType": "IPv4", "Ports": "8080",
                 "Endpoints": "10.244.0.1,10.244.0.2,10.244.0.3 + 2 more...", "Age": "60m"}
    empty = cells("discovery.k8s.io", "endpointslices", {"metadata": {"name": "e"}, "addressType": "IPv4"})
    assert empty["Ports"] == "<unset>" and empty["Endpoints"] == "<unset>"


def test_pod_columns() -> None:
    pod = {"metadata": {"name": "web-1", "creationTimestamp": CREATED},
           "spec": {"nodeName": "node-a", "containers": [{"name": "a"}, {"name": "b"}]},
           "status": {"phase": "Running", "podIP": "10.244.1.5",
                      "containerStatuses": [{"ready": True, "restartCount": 2},
                                            {"ready": False, "restartCount": 1,
                                             "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}
    c = cells("", "pods", pod)
    assert (c["Ready"], c["Status"], c["Restarts"], c["IP"], c["Node"]) == (
        "1/2", "CrashLoopBackOff", 3, "10.244.1.5", "node-a")
    pod["metadata"]["deletionTimestamp"] = CREATED
    assert cells("", "pods", pod)["Status"] == "Terminating"


def test_node_columns() -> None:
    node = {"metadata": {"name": "n1", "creationTimestamp": CREATED,
                         "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0-svcnet"},
                       "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}
    c = cells("", "nodes", node)
    assert (c["Status"], c["Roles"], c["Version"], c["Internal-IP"]) == (
        "Ready,SchedulingDisabled", "control-plane", "v1.32.0-svcnet", "192.0.2.10")


def test_namespace_and_deployment_columns() -> None:
    assert cells("", "namespaces", {"metadata": {"name": "default", "creationTimestamp": CREATED},
                                    "status": {"phase": "Active"}})["Status"] == "Active"
    dep = {"metadata": {"name": "web", "creationTimestamp": CREATED},
           "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]}}},
           "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}
    c = cells("apps", "deployments", dep)
    assert (c["Ready"], c["Up-to-date"], c["Available"], c["Containers"], c["Images"], c["Selector"]) == (
        "2/3", 3, 2, "nginx", "nginx:1", "app=web")


def test_event_columns_as_kubes_printer() -> None:
    ev = {"metadata": {"name": "p1.17a", "creationTimestamp": CREATED},
          "involvedObject": {"kind": "Pod", "name": "p1", "fieldPath": "spec.containers{app}"},
          "reason": "Pulled", "message": "  Container image already present \n", "type": "Normal",
          "source": {"component": "kubelet", "host": "n1"},
          "firstTimestamp": "2026-01-01T11:00:00Z", "lastTimestamp": "2026-01-01T11:55:00Z", "count": 4}
    t = tables.to_table("", "events", [ev], now=NOW)
    names = [c["name"] for c in t["columnDefinitions"] if c["priority"] == 0]
    assert names == ["Last Seen", "Type", "Reason", "Object", "Message"]
    assert t["rows"][0]["cells"] == ["5m", "Normal", "Pulled", "pod/p1", "spec.containers{app}",
                                     "kubelet, n1", "Container image already present", "60m", 4, "p1.17a"]
    # events.k8s.io-style: eventTime, a series, reporting fields, no name on the object
    ev2 = {"metadata": {"name": "e2"}, "involvedObject": {"kind": "Node"}, "type": "Warning",
           "eventTime": "2026-01-01T11:58:00.000000Z", "reportingComponent": "svcnet-proxy",
           "series": {"count": 7, "lastObservedTime": "2026-01-01T11:59:30.000000Z"}}
    c = cells("", "events", ev2)
    assert (c["Last Seen"], c["First Seen"], c["Object"], c["Source"], c["Count"]) == (
        "30s", "2m", "node", "svcnet-proxy", 7)
    c = cells("", "events", {"metadata": {"name": "e3"}, "involvedObject": {"kind": "Pod", "name": "x"}})
    assert (c["Last Seen"], c["Count"]) == ("<unknown>", 1)


def test_other_kinds_get_name_and_age_and_include_object_modes() -> None:
    ev = {"metadata": {"name": "l1", "creationTimestamp": CREATED}}
    t = tables.to_table("", "configmaps", [ev], now=NOW, include_object="None")
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "Age"]
    assert "object" not in t["rows"][0]
    t = tables.to_table("", "configmaps", [ev], now=NOW, include_object="Object", with_headers=False,
                        resource_version="7", continue_token="abc")
    assert t["rows"][0]["object"] is ev and t["columnDefinitions"] == []
    assert t["metadata"] == {"resourceVersion": "7", "continue": "abc"}
