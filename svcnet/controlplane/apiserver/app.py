"""The apiserver's aiohttp application: routing, authentication, errors as Status, metrics.

URL space (kube-apiserver's):

    /version /healthz /livez /readyz[/CHECK] /metrics     (health.py)
    /api  /api/v1                              legacy or aggregated discovery
    /apis /apis/GROUP /apis/GROUP/VERSION
    /openapi/v3  /openapi/v3/api/v1  /openapi/v3/apis/GROUP/VERSION
    /api/v1/[namespaces/NS/]PLURAL[/NAME[/SUBRESOURCE]]
    /apis/GROUP/VERSION/[namespaces/NS/]PLURAL[/NAME[/SUBRESOURCE]]

Resource paths are parsed here (`parse_resource_path`) against the kinds table, because
`/api/v1/namespaces/X/…` is either namespace X's subresource or a namespaced
collection, which a plain route pattern cannot tell apart. Every failure leaves as a
`Status` object: `APIError` from anywhere below, 404 for unknown paths, 500 with a log
line for bugs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from svcnet import __version__
from svcnet.controlplane.apiserver import discovery, health, negotiation
from svcnet.controlplane.apiserver.auth import PUBLIC_PATHS, Tokens, User, authorize
from svcnet.controlplane.apiserver.handlers import (
    ResourceHandlers, Target, metric_verb, respond, status_response, verb_of,
)
from svcnet.controlplane.apiserver.metrics import APIServerMetrics
from svcnet.controlplane.apiserver.openapi import ComponentsFn, OpenAPIv3
from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry.kinds import KINDS, KindInfo, kind_for

if TYPE_CHECKING:
    from svcnet.controlplane.registry.store import Registry

log = logging.getLogger(__name__)

KUBE_VERSION = (1, 32, 0)  # the Kubernetes API level svcnet emulates (kubectl 1.32's peer)
RouteLabels = tuple[str, str, str, str, str, str]  # verb, group, version, resource, subresource, scope
ROUTE_KEY: web.RequestKey[RouteLabels] = web.RequestKey("route")
USER_KEY = web.RequestKey("user", User)
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def not_found_path() -> APIError:
    return APIError(404, "NotFound", "the server could not find the requested resource", {})


def version_info() -> dict[str, str]:
    major, minor, patch = KUBE_VERSION
    return {"major": str(major), "minor": str(minor),
            "gitVersion": f"v{major}.{minor}.{patch}+svcnet-{__version__}",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "cpython", "compiler": "svcnet", "platform": "linux/amd64"}


def parse_resource_path(group: str, version: str, tail: str, kinds: Sequence[KindInfo] = KINDS) -> Target:
    """`[namespaces/NS/]PLURAL[/NAME[/SUB]]` under a group-version, or 404."""
    segs = [s for s in tail.split("/")]
    if not segs or any(s == "" for s in segs):
        raise not_found_path()
    namespace: str | None = None
    if segs[0] == "namespaces" and len(segs) >= 3 and segs[2] not in NAMESPACE_SUBRESOURCES:
        namespace, segs = segs[1], segs[2:]
    if len(segs) > 3:
        raise not_found_path()
    plural = segs[0]
    kind = kind_for(group, version, plural) if kinds is KINDS else next(
        (k for k in kinds if (k.group, k.version, k.plural) == (group, version, plural)), None)
    if kind is None:
        raise not_found_path()
    if namespace is not None and not kind.namespaced:
        raise not_found_path()
    name = segs[1] if len(segs) > 1 else None
    sub = segs[2] if len(segs) > 2 else None
    if sub is not None and sub not in kind.subresources:
        raise not_found_path()
    if kind.namespaced and name is not None and namespace is None:
        raise not_found_path()  # a namespaced object is only addressable inside its namespace
    return Target(kind, namespace, name, sub)


@dataclass
class ServerState:
    """What the handlers share; `stopping` ends watch streams on shutdown."""

    registry: Registry
    tokens: Tokens
    server_address: str
    components: ComponentsFn
    metrics: APIServerMetrics = field(default_factory=APIServerMetrics)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _openapi: OpenAPIv3 | None = None

    @property
    def openapi(self) -> OpenAPIv3:
        if self._openapi is None:  # built on first use: schema extraction takes a moment
            self._openapi = OpenAPIv3(KINDS, self.components)
        return self._openapi


STATE_KEY = web.AppKey("state", ServerState)


@web.middleware
async def errors_auth_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, run the handler, turn every failure into a Status, count the request."""
    state = request.app[STATE_KEY]
    start = time.perf_counter()
    request[ROUTE_KEY] = ("", "", "", "", "", "")
    code = 500
    try:
        if request.path not in PUBLIC_PATHS:
            request[USER_KEY] = state.tokens.authenticate(request.headers.get("Authorization"))
        response = await handler(request)
        code = response.status
        return response
    except APIError as err:
        code = err.code
        return status_response(err)
    except web.HTTPNotFound:
        code = 404
        return status_response(not_found_path())
    except web.HTTPMethodNotAllowed as exc:
        code = 405
        return status_response(APIError(405, "MethodNotAllowed",
                                        f"the server does not allow this method on the requested "
                                        f"resource ({exc.method})"))
    except web.HTTPRequestEntityTooLarge:
        code = 413
        return status_response(negotiation.too_large())
    except (asyncio.CancelledError, ConnectionResetError):
        code = 499
        raise
    except Exception as exc:
        log.exception("internal error method=%s path=%s", request.method, request.path)
        return status_response(APIError(500, "InternalError", f"Internal error occurred: {exc}"))
    finally:
        verb, group, version, resource, sub, scope = request[ROUTE_KEY]
        if resource:
            long_running = verb == "WATCH"
            state.metrics.observe(verb, group, version, resource, sub, scope, code,
                                  None if long_running else time.perf_counter() - start)


# --- non-resource endpoints --------------------------------------------------------------

async def version(_: web.Request) -> web.Response:
    return web.json_response(version_info())


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE_KEY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def api_root(request: web.Request) -> web.Response:
    neg = negotiation.negotiate_discovery(request.headers.get("Accept"))
    if neg.discovery_version:
        return respond(discovery.aggregated(KINDS, core=True, version=neg.discovery_version), neg)
    return respond(discovery.api_versions(request.app[STATE_KEY].server_address), neg)


async def apis_root(request: web.Request) -> web.Response:
    neg = negotiation.negotiate_discovery(request.headers.get("Accept"))
    if neg.discovery_version:
        return respond(discovery.aggregated(KINDS, core=False, version=neg.discovery_version), neg)
    return respond(discovery.api_group_list(KINDS), neg)


async def api_group(request: web.Request) -> web.Response:
    versions = discovery.group_versions(KINDS).get(request.match_info["group"])
    if not versions or not request.match_info["group"]:
        raise not_found_path()
    return respond(discovery.api_group(request.match_info["group"], versions), negotiation.Negotiated())


async def resource_list(request: web.Request) -> web.Response:
    doc = discovery.api_resource_list(KINDS, request.match_info.get("group", ""),
                                      request.match_info["version"])
    if doc is None:
        raise not_found_path()
    return respond(doc, negotiation.Negotiated())


async def openapi_index(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE_KEY].openapi.index,
                        headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"})


async def openapi_document(request: web.Request) -> web.Response:
    doc = request.app[STATE_KEY].openapi.documents.get(request.match_info["gv"])
    if doc is None:
        raise not_found_path()
    if request.query.get("hash") == doc.hash:
        cache = "public, immutable"
    else:
        cache = "no-cache, private"
    return web.Response(body=doc.body, headers={"Content-Type": "application/json", "Cache-Control": cache,
                                                "Etag": f'"{doc.hash}"'})


# --- resources ---------------------------------------------------------------------------

def resource_handler(handlers: ResourceHandlers, core: bool) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        group = "" if core else request.match_info["group"]
        version = request.match_info["version"]
        target = parse_resource_path(group, version, request.match_info["tail"])
        verb = verb_of(request.method, target, request.query)
        request[ROUTE_KEY] = (metric_verb(verb, request.content_type), group, version, target.kind.plural,
                            target.subresource or "", target.scope if target.name is None else "resource")
        authorize(request[USER_KEY], verb, target.kind.plural, group, target.namespace, target.name,
                  target.subresource)
        return await handlers.handle(request, target, verb)

    return handle


def build_app(registry: Registry, tokens: Tokens, server_address: str, components: ComponentsFn) -> web.Application:
    """The whole apiserver as an aiohttp Application (no sockets: the caller runs it)."""
    # aiohttp's own limit sits just above ours so that our check answers with a Status
    app = web.Application(middlewares=[errors_auth_metrics],
                          client_max_size=negotiation.MAX_BODY_BYTES + 1024)
    state = ServerState(registry, tokens, server_address, components)
    app[STATE_KEY] = state
    handlers = ResourceHandlers(registry, state.metrics, state.stopping)

    async def on_shutdown(_: web.Application) -> None:
        state.stopping.set()

    app.on_shutdown.append(on_shutdown)
    r = app.router
    health.add_routes(r, registry.storage, state.stopping)
    r.add_get("/version", version)
    r.add_get("/metrics", metrics)
    r.add_get("/api", api_root)
    r.add_get("/apis", apis_root)
    r.add_get("/openapi/v3", openapi_index)
    r.add_get("/openapi/v3/{gv:.+}", openapi_document)
    r.add_get("/api/{version}", resource_list)
    r.add_get("/apis/{group}", api_group)
    r.add_get("/apis/{group}/{version}", resource_list)
    core = resource_handler(handlers, core=True)
    named = resource_handler(handlers, core=False)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        r.add_route(method, "/api/{version}/{tail:.+}", core)
        r.add_route(method, "/apis/{group}/{version}/{tail:.+}", named)
    return app


def state_of(app: web.Application) -> ServerState:
    return app[STATE_KEY]

