"""core/v1 Events for what the controllers did, so `kubectl describe` tells the story."""

from __future__ import annotations

import logging
import socket
from typing import Any

from svcnet.apiclient import errors
from svcnet.apiclient.objects import Obj, meta, name_of, namespace_of
from svcnet.apiclient.resources import EVENTS
from svcnet.controlplane.controllers.clock import Clock, format_time

log = logging.getLogger(__name__)


class EventRecorder:
    """Best-effort core/v1 Events, so `kubectl describe` tells what happened."""

    def __init__(self, client: Any, component: str, clock: Clock) -> None:
        self.client, self.component, self.clock = client, component, clock
        self.host = socket.gethostname()

    async def record(self, obj: Obj, event_type: str, reason: str, message: str) -> None:
        now = format_time(self.clock.now())
        ns = namespace_of(obj) or "default"
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{name_of(obj)}.", "namespace": ns},
            "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", ""),
                               "name": name_of(obj), "namespace": namespace_of(obj),
                               "uid": meta(obj).get("uid"), "resourceVersion": meta(obj).get("resourceVersion")},
            "reason": reason, "message": message, "type": event_type, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component, "reportingInstance": self.host,
        }
        try:
            await self.client.create(EVENTS, event, ns)
        except (errors.ApiError, errors.TransportError) as e:
            log.debug("event not recorded reason=%s: %s", reason, e)
