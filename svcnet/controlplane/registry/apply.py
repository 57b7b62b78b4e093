"""Server-side apply and field ownership (``metadata.managedFields``).

This follows sigs.k8s.io/structured-merge-diff (``merge/update.go``, ``typed/merge.go``)
and kube-apiserver's fieldmanager, with the schema (`SchemaNode`) supplying the list and
map semantics: ``x-kubernetes-list-type`` atomic/set/map with ``-list-map-keys``,
``x-kubernetes-map-type`` atomic/granular.

Field sets are Python sets of paths; a path is a tuple of the path elements used in
``fieldsV1``: ``f:<field>``, ``k:<json of key fields>``, ``v:<json value>``, ``i:<index>``.
A path is a member when the field itself is owned: leaves, empty maps, and associative
list items (written ``"."`` inside their entry in fieldsV1).

* `apply_patch(live, applied, manager, force, node)`: merge the applied configuration into
  the live object; the manager then owns exactly the fields it applied. A change to a
  field that another manager owns is a conflict (409, causes ``FieldManagerConflict``)
  unless ``force``, which takes the field over. Fields the manager applied last time and
  no longer applies are removed from the object, unless another manager also owns them.
* `update_managed_fields(live, new, manager, node)`: ownership for every other write
  (create, update, JSON/merge/strategic patch): the writer takes every field it added or
  changed, as operation ``Update``.

Both strip the fields kube's fieldmanager never tracks (apiVersion, kind, metadata.name,
uid, resourceVersion, ...) and the caller's ``reset_fields`` (``("status",)`` for the
main resource of a kind with a status subresource, ``("spec",)`` for the subresource).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from svcnet.controlplane.errors import APIError, bad_request
from svcnet.controlplane.registry.schema import SchemaNode, free_form

__all__ = ["apply_patch", "update_managed_fields", "fields_of", "fields_to_v1", "fields_from_v1",
           "path_string", "ManagerEntry", "decode_managed_fields"]

Path = tuple[str, ...]
FieldSet = set[Path]

# internal/stripmeta.go: fields the fieldmanager never records.
_STRIPPED: frozenset[Path] = frozenset({
    ("f:apiVersion",), ("f:kind",),
    ("f:metadata", "f:name"), ("f:metadata", "f:namespace"),
    ("f:metadata", "f:creationTimestamp"), ("f:metadata", "f:selfLink"),
    ("f:metadata", "f:uid"), ("f:metadata", "f:clusterName"), ("f:metadata", "f:generation"),
    ("f:metadata", "f:managedFields"), ("f:metadata", "f:resourceVersion"),
    ("f:metadata", "f:deletionTimestamp"), ("f:metadata", "f:deletionGracePeriodSeconds"),
})
_BEFORE_FIRST_APPLY = "before-first-apply"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# -- field sets ------------------------------------------------------------------------------

def _item_key(item: Any, node: SchemaNode, keys: tuple[str, ...]) -> str:
    """``k:{"port":80,"protocol":"TCP"}``: key fields sorted by name, defaults filled in."""
    fields: dict[str, Any] = {}
    items = node.items
    for key in keys:
        value = item.get(key) if isinstance(item, dict) else None
        if value is None and items is not None:
            child = items.field(key)
            value = child.default if child is not None else None
        if value is not None:
            fields[key] = value
    return "k:" + _json(fields)


def _leaves(value: Any, node: SchemaNode | None, prefix: Path, out: dict[Path, Any]) -> None:
    """Map every member path below `prefix` to its value (leaf value or a marker)."""
    node = node or free_form()
    if isinstance(value, dict) and node.map_type != "atomic" and (
            node.is_struct or node.is_map or node.free_form):
        if not value:
            out[prefix] = {}
            return
        for key, item in value.items():
            if item is None:
                continue
            _leaves(item, node.field(str(key)), prefix + (f"f:{key}",), out)
        return
    if isinstance(value, list) and node.type == "array" and node.list_type in ("set", "map"):
        if node.list_type == "set":
            for item in value:
                out[prefix + ("v:" + _json(item),)] = item
            return
        keys = node.list_map_keys
        for item in value:
            item_path = prefix + (_item_key(item, node, keys),)
            out[item_path] = "."
            _leaves(item, node.items, item_path, out)
        return
    out[prefix] = value


def _strip(paths: Iterable[Path], reset_fields: Iterable[str]) -> FieldSet:
    reset = {("f:" + f,) for f in reset_fields}
    return {p for p in paths
            if p and p not in _STRIPPED and p[:1] not in reset and p[:2] not in _STRIPPED}


def fields_of(obj: Mapping[str, Any], node: SchemaNode | None,
              reset_fields: Iterable[str] = ()) -> FieldSet:
    """The field set an object sets (ToFieldSet), minus untracked fields."""
    out: dict[Path, Any] = {}
    _leaves(dict(obj), node, (), out)
    return _strip(out, reset_fields)


def _values(obj: Mapping[str, Any], node: SchemaNode | None, reset_fields: Iterable[str]
            ) -> dict[Path, Any]:
    out: dict[Path, Any] = {}
    _leaves(dict(obj), node, (), out)
    keep = _strip(out, reset_fields)
    return {p: v for p, v in out.items() if p in keep}


def fields_to_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """Render a field set as the fieldsV1 trie (``{"f:spec": {"f:type": {}}}``)."""
    root: dict[str, Any] = {}
    members = set(paths)
    for path in members:
        cur = root
        for pe in path:
            cur = cur.setdefault(pe, {})
    # A member that also has children is marked with "." beside them.
    for path in members:
        cur = root
        for pe in path:
            cur = cur[pe]
        if cur and "." not in cur:
            cur["."] = {}
    return _sort_tree(root)


def _sort_tree(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _sort_tree(v) for k, v in sorted(tree.items())}


def fields_from_v1(tree: Any, prefix: Path = ()) -> FieldSet:
    if not isinstance(tree, dict):
        raise bad_request(f"invalid fieldsV1 at {path_string(prefix) or '.'}: not an object")
    out: FieldSet = set()
    if not tree and prefix:
        out.add(prefix)
    for key, sub in tree.items():
        if key == ".":
            out.add(prefix)
            continue
        if not isinstance(key, str) or key[:2] not in ("f:", "k:", "v:", "i:"):
            raise bad_request(f"invalid fieldsV1 path element {key!r}")
        out |= fields_from_v1(sub, prefix + (key,))
    return out


def path_string(path: Path) -> str:
    """structured-merge-diff's Path.String(): ``.spec.ports[port=80,protocol="TCP"].targetPort``."""
    out = []
    for pe in path:
        kind, body = pe[:2], pe[2:]
        if kind == "f:":
            out.append("." + body)
        elif kind == "k:":
            try:
                fields = json.loads(body)
                out.append("[" + ",".join(f"{k}={_json(v)}" for k, v in sorted(fields.items())) + "]")
            except (ValueError, AttributeError):
                out.append(f"[{body}]")
        elif kind == "v:":
            out.append(f"[={body}]")
        else:
            out.append(f"[{body}]")
    return "".join(out)


# -- managedFields ---------------------------------------------------------------------------

@dataclass
class ManagerEntry:
    manager: str
    operation: str          # "Apply" | "Update"
    api_version: str
    time: str
    fields: FieldSet
    subresource: str = ""

    @property
    def identity(self) -> tuple[str, str, str, str]:
        # BuildManagerIdentifier: appliers are one manager whatever apiVersion they used.
        version = "" if self.operation == "Apply" else self.api_version
        return (self.manager, self.operation, version, self.subresource)

    def describe(self) -> str:
        """printManager() in kube's conflict messages."""
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text

    def encode(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"manager": self.manager, "operation": self.operation,
                                 "apiVersion": self.api_version}
        if self.time:
            entry["time"] = self.time
        entry["fieldsType"] = "FieldsV1"
        entry["fieldsV1"] = fields_to_v1(self.fields)
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


def decode_managed_fields(entries: Any) -> list[ManagerEntry]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise bad_request("metadata.managedFields must be a list")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not e:
            continue  # `managedFields: [{}]` is how a client clears ownership
        if e.get("operation") not in ("Apply", "Update"):
            raise bad_request(f"metadata.managedFields[{i}].operation: must be Apply or Update")
        if e.get("fieldsType", "FieldsV1") != "FieldsV1":
            raise bad_request(f"metadata.managedFields[{i}].fieldsType: must be FieldsV1")
        out.append(ManagerEntry(str(e.get("manager", "")), e["operation"],
                                str(e.get("apiVersion", "")), str(e.get("time", "")),
                                fields_from_v1(e.get("fieldsV1") or {}),
                                str(e.get("subresource", ""))))
    return out


# capmanagers.go: at most this many Update entries; older ones fold into one bucket per
# apiVersion named "ancient-changes", so managedFields stay bounded however many
# controllers and users write an object.
MAX_UPDATE_MANAGERS = 10
_ANCIENT_CHANGES = "ancient-changes"


def _cap_update_managers(entries: list[ManagerEntry]) -> list[ManagerEntry]:
    updaters = sorted((e for e in entries if e.operation == "Update"), key=lambda e: e.time)
    if len(updaters) <= MAX_UPDATE_MANAGERS:
        return entries
    kept = [e for e in entries if e.operation != "Update"]
    # Buckets from earlier capping keep collecting (one per apiVersion).
    buckets: dict[str, ManagerEntry] = {
        e.api_version: e for e in updaters if e.manager == _ANCIENT_CHANGES and not e.subresource}
    updaters = [e for e in updaters if all(e is not b for b in buckets.values())]
    remaining = len(updaters) + len(buckets)
    first_seen: dict[str, ManagerEntry] = {}
    survivors: list[ManagerEntry] = []
    for entry in updaters:
        version = entry.api_version
        if remaining <= MAX_UPDATE_MANAGERS:
            survivors.append(entry)
        elif version in buckets:
            bucket = buckets[version]
            bucket.fields |= entry.fields
            bucket.time = entry.time  # the newer update's time, as kube does
            remaining -= 1
        elif version in first_seen:
            first = first_seen.pop(version)
            survivors.remove(first)
            buckets[version] = ManagerEntry(_ANCIENT_CHANGES, "Update", version, entry.time,
                                            first.fields | entry.fields)
            remaining -= 1
        else:
            first_seen[version] = entry
            survivors.append(entry)
    return kept + survivors + list(buckets.values())


def _encode_all(entries: Iterable[ManagerEntry]) -> list[dict[str, Any]]:
    kept = _cap_update_managers([e for e in entries if e.fields])
    # sortEncodedManagedFields: operation, then time, then manager, apiVersion, subresource.
    kept.sort(key=lambda e: (e.operation, e.time, e.manager, e.api_version, e.subresource))
    return [e.encode() for e in kept]


def _managers_of(live: Mapping[str, Any] | None, node: SchemaNode | None,
                 reset_fields: Iterable[str]) -> list[ManagerEntry]:
    if live is None:
        return []
    entries = decode_managed_fields((live.get("metadata") or {}).get("managedFields"))
    if not entries:
        # An object written before field tracking: one manager owns everything it has,
        # so that the first apply still conflicts with values it did not set.
        owned = fields_of(live, node, reset_fields)
        if owned:
            entries = [ManagerEntry(_BEFORE_FIRST_APPLY, "Update", str(live.get("apiVersion", "")),
                                    "", owned)]
    return entries


def _compare(old: dict[Path, Any], new: dict[Path, Any]) -> tuple[FieldSet, FieldSet, FieldSet]:
    """(modified, added, removed) between two value maps."""
    # patch.py re-exports this module's functions, so it is imported here, not at the top.
    from svcnet.controlplane.registry.patch import json_equal
    added = set(new) - set(old)
    removed = set(old) - set(new)
    modified = {p for p in set(old) & set(new) if not json_equal(old[p], new[p])}
    return modified, added, removed


def _with_managed_fields(obj: dict[str, Any], entries: Iterable[ManagerEntry]) -> dict[str, Any]:
    meta = obj.setdefault("metadata", {})
    encoded = _encode_all(entries)
    if encoded:
        meta["managedFields"] = encoded
    else:
        meta.pop("managedFields", None)
    return obj


def _is_under(path: Path, prefix: Path) -> bool:
    return path[:len(prefix)] == prefix


# -- merge (typed/merge.go) -------------------------------------------------------------------

def _merge(live: Any, applied: Any, node: SchemaNode | None) -> Any:
    node = node or free_form()
    if isinstance(live, dict) and isinstance(applied, dict) and node.map_type != "atomic" and (
            node.is_struct or node.is_map or node.free_form):
        out = dict(live)
        for key, value in applied.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value, node.field(str(key)))
            else:
                out[key] = _merge(None, value, node.field(str(key)))
        return out
    if isinstance(applied, dict):
        return {k: _merge(None, v, node.field(str(k))) for k, v in applied.items() if v is not None}
    if isinstance(live, list) and isinstance(applied, list) and node.type == "array" \
            and node.list_type in ("set", "map"):
        return _merge_list(live, applied, node)
    return copy.deepcopy(applied)


def _merge_list(live: list[Any], applied: list[Any], node: SchemaNode) -> list[Any]:
    """visitListItems: live-only items keep their place, shared items follow the applied
    order, applied-only items are inserted where the applied list has them."""
    if node.list_type == "set":
        def pe(item: Any) -> str:
            return "v:" + _json(item)
    else:
        keys = node.list_map_keys

        def pe(item: Any) -> str:
            return _item_key(item, node, keys)
    lhs = [pe(i) for i in live]
    rhs = [pe(i) for i in applied]
    lhs_items = dict(zip(lhs, live))
    rhs_items = dict(zip(rhs, applied))
    shared = [p for p in rhs if p in lhs_items]
    out: list[Any] = []
    merged: set[str] = set()
    li = ri = 0

    def take(p: str) -> None:
        merged.add(p)
        out.append(_merge(lhs_items.get(p), rhs_items[p], node.items))

    next_shared = shared.pop(0) if shared else None
    while li < len(lhs) or ri < len(rhs):
        if li < len(lhs) and ri < len(rhs):
            if lhs[li] == rhs[ri]:
                take(lhs[li])
                li += 1
                ri += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if lhs[li] in rhs_items and next_shared is not None and next_shared != lhs[li]:
                li += 1
                continue
        if li < len(lhs):
            if lhs[li] not in rhs_items:
                out.append(copy.deepcopy(live[li]))
                li += 1
                continue
            if lhs[li] in merged:
                li += 1
                continue
        if ri < len(rhs):
            if rhs[ri] not in merged:
                take(rhs[ri])
            if next_shared == rhs[ri]:
                next_shared = shared.pop(0) if shared else None
            ri += 1
    return out


def _remove_path(obj: Any, path: Path, node: SchemaNode | None) -> None:
    """Delete the value at `path` (a field, a keyed item or a set value) if present."""
    node = node or free_form()
    if not path:
        return
    pe, rest = path[0], path[1:]
    if pe.startswith("f:") and isinstance(obj, dict):
        name = pe[2:]
        if name not in obj:
            return
        if rest:
            _remove_path(obj[name], rest, node.field(name))
        else:
            del obj[name]
    elif pe.startswith(("k:", "v:")) and isinstance(obj, list):
        keys = node.list_map_keys
        for i, item in enumerate(obj):
            mine = _item_key(item, node, keys) if pe.startswith("k:") else "v:" + _json(item)
            if mine == pe:
                if rest:
                    _remove_path(item, rest, node.items)
                else:
                    del obj[i]
                return


# -- apply ------------------------------------------------------------------------------------

def _check_duplicate_keys(value: Any, node: SchemaNode | None, path: Path) -> None:
    """An applied configuration may not list one associative-list key twice (SMD refuses
    to build a typed value from it); the live object is tolerated as it is."""
    node = node or free_form()
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                _check_duplicate_keys(item, node.field(str(key)), path + (f"f:{key}",))
    elif isinstance(value, list) and node.type == "array":
        seen: set[str] = set()
        is_keyed = node.list_type in ("set", "map")
        for item in value:
            if is_keyed:
                pe = (_item_key(item, node, node.list_map_keys) if node.list_type == "map"
                      else "v:" + _json(item))
                if pe in seen:
                    raise APIError(422, "Invalid",
                                   f"{path_string(path)}: duplicate entries for key "
                                   f"{path_string((pe,))}")
                seen.add(pe)
            _check_duplicate_keys(item, node.items, path)


def _conflict_error(conflicts: list[tuple[ManagerEntry, Path]]) -> APIError:
    conflicts.sort(key=lambda c: (c[0].describe(), path_string(c[1])))
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {m.describe()}",
               "field": path_string(p)} for m, p in conflicts]
    if len(conflicts) == 1:
        m, p = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {m.describe()}: {path_string(p)}"
    else:
        lines: list[str] = []
        last = None
        for m, p in conflicts:
            if m.describe() != last:
                last = m.describe()
                lines.append(f"conflicts with {last}:")
            lines.append(f"- {path_string(p)}")
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return APIError(409, "Conflict", message, {"causes": causes})


def apply_patch(live: dict[str, Any] | None, applied: dict[str, Any], manager: str, force: bool,
                node: SchemaNode | None, *, subresource: str = "",
                reset_fields: Iterable[str] = (), now: str | None = None) -> dict[str, Any]:
    """Server-side apply of `applied` (the decoded apply-patch+yaml body) onto `live`
    (None: create). Returns the new object with ``metadata.managedFields`` updated."""
    if not manager:
        raise bad_request("PATCH request with apply type must specify a fieldManager")
    if not isinstance(applied, dict):
        raise bad_request("apply patch must be an object")
    if not applied.get("apiVersion") or not applied.get("kind"):
        raise bad_request("apply patch must set apiVersion and kind")
    if (applied.get("metadata") or {}).get("managedFields") is not None:
        raise bad_request("metadata.managedFields must be nil")
    reset = tuple(reset_fields)
    stamp = now or _now()
    api_version = str(applied["apiVersion"])
    _check_duplicate_keys(applied, node, ())
    managers = _managers_of(live, node, reset)
    me = ManagerEntry(manager, "Apply", api_version, stamp, fields_of(applied, node, reset),
                      subresource)
    last: ManagerEntry | None = next((m for m in managers if m.identity == me.identity), None)
    others = [m for m in managers if m.identity != me.identity]

    live_obj: dict[str, Any] = copy.deepcopy(live) if live is not None else {}
    live_obj.get("metadata", {}).pop("managedFields", None)
    merged = _merge(live_obj, applied, node)

    # Prune what this manager applied last time and dropped now, unless someone else
    # still owns it (or something below it).
    if last is not None:
        owned_by_others: FieldSet = set().union(*(m.fields for m in others)) if others else set()
        dropped = sorted(last.fields - me.fields, key=len)
        for path in dropped:
            if any(_is_under(o, path) for o in owned_by_others):
                continue
            _remove_path(merged, path, node)

    modified, added, removed = _compare(_values(live_obj, node, reset),
                                        _values(merged, node, reset))
    changed = modified | added
    conflicts = [(m, p) for m in others for p in sorted(m.fields & changed)]
    if conflicts and not force:
        raise _conflict_error(conflicts)
    for m in others:
        m.fields -= changed | removed
    if last is not None and last.fields == me.fields:
        me.time = last.time or stamp  # ownership unchanged: keep the time it was taken
    return _with_managed_fields(merged, [*others, me])


def update_managed_fields(live: dict[str, Any] | None, new: dict[str, Any], manager: str,
                          node: SchemaNode | None, *, subresource: str = "",
                          reset_fields: Iterable[str] = (), now: str | None = None
                          ) -> dict[str, Any]:
    """Record a non-apply write (create/update/patch) by `manager` (operation Update).

    Returns a copy of `new` with managedFields: the writer owns what it added or changed,
    other managers lose those fields. A client that sent managedFields different from the
    live object's replaces them (``[{}]`` clears them), as kube allows.
    """
    reset = tuple(reset_fields)
    stamp = now or _now()
    out = copy.deepcopy(new)
    meta = out.setdefault("metadata", {})
    sent = meta.pop("managedFields", None)
    live_sent = (live or {}).get("metadata", {}).get("managedFields")
    if sent is not None and sent != live_sent:
        managers = decode_managed_fields(sent)
        if not managers:
            return out  # cleared by the client
    else:
        managers = _managers_of(live, node, reset)
    live_obj = copy.deepcopy(live) if live is not None else {}
    if live_obj:
        live_obj.get("metadata", {}).pop("managedFields", None)
    modified, added, removed = _compare(_values(live_obj, node, reset), _values(out, node, reset))
    api_version = str(out.get("apiVersion") or (live or {}).get("apiVersion", ""))
    me = ManagerEntry(manager or "unknown", "Update", api_version, stamp, set(), subresource)
    current = next((m for m in managers if m.identity == me.identity), None)
    others = [m for m in managers if m is not current]
    for m in others:
        m.fields -= modified | added | removed
    before = current.fields if current is not None else set()
    me.fields = (before - removed) | modified | added
    if current is not None and me.fields == before:
        me.time = current.time or stamp
    return _with_managed_fields(out, [*others, me])
