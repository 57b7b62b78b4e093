"""Kubernetes' own schema definitions, navigated for validation, patching and OpenAPI.

svcnet does not restate what a kind looks like: kubernetes-validate (PyPI) ships the
OpenAPI definitions of each Kubernetes release converted to JSON schema, with the
descriptions and the ``x-kubernetes-*`` extensions that drive strategic merge patch
(``x-kubernetes-patch-merge-key``/``-patch-strategy``) and server-side apply
(``x-kubernetes-list-type``/``-list-map-keys``/``-map-type``). This module loads that
file once per process (it is ~1.5 MB of JSON and parses in ~10 ms) and offers:

* `node_for(definition)` -> `SchemaNode`: a view on one schema with ``$ref`` resolved
  and ``type: [x, "null"]`` unions folded to ``x``. Field-level extensions live on the
  property that references a definition, so a node merges the property's keys over the
  referenced definition's.
* `unknown_fields(definition, obj)`: the dotted paths (``spec.ports[0].bar``) that the
  schema does not know, for ``fieldValidation=Strict|Warn``.
* `openapi_v3_components(definitions)`: the closure of schemas reachable from some
  definitions, rewritten to OpenAPI 3.0 form for ``/openapi/v3/<group-version>``
  documents (what ``kubectl explain`` reads).

The release is the newest one in the installed package that serves
networking.k8s.io/v1 ServiceCIDR (1.33+); ``SVCNET_SCHEMA_RELEASE=v1.33.0`` pins another.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "SchemaNode", "node_for", "free_form", "definitions", "schema_release",
    "unknown_fields", "openapi_v3_components", "definition_for_gvk",
]

_REQUIRED_DEFINITION = "io.k8s.api.networking.v1.ServiceCIDR"
_REF_PREFIX = "#/$defs/"

# Upstream marks these key fields `+default="TCP"`; SSA needs the default to build the
# list-map key of an item that omits it (ports applied without `protocol`). The JSON
# schema conversion in kubernetes-validate drops `default`, so the markers that matter
# for list-map keys are restated here, and emitted in the OpenAPI documents as upstream does.
_FIELD_DEFAULTS: dict[tuple[str, str], Any] = {
    ("io.k8s.api.core.v1.ServicePort", "protocol"): "TCP",
    ("io.k8s.api.core.v1.ContainerPort", "protocol"): "TCP",
    ("io.k8s.api.core.v1.EndpointPort", "protocol"): "TCP",
    ("io.k8s.api.core.v1.HostAlias", "ip"): "",
}


def _schema_root() -> Path:
    # Locate the package without importing it: its import pulls in jsonschema & co.,
    # and only its data files are used here.
    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return Path(list(spec.submodule_search_locations)[0]) / "kubernetes-json-schema"


def _release_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


@functools.cache
def schema_release() -> str:
    """The release folder in use, e.g. ``v1.37.0-local``."""
    root = _schema_root()
    pinned = os.environ.get("SVCNET_SCHEMA_RELEASE", "")
    if pinned:
        folder = pinned if pinned.endswith("-local") else f"{pinned}-local"
        if not (root / folder / "_definitions.json").is_file():
            raise RuntimeError(f"SVCNET_SCHEMA_RELEASE={pinned}: no {root / folder}/_definitions.json")
        return folder
    candidates = sorted((p.name for p in root.iterdir()
                         if p.name.endswith("-local") and (p / "_definitions.json").is_file()),
                        key=_release_key, reverse=True)
    # Releases before 1.33 lack networking.k8s.io/v1 ServiceCIDR; `definitions()` checks
    # the chosen file really has it.
    for name in candidates:
        if _release_key(name) >= (1, 33, 0):
            return name
    raise RuntimeError(f"kubernetes-validate under {root} has no release with "
                       f"{_REQUIRED_DEFINITION} (need kubernetes-validate >= 1.33)")


@functools.cache
def definitions() -> Mapping[str, Mapping[str, Any]]:
    """All ``$defs`` of the release, loaded once per process."""
    path = _schema_root() / schema_release() / "_definitions.json"
    with path.open("rb") as f:
        defs: dict[str, Any] = json.load(f)["$defs"]
    if _REQUIRED_DEFINITION not in defs:
        raise RuntimeError(f"{path} has no {_REQUIRED_DEFINITION}")
    log.debug("loaded %d schema definitions from %s", len(defs), path)
    return defs


def _ref_name(ref: str) -> str:
    if not ref.startswith(_REF_PREFIX):
        raise ValueError(f"unsupported $ref {ref!r}")
    return ref[len(_REF_PREFIX):]


def _single_type(schema: Mapping[str, Any]) -> str:
    t = schema.get("type")
    if isinstance(t, list):
        non_null = [x for x in t if x != "null"]
        t = non_null[0] if len(non_null) == 1 else ""
    if t:
        return str(t)
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        kinds = {_single_type(a) for a in alternatives}
        if kinds == {"string", "integer"}:
            return "int-or-string"
        if "string" in kinds:  # resource.Quantity: string or number, serialised as string
            return "string"
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    return ""


class SchemaNode:
    """One schema with its ``$ref`` resolved. Nodes are cheap views; children are cached."""

    __slots__ = ("schema", "ref", "owner", "name", "_children")

    def __init__(self, schema: Mapping[str, Any], *, owner: str = "", name: str = "") -> None:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            self.ref = _ref_name(ref)
            target = definitions().get(self.ref)
            if target is None:
                raise KeyError(f"schema definition {self.ref!r} not found")
            # The referencing property's own keys (description, patch strategy) win.
            merged = dict(target)
            merged.update((k, v) for k, v in schema.items() if k != "$ref")
            self.schema: Mapping[str, Any] = merged
        else:
            self.ref = ""
            self.schema = schema
        self.owner = owner      # definition that declares this field, for defaults
        self.name = name        # field name within `owner`
        self._children: dict[str, SchemaNode | None] = {}

    def __repr__(self) -> str:
        return f"SchemaNode({self.ref or self.type or 'any'}{' ' + self.name if self.name else ''})"

    # -- shape ----------------------------------------------------------------------
    @property
    def type(self) -> str:
        """object | array | string | integer | number | boolean | int-or-string | "" (any)."""
        t = _single_type(self.schema)
        if not t and ("properties" in self.schema or "additionalProperties" in self.schema):
            return "object"
        return t

    @property
    def description(self) -> str:
        return str(self.schema.get("description", ""))

    @property
    def properties(self) -> Mapping[str, Any]:
        props = self.schema.get("properties")
        return props if isinstance(props, Mapping) else {}

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(self.schema.get("required") or ())

    @property
    def is_map(self) -> bool:
        """An object whose keys are data (labels, selector), not field names."""
        return isinstance(self.schema.get("additionalProperties"), Mapping) and not self.properties

    @property
    def is_struct(self) -> bool:
        return bool(self.properties)

    @property
    def free_form(self) -> bool:
        """Anything goes below here (FieldsV1, RawExtension, preserve-unknown-fields)."""
        if self.schema.get("x-kubernetes-preserve-unknown-fields") or \
                self.schema.get("x-kubernetes-embedded-resource"):
            return True
        return self.type in ("object", "") and not self.properties and not self.is_map

    @property
    def default(self) -> Any:
        return _FIELD_DEFAULTS.get((self.owner, self.name))

    # -- patch and apply metadata -------------------------------------------------
    @property
    def patch_strategy(self) -> str:
        """The field's patch strategy without retainKeys: "merge", "replace" or ""."""
        parts = [p for p in str(self.schema.get("x-kubernetes-patch-strategy", "")).split(",") if p]
        return next((p for p in parts if p != "retainKeys"), "")

    @property
    def retain_keys(self) -> bool:
        return "retainKeys" in str(self.schema.get("x-kubernetes-patch-strategy", "")).split(",")

    @property
    def merge_key(self) -> str:
        return str(self.schema.get("x-kubernetes-patch-merge-key", ""))

    @property
    def list_type(self) -> str:
        """atomic | set | map, inferred from the patch strategy as structured-merge-diff
        does when ``x-kubernetes-list-type`` is absent; lists default to atomic."""
        declared = self.schema.get("x-kubernetes-list-type")
        if declared:
            return str(declared)
        if self.patch_strategy == "merge":
            item = self.items
            if item is not None and item.type in ("object", "") and self.merge_key:
                return "map"
            if item is not None and item.type not in ("object", "array", ""):
                return "set"
        return "atomic"

    @property
    def list_map_keys(self) -> tuple[str, ...]:
        keys = self.schema.get("x-kubernetes-list-map-keys")
        if keys:
            return tuple(keys)
        return (self.merge_key,) if self.list_type == "map" and self.merge_key else ()

    @property
    def map_type(self) -> str:
        """granular | atomic for objects (``x-kubernetes-map-type``)."""
        return str(self.schema.get("x-kubernetes-map-type", "granular"))

    # -- navigation ------------------------------------------------------------------
    def field(self, name: str) -> SchemaNode | None:
        """The schema of field `name`; for maps, the value schema; None if unknown."""
        if name in self._children:
            return self._children[name]
        child: SchemaNode | None = None
        props = self.properties
        if name in props:
            child = SchemaNode(props[name], owner=self.ref, name=name)
        elif isinstance(self.schema.get("additionalProperties"), Mapping):
            child = SchemaNode(self.schema["additionalProperties"])
        elif self.free_form:
            child = free_form()
        self._children[name] = child
        return child

    @property
    def items(self) -> SchemaNode | None:
        if "[]" not in self._children:
            raw = self.schema.get("items")
            self._children["[]"] = SchemaNode(raw) if isinstance(raw, Mapping) else (
                free_form() if self.type in ("array", "") else None)
        return self._children["[]"]


@functools.cache
def free_form() -> SchemaNode:
    """A node that accepts anything; lists below it are atomic, maps merge."""
    return SchemaNode({"x-kubernetes-preserve-unknown-fields": True})


@functools.cache
def node_for(definition: str) -> SchemaNode:
    """The node of a named definition, e.g. ``io.k8s.api.core.v1.Service``."""
    if definition not in definitions():
        raise KeyError(f"schema definition {definition!r} not found in {schema_release()}")
    return SchemaNode({"$ref": _REF_PREFIX + definition})


@functools.cache
def definition_for_gvk(group: str, version: str, kind: str) -> str:
    """The definition name declaring ``x-kubernetes-group-version-kind`` = (g, v, k)."""
    for name, schema in definitions().items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or ():
            if (gvk.get("group", ""), gvk.get("version"), gvk.get("kind")) == (group, version, kind):
                return name
    raise KeyError(f"no schema definition for {group or 'core'}/{version} {kind}")


# -- unknown fields ------------------------------------------------------------------------

def unknown_fields(definition: str, obj: Mapping[str, Any]) -> list[str]:
    """Paths in `obj` that the schema does not declare, in document order.

    Paths are spelled as kube's strict decoder spells them: ``spec.foo``,
    ``spec.ports[0].bar``, ``metadata.labels`` entries are data and never unknown.
    Values of the wrong type are left to validation, and nulls are ignored.
    """
    out: list[str] = []
    _unknown(node_for(definition), obj, "", out)
    return out


def _unknown(node: SchemaNode, value: Any, path: str, out: list[str]) -> None:
    if value is None or node.free_form:
        return
    if isinstance(value, Mapping):
        if node.is_map:
            values = node.field("")  # additionalProperties: any key
            if values is not None and not values.free_form:
                for key, item in value.items():
                    _unknown(values, item, f"{path}[{key}]" if path else str(key), out)
            return
        if not node.is_struct:
            return
        for key, item in value.items():
            child = node.field(key)
            sub = f"{path}.{key}" if path else str(key)
            if child is None:
                out.append(sub)
            else:
                _unknown(child, item, sub, out)
    elif isinstance(value, list) and node.type == "array":
        item_node = node.items
        if item_node is None:
            return
        for i, item in enumerate(value):
            _unknown(item_node, item, f"{path}[{i}]", out)


# -- OpenAPI v3 ----------------------------------------------------------------------------

_COMPONENT_PREFIX = "#/components/schemas/"
_NESTED_SCHEMA_KEYS = ("items", "additionalProperties", "not")
_NESTED_SCHEMA_LISTS = ("allOf", "oneOf", "anyOf")


def _refs_in(schema: Any) -> Iterable[str]:
    if isinstance(schema, Mapping):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            yield _ref_name(ref)
        for key, value in schema.items():
            if key == "properties" and isinstance(value, Mapping):
                for prop in value.values():
                    yield from _refs_in(prop)
            elif key in _NESTED_SCHEMA_KEYS or key in _NESTED_SCHEMA_LISTS:
                yield from _refs_in(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _refs_in(item)


def _to_openapi(schema: Mapping[str, Any], owner: str = "", name: str = "") -> dict[str, Any]:
    """One JSON-schema node in the OpenAPI 3.0 form kube-apiserver publishes."""
    out: dict[str, Any] = {}
    t = _single_type(schema)
    for key, value in schema.items():
        if key == "$ref":
            continue
        if key == "type":
            if t and t != "int-or-string":
                out["type"] = t
        elif key == "properties":
            out["properties"] = {p: _to_openapi(v, owner, p) for p, v in value.items()}
        elif key in _NESTED_SCHEMA_KEYS and isinstance(value, Mapping):
            out[key] = _to_openapi(value)
        elif key in _NESTED_SCHEMA_LISTS:
            out[key] = [_to_openapi(v) for v in value]
        else:
            out[key] = value
    if t == "int-or-string" and "oneOf" in schema:
        # Upstream's v3 IntOrString: oneOf integer|string with this format and no
        # top-level type, which is also what makes `kubectl explain` print <IntOrString>.
        out["format"] = "int-or-string"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = {"$ref": _COMPONENT_PREFIX + _ref_name(ref)}
        if out:
            # OpenAPI 3.0 ignores siblings of $ref; upstream wraps the reference in allOf
            # so descriptions and patch extensions of the field survive (kubectl explain).
            out = {"allOf": [target], **out}
        else:
            out = target
    default = _FIELD_DEFAULTS.get((owner, name))
    if default is not None and "default" not in out:
        out["default"] = default
    return out


def openapi_v3_components(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Every definition reachable from `names`, as ``components.schemas`` entries with
    ``$ref`` pointing at ``#/components/schemas/<name>``."""
    defs = definitions()
    pending = list(names)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        if name not in defs:
            raise KeyError(f"schema definition {name!r} not found in {schema_release()}")
        seen.add(name)
        pending.extend(r for r in _refs_in(defs[name]) if r not in seen)
    return {name: _to_openapi(defs[name], owner=name) for name in sorted(seen)}
