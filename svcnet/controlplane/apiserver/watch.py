"""Streaming a watch: newline-delimited JSON events over a chunked HTTP response.

The Registry yields `(type, object)` pairs (synthetic ADDED events first when the
resourceVersion is unset or 0; BOOKMARKs when allowed). This module only puts them on
the wire the way kube-apiserver's `handlers/watch.go` does:

* `200` and one `{"type": …, "object": …}` line per event, flushed per event;
* a failure after the stream started, notably `410 Expired` for a compacted
  resourceVersion, becomes an `ERROR` event carrying the Status, then the stream ends;
* `timeoutSeconds` (or a random 30-60 min default, like `--min-request-timeout`) ends the
  stream cleanly, and so does server shutdown; clients simply re-watch;
* with `as=Table`, each object becomes a one-row Table, with column definitions only
  on the first event.

aiohttp does not cancel handlers when a client goes away, so the loop also checks the
transport between events; a dead watcher must not keep a registry subscription alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from aiohttp import web

from svcnet.controlplane.apiserver import negotiation, tables
from svcnet.controlplane.apiserver.metrics import APIServerMetrics
from svcnet.controlplane.errors import APIError

log = logging.getLogger(__name__)

DISCONNECT_POLL_SECONDS = 2.0
DEFAULT_MIN_TIMEOUT = 1800.0


@dataclass(frozen=True)
class WatchSpec:
    """How to render one watch stream."""

    group: str
    version: str
    kind: str
    plural: str
    content_type: str
    table: bool = False
    include_object: str = "Metadata"
    timeout: float | None = None


def default_timeout() -> float:
    return DEFAULT_MIN_TIMEOUT * (1 + random.random())


class WatchStream:
    """Copies one registry watch to one HTTP response."""

    def __init__(self, spec: WatchSpec, events: AsyncIterator[tuple[str, dict[str, Any]]],
                 metrics: APIServerMetrics, stopping: asyncio.Event) -> None:
        self.spec, self.events, self.metrics, self.stopping = spec, events, metrics, stopping
        self._headers_sent = False

    def _render(self, etype: str, obj: dict[str, Any]) -> bytes:
        if self.spec.table and etype in ("ADDED", "MODIFIED", "DELETED"):
            obj = tables.to_table(self.spec.group, self.spec.plural, [obj],
                                  include_object=self.spec.include_object,
                                  with_headers=not self._headers_sent)
            self._headers_sent = True
        elif self.spec.table and etype == "BOOKMARK":
            rv = obj.get("metadata", {}).get("resourceVersion", "")
            obj = tables.to_table(self.spec.group, self.spec.plural, [], resource_version=rv,
                                  with_headers=False)
        return negotiation.encode_json({"type": etype, "object": obj}) + b"\n"

    async def serve(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": self.spec.content_type,
                                                       "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        gauge = self.metrics.watchers.labels(self.spec.group, self.spec.version, self.spec.kind)
        sent = self.metrics.watch_events.labels(self.spec.group, self.spec.version, self.spec.kind)
        gauge.inc()
        deadline = time.monotonic() + (self.spec.timeout if self.spec.timeout is not None
                                       else default_timeout())
        iterator = self.events.__aiter__()
        pending: asyncio.Future[tuple[str, dict[str, Any]]] | None = None
        stop = asyncio.ensure_future(self.stopping.wait())  # shutdown ends the stream at once
        try:
            while not self.stopping.is_set():
                if pending is None:
                    pending = asyncio.ensure_future(iterator.__anext__())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                waiters: set[asyncio.Future[Any]] = {pending, stop}
                done, _ = await asyncio.wait(waiters, timeout=min(remaining, DISCONNECT_POLL_SECONDS),
                                             return_when=asyncio.FIRST_COMPLETED)
                if pending not in done:
                    if request.transport is None or request.transport.is_closing():
                        break  # the client went away
                    continue
                try:
                    etype, obj = pending.result()
                except StopAsyncIteration:
                    break
                except APIError as exc:
                    await resp.write(self._render("ERROR", exc.status()))
                    break
                except Exception as exc:  # the stream has started: report in-band, as upstream
                    log.exception("watch failed kind=%s", self.spec.kind)
                    err = APIError(500, "InternalError", f"Internal error occurred: {exc}")
                    await resp.write(self._render("ERROR", err.status()))
                    break
                finally:
                    pending = None
                await resp.write(self._render(etype, obj))
                sent.inc()
        except (ConnectionResetError, ConnectionError):
            log.debug("watch client disconnected kind=%s", self.spec.kind)
        finally:
            gauge.dec()
            stop.cancel()
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp
