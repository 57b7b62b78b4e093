"""The three client-side patch formats kube-apiserver accepts, as pure functions.

* `json_patch`: RFC 6902 (add, remove, replace, move, copy, test) over RFC 6901 pointers.
* `merge_patch`: RFC 7386 JSON merge patch.
* `strategic_merge_patch`: Kubernetes' strategic merge patch, driven by the schema's
  ``x-kubernetes-patch-merge-key``/``-patch-strategy`` (`SchemaNode`). It follows
  k8s.io/apimachinery ``pkg/util/strategicpatch/patch.go`` (``mergeMap``/``mergeSlice``
  with ``MergeParallelList`` and ``IgnoreUnmatchedNulls``, as the apiserver calls it):
  lists of maps with a merge key merge item by item, primitive lists with strategy
  ``merge`` union, other lists are replaced, ``null`` deletes a key, and the directives
  ``$patch: replace|delete|merge``, ``$setElementOrder/<f>``,
  ``$deleteFromPrimitiveList/<f>`` and ``$retainKeys`` behave as there, including
  element ordering. One deliberate difference: values that do not exist yet in the
  original are merged into an empty value instead of copied verbatim, so directives
  nested in new items are applied and never stored.

Server-side apply lives in `apply.py`; `apply_patch` is re-exported here.

Inputs are never modified. Errors raise `APIError`: malformed patches 400 BadRequest;
JSON patches that are well formed but cannot be applied (a failed ``test``, a missing
path) 422 Invalid, as kube-apiserver answers (it
reports JSON-patch application errors as 422 too). The message says what failed and where.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from svcnet.controlplane.errors import APIError, bad_request
from svcnet.controlplane.registry.apply import apply_patch, update_managed_fields
from svcnet.controlplane.registry.schema import SchemaNode

__all__ = ["json_patch", "merge_patch", "strategic_merge_patch", "apply_patch",
           "update_managed_fields", "json_equal", "MAX_JSON_PATCH_OPERATIONS"]

# kube-apiserver's limit (handlers/patch.go maxJSONPatchOperations).
MAX_JSON_PATCH_OPERATIONS = 10000


def unprocessable(message: str) -> APIError:
    """422 as kube-apiserver returns for a patch that cannot be applied. Without details
    kubectl prints `The request is invalid: <message>` (kube's own Status puts the text in
    a cause behind a generic message; saying it directly reads better)."""
    return APIError(422, "Invalid", message)


def json_equal(a: Any, b: Any) -> bool:
    """JSON value equality: 1 == 1.0, but true != 1 (Python's == conflates them)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and bool(a == b)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# -- RFC 6902 JSON patch ------------------------------------------------------------------

def _parse_pointer(pointer: Any, op_index: int, member: str) -> list[str]:
    if not isinstance(pointer, str):
        raise unprocessable(f"json patch operation {op_index}: {member!r} must be a string")
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise unprocessable(f"json patch operation {op_index}: invalid JSON pointer {pointer!r} "
                            "(must be empty or start with '/')")
    # RFC 6901: ~1 is '/', ~0 is '~' (in that order, so "~01" is "~1").
    return [tok.replace("~1", "/").replace("~0", "~") for tok in pointer[1:].split("/")]


def _index(token: str, length: int, pointer: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return length
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise unprocessable(f"invalid array index {token!r} in path {pointer!r}")
    idx = int(token)
    if idx > length or (idx == length and not allow_end):
        raise unprocessable(f"array index {idx} out of bounds (length {length}) in path {pointer!r}")
    return idx


def _container(doc: Any, tokens: list[str], pointer: str, op: str) -> Any:
    """The value holding the last token of `tokens` (the parent)."""
    cur = doc
    for tok in tokens[:-1]:
        if isinstance(cur, dict):
            if tok not in cur:
                raise unprocessable(f"{op} operation does not apply: doc is missing path: {pointer!r}")
            cur = cur[tok]
        elif isinstance(cur, list):
            cur = cur[_index(tok, len(cur), pointer, allow_end=False)]
        else:
            raise unprocessable(f"{op} operation does not apply: doc is missing path: {pointer!r}")
    if not isinstance(cur, (dict, list)):
        raise unprocessable(f"{op} operation does not apply: doc is missing path: {pointer!r}")
    return cur


def _get(doc: Any, tokens: list[str], pointer: str, op: str) -> Any:
    if not tokens:
        return doc
    parent = _container(doc, tokens, pointer, op)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise unprocessable(f"{op} operation does not apply: doc is missing key: {pointer!r}")
        return parent[last]
    return parent[_index(last, len(parent), pointer, allow_end=False)]


def _add(doc: Any, tokens: list[str], value: Any, pointer: str, op: str = "add") -> Any:
    if not tokens:
        return value
    parent = _container(doc, tokens, pointer, op)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    else:
        parent.insert(_index(tokens[-1], len(parent), pointer, allow_end=True), value)
    return doc


def _remove(doc: Any, tokens: list[str], pointer: str, op: str = "remove") -> tuple[Any, Any]:
    if not tokens:
        raise unprocessable(f"{op} operation does not apply: cannot remove the whole document")
    parent = _container(doc, tokens, pointer, op)
    if isinstance(parent, dict):
        if tokens[-1] not in parent:
            raise unprocessable(f"{op} operation does not apply: doc is missing key: {pointer!r}")
        return doc, parent.pop(tokens[-1])
    return doc, parent.pop(_index(tokens[-1], len(parent), pointer, allow_end=False))


def _replace(doc: Any, tokens: list[str], value: Any, pointer: str) -> Any:
    if not tokens:
        return value
    parent = _container(doc, tokens, pointer, "replace")
    if isinstance(parent, dict):
        if tokens[-1] not in parent:
            raise unprocessable(f"replace operation does not apply: doc is missing key: {pointer!r}")
        parent[tokens[-1]] = value
    else:
        parent[_index(tokens[-1], len(parent), pointer, allow_end=False)] = value
    return doc


def json_patch(doc: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    """Apply an RFC 6902 patch to a copy of `doc`. All operations or none take effect."""
    if not isinstance(ops, list):
        raise bad_request("json patch must be a JSON array of operations")
    if len(ops) > MAX_JSON_PATCH_OPERATIONS:
        raise APIError(413, "RequestEntityTooLarge",
                       f"The allowed maximum operations in a JSON patch is "
                       f"{MAX_JSON_PATCH_OPERATIONS}, got {len(ops)}")
    result: Any = copy.deepcopy(doc)
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise unprocessable(f"json patch operation {i} is not an object: {_compact(op)}")
        name = op.get("op")
        tokens = _parse_pointer(op.get("path"), i, "path")
        path = str(op["path"])
        if name in ("add", "replace", "test") and "value" not in op:
            raise unprocessable(f"json patch operation {i} ({name} {path}): missing 'value'")
        if name == "add":
            result = _add(result, tokens, copy.deepcopy(op["value"]), path)
        elif name == "remove":
            result, _ = _remove(result, tokens, path)
        elif name == "replace":
            result = _replace(result, tokens, copy.deepcopy(op["value"]), path)
        elif name in ("move", "copy"):
            from_tokens = _parse_pointer(op.get("from"), i, "from")
            src = str(op["from"])
            if name == "move":
                if tokens[:len(from_tokens)] == from_tokens and len(tokens) > len(from_tokens):
                    raise unprocessable(f"move operation does not apply: {path!r} is a child of "
                                        f"{src!r}")
                result, value = _remove(result, from_tokens, src, "move")
            else:
                value = copy.deepcopy(_get(result, from_tokens, src, "copy"))
            result = _add(result, tokens, value, path, name)
        elif name == "test":
            try:
                have = _get(result, tokens, path, "test")
            except APIError:
                have, present = None, False
            else:
                present = True
            if not present or not json_equal(have, op["value"]):
                raise unprocessable(f"testing value {path} failed: test failed "
                                    f"(want {_compact(op['value'])}, have "
                                    f"{_compact(have) if present else 'nothing'})")
        else:
            raise unprocessable(f"json patch operation {i}: unexpected kind {name!r} "
                                "(want add, remove, replace, move, copy or test)")
    if not isinstance(result, dict):
        raise unprocessable("json patch result is not a JSON object")
    return dict(result)


# -- RFC 7386 merge patch -------------------------------------------------------------------

def merge_patch(doc: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 on a copy of `doc`: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        raise bad_request("merge patch must be a JSON object")
    result = _merge7386(copy.deepcopy(doc), patch)
    assert isinstance(result, dict)
    return result


def _merge7386(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge7386(target.get(key), value)
    return target


# -- strategic merge patch --------------------------------------------------------------

_DIRECTIVE = "$patch"
_SET_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"
_RETAIN_KEYS = "$retainKeys"


def strategic_merge_patch(doc: dict[str, Any], patch: dict[str, Any], node: SchemaNode | None
                          ) -> dict[str, Any]:
    """Apply a strategic merge patch to a copy of `doc` under schema `node`."""
    if not isinstance(patch, dict):
        raise bad_request("strategic merge patch must be a JSON object")
    return _merge_map(copy.deepcopy(doc), copy.deepcopy(patch), node)


def _child(node: SchemaNode | None, name: str) -> SchemaNode | None:
    return node.field(name) if node is not None else None


def _merge_map(original: dict[str, Any] | None, patch: dict[str, Any], node: SchemaNode | None
               ) -> dict[str, Any]:
    if _DIRECTIVE in patch:
        directive = patch.pop(_DIRECTIVE)
        if directive == "replace":
            return _merge_map({}, patch, node)
        if directive == "delete":
            return {}
        raise bad_request(f"unknown patch type: {directive} in map: {_compact(patch)}")
    if original is None:
        original = {}
    _apply_retain_keys(original, patch)
    _apply_set_element_order(original, patch, node)

    for key, pv in list(patch.items()):
        is_delete_list = key.startswith(_DELETE_PRIMITIVE)
        if is_delete_list:
            key = key[len(_DELETE_PRIMITIVE):]
            if not isinstance(pv, list):
                raise bad_request(f"invalid patch format of primitive list: "
                                  f"{_DELETE_PRIMITIVE}{key} must be a list")
        elif key.startswith("$"):
            raise bad_request(f"unknown strategic merge patch directive {key!r}")
        if pv is None:
            original.pop(key, None)
            continue
        child = _child(node, key)
        if key not in original:
            if not is_delete_list:
                original[key] = _fresh(pv, child)
            continue
        ov = original[key]
        if isinstance(ov, dict) and isinstance(pv, dict):
            if child is not None and child.patch_strategy == "replace":
                original[key] = _fresh(pv, child)
            else:
                original[key] = _merge_map(ov, pv, child)
        elif isinstance(ov, list) and isinstance(pv, list):
            original[key] = _merge_list_field(ov, pv, child, is_delete_list)
        elif not is_delete_list:
            original[key] = _fresh(pv, child)
    return original


def _fresh(value: Any, node: SchemaNode | None) -> Any:
    """A patch value with nothing to merge into: directives applied, nulls dropped."""
    if isinstance(value, dict):
        return _merge_map({}, value, node)
    if isinstance(value, list):
        return _merge_list_field([], value, node, False)
    return value


def _merge_list_field(original: list[Any], patch: list[Any], node: SchemaNode | None,
                      is_delete_list: bool) -> list[Any]:
    """mergeSliceHandler: merge when the field's strategy is merge (or for delete lists),
    otherwise the patch replaces the list."""
    if is_delete_list or (node is not None and node.patch_strategy == "merge"):
        return _merge_list(original, patch, node, is_delete_list)
    items = node.items if node is not None else None
    return [_fresh(v, items) for v in patch]


def _element_kind(original: list[Any], patch: list[Any], node: SchemaNode | None) -> str:
    kinds = {"map" if isinstance(v, dict) else "list" if isinstance(v, list) else "scalar"
             for v in (*original, *patch)}
    if "list" in kinds:
        raise unprocessable("lists of lists are not supported in strategic merge patch")
    if len(kinds) > 1:
        name = node.name if node is not None else "list"
        raise bad_request(f"types don't match in {name}: maps and scalars mixed in one list")
    return kinds.pop() if kinds else "scalar"


def _merge_list(original: list[Any], patch: list[Any], node: SchemaNode | None,
                is_delete_list: bool) -> list[Any]:
    if not original and not patch:
        return original
    kind = _element_kind(original, patch, node)
    items_node = node.items if node is not None else None
    merge_key = ""
    if kind == "scalar":
        if is_delete_list:
            return [v for v in original if not any(json_equal(v, p) for p in patch)]
        merged = _dedupe(original + patch)
        patch_order = patch
    else:
        merge_key = node.merge_key if node is not None else ""
        if not merge_key:
            name = node.name if node is not None else "list"
            raise bad_request(f"cannot merge lists without merge key for {name}")
        original, patch_order = _special_elements(original, patch, merge_key, items_node)
        merged = list(original)
        for item in patch_order:
            if merge_key not in item:
                raise bad_request(f"map: {_compact(item)} does not contain declared merge key: "
                                  f"{merge_key}")
            at = _find(merged, merge_key, item[merge_key])
            if at >= 0:
                merged[at] = _merge_map(merged[at], copy.deepcopy(item), items_node)
            else:
                merged.append(_merge_map({}, copy.deepcopy(item), items_node))
    ordered, server_only = _partition(merged, patch_order, merge_key)
    return _normalize_order(ordered, server_only, patch_order, original, merge_key)


def _special_elements(original: list[Any], patch: list[Any], merge_key: str,
                      items_node: SchemaNode | None) -> tuple[list[Any], list[Any]]:
    """mergeSliceWithSpecialElements: `$patch: delete` items delete by merge key,
    `$patch: replace` makes the patch's other items the whole list."""
    rest: list[Any] = []
    replace = False
    for item in patch:
        directive = item.get(_DIRECTIVE)
        if directive is None:
            rest.append(item)
        elif directive == "delete":
            if merge_key not in item:
                raise bad_request(f"map: {_compact(item)} does not contain declared merge key: "
                                  f"{merge_key}")
            original = [o for o in original
                        if not (isinstance(o, dict) and json_equal(o.get(merge_key), item[merge_key]))]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise bad_request("merging lists cannot yet be specified in the patch")
        else:
            raise bad_request(f"unknown patch type: {directive} in map: {_compact(item)}")
    if replace:
        return [_merge_map({}, copy.deepcopy(i), items_node) for i in rest], []
    return original, rest


def _dedupe(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not any(json_equal(v, o) for o in out):
            out.append(v)
    return out


def _find(items: list[Any], merge_key: str, value: Any) -> int:
    for i, item in enumerate(items):
        if isinstance(item, dict) and json_equal(item.get(merge_key), value):
            return i
    return -1


def _position(order: list[Any], item: Any, merge_key: str) -> int:
    if merge_key:
        if not isinstance(item, dict):
            return -1
        return _find(order, merge_key, item.get(merge_key))
    return next((i for i, o in enumerate(order) if json_equal(o, item)), -1)


def _partition(merged: list[Any], order: list[Any], merge_key: str) -> tuple[list[Any], list[Any]]:
    present: list[Any] = []
    server_only: list[Any] = []
    for item in merged:
        (present if _position(order, item, merge_key) >= 0 else server_only).append(item)
    return present, server_only


def _sorted_by(items: list[Any], order: list[Any], merge_key: str) -> list[Any]:
    def key(item: Any) -> int:
        at = _position(order, item, merge_key)
        return at if at >= 0 else len(order)
    return sorted(items, key=key)


def _normalize_order(from_patch: list[Any], server_only: list[Any], patch_order: list[Any],
                     server_order: list[Any], merge_key: str) -> list[Any]:
    """normalizeElementOrder + mergeSortedSlice: patch items in patch order, server-only
    items in server order, interleaved where the server order relates both."""
    right = _sorted_by(from_patch, patch_order, merge_key)
    left = _sorted_by(server_only, server_order, merge_key)
    out: list[Any] = []
    i = j = 0
    pos: Callable[[Any], int] = lambda item: _position(server_order, item, merge_key)  # noqa: E731
    while i < len(left) or j < len(right):
        if j >= len(right):
            out.append(left[i])
            i += 1
        elif i >= len(left):
            out.append(right[j])
            j += 1
        else:
            li, ri = pos(left[i]), pos(right[j])
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _apply_retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    if _RETAIN_KEYS not in patch:
        return
    retain = patch.pop(_RETAIN_KEYS)
    if not isinstance(retain, list):
        raise bad_request("invalid patch format of retainKeys")
    keep = set(k for k in retain if isinstance(k, str))
    for key, value in patch.items():
        if value is None or key.startswith((_DELETE_PRIMITIVE, _SET_ORDER)):
            continue
        if key not in keep:
            raise bad_request(f"invalid patch format of retainKeys: {key!r} is set but not "
                              f"listed in $retainKeys {_compact(retain)}")
    for key in list(original):
        if key not in keep:
            del original[key]


def _apply_set_element_order(original: dict[str, Any], patch: dict[str, Any],
                             node: SchemaNode | None) -> None:
    """mergePatchIntoOriginal: merge each list that has a `$setElementOrder/<f>` and order
    the result as the directive says; items only on the server keep their relative place."""
    for key in [k for k in patch if k.startswith(_SET_ORDER)]:
        order = patch.pop(key)
        field = key[len(_SET_ORDER):]
        if not isinstance(order, list):
            raise bad_request("invalid patch format of setElementOrder list")
        if field in patch and patch[field] is None:
            continue  # the field is deleted; the main loop does that
        child = _child(node, field)
        live = original.get(field)
        patch_list = patch.pop(field, None)
        if (live is not None and not isinstance(live, list)) or \
                (patch_list is not None and not isinstance(patch_list, list)):
            raise bad_request(f"invalid patch format of setElementOrder list: {field} is not a list")
        if live is None and patch_list is None:
            continue
        merge_key = child.merge_key if child is not None else ""
        patch_items = patch_list or []
        _validate_set_order(patch_items, order, merge_key, field)
        merged = _merge_list_field(list(live or []), patch_items, child, False)
        if child is None or child.patch_strategy != "merge":
            original[field] = merged
            continue
        # Primitive lists order by value, lists of maps by merge key.
        key_for_order = merge_key if any(isinstance(v, dict) for v in merged) else ""
        ordered, server_only = _partition(merged, order, key_for_order)
        original[field] = _normalize_order(ordered, server_only, order, list(live or []),
                                           key_for_order)


def _validate_set_order(patch_list: list[Any], order: list[Any], merge_key: str, field: str) -> None:
    """validatePatchWithSetOrderList: patch items must appear in the order list, in order."""
    items = [p for p in patch_list if not (isinstance(p, dict) and _DIRECTIVE in p)]
    if not items or not order:
        return
    pi = oi = 0
    while pi < len(items) and oi < len(order):
        a, b = items[pi], order[oi]
        same = (isinstance(a, dict) and isinstance(b, dict) and merge_key
                and json_equal(a.get(merge_key), b.get(merge_key))) or \
            (not merge_key and json_equal(a, b))
        if same:
            pi += 1
        oi += 1
    if pi < len(items):
        raise bad_request(f"The order in patch list:\n{_compact(patch_list)}\n doesn't match "
                          f"{_SET_ORDER}{field} list:\n{_compact(order)}\n")
