"""The node lifecycle controller's write side: Leases and nodes → `NodeHealthTracker`
→ node and pod status writes, checked every node-monitor period."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from svcnet.apiclient.informer import FuncHandler
from svcnet.apiclient.objects import Obj, key_of, name_of, namespace_of
from svcnet.apiclient.resources import NODES, PODS
from svcnet.controlplane.controllers import metrics
from svcnet.controlplane.controllers import node_lifecycle as nl
from svcnet.controlplane.controllers.base import Controller
from svcnet.controlplane.controllers.clock import Clock
from svcnet.controlplane.controllers.config import ManagerConfig
from svcnet.controlplane.controllers.events import EventRecorder
from svcnet.controlplane.controllers.informers import NODE_INDEX, Informers
from svcnet.controlplane.controllers.pod_status import node_name_of

log = logging.getLogger(__name__)


class NodeLifecycleController(Controller):
    name = "node-lifecycle"

    def __init__(self, inf: Informers, client: Any, config: ManagerConfig, clock: Clock,
                 events: EventRecorder) -> None:
        super().__init__()
        self.inf, self.client, self.config, self.clock, self.events = inf, client, config, clock, events
        self.tracker = nl.NodeHealthTracker(config.node_monitor_grace_period, config.node_startup_grace_period)
        inf.nodes.add_handler(FuncHandler(on_add=lambda n: self.enqueue(name_of(n)),
                                          on_update=lambda o, n: self.enqueue(name_of(n)),
                                          on_delete=lambda n: self.enqueue(name_of(n))))
        inf.leases.add_handler(FuncHandler(on_add=lambda l: self.enqueue(name_of(l)),
                                           on_update=lambda o, l: self.enqueue(name_of(l))))
        inf.pods.add_handler(FuncHandler(on_add=self._pod, on_update=lambda o, n: self._pod(n)))

    def _pod(self, pod: Obj) -> None:
        node = self.inf.nodes.get(node_name_of(pod)) if node_name_of(pod) else None
        if node is not None and nl.node_ready_status(node) != "True":
            self.enqueue(name_of(node))  # a pod reported Ready on a node that is not

    async def monitor(self) -> None:
        """Look at every node each node-monitor period, heartbeat or not."""
        while True:
            for name in self.inf.nodes.keys():
                self.enqueue(name)
            await asyncio.sleep(self.config.node_monitor_period)

    async def sync(self, key: str) -> None:
        node = self.inf.nodes.get(key)
        if node is None:
            self.tracker.forget(key)
            return
        now = self.clock.now()
        self.tracker.observe(node, self.inf.leases.get_by(nl.NODE_LEASE_NAMESPACE, key), now)
        new = self.tracker.plan_node(node, now)
        if new is not None:
            before, node = nl.node_ready_status(node), await self.client.update_status(NODES, new)
            after = nl.node_ready_status(node)
            metrics.NODE_TRANSITIONS.labels("Ready" if after == "True" else "NotReady").inc()
            log.info("node=%s Ready %s -> %s", key, before, after)
            await self.events.record(node, "Normal", "NodeNotReady" if after != "True" else "NodeReady",
                                     f"Node {key} status is now: {'NodeNotReady' if after != 'True' else 'NodeReady'}")
        for pod in nl.plan_pod_updates(node, self.inf.pods.by_index(NODE_INDEX, key), now):
            await self.client.update_status(PODS, pod, namespace_of(pod))
            log.info("pod=%s Ready -> %s (node %s)", key_of(pod),
                     next(c["status"] for c in pod["status"]["conditions"] if c["type"] == "Ready"), key)
        wait = self.tracker.seconds_until_silent(node, now)
        if wait is not None and nl.node_ready_status(node) == "True":
            self.queue.add_after(key, wait + 0.05)
