"""core/v1 Events from the node agent, with the kubelet's reasons, so
`kubectl describe pod` tells what happened on the node: Started, Killing, BackOff,
Unhealthy ("Readiness probe failed: …"), Failed.

Events are best effort: they are queued and written by one task, never block a
pod, and a burst of identical events (a crash loop) is capped per pod and reason.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass
from typing import Any

from svcnet.apiclient import errors
from svcnet.apiclient.objects import Obj, meta
from svcnet.apiclient.resources import EVENTS

log = logging.getLogger(__name__)

MAX_PER_REASON = 20


@dataclass(frozen=True)
class PodEvent:
    pod: Obj
    type: str  # Normal | Warning
    reason: str
    message: str
    container: str = ""


def event_object(e: PodEvent, node: str, now: str) -> Obj:
    m = meta(e.pod)
    involved: Obj = {"apiVersion": "v1", "kind": "Pod", "name": m.get("name"), "namespace": m.get("namespace"),
                     "uid": m.get("uid"), "resourceVersion": m.get("resourceVersion")}
    if e.container:
        involved["fieldPath"] = f"spec.containers{{{e.container}}}"
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{m.get('name')}.", "namespace": m.get("namespace") or "default"},
            "involvedObject": involved, "reason": e.reason, "message": e.message, "type": e.type, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet", "reportingInstance": node}


class EventRecorder:
    def __init__(self, client: Any, node: str) -> None:
        self.client, self.node = client, node
        self._queue: asyncio.Queue[PodEvent] = asyncio.Queue(maxsize=1000)
        self._counts: dict[tuple[str, str], int] = {}

    def emit(self, e: PodEvent) -> None:
        key = (str(meta(e.pod).get("uid")), e.reason)
        self._counts[key] = self._counts.get(key, 0) + 1
        if self._counts[key] > MAX_PER_REASON:
            return
        try:
            self._queue.put_nowait(e)
        except asyncio.QueueFull:
            log.debug("event dropped reason=%s: queue full", e.reason)

    def forget(self, uid: str) -> None:
        self._counts = {k: v for k, v in self._counts.items() if k[0] != uid}

    async def run(self) -> None:
        while True:
            e = await self._queue.get()
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            try:
                await self.client.create(EVENTS, event_object(e, self.node, now), meta(e.pod).get("namespace"))
            except (errors.ApiError, errors.TransportError, OSError) as err:
                log.debug("event not recorded reason=%s: %s", e.reason, err)
