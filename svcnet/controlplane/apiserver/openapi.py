"""OpenAPI v3: the `/openapi/v3` index and one document per group-version.

kubectl >= 1.29 needs these for `create -f`, `apply`, `replace`, `diff` and `explain`.
The one hard requirement (reference/kubectl-and-api.md §3.2): the PATCH operation on each
kind's item path carries `x-kubernetes-group-version-kind` and declares the
`fieldValidation` query parameter; that is how kubectl learns that the server validates
fields itself, and without it kubectl refuses to write. Schemas come from
`registry.schema.openapi_v3_components` (Kubernetes' own definitions, with
descriptions), so `kubectl explain service.spec.ports` shows the upstream text.

Documents are built once per process. The index points at
`/openapi/v3/<gv>?hash=<sha512 prefix>`; a request carrying the current hash is
answered `Cache-Control: public, immutable`, as kube-apiserver does, so kubectl's HTTP
cache can keep it until the hash changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

from svcnet.controlplane.apiserver.discovery import Kind, group_versions, subresource_gvk, subresource_verbs
from svcnet.controlplane.registry.kinds import SUBRESOURCE_DEFINITIONS

META = "io.k8s.apimachinery.pkg.apis.meta.v1."
EXTRA_DEFINITIONS = (META + "Status", META + "DeleteOptions", META + "Patch")
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json", "application/apply-patch+yaml")

_VERB_OF = {"get": "get", "put": "update", "patch": "patch", "post": "create"}

ComponentsFn = Callable[[Iterable[str]], dict[str, dict[str, Any]]]


class DefinedKind(Kind, Protocol):
    @property
    def definition(self) -> str: ...


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, description: str, type_: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": {"type": type_,
                                                                                "uniqueItems": True}}


P_DRY_RUN = _query("dryRun", "When present, indicates that modifications should not be persisted. "
                   "Valid values are: - All: all dry run stages will be processed")
P_FIELD_MANAGER = _query("fieldManager", "fieldManager is a name associated with the actor or entity "
                         "that is making these changes.")
P_FIELD_VALIDATION = _query("fieldValidation", "fieldValidation instructs the server on how to handle "
                            "objects in the request (POST/PUT/PATCH) containing unknown or duplicate "
                            "fields. Valid values are: - Ignore - Warn (the default) - Strict")
P_FORCE = _query("force", "Force is going to \"force\" Apply requests. It means user will re-acquire "
                 "conflicting fields owned by other people.", "boolean")
P_PRETTY = _query("pretty", "If 'true', then the output is pretty printed.")
LIST_PARAMS = [
    _query("labelSelector", "A selector to restrict the list of returned objects by their labels."),
    _query("fieldSelector", "A selector to restrict the list of returned objects by their fields."),
    _query("limit", "limit is a maximum number of responses to return for a list call.", "integer"),
    _query("continue", "The continue option should be set when retrieving more results from the server."),
    _query("resourceVersion", "resourceVersion sets a constraint on what resource versions a request "
           "may be served from."),
    _query("watch", "Watch for changes to the described resources.", "boolean"),
    _query("allowWatchBookmarks", "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
           "boolean"),
    _query("timeoutSeconds", "Timeout for the list/watch call.", "integer"),
]


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "uniqueItems": True}}


def _responses(definition: str, *codes: str) -> dict[str, Any]:
    media = {"application/json": {"schema": _ref(definition)},
             "application/yaml": {"schema": _ref(definition)}}
    out: dict[str, Any] = {code: {"description": {"200": "OK", "201": "Created",
                                                  "202": "Accepted"}[code], "content": media}
                           for code in codes}
    out["401"] = {"description": "Unauthorized"}
    return out


def _op(action: str, verb: str, k: DefinedKind, scope: str, definition: str, params: list[dict[str, Any]],
        codes: Sequence[str], body: dict[str, Any] | None = None, sub: str = "") -> dict[str, Any]:
    group_part = "".join(p.capitalize() for p in (k.group.split(".")[0] or "core", k.version))
    op: dict[str, Any] = {
        "tags": [group_part],
        "description": f"{action} {scope} {k.kind}{' ' + sub if sub else ''}",
        "operationId": f"{verb}{group_part}{scope}{k.kind}{sub.capitalize()}",
        "parameters": params,
        "responses": _responses(definition, *codes),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
    }
    if body is not None:
        op["requestBody"] = body
    return op


def _paths_for(k: DefinedKind, prefix: str) -> dict[str, Any]:
    scope = "Namespaced" if k.namespaced else ""
    base = f"{prefix}/namespaces/{{namespace}}/{k.plural}" if k.namespaced else f"{prefix}/{k.plural}"
    path_params = [_path_param("namespace", "object name and auth scope, such as for teams and projects")] \
        if k.namespaced else []
    name_param = [_path_param("name", f"name of the {k.kind}")]
    list_kind = f"{k.definition}List"
    obj_body = {"required": True, "content": {"*/*": {"schema": _ref(k.definition)}}}
    patch_body = {"required": True, "content": {t: {"schema": _ref(META + "Patch")} for t in PATCH_TYPES}}
    write = [P_DRY_RUN, P_FIELD_MANAGER, P_FIELD_VALIDATION, P_PRETTY]
    paths: dict[str, Any] = {
        base: {
            "get": _op("list", "list", k, scope, list_kind, LIST_PARAMS, ["200"]),
            "post": _op("post", "create", k, scope, k.definition, write, ["200", "201", "202"], obj_body),
            "delete": _op("deletecollection", "deleteCollection", k, scope, META + "Status",
                          [P_DRY_RUN, *LIST_PARAMS], ["200"]),
            "parameters": path_params,
        },
        f"{base}/{{name}}": {
            "get": _op("get", "read", k, scope, k.definition, [P_PRETTY], ["200"]),
            "put": _op("put", "replace", k, scope, k.definition, write, ["200", "201"], obj_body),
            "patch": _op("patch", "patch", k, scope, k.definition, [*write, P_FORCE], ["200", "201"],
                         patch_body),
            "delete": _op("delete", "delete", k, scope, k.definition, [P_DRY_RUN],
                          ["200", "202"], {"content": {"*/*": {"schema": _ref(META + "DeleteOptions")}}}),
            "parameters": path_params + name_param,
        },
    }
    for sub in k.subresources:
        definition = SUBRESOURCE_DEFINITIONS.get(sub, k.definition)
        sub_body = {"required": True, "content": {"*/*": {"schema": _ref(definition)}}}
        ops = {
            "get": _op("get", "read", k, scope, definition, [P_PRETTY], ["200"], sub=sub),
            "put": _op("put", "replace", k, scope, definition, write, ["200", "201"], sub_body, sub=sub),
            "patch": _op("patch", "patch", k, scope, definition, [*write, P_FORCE], ["200", "201"],
                         patch_body, sub=sub),
            "post": _op("post", "create", k, scope, definition, write, ["200", "201", "202"], sub_body,
                        sub=sub),
        }
        for op in ops.values():
            group, version, kind = subresource_gvk(k, sub)
            op["x-kubernetes-group-version-kind"] = {"group": group, "version": version, "kind": kind}
        verbs = subresource_verbs(sub)
        item: dict[str, Any] = {m: op for m, op in ops.items() if _VERB_OF[m] in verbs}
        item["parameters"] = path_params + name_param
        paths[f"{base}/{{name}}/{sub}"] = item
    if k.namespaced:
        paths[f"{prefix}/{k.plural}"] = {
            "get": _op("list", "list", k, "ForAllNamespaces", list_kind, LIST_PARAMS, ["200"]),
        }
    return paths


def _list_schema(k: DefinedKind) -> dict[str, Any]:
    return {
        "description": f"{k.kind}List is a list of {k.kind} objects.",
        "type": "object", "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of "
                           "this representation of an object."},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST "
                     "resource this object represents."},
            "items": {"type": "array", "items": _ref(k.definition),
                      "description": f"List of {k.plural}."},
            "metadata": _ref(META + "ListMeta"),
        },
        "x-kubernetes-group-version-kind": [{"group": k.group, "version": k.version,
                                             "kind": f"{k.kind}List"}],
    }


def gv_path(group: str, version: str) -> str:
    """The index key: `api/v1` or `apis/GROUP/VERSION`."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


@dataclass(frozen=True)
class Document:
    body: bytes
    hash: str


def build_document(kinds: Sequence[DefinedKind], group: str, version: str,
                   components: ComponentsFn) -> dict[str, Any]:
    served = [k for k in kinds if (k.group, k.version) == (group, version)]
    prefix = "/" + gv_path(group, version)
    paths: dict[str, Any] = {}
    for k in served:
        paths.update(_paths_for(k, prefix))
    extra = sorted({SUBRESOURCE_DEFINITIONS[s] for k in served for s in k.subresources
                    if s in SUBRESOURCE_DEFINITIONS})
    schemas = dict(components([k.definition for k in served] + extra
                              + [*EXTRA_DEFINITIONS, META + "ListMeta"]))
    for k in served:
        schema = dict(schemas.get(k.definition) or {"type": "object"})
        # kubectl explain and the fieldValidation check find a kind through this extension
        schema["x-kubernetes-group-version-kind"] = [{"group": k.group, "version": k.version, "kind": k.kind}]
        schemas[k.definition] = schema
        schemas[f"{k.definition}List"] = _list_schema(k)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


class OpenAPIv3:
    """The index and the per-group-version documents, serialised once."""

    def __init__(self, kinds: Sequence[DefinedKind], components: ComponentsFn) -> None:
        self.documents: dict[str, Document] = {}
        for group, versions in group_versions(kinds).items():
            for version in versions:
                body = json.dumps(build_document(kinds, group, version, components),
                                  separators=(",", ":")).encode()
                digest = hashlib.sha512(body).hexdigest()[:128].upper()
                self.documents[gv_path(group, version)] = Document(body, digest)
        self.index = json.dumps({"paths": {
            gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={doc.hash}"}
            for gv, doc in self.documents.items()
        }}, separators=(",", ":")).encode()
