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
  at the current revision when none was, without synthetic events.

The stream ends (without error) when the store closes or the watcher falls too far
behind; the client re-watches from the last resourceVersion it saw.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from svcnet.controlplane.errors import APIError, bad_request, gone
from svcnet.controlplane.registry import codec
from svcnet.controlplane.registry.kinds import KindInfo
from svcnet.controlplane.storage.interface import CompactedError, Storage, StorageError, WatchClosed

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


def not_newer_than_store(value: str, storage: Storage) -> int:
    """The resourceVersion a list or watch asks for, refused with kube's 504
    `ResourceVersionTooLarge` (client-go retries it) when the store has not reached it:
    a client that saw a newer revision on another API server asks this one too early."""
    wanted = parse_resource_version(value)
    if wanted > storage.revision:
        raise APIError(504, "Timeout", f"Too large resource version: {wanted}, current: "
                       f"{storage.revision}",
                       {"causes": [{"reason": "ResourceVersionTooLarge",
                                    "message": "Too large resource version"}],
                        "retryAfterSeconds": 1})
    return wanted


def _typed(kind: KindInfo, obj: Obj) -> Obj:
    obj.setdefault("kind", kind.kind)
    obj.setdefault("apiVersion", kind.api_version)
    return obj


async def watch_objects(storage: Storage, kind: KindInfo, prefix: str,
                        matcher: Callable[[], Callable[[Obj], bool] | None], *,
                        resource_version: str, bookmark_interval: float | None,
                        send_initial_events: bool | None = None) -> AsyncIterator[tuple[str, Obj]]:
    """See the module docstring. `matcher()` builds the selector predicate (None: no
    selector; raises 400 for a bad selector) when the stream starts."""
    predicate = matcher()
    everything = predicate is None
    match: Callable[[Obj], bool] = predicate if predicate is not None else (lambda obj: True)
    end_bookmark = False
    if send_initial_events is not None:
        if resource_version:
            not_newer_than_store(resource_version, storage)
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
