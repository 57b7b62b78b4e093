"""Watches as kube-apiserver serves them, over a storage watch.

`watch_objects` turns storage events for one key prefix into Kubernetes watch events:

* resourceVersion "" or "0": synthetic ADDED events for the current state first
  ("Get State and Start at Most Recent/Any"), then every change after that state;
* resourceVersion N: every change after N, replayed from history, with no synthetic
  events; N older than the compact revision raises 410 Expired
  (`too old resource version: N (compact)`) from the first `__anext__`;
* a selector turns a change that enters the selection into ADDED and one that leaves
  it into DELETED (carrying the previous content with the new resourceVersion), as
  the watch cache's `convertToWatchEvent` does; DELETED always carries the last state
  with the deletion's resourceVersion;
* BOOKMARK events (the kind with only `metadata.resourceVersion`) after every
  `bookmark_interval` seconds without events, when bookmarks are allowed;
* streaming lists (`sendInitialEvents`, KEP-3157, resourceVersionMatch=NotOlderThan):
  true sends ADDED for the current state (at least as new as the resourceVersion asked
  for, so never 410) and then a BOOKMARK annotated `k8s.io/initial-events-end: "true"`
  at the revision of that state; false starts after the resourceVersion asked for, or
  at the current revision when none was, without synthetic events. A resourceVersion
  newer than the store waits up to 3 s for the store to reach it (another API server,
  or etcd ahead of this one's watch cache) before the 504 `ResourceVersionTooLarge`.

The stream ends (without error) when the store closes or the watcher falls too far
behind; the client re-watches from the last resourceVersion it saw.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from svcnet.controlplane.errors import APIError, bad_request, gone
from svcnet.controlplane.registry import codec
from svcnet.controlplane.registry.kinds import KindInfo
from svcnet.controlplane.storage.interface import CompactedError, Storage, StorageError, WatchClosed

log = logging.getLogger(__name__)

Obj = dict[str, Any]

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def parse_resource_version(value: str) -> int:
    try:
        rv = int(value)
    except ValueError:
        raise bad_request(f"resourceVersion: Invalid value: {json.dumps(value)}: must be an "
                          "integer") from None
    if rv < 0:
        raise bad_request(f"resourceVersion: Invalid value: {json.dumps(value)}: must be positive")
    return rv


#: seconds a request for a resourceVersion the store has not reached yet waits for it
#: before the 504 (kube's watch cache: `blockTimeout` of `waitUntilFreshAndBlock`)
FRESHNESS_TIMEOUT = 3.0

# Polling steps while waiting: the first ones short, since the usual lag is a few ms (an
# event on its way from etcd to the watch cache, or from another API server's write).
_FIRST_POLL, _MAX_POLL = 0.001, 0.025


def too_large_resource_version(wanted: int, current: int) -> APIError:
    """kube's `NewTooLargeResourceVersionError`: 504 with the cause client-go's reflector
    recognises (it relists after `retryAfterSeconds`)."""
    return APIError(504, "Timeout", f"Too large resource version: {wanted}, current: {current}",
                    {"causes": [{"reason": "ResourceVersionTooLarge",
                                 "message": "Too large resource version"}],
                     "retryAfterSeconds": 1})


async def not_newer_than_store(value: str, storage: Storage,
                               timeout: float = FRESHNESS_TIMEOUT) -> int:
    """The resourceVersion a list or watch asks for, once the store has reached it.

    A client that saw a newer revision on another API server (or a write whose event
    is still on its way to this server's watch cache) asks this one a little early.
    As kube's `waitUntilFreshAndBlock`, wait up to `timeout` seconds for the store to
    catch up; only then refuse with the 504 `ResourceVersionTooLarge`. The storage
    contract has no "revision advanced" signal, so this polls `storage.revision`: an
    in-memory counter on both backends (SQLite's delivered revision, etcd's watch
    cache), no I/O per poll."""
    wanted = parse_resource_version(value)
    if wanted <= storage.revision:
        return wanted
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    step = _FIRST_POLL
    while True:
        left = deadline - loop.time()
        if left <= 0:
            break
        await asyncio.sleep(min(step, left))
        if wanted <= storage.revision:
            log.debug("resourceVersion %d reached after waiting %.3fs", wanted,
                      timeout - (deadline - loop.time()))
            return wanted
        step = min(step * 2, _MAX_POLL)
    raise too_large_resource_version(wanted, storage.revision)


def _typed(kind: KindInfo, obj: Obj) -> Obj:
    obj.setdefault("kind", kind.kind)
    obj.setdefault("apiVersion", kind.api_version)
    return obj


async def watch_objects(storage: Storage, kind: KindInfo, prefix: str,
                        matcher: Callable[[], Callable[[Obj], bool] | None], *,
                        resource_version: str, bookmark_interval: float | None,
                        send_initial_events: bool | None = None,
                        freshness_timeout: float = FRESHNESS_TIMEOUT) -> AsyncIterator[tuple[str, Obj]]:
    """See the module docstring. `matcher()` builds the selector predicate (None: no
    selector; raises 400 for a bad selector) when the stream starts; a streaming list
    waits up to `freshness_timeout` for a resourceVersion the store has not reached."""
    predicate = matcher()
    everything = predicate is None
    match: Callable[[Obj], bool] = predicate if predicate is not None else (lambda obj: True)
    end_bookmark = False
    if send_initial_events is not None:
        if resource_version:
            await not_newer_than_store(resource_version, storage, freshness_timeout)
    if send_initial_events:
        page = await storage.range(prefix)
        initial = codec.decode_all(page.kvs)
        requested = page.revision
        end_bookmark = True
    elif send_initial_events is False and resource_version in ("", "0"):
        initial, requested = [], storage.revision
    elif resource_version in ("", "0"):
        page = await storage.range(prefix)
        initial = codec.decode_all(page.kvs)
        requested = page.revision
    else:
        requested = parse_resource_version(resource_version)
        initial = []
        if requested < storage.compact_revision:
            raise gone(f"too old resource version: {requested} ({storage.compact_revision})")
    w = storage.watch(prefix, requested + 1)
    try:
        for obj in initial:
            if match(obj):
                yield "ADDED", _typed(kind, obj)
        if end_bookmark:
            yield "BOOKMARK", {"kind": kind.kind, "apiVersion": kind.api_version,
                               "metadata": {"resourceVersion": str(requested),
                                            "annotations": {INITIAL_EVENTS_END: "true"}}}
        while True:
            try:
                ev = await w.next(bookmark_interval)
            except CompactedError as err:
                raise gone(f"too old resource version: {requested} ({err.compact_revision})") from None
            except WatchClosed:
                return
            except StorageError as err:
                if isinstance(err, APIError):
                    raise
                raise APIError(500, "InternalError", f"Internal error occurred: {err}") from err
            if ev is None:
                yield "BOOKMARK", {"kind": kind.kind, "apiVersion": kind.api_version,
                                   "metadata": {"resourceVersion": str(w.progress_revision)}}
                continue
            if everything and ev.kv is not None:
                # No selector: the previous state only decides ADDED vs MODIFIED, so it
                # need not be decoded (one JSON parse per watcher per event, not two).
                yield ("MODIFIED" if ev.prev_kv is not None else "ADDED"), _typed(kind, codec.decode(ev.kv))
                continue
            new = codec.decode(ev.kv) if ev.kv is not None else None
            old = codec.decode(ev.prev_kv, ev.revision) if ev.prev_kv is not None else None
            was_in = old is not None and match(old)
            if new is not None and match(new):
                yield ("MODIFIED" if was_in else "ADDED"), _typed(kind, new)
            elif was_in and old is not None:
                yield "DELETED", _typed(kind, old)
    finally:
        w.close()
