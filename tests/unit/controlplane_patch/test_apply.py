"""Server-side apply: create, update, conflicts, force, removal; managedFields on updates."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry.apply import (
    fields_from_v1, fields_of, fields_to_v1, path_string,
)
from svcnet.controlplane.registry.patch import apply_patch, update_managed_fields
from svcnet.controlplane.registry.schema import node_for

SVC = node_for("io.k8s.api.core.v1.Service")
T0, T1, T2 = "2026-11-22T00:00:00Z", "2026-11-22T00:01:00Z", "2026-11-22T00:02:00Z"


def service(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "web", "namespace": "default"},
                            "spec": {"selector": {"app": "web"},
                                     "ports": [{"port": 80, "targetPort": 8080}]}}
    base["spec"].update(spec)
    return base


def managers(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["manager"], e["operation"]): e for e in obj["metadata"].get("managedFields", [])}


PORT80 = 'k:{"port":80,"protocol":"TCP"}'


def test_apply_creates_with_managed_fields() -> None:
    out = apply_patch(None, service(), "kubectl", False, SVC, now=T0)
    assert out["spec"] == service()["spec"]
    assert out["metadata"]["managedFields"] == [{
        "manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": T0,
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:ports": {PORT80: {".": {}, "f:port": {}, "f:targetPort": {}}},
                                "f:selector": {}}}}]


def created_by_client_side_apply() -> dict[str, Any]:
    """What the store holds after `kubectl apply -f` (client side) created the Service,
    defaulted as the registry does."""
    obj = service()
    obj["spec"].update(type="ClusterIP", sessionAffinity="None")
    obj["spec"]["ports"][0]["protocol"] = "TCP"
    return update_managed_fields(None, obj, "kubectl-client-side-apply", SVC, now=T0)


def test_update_managed_fields_on_create_owns_everything() -> None:
    live = created_by_client_side_apply()
    entry = managers(live)[("kubectl-client-side-apply", "Update")]
    assert entry["time"] == T0 and entry["apiVersion"] == "v1"
    assert entry["fieldsV1"] == {"f:spec": {
        "f:ports": {PORT80: {".": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
        "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}}}


def test_apply_conflict_with_update_manager() -> None:
    live = created_by_client_side_apply()
    applied = service(ports=[{"port": 80, "targetPort": 9090}])
    with pytest.raises(APIError) as err:
        apply_patch(live, applied, "kubectl", False, SVC, now=T1)
    e = err.value
    assert (e.code, e.reason) == (409, "Conflict")
    assert e.message == ('Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" '
                         'using v1: .spec.ports[port=80,protocol="TCP"].targetPort')
    assert e.details == {"causes": [{
        "reason": "FieldManagerConflict",
        "message": 'conflict with "kubectl-client-side-apply" using v1',
        "field": '.spec.ports[port=80,protocol="TCP"].targetPort'}]}


def test_apply_same_values_share_ownership() -> None:
    live = created_by_client_side_apply()
    out = apply_patch(live, service(), "kubectl", False, SVC, now=T1)
    got = managers(out)
    assert set(got) == {("kubectl", "Apply"), ("kubectl-client-side-apply", "Update")}
    assert "f:targetPort" in got[("kubectl-client-side-apply", "Update")]["fieldsV1"]["f:spec"][
        "f:ports"][PORT80]
    assert out["spec"] == live["spec"]


def test_apply_force_takes_ownership() -> None:
    live = created_by_client_side_apply()
    applied = service(ports=[{"port": 80, "targetPort": 9090}])
    out = apply_patch(live, applied, "kubectl", True, SVC, now=T1)
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 9090, "protocol": "TCP"}]
    got = managers(out)
    old_port = got[("kubectl-client-side-apply", "Update")]["fieldsV1"]["f:spec"]["f:ports"][PORT80]
    assert "f:targetPort" not in old_port and "f:protocol" in old_port
    assert "f:targetPort" in got[("kubectl", "Apply")]["fieldsV1"]["f:spec"]["f:ports"][PORT80]


def test_apply_multiple_conflicts_message() -> None:
    live = created_by_client_side_apply()
    applied = service(ports=[{"port": 80, "targetPort": 9090}], type="NodePort")
    with pytest.raises(APIError) as err:
        apply_patch(live, applied, "kubectl", False, SVC)
    assert err.value.message == (
        'Apply failed with 2 conflicts: conflicts with "kubectl-client-side-apply" using v1:\n'
        '- .spec.ports[port=80,protocol="TCP"].targetPort\n- .spec.type')
    assert len(err.value.details["causes"]) == 2  # type: ignore[index]


def test_apply_conflict_between_appliers() -> None:
    first = apply_patch(None, service(), "alice", False, SVC, now=T0)
    with pytest.raises(APIError) as err:
        apply_patch(first, service(selector={"app": "db"}), "bob", False, SVC)
    assert err.value.message == 'Apply failed with 1 conflict: conflict with "alice": .spec.selector'


def test_reapply_by_same_manager_changes_value_without_conflict() -> None:
    first = apply_patch(None, service(), "kubectl", False, SVC, now=T0)
    out = apply_patch(first, service(ports=[{"port": 80, "targetPort": 9}]), "kubectl", False,
                      SVC, now=T1)
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 9}]
    assert managers(out)[("kubectl", "Apply")]["time"] == T0  # same field set: time kept


def test_apply_removes_fields_dropped_from_config() -> None:
    applied = service(ports=[{"port": 80, "targetPort": 8080}, {"port": 443, "name": "https"}])
    applied["metadata"]["labels"] = {"team": "a", "tier": "fe"}
    first = apply_patch(None, applied, "kubectl", False, SVC, now=T0)
    second_cfg = service()
    second_cfg["metadata"]["labels"] = {"team": "a"}
    out = apply_patch(first, second_cfg, "kubectl", False, SVC, now=T1)
    assert out["metadata"]["labels"] == {"team": "a"}
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 8080}]
    fields = managers(out)[("kubectl", "Apply")]["fieldsV1"]
    assert fields["f:metadata"] == {"f:labels": {"f:team": {}}}
    assert managers(out)[("kubectl", "Apply")]["time"] == T1


def test_apply_keeps_dropped_field_another_manager_owns() -> None:
    cfg = service()
    cfg["metadata"]["labels"] = {"shared": "x"}
    first = apply_patch(None, cfg, "alice", False, SVC, now=T0)
    second = apply_patch(first, cfg, "bob", False, SVC, now=T0)   # same value: co-owned
    out = apply_patch(second, service(), "alice", False, SVC, now=T1)
    assert out["metadata"]["labels"] == {"shared": "x"}
    assert "f:metadata" not in managers(out)[("alice", "Apply")]["fieldsV1"]


def test_apply_without_key_default_matches_defaulted_live_item() -> None:
    live = created_by_client_side_apply()   # live port has protocol TCP
    out = apply_patch(live, service(ports=[{"port": 80, "targetPort": 8080, "name": "http"}]),
                      "kubectl", False, SVC)
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 8080, "protocol": "TCP",
                                     "name": "http"}]


def test_apply_list_order_follows_applied_for_shared_items() -> None:
    live = apply_patch(None, service(ports=[{"port": 1}, {"port": 2}, {"port": 3}]), "a", False, SVC)
    out = apply_patch(live, service(ports=[{"port": 3}, {"port": 4}, {"port": 1}]), "b", False, SVC)
    assert [p["port"] for p in out["spec"]["ports"]] == [2, 3, 4, 1]


def test_apply_to_object_without_managed_fields_conflicts_with_before_first_apply() -> None:
    live = service()
    live["spec"]["type"] = "ClusterIP"
    with pytest.raises(APIError) as err:
        apply_patch(live, service(type="NodePort"), "kubectl", False, SVC)
    assert '"before-first-apply" using v1: .spec.type' in err.value.message


@pytest.mark.parametrize("applied, manager, fragment", [
    pytest.param(service(), "", "must specify a fieldManager", id="no-manager"),
    pytest.param({"metadata": {"name": "x"}}, "m", "apiVersion and kind", id="no-kind"),
    pytest.param({**service(), "metadata": {"name": "web", "managedFields": [{}]}}, "m",
                 "metadata.managedFields must be nil", id="managed-fields-in-config"),
])
def test_apply_bad_requests(applied: dict[str, Any], manager: str, fragment: str) -> None:
    with pytest.raises(APIError) as err:
        apply_patch(None, applied, manager, False, SVC)
    assert err.value.code == 400 and fragment in err.value.message


def test_update_steals_changed_fields_and_keeps_others() -> None:
    live = created_by_client_side_apply()
    new = copy.deepcopy(live)
    new["spec"]["ports"][0]["targetPort"] = 9090
    new["metadata"]["labels"] = {"x": "y"}
    out = update_managed_fields(live, new, "kubectl-patch", SVC, now=T1)
    got = managers(out)
    assert got[("kubectl-patch", "Update")]["fieldsV1"] == {
        "f:metadata": {"f:labels": {"f:x": {}}},
        "f:spec": {"f:ports": {PORT80: {"f:targetPort": {}}}}}
    csa = got[("kubectl-client-side-apply", "Update")]
    assert "f:targetPort" not in csa["fieldsV1"]["f:spec"]["f:ports"][PORT80]
    assert csa["time"] == T0
    # Now a server-side apply of the old value conflicts with kubectl-patch, not the creator.
    with pytest.raises(APIError) as err:
        apply_patch(out, service(), "kubectl", False, SVC)
    assert '"kubectl-patch" using v1' in err.value.message


def test_update_with_cleared_managed_fields() -> None:
    live = created_by_client_side_apply()
    new = copy.deepcopy(live)
    new["metadata"]["managedFields"] = [{}]
    out = update_managed_fields(live, new, "kubectl-edit", SVC, now=T1)
    assert "managedFields" not in out["metadata"]


def test_update_without_changes_keeps_time() -> None:
    live = created_by_client_side_apply()
    out = update_managed_fields(live, copy.deepcopy(live), "kubectl-client-side-apply", SVC, now=T2)
    assert out["metadata"]["managedFields"] == live["metadata"]["managedFields"]


def test_reset_fields_are_not_owned() -> None:
    obj = service()
    obj["status"] = {"loadBalancer": {}}
    assert not any(p[0] == "f:status" for p in fields_of(obj, SVC, reset_fields=("status",)))
    assert ("f:status", "f:loadBalancer") in fields_of(obj, SVC)


def test_fields_v1_roundtrip_and_path_strings() -> None:
    obj = service()
    obj["metadata"]["finalizers"] = ["a.io/x"]
    obj["metadata"]["labels"] = {"k": "v"}
    fs = fields_of(obj, SVC)
    assert fields_from_v1(fields_to_v1(fs)) == fs
    strings = sorted(path_string(p) for p in fs)
    assert strings == ['.metadata.finalizers[="a.io/x"]', ".metadata.labels.k",
                       ".spec.ports[port=80,protocol=\"TCP\"]",
                       ".spec.ports[port=80,protocol=\"TCP\"].port",
                       ".spec.ports[port=80,protocol=\"TCP\"].targetPort", ".spec.selector"]


def test_apply_rejects_duplicate_list_map_keys() -> None:
    applied = service(ports=[{"port": 80}, {"port": 80, "protocol": "TCP", "name": "x"}])
    with pytest.raises(APIError) as err:
        apply_patch(None, applied, "kubectl", False, SVC)
    assert err.value.code == 422
    assert err.value.message == ('.spec.ports: duplicate entries for key '
                                 '[port=80,protocol="TCP"]')


def test_update_managers_are_capped_into_ancient_changes() -> None:
    obj = update_managed_fields(None, service(), "creator", SVC, now="2026-01-01T00:00:00Z")
    for i in range(12):
        new = copy.deepcopy(obj)
        new["metadata"].setdefault("labels", {})[f"l{i}"] = "v"
        obj = update_managed_fields(obj, new, f"writer-{i:02d}", SVC,
                                    now=f"2026-01-01T00:{i + 1:02d}:00Z")
    entries = obj["metadata"]["managedFields"]
    names = [e["manager"] for e in entries]
    assert len(entries) == 10
    assert "ancient-changes" in names and "creator" not in names and "writer-00" not in names
    ancient = next(e for e in entries if e["manager"] == "ancient-changes")
    # The bucket holds everything the folded managers owned.
    assert "f:selector" in ancient["fieldsV1"]["f:spec"]
    assert set(ancient["fieldsV1"]["f:metadata"]["f:labels"]) >= {"f:l0", "f:l1"}
    # Further writers fold into the same bucket instead of a second one.
    new = copy.deepcopy(obj)
    new["metadata"]["labels"]["late"] = "v"
    obj = update_managed_fields(obj, new, "late-writer", SVC, now="2026-01-01T01:00:00Z")
    names = [e["manager"] for e in obj["metadata"]["managedFields"]]
    assert len(names) == 10 and names.count("ancient-changes") == 1 and "late-writer" in names


def test_status_subresource_writer_is_its_own_manager() -> None:
    live = created_by_client_side_apply()
    new = copy.deepcopy(live)
    new["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    out = update_managed_fields(live, new, "lb-controller", SVC, subresource="status",
                                reset_fields=("spec",), now=T1)
    entry = managers(out)[("lb-controller", "Update")]
    assert entry["subresource"] == "status"
    assert entry["fieldsV1"] == {"f:status": {"f:loadBalancer": {"f:ingress": {}}}}
    # A server-side apply of status by someone else names that manager and subresource.
    applied = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}}
    with pytest.raises(APIError) as err:
        apply_patch(out, applied, "other", False, SVC, subresource="status",
                    reset_fields=("spec",))
    assert err.value.message == ('Apply failed with 1 conflict: conflict with "lb-controller" '
                                 'with subresource "status" using v1: .status.loadBalancer.ingress')
