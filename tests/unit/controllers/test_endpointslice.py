"""EndpointSlice reconciler: what slices a Service gets, and how little changes."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from svcnet.controlplane.controllers.endpointslice import (
    HEADLESS_LABEL,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    TRIGGER_TIME_ANNOTATION,
    SliceChanges,
    reconcile_slices,
)
from svcnet.controlplane.controllers.trigger_time import TriggerTimeTracker

Obj = dict[str, Any]
_names = itertools.count()


def service(name: str = "web", *, ports: list[Obj] | None = None, families: list[str] | None = None,
            cluster_ip: str = "10.96.0.20", publish: bool = False, selector: Obj | None = None,
            labels: Obj | None = None) -> Obj:
    spec: Obj = {"selector": {"app": name} if selector is None else selector, "clusterIP": cluster_ip,
                 "ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080,
                                                            "protocol": "TCP"}]}
    if families is not None:
        spec["ipFamilies"] = families
    if publish:
        spec["publishNotReadyAddresses"] = True
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                         "labels": labels or {}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec}


def pod(name: str, ip: str | list[str], *, ready: bool = True, app: str = "web", node: str = "n1",
        deleting: bool = False, phase: str = "Running", ports: list[Obj] | None = None,
        hostname: str | None = None, subdomain: str | None = None, ns: str = "default",
        ready_at: str = "2026-01-01T00:00:05Z") -> Obj:
    ips = [ip] if isinstance(ip, str) else ip
    md: Obj = {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": {"app": app}}
    if deleting:
        md["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    spec: Obj = {"nodeName": node, "containers": [{"name": "c", "ports": ports or []}]}
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": spec,
            "status": {"phase": phase, "podIP": ips[0], "podIPs": [{"ip": i} for i in ips],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "lastTransitionTime": ready_at}]}}


def store(changes: SliceChanges, existing: list[Obj]) -> list[Obj]:
    """Apply changes the way the apiserver would: names for creates, bumped versions."""
    by_name = {s["metadata"]["name"]: s for s in existing}
    for s in changes.delete:
        del by_name[s["metadata"]["name"]]
    for s in changes.update:
        s = copy.deepcopy(s)
        s["metadata"]["resourceVersion"] = str(next(_names))
        by_name[s["metadata"]["name"]] = s
    for s in changes.create:
        s = copy.deepcopy(s)
        s["metadata"]["name"] = s["metadata"]["generateName"] + f"x{next(_names)}"
        s["metadata"]["resourceVersion"] = str(next(_names))
        by_name[s["metadata"]["name"]] = s
    return list(by_name.values())


def converge(svc: Obj, pods: list[Obj], existing: list[Obj] | None = None, **kw: Any) -> list[Obj]:
    slices = store(reconcile_slices(svc, pods, existing or [], **kw), existing or [])
    again = reconcile_slices(svc, pods, slices, **kw)
    assert again.empty, f"second reconcile is not a no-op: {again}"
    return slices


def conditions(slices: list[Obj]) -> dict[str, tuple[bool, bool, bool]]:
    out = {}
    for s in slices:
        for ep in s["endpoints"]:
            c = ep["conditions"]
            out[ep["addresses"][0]] = (c["ready"], c["serving"], c["terminating"])
    return out


@pytest.mark.parametrize("p, publish, expected", [
    pytest.param(pod("a", "10.244.1.2"), False, (True, True, False), id="ready"),
    pytest.param(pod("a", "10.244.1.2", ready=False), False, (False, False, False), id="not-ready"),
    pytest.param(pod("a", "10.244.1.2", deleting=True), False, (False, True, True), id="terminating-serving"),
    pytest.param(pod("a", "10.244.1.2", deleting=True, ready=False), False, (False, False, True),
                 id="terminating-not-serving"),
    pytest.param(pod("a", "10.244.1.2", ready=False), True, (True, False, False), id="publish-not-ready"),
    pytest.param(pod("a", "10.244.1.2", deleting=True), True, (True, True, True), id="publish-terminating"),
])
def test_endpoint_conditions(p: Obj, publish: bool, expected: tuple[bool, bool, bool]) -> None:
    slices = converge(service(publish=publish), [p])
    assert conditions(slices) == {"10.244.1.2": expected}


def test_slice_shape() -> None:
    svc = service(labels={"team": "a", SERVICE_NAME_LABEL: "spoof"})
    [s] = converge(svc, [pod("a", "10.244.1.2", node="n1")], zones={"n1": "z1"}, trigger_time="T")
    assert s["addressType"] == "IPv4"
    assert s["metadata"]["generateName"] == "web-"
    assert s["metadata"]["labels"] == {"team": "a", SERVICE_NAME_LABEL: "web",
                                       MANAGED_BY_LABEL: "endpointslice-controller.k8s.io"}
    assert s["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                                 "uid": "uid-web", "controller": True,
                                                 "blockOwnerDeletion": True}]
    assert s["metadata"]["annotations"] == {TRIGGER_TIME_ANNOTATION: "T"}
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert s["endpoints"] == [{"addresses": ["10.244.1.2"],
                               "conditions": {"ready": True, "serving": True, "terminating": False},
                               "targetRef": {"kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"},
                               "nodeName": "n1", "zone": "z1"}]


@pytest.mark.parametrize("p, included", [
    pytest.param(pod("a", "10.244.1.2", phase="Succeeded"), False, id="succeeded"),
    pytest.param(pod("a", "10.244.1.2", phase="Failed"), False, id="failed"),
    pytest.param(pod("a", "10.244.1.2", app="other"), False, id="other-labels"),
    pytest.param(pod("a", "10.244.1.2", ns="kube-system"), False, id="other-namespace"),
    pytest.param(pod("a", "10.244.1.2", phase="Pending"), True, id="pending-with-ip"),
])
def test_which_pods(p: Obj, included: bool) -> None:
    slices = converge(service(), [p])
    assert bool(slices[0]["endpoints"]) is included


def test_pod_without_ip_gives_placeholder() -> None:
    p = pod("a", "10.244.1.2")
    p["status"]["podIPs"], p["status"]["podIP"] = [], ""
    [s] = converge(service(), [p])
    assert s["endpoints"] == [] and s["ports"] == []


def test_named_target_port_resolved_per_pod() -> None:
    svc = service(ports=[{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                         {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}])
    a = pod("a", "10.244.1.2", ports=[{"name": "web", "containerPort": 8080},
                                      {"name": "dns", "containerPort": 5353, "protocol": "UDP"}])
    b = pod("b", "10.244.1.3", ports=[{"name": "web", "containerPort": 9090},
                                      {"name": "dns", "containerPort": 5353, "protocol": "UDP"}])
    c = pod("c", "10.244.1.4", ports=[{"name": "web", "containerPort": 8080},
                                      {"name": "dns", "containerPort": 5353, "protocol": "TCP"}])
    slices = converge(svc, [a, b, c])
    got = sorted((tuple((p["name"], p["port"], p["protocol"]) for p in s["ports"]),
                  tuple(e["addresses"][0] for e in s["endpoints"])) for s in slices)
    assert got == [
        ((("http", 8080, "TCP"),), ("10.244.1.4",)),  # dns is UDP, c only names a TCP port
        ((("http", 8080, "TCP"), ("dns", 5353, "UDP")), ("10.244.1.2",)),
        ((("http", 9090, "TCP"), ("dns", 5353, "UDP")), ("10.244.1.3",)),
    ]


def test_dual_stack_one_slice_set_per_family() -> None:
    svc = service(families=["IPv6", "IPv4"])
    pods = [pod("a", ["10.244.1.2", "fd00::2"]), pod("b", ["fd00::3"])]
    slices = converge(svc, pods)
    by_type = {s["addressType"]: sorted(e["addresses"][0] for e in s["endpoints"]) for s in slices}
    assert by_type == {"IPv4": ["10.244.1.2"], "IPv6": ["fd00::2", "fd00::3"]}


def test_family_dropped_deletes_its_slices() -> None:
    pods = [pod("a", ["10.244.1.2", "fd00::2"])]
    slices = converge(service(families=["IPv4", "IPv6"]), pods)
    changes = reconcile_slices(service(families=["IPv4"]), pods, slices)
    assert [s["addressType"] for s in changes.delete] == ["IPv6"] and not changes.create and not changes.update


def test_headless_hostname_and_label() -> None:
    svc = service("db", cluster_ip="None")
    pods = [pod("db-0", "10.244.1.2", app="db", hostname="db-0", subdomain="db"),
            pod("db-1", "10.244.1.3", app="db", hostname="db-1", subdomain="other")]
    slices = converge(svc, pods)
    # headless without ipFamilies: both families considered, only IPv4 has pods
    assert {s["addressType"] for s in slices} == {"IPv4"}
    [s] = slices
    assert s["metadata"]["labels"][HEADLESS_LABEL] == ""
    hostnames = {e["addresses"][0]: e.get("hostname") for e in s["endpoints"]}
    assert hostnames == {"10.244.1.2": "db-0", "10.244.1.3": None}


def test_more_than_100_endpoints_split() -> None:
    pods = [pod(f"p{i}", f"10.244.{i // 250}.{i % 250 + 1}") for i in range(250)]
    slices = converge(service(), pods)
    assert sorted(len(s["endpoints"]) for s in slices) == [50, 100, 100]
    assert len({e["addresses"][0] for s in slices for e in s["endpoints"]}) == 250


def test_small_max_per_slice() -> None:
    pods = [pod(f"p{i}", f"10.244.1.{i + 1}") for i in range(5)]
    slices = converge(service(), pods, max_endpoints_per_slice=2)
    assert sorted(len(s["endpoints"]) for s in slices) == [1, 2, 2]


def test_unchanged_is_noop_and_status_change_touches_one_slice() -> None:
    pods = [pod(f"p{i}", f"10.244.{i // 200}.{i % 200 + 1}") for i in range(150)]
    slices = converge(service(), pods)
    pods[120] = pod("p120", pods[120]["status"]["podIP"], ready=False)
    changes = reconcile_slices(service(), pods, slices)
    assert not changes.create and not changes.delete and len(changes.update) == 1
    [upd] = changes.update
    assert upd["metadata"]["name"] in {s["metadata"]["name"] for s in slices}
    assert upd["metadata"]["resourceVersion"]  # conditional write on the version read


def test_new_pod_fills_existing_slice_rather_than_creating() -> None:
    pods = [pod(f"p{i}", f"10.244.1.{i + 1}") for i in range(3)]
    slices = converge(service(), pods)
    pods.append(pod("p3", "10.244.1.4"))
    changes = reconcile_slices(service(), pods, slices)
    assert not changes.create and not changes.delete and len(changes.update) == 1
    assert len(changes.update[0]["endpoints"]) == 4
    # existing endpoints keep their order: consumers see one appended entry
    assert [e["addresses"][0] for e in changes.update[0]["endpoints"]][:3] == \
        [e["addresses"][0] for e in slices[0]["endpoints"]]


def test_removed_pods_empty_slice_deleted_placeholder_reused() -> None:
    pods = [pod("a", "10.244.1.2")]
    slices = converge(service(), pods)
    changes = reconcile_slices(service(), [], slices)
    # the emptied slice becomes the placeholder in place: no delete + create
    assert not changes.create and not changes.delete
    assert [(s["endpoints"], s["ports"]) for s in changes.update] == [([], [])]
    slices = store(changes, slices)
    assert reconcile_slices(service(), [], slices).empty


def test_placeholder_then_endpoints_reuses_placeholder() -> None:
    slices = converge(service(), [])
    changes = reconcile_slices(service(), [pod("a", "10.244.1.2")], slices)
    assert not changes.create and not changes.delete and len(changes.update) == 1
    assert changes.update[0]["metadata"]["name"] == slices[0]["metadata"]["name"]


def test_selector_removed_or_external_name_deletes_all() -> None:
    slices = converge(service(), [pod("a", "10.244.1.2")])
    no_sel = service(selector={})
    assert [s["metadata"]["name"] for s in reconcile_slices(no_sel, [], slices).delete] == \
        [slices[0]["metadata"]["name"]]
    ext = service()
    ext["spec"]["type"] = "ExternalName"
    assert len(reconcile_slices(ext, [], slices).delete) == 1


def test_slice_of_previous_service_with_same_name_is_not_reused() -> None:
    slices = converge(service(), [pod("a", "10.244.1.2")])
    reborn = service()
    reborn["metadata"]["uid"] = "uid-web-2"
    changes = reconcile_slices(reborn, [pod("a", "10.244.1.2")], slices)
    assert len(changes.delete) == 1 and len(changes.create) == 1 and not changes.update
    assert changes.create[0]["metadata"]["ownerReferences"][0]["uid"] == "uid-web-2"


def test_service_label_change_rewrites_labels_only() -> None:
    slices = converge(service(), [pod("a", "10.244.1.2")])
    changes = reconcile_slices(service(labels={"tier": "front"}), [pod("a", "10.244.1.2")], slices)
    assert len(changes.update) == 1 and changes.update[0]["metadata"]["labels"]["tier"] == "front"
    assert changes.update[0]["endpoints"] == slices[0]["endpoints"]


def test_port_change_moves_endpoints() -> None:
    slices = converge(service(), [pod("a", "10.244.1.2")])
    svc2 = service(ports=[{"name": "http", "port": 80, "targetPort": 9000, "protocol": "TCP"}])
    changes = reconcile_slices(svc2, [pod("a", "10.244.1.2")], slices)
    # old mapping's slice is reused for the new mapping instead of delete + create
    assert not changes.create and not changes.delete
    assert changes.update[0]["ports"] == [{"name": "http", "port": 9000, "protocol": "TCP"}]


def test_duplicate_endpoint_across_slices_is_removed_from_one() -> None:
    slices = converge(service(), [pod("a", "10.244.1.2")])
    dup = copy.deepcopy(slices[0])
    dup["metadata"]["name"] = "web-dup"
    changes = reconcile_slices(service(), [pod("a", "10.244.1.2")], slices + [dup])
    remaining = store(changes, slices + [dup])
    assert sum(len(s["endpoints"]) for s in remaining) == 1


def test_trigger_time_tracker() -> None:
    tracker = TriggerTimeTracker()
    svc = service()
    a = pod("a", "10.244.1.2", ready_at="2026-01-01T00:00:05Z")
    b = pod("b", "10.244.1.3", ready_at="2026-01-01T00:00:07Z")
    # first sync: the Service's creation is the earliest unreflected change
    text, state = tracker.compute("default/web", svc, [a, b])
    assert text == "2026-01-01T00:00:00Z"
    assert tracker.compute("default/web", svc, [a, b])[0] == text  # not committed: a retry keeps it
    tracker.commit("default/web", state)
    assert tracker.compute("default/web", svc, [a, b])[0] is None
    b2 = pod("b", "10.244.1.3", ready=False, ready_at="2026-01-01T00:02:00.250Z")
    assert tracker.compute("default/web", svc, [a, b2])[0] == "2026-01-01T00:02:00.25Z"


@pytest.mark.parametrize("distribution, expected", [
    pytest.param(None, None, id="none"),
    pytest.param("PreferClose", {"forZones": [{"name": "z1"}]}, id="prefer-close"),
    pytest.param("PreferSameZone", {"forZones": [{"name": "z1"}]}, id="prefer-same-zone"),
    pytest.param("PreferSameNode", {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]},
                 id="prefer-same-node"),
])
def test_traffic_distribution_hints(distribution: str | None, expected: Obj | None) -> None:
    svc = service()
    if distribution:
        svc["spec"]["trafficDistribution"] = distribution
    [s] = converge(svc, [pod("a", "10.244.1.2", node="n1")], zones={"n1": "z1"})
    assert s["endpoints"][0].get("hints") == expected
    # switching the distribution off removes the hints again
    changes = reconcile_slices(service(), [pod("a", "10.244.1.2", node="n1")], [s], zones={"n1": "z1"})
    assert (len(changes.update) == 1) is (expected is not None)


def test_no_zone_no_zone_hint() -> None:
    svc = service()
    svc["spec"]["trafficDistribution"] = "PreferClose"
    [s] = converge(svc, [pod("a", "10.244.1.2", node="n1")])
    assert "hints" not in s["endpoints"][0]
