"""The REST verbs on resources: HTTP in, Registry calls, HTTP out.

`ResourceHandlers.handle` receives a parsed `Target` (kind, namespace, name,
subresource) and does only what is HTTP's: read query parameters the way
kube-apiserver's `pkg/endpoints/handlers` do, decode and check the body (apiVersion,
kind, namespace and name must agree with the URL), call the Registry, and encode the
answer (JSON, YAML or a Table) with `Warning` headers. Semantics (defaulting,
validation, resourceVersions, patches, selectors) are the Registry's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from aiohttp import web
from multidict import CIMultiDict

from svcnet.controlplane.apiserver import negotiation, tables
from svcnet.controlplane.apiserver.metrics import APIServerMetrics
from svcnet.controlplane.apiserver.negotiation import Negotiated
from svcnet.controlplane.apiserver.watch import WatchSpec, WatchStream
from svcnet.controlplane.errors import APIError, bad_request
from svcnet.controlplane.registry import selectors
from svcnet.controlplane.registry.codec import gc_paused
from svcnet.controlplane.registry.kinds import CREATE_ONLY_SUBRESOURCES, KindInfo, subresource_kind

if TYPE_CHECKING:
    import asyncio

    from svcnet.controlplane.registry.store import Registry

FIELD_VALIDATION = ("Strict", "Warn", "Ignore")
MAX_FIELD_MANAGER_LENGTH = 128  # ValidateFieldManager's limit
# kube-apiserver's default when fieldValidation is absent (KEP-2885)
DEFAULT_FIELD_VALIDATION = "Warn"


@dataclass(frozen=True)
class Target:
    """What a resource URL names."""

    kind: KindInfo
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def scope(self) -> str:
        if not self.kind.namespaced:
            return "cluster"
        return "namespace" if self.namespace else "cluster"


def verb_of(method: str, target: Target, query: Mapping[str, str]) -> str:
    """The Kubernetes verb (RBAC form) of a request, or 405."""
    item = target.name is not None
    not_allowed = APIError(405, "MethodNotAllowed",
                           f"the server does not allow this method on the requested resource ({method})")
    if target.subresource in CREATE_ONLY_SUBRESOURCES:
        if method != "POST":
            raise not_allowed
        return "create"
    if method == "GET":
        if not item and _bool(query, "watch"):
            return "watch"
        return "get" if item else "list"
    verb = {("POST", False): "create", ("PUT", True): "update", ("PATCH", True): "patch",
            ("DELETE", True): "delete", ("DELETE", False): "deletecollection"}.get((method, item))
    if verb is None or (target.subresource and verb not in ("update", "patch")):
        raise not_allowed
    return verb


def metric_verb(verb: str, content_type: str | None) -> str:
    if verb == "patch" and (content_type or "").startswith("application/apply-patch"):
        return "APPLY"
    return {"get": "GET", "list": "LIST", "watch": "WATCH", "create": "POST", "update": "PUT",
            "patch": "PATCH", "delete": "DELETE", "deletecollection": "DELETECOLLECTION"}[verb]


# --- query parameters -------------------------------------------------------------------

def _bool(query: Mapping[str, str], key: str) -> bool:
    value = query.get(key, "")
    if value in ("", "false", "0", "False"):
        return False
    if value in ("true", "1", "True"):
        return True
    raise bad_request(f'invalid value for {key}: "{value}", expected true or false')


def _int(query: Mapping[str, str], key: str) -> int | None:
    value = query.get(key)
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except ValueError:
        raise bad_request(f'invalid value for {key}: "{value}", expected an integer') from None
    if n < 0:
        raise bad_request(f"{key}: Invalid value: {n}: must be greater than or equal to 0")
    return n


def dry_run(query: web.Request | Mapping[str, str], options: Mapping[str, Any] | None = None) -> bool:
    values: list[str] = []
    if isinstance(query, web.Request):
        values = query.query.getall("dryRun", [])
    elif query.get("dryRun"):
        values = [query["dryRun"]]
    values += list((options or {}).get("dryRun") or [])
    for v in values:
        if v != "All":
            raise bad_request(f'dryRun: Unsupported value: "{v}": supported values: "All"')
    return bool(values)


def field_validation(query: Mapping[str, str]) -> str:
    value = query.get("fieldValidation") or DEFAULT_FIELD_VALIDATION
    if value not in FIELD_VALIDATION:
        raise bad_request(f'fieldValidation parameter unsupported: "{value}" '
                          '(supported values: "Ignore", "Warn", "Strict")')
    return value


def field_manager(request: web.Request) -> str:
    """The `fieldManager` parameter, else the User-Agent's product (`kubectl/v1.32.0 (linux/amd64)
    kubernetes/abc` -> `kubectl`), as kube-apiserver's `managerOrUserAgent` does for
    create, update and non-apply patches (apply must name its manager)."""
    manager = request.query.get("fieldManager", "")
    if manager:
        if len(manager) > MAX_FIELD_MANAGER_LENGTH:
            raise APIError(422, "Invalid", f"fieldManager: Too long: may not be more than "
                           f"{MAX_FIELD_MANAGER_LENGTH} bytes",
                           {"causes": [{"reason": "FieldValueTooLong", "field": "fieldManager",
                                        "message": f"Too long: may not be more than "
                                                   f"{MAX_FIELD_MANAGER_LENGTH} bytes"}]})
        return manager
    agent = request.headers.get("User-Agent", "").split("/", 1)[0].strip()
    return "".join(c for c in agent if c.isprintable())[:MAX_FIELD_MANAGER_LENGTH]


def _forbidden(field: str, detail: str, reason: str = "FieldValueForbidden") -> dict[str, str]:
    prefix = "Forbidden" if reason == "FieldValueForbidden" else "Unsupported value"
    return {"reason": reason, "field": field, "message": f"{prefix}: {detail}"}


def watch_list_options(query: Mapping[str, str]) -> bool | None:
    """`sendInitialEvents` of a watch (streaming lists, KEP-3157), validated as upstream's
    `validateWatchOptions`: it needs resourceVersionMatch=NotOlderThan, and true needs
    allowWatchBookmarks (the end of the initial events is a bookmark). None: not given."""
    raw = query.get("sendInitialEvents")
    send = None if raw is None else _bool(query, "sendInitialEvents")
    match = query.get("resourceVersionMatch", "")
    causes: list[dict[str, str]] = []
    if send is not None and match != "NotOlderThan":
        causes.append(_forbidden("resourceVersionMatch",
                                 "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"))
    if match:
        if send is None:
            causes.append(_forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden for "
                                     "watch unless sendInitialEvents is provided"))
        if match != "NotOlderThan":
            causes.append(_forbidden("resourceVersionMatch", f'"{match}": supported values: '
                                     '"NotOlderThan"', "FieldValueNotSupported"))
    if send and not _bool(query, "allowWatchBookmarks"):
        causes.append(_forbidden("allowWatchBookmarks", "allowWatchBookmarks must be set to true "
                                 "when sendInitialEvents is specified"))
    if causes:
        text = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
        raise APIError(422, "Invalid", f'ListOptions.meta.k8s.io "" is invalid: '
                       f"{'[' + text + ']' if len(causes) > 1 else text}",
                       {"group": "meta.k8s.io", "kind": "ListOptions", "causes": causes})
    return send


def warning_headers(warnings: list[str]) -> CIMultiDict[str]:
    """RFC 7234 `Warning: 299 - "text"` headers, one per warning, as kube-apiserver sends."""
    headers: CIMultiDict[str] = CIMultiDict()
    for w in warnings:
        text = w.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
        headers.add("Warning", f'299 - "{text}"')
    return headers


def respond(doc: Any, negotiated: Negotiated, status: int = 200,
            warnings: list[str] | None = None) -> web.Response:
    headers = warning_headers(warnings or [])
    headers["Content-Type"] = negotiated.content_type
    return web.Response(body=negotiation.encode(doc, negotiated), status=status, headers=headers)


def check_type_meta(kind: KindInfo, obj: dict[str, Any]) -> None:
    """apiVersion and kind must name the URL's kind; missing ones default to it, as the
    decoder defaults them upstream."""
    api_version = obj.setdefault("apiVersion", kind.api_version)
    obj_kind = obj.setdefault("kind", kind.kind)
    if not isinstance(api_version, str) or not isinstance(obj_kind, str):
        raise bad_request("apiVersion and kind must be strings")
    if obj_kind != kind.kind:
        raise bad_request(f"the object provided is unrecognized (must be of type {kind.kind}): "
                          f"kind {obj_kind!r} in {api_version}")
    if api_version != kind.api_version:
        raise bad_request(f"the API version in the data ({api_version}) does not match the expected "
                          f"API version ({kind.api_version})")
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise bad_request(f"{kind.kind} in version \"{kind.version}\" cannot be handled as a "
                          f"{kind.kind}: metadata must be an object")


def check_namespace(target: Target, obj: dict[str, Any]) -> None:
    if not target.kind.namespaced:
        return
    meta = obj.setdefault("metadata", {})
    body_ns = meta.get("namespace") or ""
    if body_ns and body_ns != target.namespace:
        raise bad_request("the namespace of the provided object does not match the namespace sent on "
                          "the request")
    meta["namespace"] = target.namespace


def check_name(target: Target, obj: dict[str, Any]) -> None:
    meta = obj.setdefault("metadata", {})
    name = meta.get("name") or ""
    if name and name != target.name:
        raise bad_request(f"the name of the object ({name}) does not match the name on the URL "
                          f"({target.name})")
    meta["name"] = target.name


class ResourceHandlers:
    """Serves the verbs of every kind against one Registry."""

    def __init__(self, registry: Registry, metrics: APIServerMetrics, stopping: asyncio.Event) -> None:
        self.registry, self.metrics, self.stopping = registry, metrics, stopping

    async def handle(self, request: web.Request, target: Target, verb: str) -> web.StreamResponse:
        method = getattr(self, f"_{verb}")
        response: web.StreamResponse = await method(request, target)
        return response

    # -- reads ---------------------------------------------------------------------------

    async def _get(self, request: web.Request, t: Target) -> web.StreamResponse:
        neg = negotiation.negotiate_object(request.headers.get("Accept"), table_ok=True)
        assert t.name is not None
        obj = await self.registry.get(t.kind, t.namespace, t.name, subresource=t.subresource)
        if neg.table:
            rv = obj.get("metadata", {}).get("resourceVersion", "")
            group, plural = t.kind.group, t.kind.plural
            if t.subresource and subresource_kind(t.kind, t.subresource)[2] != t.kind.kind:
                group, plural = subresource_kind(t.kind, t.subresource)[0], t.subresource
            return respond(tables.to_table(group, plural, [obj], resource_version=rv,
                                           include_object=self._include_object(request)), neg)
        return respond(obj, neg)

    @staticmethod
    def _include_object(request: web.Request) -> str:
        value = request.query.get("includeObject") or "Metadata"
        if value not in ("None", "Metadata", "Object"):
            raise bad_request(f'includeObject: Unsupported value: "{value}": supported values: '
                              '"Metadata", "None", "Object"')
        return value

    def _selectors(self, request: web.Request, t: Target) -> tuple[str, str]:
        """Parse selectors up front so a bad one is a plain 400, also for watches."""
        label = request.query.get("labelSelector", "")
        field = request.query.get("fieldSelector", "")
        selectors.parse_label_selector(label)
        selectors.parse_field_selector(field, t.kind.field_selectors)
        return label, field

    async def _list(self, request: web.Request, t: Target) -> web.StreamResponse:
        neg = negotiation.negotiate_object(request.headers.get("Accept"), table_ok=True)
        label, field = self._selectors(request, t)
        q = request.query
        if "sendInitialEvents" in q:
            detail = "sendInitialEvents is only supported on watch requests"
            raise APIError(422, "Invalid", f'ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: '
                           f"Forbidden: {detail}",
                           {"group": "meta.k8s.io", "kind": "ListOptions",
                            "causes": [_forbidden("sendInitialEvents", detail)]})
        result = await self.registry.list(
            t.kind, t.namespace, label_selector=label, field_selector=field,
            limit=_int(q, "limit") or 0, continue_token=q.get("continue", ""),
            resource_version=q.get("resourceVersion", ""))
        if neg.table:
            meta = result.get("metadata", {})
            with gc_paused():  # one row dict per item: an allocation burst without cycles
                table = tables.to_table(
                    t.kind.group, t.kind.plural, result.get("items", []),
                    resource_version=meta.get("resourceVersion", ""), continue_token=meta.get("continue", ""),
                    remaining=meta.get("remainingItemCount"), include_object=self._include_object(request))
            return respond(table, neg)
        return respond(result, neg)

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        neg = negotiation.negotiate_object(request.headers.get("Accept"), table_ok=True)
        if neg.encoding == "yaml":
            neg = Negotiated()  # a watch stream is newline-delimited JSON
        label, field = self._selectors(request, t)
        q = request.query
        send_initial_events = watch_list_options(q)
        timeout = _int(q, "timeoutSeconds")
        events = self.registry.watch(t.kind, t.namespace, label_selector=label, field_selector=field,
                                     resource_version=q.get("resourceVersion", ""),
                                     allow_bookmarks=_bool(q, "allowWatchBookmarks"),
                                     send_initial_events=send_initial_events)
        spec = WatchSpec(t.kind.group, t.kind.version, t.kind.kind, t.kind.plural,
                         content_type=neg.content_type, table=neg.table,
                         include_object=self._include_object(request) if neg.table else "Metadata",
                         timeout=float(timeout) if timeout is not None else None)
        return await WatchStream(spec, events, self.metrics, self.stopping).serve(request)

    # -- writes --------------------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > negotiation.MAX_BODY_BYTES:
            raise negotiation.too_large()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise negotiation.too_large() from None
        if len(body) > negotiation.MAX_BODY_BYTES:
            raise negotiation.too_large()
        return body

    async def _object_body(self, request: web.Request, t: Target) -> dict[str, Any]:
        obj = negotiation.decode_body(request.content_type if request.body_exists else None,
                                      await self._read_body(request))
        check_type_meta(t.kind, obj)
        check_namespace(t, obj)
        return obj

    async def _create(self, request: web.Request, t: Target) -> web.StreamResponse:
        neg = negotiation.negotiate_object(request.headers.get("Accept"), table_ok=False)
        if t.subresource:
            return respond(await self._create_subresource(request, t), neg, 201)
        obj = await self._object_body(request, t)
        q = request.query
        created, warnings = await self.registry.create(
            t.kind, t.namespace, obj, dry_run=dry_run(request),
            field_manager=field_manager(request), field_validation=field_validation(q))
        return respond(created, neg, 201, warnings)

    async def _create_subresource(self, request: web.Request, t: Target) -> dict[str, Any]:
        """POST pods/NAME/binding and pods/NAME/eviction: a Binding or Eviction body
        naming the pod of the URL; the answer is a success Status, as upstream."""
        body = await self._subresource_body(request, t)
        assert t.name is not None and t.namespace is not None
        if t.subresource == "binding":
            return await self.registry.bind(t.namespace, t.name, body, dry_run=dry_run(request))
        if t.subresource == "eviction":
            return await self.registry.evict(t.namespace, t.name, body, dry_run=dry_run(request))
        raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                       "resource (POST)")

    async def _subresource_body(self, request: web.Request, t: Target) -> dict[str, Any]:
        """A body of the subresource's own kind (Scale, Binding, Eviction): decoded here,
        its kind checked by the Registry; its name and namespace must agree with the URL."""
        obj = negotiation.decode_body(request.content_type if request.body_exists else None,
                                      await self._read_body(request))
        _, _, kind = subresource_kind(t.kind, t.subresource or "")
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise bad_request(f"{kind}: metadata must be an object")
        if meta.get("name") and meta["name"] != t.name:
            raise bad_request(f"name in URL does not match name in {kind} object")
        if meta.get("namespace") and t.namespace and meta["namespace"] != t.namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent "
                              "on the request")
        return obj

    async def _update(self, request: web.Request, t: Target) -> web.StreamResponse:
        neg = negotiation.negotiate_object(request.headers.get("Accept"), table_ok=False)
        if t.subresource and subresource_kind(t.kind, t.subresource)[2] != t.kind.kind:
            obj = await self._subresource_body(request, t)  # deployments/scale: a Scale
        else:
            obj = await self._object_body(request, t)
            check_name(t, obj)
        q = request.query
        assert t.name is not None
        updated, warnings = await self.registry.update(
            t.kind, t.namespace, t.name, obj, subresource=t.subresource, dry_run=dry_run(request),
            field_manager=field_manager(request), field_validation=field_validation(q))
        return respond(updated, neg, 200, warnings)

    async def _patch(self, request: web.Request, t: Target) -> web.StreamResponse:
        neg = negotiation.negotiate_object(request.headers.get("Accept"), table_ok=False)
        patch_type = request.content_type
        if patch_type not in negotiation.PATCH_TYPES:
            raise APIError(415, "UnsupportedMediaType",
                           f'the body of the request was in an unknown format - accepted media types '
                           f'include: {", ".join(sorted(negotiation.PATCH_TYPES))} (got "{patch_type}")')
        q = request.query
        apply = patch_type == "application/apply-patch+yaml"
        force = _bool(q, "force")
        if apply and not q.get("fieldManager"):
            raise bad_request("PATCH, application/apply-patch+yaml requires fieldManager parameter")
        manager = field_manager(request)
        if force and not apply:
            raise bad_request("force: Invalid value: true: may not be specified for non-apply patch")
        body = await self._read_body(request)
        assert t.name is not None
        obj, created, warnings = await self.registry.patch(
            t.kind, t.namespace, t.name, patch_type, body, subresource=t.subresource,
            dry_run=dry_run(request), field_manager=manager, force=force,
            field_validation=field_validation(q))
        return respond(obj, neg, 201 if created else 200, warnings)

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        body = await self._read_body(request) if request.body_exists else b""
        if not body.strip():
            return {}
        options = negotiation.decode_body(request.content_type, body)
        if options.get("kind", "DeleteOptions") != "DeleteOptions":
            raise bad_request(f'expected DeleteOptions in the body, got kind "{options.get("kind")}"')
        return options

    async def _delete(self, request: web.Request, t: Target) -> web.StreamResponse:
        neg = negotiation.negotiate_object(request.headers.get("Accept"), table_ok=False)
        options = await self._delete_options(request)
        for key in ("gracePeriodSeconds",):
            if key in request.query:
                options[key] = _int(request.query, key)
        if "propagationPolicy" in request.query:
            options["propagationPolicy"] = request.query["propagationPolicy"]
        assert t.name is not None
        obj = await self.registry.delete(t.kind, t.namespace, t.name, options=options,
                                         dry_run=dry_run(request, options))
        return respond(obj, neg)

    async def _deletecollection(self, request: web.Request, t: Target) -> web.StreamResponse:
        neg = negotiation.negotiate_object(request.headers.get("Accept"), table_ok=False)
        options = await self._delete_options(request)
        label, field = self._selectors(request, t)
        result = await self.registry.delete_collection(t.kind, t.namespace, label_selector=label,
                                                       field_selector=field,
                                                       dry_run=dry_run(request, options))
        return respond(result, neg)


def status_response(err: APIError, warnings: list[str] | None = None) -> web.Response:
    headers = warning_headers(warnings or [])
    headers["Content-Type"] = "application/json"
    return web.Response(body=json.dumps(err.status()).encode(), status=err.code, headers=headers)
