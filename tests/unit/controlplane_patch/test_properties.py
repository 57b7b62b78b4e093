"""Property tests: selector round-trips, RFC 7386/6902 invariants, fieldsV1 round-trips."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from svcnet.controlplane.registry.apply import fields_from_v1, fields_of, fields_to_v1
from svcnet.controlplane.registry.patch import json_patch, merge_patch, strategic_merge_patch
from svcnet.controlplane.registry.schema import node_for
from svcnet.controlplane.registry.selectors import parse_label_selector

SVC = node_for("io.k8s.api.core.v1.Service")

names = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,8}[a-z0-9])?", fullmatch=True)
keys = st.one_of(names, st.builds(lambda p, n: f"{p}.io/{n}", names.filter(lambda s: "." not in s
                                                                          and "_" not in s), names))
values = st.one_of(st.just(""), names)
term = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", keys, values),
    st.builds(lambda k, v: f"{k}!={v}", keys, values),
    st.builds(lambda k, vs: f"{k} in ({','.join(vs)})", keys, st.lists(names, min_size=1, max_size=3)),
    st.builds(lambda k, vs: f"{k} notin ({','.join(vs)})", keys,
              st.lists(names, min_size=1, max_size=3)),
    keys, st.builds(lambda k: f"!{k}", keys))
label_sets = st.dictionaries(keys, values, max_size=4)


@settings(max_examples=100, deadline=None)
@given(st.lists(term, min_size=1, max_size=4), label_sets)
def test_label_selector_string_round_trip(terms: list[str], labels: dict[str, str]) -> None:
    sel = parse_label_selector(",".join(terms))
    again = parse_label_selector(str(sel))
    assert again == sel
    assert again.matches(labels) == sel.matches(labels)
    # A conjunction matches exactly when every single term does.
    assert sel.matches(labels) == all(parse_label_selector(t).matches(labels) for t in terms)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text("ab", max_size=2))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text("abc", min_size=1, max_size=2), inner,
                                                 max_size=3)), max_leaves=10)
json_objects = st.dictionaries(st.text("abc", min_size=1, max_size=2), json_values, max_size=4)


@settings(max_examples=100, deadline=None)
@given(json_objects, json_objects)
def test_merge_patch_is_idempotent_and_matches_rfc(doc: dict[str, Any], patch: dict[str, Any]) -> None:
    once = merge_patch(doc, patch)
    assert merge_patch(once, patch) == once
    for key, value in patch.items():
        if value is None:
            assert key not in once
        elif not isinstance(value, dict):
            assert once[key] == value  # scalars and lists replace
        else:
            assert isinstance(once[key], dict)


@settings(max_examples=100, deadline=None)
@given(json_objects, st.text("abc", min_size=1, max_size=2), json_values)
def test_json_patch_add_then_remove_restores(doc: dict[str, Any], key: str, value: Any) -> None:
    if key in doc:
        return
    added = json_patch(doc, [{"op": "add", "path": f"/{key}", "value": value},
                             {"op": "test", "path": f"/{key}", "value": copy.deepcopy(value)}])
    assert json_patch(added, [{"op": "remove", "path": f"/{key}"}]) == doc


@settings(max_examples=100, deadline=None)
@given(json_objects, json_objects)
def test_strategic_patch_without_schema_equals_merge_patch_for_maps(
        doc: dict[str, Any], patch: dict[str, Any]) -> None:
    # With no schema every list is replaced and maps merge as in RFC 7386; strategic
    # merge patch also drops nulls inside new values, so compare on stored (null-free)
    # objects with nulls stripped from the RFC result.
    stored = strip_nulls_deep(doc)
    assert strategic_merge_patch(stored, patch, None) == strip_nulls_deep(merge_patch(stored, patch))


def strip_nulls_deep(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_nulls_deep(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls_deep(v) for v in value]
    return value


ports = st.lists(st.fixed_dictionaries(
    {"port": st.integers(1, 65535)}, optional={"name": names, "targetPort": st.integers(1, 9),
                                               "protocol": st.sampled_from(["TCP", "UDP"])}),
    max_size=4, unique_by=lambda p: (p["port"], p.get("protocol", "TCP")))


@settings(max_examples=100, deadline=None)
@given(ports, label_sets, st.lists(names, max_size=3, unique=True))
def test_fields_v1_round_trip(port_list: list[dict[str, Any]], labels: dict[str, str],
                              finalizers: list[str]) -> None:
    obj = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "x", "labels": labels, "finalizers": finalizers},
           "spec": {"ports": port_list, "type": "ClusterIP"}}
    fs = fields_of(obj, SVC)
    assert fields_from_v1(fields_to_v1(fs)) == fs
