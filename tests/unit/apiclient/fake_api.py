"""A small in-memory Kubernetes API on aiohttp, for testing the client and reflector.

It is written to the API conventions the client relies on, not to any server's
internals: one global revision as resourceVersion; list at "" / "0" / N with
`limit`/`continue` pages that all read the first page's snapshot; watch from an RV
(events strictly after it), with synthetic ADDED events for RV unset or "0"; 410
Expired as an in-stream ERROR event (or, with `watch_410_as_http`, as the HTTP
status) once history is compacted; BOOKMARK events; chunked newline-delimited
JSON, optionally split mid-event; and faults a test can inject: broken watch
connections, queued error responses, a required bearer token.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from svcnet.apiclient.objects import Obj, key_of, labels_of
from svcnet.apiclient.resources import ALL, Resource


@dataclass
class Event:
    rev: int
    resource: Resource
    type: str
    obj: Obj


@dataclass
class _Watcher:
    resource: Resource
    namespace: str | None
    labels: dict[str, str]
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    request: web.Request | None = None


def status(code: int, reason: str, message: str, **details: Any) -> Obj:
    st: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}
    if details:
        st["details"] = details
    return st


class FakeApi:
    def __init__(self, *, token: str | None = None, watch_410_as_http: bool = False,
                 split_events: bool = False, bookmark_on_close: bool = True) -> None:
        self.rev = 100  # not starting at 1 makes "RV is opaque" bugs visible
        self.history: list[Event] = []
        self.compacted_rev = 0  # events at or below this revision are gone
        self.token = token
        self.watch_410_as_http = watch_410_as_http
        self.split_events = split_events
        self.bookmark_on_close = bookmark_on_close
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        # queued error answers: (method, watch?, code, body, headers); watch None = any GET
        self.failures: list[tuple[str, bool | None, int, Obj, dict[str, str]]] = []
        self.paused = False  # while set, open watches receive nothing (a stalled connection)
        self.watchers: list[_Watcher] = []
        self._by_plural = {r.plural: r for r in ALL}

    # -- state -------------------------------------------------------------------

    def state_at(self, resource: Resource, rev: int) -> dict[str, Obj]:
        if rev < self.compacted_rev:
            raise ValueError("compacted")
        out: dict[str, Obj] = {}
        for ev in self.history:
            if ev.rev > rev:
                break
            if ev.resource != resource:
                continue
            if ev.type == "DELETED":
                out.pop(key_of(ev.obj), None)
            else:
                out[key_of(ev.obj)] = ev.obj
        return out

    def current(self, resource: Resource) -> dict[str, Obj]:
        return self.state_at(resource, self.rev)

    def _record(self, resource: Resource, etype: str, obj: Obj) -> Obj:
        self.rev += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rev)
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        ev = Event(self.rev, resource, etype, obj)
        self.history.append(ev)
        if not self.paused:
            for w in self.watchers:
                w.queue.put_nowait(ev)
        return obj

    def create(self, resource: Resource, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        m = obj.setdefault("metadata", {})
        if resource.namespaced:
            m.setdefault("namespace", "default")
        if not m.get("name") and m.get("generateName"):
            m["name"] = m["generateName"] + uuid.uuid4().hex[:5]
        m.setdefault("uid", str(uuid.uuid4()))
        m.pop("resourceVersion", None)
        return self._record(resource, "ADDED", obj)

    def update(self, resource: Resource, obj: Obj) -> Obj:
        return self._record(resource, "MODIFIED", obj)

    def delete(self, resource: Resource, key: str) -> Obj:
        return self._record(resource, "DELETED", self.current(resource)[key])

    def compact(self, rev: int | None = None) -> None:
        self.compacted_rev = self.rev if rev is None else rev

    async def break_watches(self) -> None:
        """Cut every watch connection mid-stream, as a crash or network fault would."""
        for w in list(self.watchers):
            if w.request is not None and w.request.transport is not None:
                w.request.transport.abort()
            w.queue.put_nowait(None)
        await asyncio.sleep(0)

    def bookmark(self) -> None:
        for w in self.watchers:
            w.queue.put_nowait(Event(self.rev, w.resource, "BOOKMARK", {}))

    def fail_next(self, method: str, code: int, body: Obj, headers: dict[str, str] | None = None,
                  *, watch: bool | None = None) -> None:
        self.failures.append((method, watch, code, body, headers or {}))

    # -- HTTP --------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        for prefix in ("/api/{version}", "/apis/{group}/{version}"):
            app.router.add_route("*", prefix + "/{plural}", self._collection)
            app.router.add_route("*", prefix + "/namespaces/{ns}/{plural}", self._collection)
            app.router.add_route("*", prefix + "/namespaces/{ns}/{plural}/{name}", self._item)
            app.router.add_route("*", prefix + "/namespaces/{ns}/{plural}/{name}/{sub}", self._item)
            app.router.add_route("*", prefix + "/{plural}/{name}", self._item)
        return app

    def _pre(self, request: web.Request) -> tuple[Resource, web.Response | None]:
        self.requests.append((request.method, request.path, dict(request.query)))
        resource = self._by_plural[request.match_info["plural"]]
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return resource, web.json_response(status(401, "Unauthorized", "Unauthorized"), status=401)
        is_watch = request.query.get("watch") in ("true", "1")
        for i, (method, watch, code, body, headers) in enumerate(self.failures):
            if method == request.method and watch in (None, is_watch):
                del self.failures[i]
                return resource, web.json_response(body, status=code, headers=headers)
        return resource, None

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        resource, early = self._pre(request)
        if early is not None:
            return early
        ns = request.match_info.get("ns")
        if request.method == "POST":
            body = await request.json()
            if ns:
                body.setdefault("metadata", {}).setdefault("namespace", ns)
            if key_of(body) in self.current(resource) and body["metadata"].get("name"):
                name = body["metadata"]["name"]
                return web.json_response(status(409, "AlreadyExists", f'{resource.plural} "{name}" already exists',
                                                name=name, kind=resource.plural), status=409)
            return web.json_response(self.create(resource, body), status=201)
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, resource, ns)
        return self._list(request, resource, ns)

    def _list(self, request: web.Request, resource: Resource, ns: str | None) -> web.Response:
        q = request.query
        rv_param, limit, token = q.get("resourceVersion", ""), int(q.get("limit") or 0), q.get("continue")
        start = ""
        if token:
            if rv_param not in ("", "0"):
                return web.json_response(status(400, "BadRequest", "specifying resource version is not "
                                                "allowed when using continue"), status=400)
            decoded = json.loads(base64.b64decode(token))
            at, start = decoded["rv"], decoded["start"]
        elif rv_param in ("", "0") or not limit:
            at = self.rev  # "not older than" and "any" both get the latest here
            if rv_param not in ("", "0") and int(rv_param) > self.rev:
                return web.json_response(status(504, "Timeout", f"Too large resource version: {rv_param}, "
                                                f"current: {self.rev}"), status=504)
        else:
            at = int(rv_param)  # with a limit, an RV means "exactly"
        try:
            state = self.state_at(resource, at)
        except ValueError:
            msg = ("The provided continue parameter is too old to display a consistent list result."
                   if token else "The resourceVersion for the provided list is too old.")
            return web.json_response(status(410, "Expired", msg), status=410)
        items = [o for k, o in sorted(state.items()) if self._matches(o, ns, _labels(q.get("labelSelector")))
                 and k > start]
        meta: Obj = {"resourceVersion": str(at)}
        if limit and len(items) > limit:
            items = items[:limit]
            meta["continue"] = base64.b64encode(json.dumps({"rv": at, "start": key_of(items[-1])}).encode()).decode()
        # kube-apiserver leaves apiVersion/kind out of list items
        bare = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in items]
        return web.json_response({"kind": resource.kind + "List", "apiVersion": resource.api_version,
                                  "metadata": meta, "items": bare})

    def _matches(self, obj: Obj, ns: str | None, labels: dict[str, str]) -> bool:
        if ns and obj["metadata"].get("namespace") != ns:
            return False
        have = labels_of(obj)
        return all(have.get(k) == v for k, v in labels.items())

    async def _watch(self, request: web.Request, resource: Resource, ns: str | None) -> web.StreamResponse:
        q = request.query
        rv_param = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks") == "true"
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        labels = _labels(q.get("labelSelector"))
        expired = rv_param not in ("", "0") and int(rv_param) < self.compacted_rev
        if expired and self.watch_410_as_http:
            return web.json_response(status(410, "Expired", "too old resource version"), status=410)
        watcher = _Watcher(resource, ns, labels, request=request)
        backlog: list[Event] = []
        if not expired:
            if rv_param in ("", "0"):
                backlog = [Event(self.rev, resource, "ADDED", o) for o in self.current(resource).values()]
            else:
                backlog = [e for e in self.history if e.rev > int(rv_param) and e.resource == resource]
        self.watchers.append(watcher)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            if expired:
                await self._send(resp, {"type": "ERROR", "object": status(
                    410, "Expired", f"too old resource version: {rv_param} ({self.compacted_rev})")})
                return resp
            for ev in backlog:
                await self._send_event(resp, watcher, ev, bookmarks)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            while True:
                remaining = deadline - loop.time() if deadline else None
                if remaining is not None and remaining <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(watcher.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if ev is None:  # broken by break_watches()
                    return resp
                await self._send_event(resp, watcher, ev, bookmarks)
            if bookmarks and self.bookmark_on_close:
                await self._send_event(resp, watcher, Event(self.rev, resource, "BOOKMARK", {}), True)
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            self.watchers.remove(watcher)
        return resp

    async def _send_event(self, resp: web.StreamResponse, w: _Watcher, ev: Event, bookmarks: bool) -> None:
        if ev.type == "BOOKMARK":
            if bookmarks:
                await self._send(resp, {"type": "BOOKMARK", "object": {
                    "kind": w.resource.kind, "apiVersion": w.resource.api_version,
                    "metadata": {"resourceVersion": str(ev.rev)}}})
            return
        if ev.resource != w.resource or not self._matches(ev.obj, w.namespace, w.labels):
            return
        await self._send(resp, {"type": ev.type, "object": ev.obj})

    async def _send(self, resp: web.StreamResponse, doc: Obj) -> None:
        data = json.dumps(doc).encode() + b"\n"
        if self.split_events and len(data) > 4:
            cut = len(data) // 2
            await resp.write(data[:cut])
            await asyncio.sleep(0.001)  # a separate chunk on the wire
            await resp.write(data[cut:])
        else:
            await resp.write(data)

    async def _item(self, request: web.Request) -> web.StreamResponse:
        resource, early = self._pre(request)
        if early is not None:
            return early
        ns, name, sub = request.match_info.get("ns"), request.match_info["name"], request.match_info.get("sub")
        key = f"{ns}/{name}" if ns else name
        existing = self.current(resource).get(key)
        if existing is None and not (request.method == "PATCH"
                                     and request.content_type == "application/apply-patch+yaml"):
            return web.json_response(status(404, "NotFound", f'{resource.plural} "{name}" not found',
                                            name=name, kind=resource.plural), status=404)
        if request.method == "GET":
            return web.json_response(existing)
        if request.method == "DELETE":
            opts = await request.json() if request.can_read_body else {}
            pre = opts.get("preconditions") or {}
            assert existing is not None
            if pre.get("uid") and pre["uid"] != existing["metadata"]["uid"]:
                return web.json_response(status(409, "Conflict", "Precondition failed: UID in precondition: "
                                                f"{pre['uid']}, UID in object meta: {existing['metadata']['uid']}"),
                                         status=409)
            return web.json_response(self.delete(resource, key))
        body = await request.json()
        if request.method == "PUT":
            sent_rv = (body.get("metadata") or {}).get("resourceVersion")
            assert existing is not None
            if sent_rv and sent_rv != existing["metadata"]["resourceVersion"]:
                return web.json_response(status(409, "Conflict", f'Operation cannot be fulfilled on {resource.plural} '
                                                f'"{name}": the object has been modified; please apply your '
                                                "changes to the latest version and try again"), status=409)
            new = copy.deepcopy(existing)
            if sub == "status":
                new["status"] = body.get("status")
            else:
                new.update({k: v for k, v in body.items() if k != "status"})
                new["metadata"]["uid"] = existing["metadata"]["uid"]
            return web.json_response(self.update(resource, new))
        if request.method == "PATCH":
            ctype = request.content_type
            if ctype == "application/json-patch+json":
                new = _json_patch(copy.deepcopy(existing), body)
            elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                new = _merge(copy.deepcopy(existing), body)
            elif ctype == "application/apply-patch+yaml":
                if not request.query.get("fieldManager"):
                    return web.json_response(status(400, "BadRequest", "fieldManager is required"), status=400)
                if existing is None:
                    return web.json_response(self.create(resource, body), status=201)
                new = _merge(copy.deepcopy(existing), body)
            else:
                return web.json_response(status(415, "UnsupportedMediaType", f"the body of the request was in an "
                                                f"unknown format - accepted media types include: ..."), status=415)
            return web.json_response(self.update(resource, new))
        return web.json_response(status(405, "MethodNotAllowed", "method not allowed"), status=405)


def _labels(selector: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (selector or "").split(","):
        if part:
            k, _, v = part.partition("=")
            out[k] = v.lstrip("=")
    return out


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic merge behaves the same for plain maps)."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = _merge(target.get(k), v)
    return target


def _json_patch(doc: Obj, ops: list[Obj]) -> Obj:
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if op["op"] in ("add", "replace"):
            node[last] = op["value"]
        elif op["op"] == "remove":
            del node[last]
    return doc
