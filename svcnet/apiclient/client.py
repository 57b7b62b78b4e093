"""RestClient: Kubernetes' REST verbs over a `Transport`, for any `Resource`.

    client = RestClient.from_kubeconfig(None)          # as kubectl would find it
    svc = await client.get(SERVICES, "web", "default")
    page = await client.list(SERVICES, label_selector={"app": "web"}, limit=100)
    items = await client.list_all(ENDPOINT_SLICES, "default")
    async with client.watch(SERVICES, resource_version=rv, timeout_seconds=300) as w:
        async for event_type, obj in w:
            ...

Semantics follow the API conventions, not any one server:

* Failures raise typed errors from `errors.py`, built from the Status the server
  sends (`NotFound`, `Conflict`, `Invalid` with causes, ...). Network failures raise
  `TransportError`. A 429, or a 5xx that carries `Retry-After`, is retried up to
  `max_retries` times after the delay the server asks for (client-go `checkWait`).
* List items come back with `apiVersion` and `kind` filled in (kube-apiserver omits
  them inside lists), so objects look the same whether listed or watched.
* `list_all` follows `continue` tokens; every page is part of the first page's
  snapshot, and the merged List carries that page's resourceVersion. A continue
  token that expired (410) falls back to one unpaginated list at the requested
  resourceVersion, as client-go's pager does.
* `watch()` streams newline-delimited JSON events as `WatchEvent(type, object)`:
  ADDED, MODIFIED, DELETED and BOOKMARK. An `ERROR` event ends the watch by raising
  its typed error (`Expired` for 410). A clean end of the stream (the server's
  `timeoutSeconds`) ends the iteration; a broken stream raises `TransportError`.
  Watch paths use `?watch=true` on the collection, as client-go does.
* **Several servers** (`servers=`, or a kubeconfig's `svcnet.io/servers` extension):
  requests go to the current server; when it cannot be reached the client moves to
  the next and stays there. A request that never left (connection refused, connect
  timeout) is re-sent to the next server whatever its verb; a GET (watches included)
  also after a reset or a lost answer, as client-go retries only GETs on those. A
  write whose answer was lost raises `TransportError`: it may have been applied, so
  only the caller can tell whether to repeat it (the next request goes to the next
  server). HTTP errors never move the client: every server would answer the same.
  A Reflector whose watch broke thus resumes from its last resourceVersion on the next
  server, which shares the store, so nothing is lost or delivered twice. A server gone
  without a reset is noticed too: connecting is bounded to 10 s, and a watch that
  allows bookmarks and stays silent for 90 s counts as broken.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import platform
from enum import Enum
from typing import Any, Awaitable, Callable, Mapping

from yarl import URL

from svcnet.apiclient import errors
from svcnet.apiclient.kubeconfig import KubeConfig, load_config
from svcnet.apiclient.objects import Obj, meta
from svcnet.apiclient.resources import Resource
from svcnet.apiclient.transport import AiohttpTransport, Request, Response, Transport
from svcnet.apiclient.watch import Watch, WatchEvent

__all__ = ["PatchType", "RestClient", "Watch", "WatchEvent", "label_selector_from_spec", "selector_string"]

log = logging.getLogger(__name__)

JSON = "application/json"
USER_AGENT = f"svcnet/0.1 ({platform.system().lower()}/{platform.machine()})"
# How long a watch may be silent beyond its timeoutSeconds before it counts as dead.
WATCH_READ_GRACE = 30.0
MAX_RETRY_AFTER = 30.0
MULTI_SERVER_CONNECT_TIMEOUT = 10.0  # seconds; see RestClient.connect_timeout
MULTI_SERVER_WATCH_SILENCE = 90.0  # seconds without a byte on a watch allowing bookmarks

Selector = str | Mapping[str, str] | None
Sleep = Callable[[float], Awaitable[None]]


class PatchType(str, Enum):
    """The four patch content types the API accepts."""

    JSON = "application/json-patch+json"
    MERGE = "application/merge-patch+json"
    STRATEGIC = "application/strategic-merge-patch+json"
    APPLY = "application/apply-patch+yaml"  # server-side apply; needs field_manager


def selector_string(selector: Selector) -> str | None:
    """A label/field selector as the query string wants it; dicts become `k=v,k2=v2`."""
    if selector is None:
        return None
    if isinstance(selector, str):
        return selector or None
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or None


def label_selector_from_spec(spec: Mapping[str, Any]) -> str:
    """A metav1.LabelSelector (`matchLabels`/`matchExpressions`) as a selector string."""
    parts = [f"{k}={v}" for k, v in sorted((spec.get("matchLabels") or {}).items())]
    for expr in spec.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], sorted(expr.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise ValueError(f"label selector operator {op!r} is not one of In, NotIn, Exists, DoesNotExist")
    return ",".join(parts)


class RestClient:
    """Async Kubernetes REST client; see the module docstring for the semantics."""

    def __init__(self, server: str, *, transport: Transport | None = None,
                 config: KubeConfig | None = None, timeout: float | None = 30.0,
                 max_retries: int = 3, sleep: Sleep = asyncio.sleep,
                 user_agent: str = USER_AGENT, servers: tuple[str, ...] | list[str] = ()) -> None:
        first = server.rstrip("/")
        listed = [u.rstrip("/") for u in (servers or (config.servers if config else ()))]
        self.servers: tuple[str, ...] = (first, *[u for u in dict.fromkeys(listed) if u != first])
        self._current = 0
        self.config = config
        self.default_namespace = config.namespace if config else "default"
        self.timeout = timeout
        # Reaching a server (TCP and TLS handshakes) is bounded apart from the whole
        # exchange: with several servers, one that vanished without a reset (a host gone)
        # costs this long, and counts as never sent, so even a write moves on.
        self.connect_timeout = timeout if len(self.servers) < 2 or timeout is None else min(
            timeout, MULTI_SERVER_CONNECT_TIMEOUT)
        self.max_retries = max_retries
        self._sleep = sleep
        self._user_agent = user_agent
        self._transport: Transport = transport or AiohttpTransport(
            config.ssl_context() if config else None,
            server_hostname=config.tls_server_name if config else None)

    @property
    def server(self) -> str:
        """The server requests go to now (the first of `servers` that answered last)."""
        return self.servers[self._current]

    @classmethod
    def from_config(cls, config: KubeConfig, **kwargs: Any) -> RestClient:
        return cls(config.server, config=config, **kwargs)

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, *, context: str | None = None,
                        **kwargs: Any) -> RestClient:
        """A client for the kubeconfig kubectl would use (or in-cluster credentials)."""
        return cls.from_config(load_config(path, context=context), **kwargs)

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- verbs -----------------------------------------------------------------

    async def get(self, resource: Resource, name: str, namespace: str | None = None, *,
                  resource_version: str | None = None, subresource: str | None = None) -> Obj:
        path = self._path(resource, namespace, name, subresource)
        return await self._json("GET", path, {"resourceVersion": resource_version},
                                what=f"get {resource.plural} {name!r}")

    async def list(self, resource: Resource, namespace: str | None = None, *,
                   label_selector: Selector = None, field_selector: Selector = None,
                   limit: int | None = None, continue_token: str | None = None,
                   resource_version: str | None = None,
                   resource_version_match: str | None = None) -> Obj:
        """One page of a list: the `<Kind>List` object. `namespace=None` lists all namespaces."""
        params = {
            "labelSelector": selector_string(label_selector),
            "fieldSelector": selector_string(field_selector),
            "limit": str(limit) if limit else None,
            "continue": continue_token or None,
            "resourceVersion": resource_version,
            "resourceVersionMatch": resource_version_match,
        }
        result = await self._json("GET", resource.path(namespace), params,
                                  what=f"list {resource.plural}")
        for item in result.get("items") or []:
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        return result

    async def list_all(self, resource: Resource, namespace: str | None = None, *,
                       label_selector: Selector = None, field_selector: Selector = None,
                       page_size: int | None = 500, resource_version: str | None = None,
                       resource_version_match: str | None = None) -> Obj:
        """Every page of a list, merged into one List with the first page's resourceVersion."""
        ls, fs = label_selector, field_selector
        first = await self.list(resource, namespace, limit=page_size, resource_version=resource_version,
                                resource_version_match=resource_version_match,
                                label_selector=ls, field_selector=fs)
        items = list(first.get("items") or [])
        token = (first.get("metadata") or {}).get("continue")
        while token:
            try:
                # Later pages name no resourceVersion: the token pins the snapshot, and the
                # API refuses a resourceVersion next to a continue token.
                page = await self.list(resource, namespace, limit=page_size, continue_token=token,
                                       label_selector=ls, field_selector=fs)
            except errors.Gone:
                log.info("continue token expired resource=%s: listing again without pages",
                         resource.plural)
                return await self.list(resource, namespace, resource_version=resource_version,
                                       resource_version_match=resource_version_match,
                                       label_selector=ls, field_selector=fs)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
        merged = dict(first)
        merged["metadata"] = {k: v for k, v in (first.get("metadata") or {}).items()
                              if k not in ("continue", "remainingItemCount")}
        merged["items"] = items
        return merged

    async def create(self, resource: Resource, obj: Obj, namespace: str | None = None, *,
                     subresource: str | None = None, dry_run: bool = False,
                     field_manager: str | None = None) -> Obj:
        """POST a new object. With `subresource` (e.g. `binding`, `eviction`) the body is
        posted to that subresource of the object named by its metadata.name, as client-go's
        `Pods(ns).Bind(binding)` does."""
        ns = self._namespace_for(resource, obj, namespace)
        name = _name_for_message(obj)
        path = (self._path(resource, ns, str(meta(obj).get("name") or ""), subresource)
                if subresource else resource.path(ns))
        return await self._json("POST", path, self._write_params(dry_run, field_manager),
                                body=obj, what=f"create {resource.plural} {name!r}")

    async def update(self, resource: Resource, obj: Obj, namespace: str | None = None, *,
                     dry_run: bool = False, field_manager: str | None = None) -> Obj:
        """PUT the whole object; a stale metadata.resourceVersion gives `Conflict`."""
        return await self._put(resource, obj, namespace, None, dry_run, field_manager)

    async def update_status(self, resource: Resource, obj: Obj, namespace: str | None = None, *,
                            dry_run: bool = False, field_manager: str | None = None) -> Obj:
        """PUT to the `status` subresource: only `.status` of the object changes."""
        return await self._put(resource, obj, namespace, "status", dry_run, field_manager)

    async def patch(self, resource: Resource, name: str, patch: Any, namespace: str | None = None, *,
                    patch_type: PatchType = PatchType.STRATEGIC, subresource: str | None = None,
                    dry_run: bool = False, field_manager: str | None = None,
                    force: bool | None = None) -> Obj:
        """PATCH with any of the four patch types; `patch` is the document (dict/list/bytes)."""
        if patch_type is PatchType.APPLY and not field_manager:
            raise ValueError("server-side apply needs field_manager= (the API requires fieldManager)")
        if patch_type is PatchType.JSON and not isinstance(patch, (list, bytes, str)):
            raise ValueError("a JSON patch is a list of operations")
        params = self._write_params(dry_run, field_manager)
        if force is not None:
            if patch_type is not PatchType.APPLY:
                raise ValueError("force= is only meaningful for server-side apply")
            params["force"] = "true" if force else "false"
        path = self._path(resource, namespace, name, subresource)
        return await self._json("PATCH", path, params, body=patch, content_type=patch_type.value,
                                what=f"patch {resource.plural} {name!r}")

    async def delete(self, resource: Resource, name: str, namespace: str | None = None, *,
                     grace_period_seconds: int | None = None,
                     propagation_policy: str | None = None,
                     preconditions: Mapping[str, str] | None = None,
                     dry_run: bool = False) -> Obj:
        """DELETE; returns what the server returns (the object, or a Success Status)."""
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if preconditions:
            options["preconditions"] = dict(preconditions)
        if dry_run:
            options["dryRun"] = ["All"]
        return await self._json("DELETE", self._path(resource, namespace, name), {}, body=options,
                                what=f"delete {resource.plural} {name!r}")

    async def delete_collection(self, resource: Resource, namespace: str | None = None, *,
                                label_selector: Selector = None, field_selector: Selector = None,
                                propagation_policy: str | None = None, dry_run: bool = False) -> Obj:
        """DELETE on the collection: every object the selectors match (all, without any)."""
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if dry_run:
            options["dryRun"] = ["All"]
        params = {"labelSelector": selector_string(label_selector),
                  "fieldSelector": selector_string(field_selector)}
        return await self._json("DELETE", resource.path(namespace), params, body=options,
                                what=f"delete {resource.plural}")

    def watch(self, resource: Resource, namespace: str | None = None, *,
              resource_version: str | None = None, label_selector: Selector = None,
              field_selector: Selector = None, timeout_seconds: int | None = None,
              allow_watch_bookmarks: bool = True,
              send_initial_events: bool | None = None) -> Watch:
        """A watch stream; use as `async with client.watch(...) as w: async for t, o in w`."""
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "labelSelector": selector_string(label_selector),
            "fieldSelector": selector_string(field_selector),
            "timeoutSeconds": str(timeout_seconds) if timeout_seconds is not None else None,
            "allowWatchBookmarks": "true" if allow_watch_bookmarks else None,
        }
        if send_initial_events is not None:
            # Streaming lists: only valid together with resourceVersionMatch=NotOlderThan.
            params["sendInitialEvents"] = "true" if send_initial_events else "false"
            params["resourceVersionMatch"] = "NotOlderThan"
        read_timeout = timeout_seconds + WATCH_READ_GRACE if timeout_seconds else None
        if len(self.servers) > 1 and allow_watch_bookmarks:
            # With somewhere else to go, a server silent for longer than its bookmarks
            # allow (svcnet: every 10 s, kube: about every minute) counts as gone.
            read_timeout = min(read_timeout or MULTI_SERVER_WATCH_SILENCE, MULTI_SERVER_WATCH_SILENCE)
        # No overall deadline (the server ends the watch at timeoutSeconds), but bounded
        # connecting, and bounded silence so a vanished server is noticed.
        request = self._request("GET", resource.path(namespace), params, None, JSON, timeout=None,
                                connect_timeout=self.connect_timeout, read_timeout=read_timeout, stream=True)
        return Watch(self.send, request, f"watch {resource.plural}")

    # -- plumbing --------------------------------------------------------------

    def _path(self, resource: Resource, namespace: str | None, name: str,
              subresource: str | None = None) -> str:
        if not name:
            raise ValueError(f"{resource.plural}: a name is required")
        if resource.namespaced and not namespace:
            raise ValueError(f"{resource.plural} are namespaced: pass namespace= "
                             f"(the kubeconfig's default is {self.default_namespace!r})")
        path = resource.path(namespace if resource.namespaced else None, name)
        return f"{path}/{subresource}" if subresource else path

    def _namespace_for(self, resource: Resource, obj: Obj, namespace: str | None) -> str | None:
        if not resource.namespaced:
            return None
        in_body = meta(obj).get("namespace")
        if namespace and in_body and namespace != in_body:
            raise ValueError(f"the namespace of the object ({in_body}) does not match the "
                             f"namespace on the request ({namespace})")
        ns = namespace or in_body
        if not ns:
            raise ValueError(f"{resource.plural} are namespaced: set metadata.namespace or pass "
                             "namespace=")
        return str(ns)

    async def _put(self, resource: Resource, obj: Obj, namespace: str | None,
                   subresource: str | None, dry_run: bool, field_manager: str | None) -> Obj:
        name = str(meta(obj).get("name") or "")
        ns = self._namespace_for(resource, obj, namespace)
        return await self._json("PUT", self._path(resource, ns, name, subresource),
                                self._write_params(dry_run, field_manager), body=obj,
                                what=f"update {resource.plural} {name!r}")

    @staticmethod
    def _write_params(dry_run: bool, field_manager: str | None) -> dict[str, str | None]:
        return {"dryRun": "All" if dry_run else None, "fieldManager": field_manager}

    def _request(self, method: str, path: str, params: Mapping[str, str | None], body: Any,
                 content_type: str, *, timeout: float | None, read_timeout: float | None = None,
                 connect_timeout: float | None = None, stream: bool = False) -> Request:
        url = URL(self.server + path)
        query = {k: v for k, v in params.items() if v is not None and v != ""}
        if query:
            url = url.with_query(query)
        headers = {"Accept": JSON, "User-Agent": self._user_agent}
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else (
                body.encode() if isinstance(body, str) else json.dumps(body).encode())
            headers["Content-Type"] = content_type
        auth = self._authorization()
        if auth:
            headers["Authorization"] = auth
        return Request(method, str(url), headers, data, timeout=timeout, read_timeout=read_timeout,
                       connect_timeout=connect_timeout, stream=stream)

    def _authorization(self) -> str | None:
        if self.config is None:
            return None
        token = self.config.bearer_token()
        if token:
            return f"Bearer {token}"
        if self.config.username is not None:
            raw = f"{self.config.username}:{self.config.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None

    async def _json(self, method: str, path: str, params: Mapping[str, str | None], *,
                    body: Any = None, content_type: str = JSON, what: str) -> Obj:
        request = self._request(method, path, params, body, content_type, timeout=self.timeout,
                                connect_timeout=self.connect_timeout)
        resp = await self.send(request, what)
        try:
            data = await resp.read()
        finally:
            await resp.close()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError as e:
            raise errors.DecodeError(f"{what}: the response is not JSON: {e}") from None
        if not isinstance(decoded, dict):
            raise errors.DecodeError(f"{what}: expected a JSON object, got {type(decoded).__name__}")
        return decoded

    async def send(self, request: Request, what: str) -> Response:
        """Send, retrying where the server asks to; a successful response is returned open."""
        attempt = 0
        tried: set[str] = set()
        while True:
            try:
                resp = await self._transport.send(request)
            except errors.TransportError as e:
                moved = self._fail_over(request, e, tried)
                if moved is None:
                    raise
                request = moved
                continue
            if 200 <= resp.status < 300:
                return resp
            try:
                body = await resp.read()
            finally:
                await resp.close()
            err = errors.from_response(resp.status, body, what=what,
                                       retry_after=_retry_after_header(resp.headers))
            retryable = resp.status == 429 or (resp.status >= 500 and err.retry_after is not None)
            if not retryable or attempt >= self.max_retries:
                raise err
            attempt += 1
            delay = min(err.retry_after if err.retry_after is not None else 1.0, MAX_RETRY_AFTER)
            log.info("retrying after the server asked to what=%s code=%d delay=%.1fs attempt=%d",
                     what, resp.status, delay, attempt)
            await self._sleep(delay)


    def _fail_over(self, request: Request, error: errors.TransportError, tried: set[str]) -> Request | None:
        """After `error` from the server `request` went to: move to the next server, and
        return the request re-addressed there if it may be re-sent (see the module doc)."""
        url = URL(request.url)
        origin = str(url.origin())  # as strings: URL equality tells ":443" from no port
        base = next((s for s in self.servers if str(URL(s).origin()) == origin), None)
        if base is None or len(self.servers) < 2:
            return None
        tried.add(base)
        if self.server == base:  # another request may have moved on already
            self._current = (self._current + 1) % len(self.servers)
            log.warning("apiserver unreachable server=%s error=%s: switching to %s", base, error,
                        self.server)
        if self.server in tried:
            return None  # every server failed this request
        if not (error.connect_failed or request.method == "GET"):
            return None  # a write may have landed: the caller decides (the next one goes on)
        to = URL(self.server)
        moved = url.with_scheme(to.scheme).with_host(to.raw_host or "").with_port(to.explicit_port)
        return dataclasses.replace(request, url=str(moved))


def _name_for_message(obj: Obj) -> str:
    m = meta(obj)
    return str(m.get("name") or (str(m.get("generateName") or "") + "*"))


def _retry_after_header(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date; the API server sends seconds
