"""The scheduler's write side: pending pods → `schedule()` → binding, one decision at a
time (the filters and the score live in `scheduler.py`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from svcnet.apiclient import errors
from svcnet.apiclient.informer import FuncHandler
from svcnet.apiclient.objects import Obj, key_of, name_of, namespace_of
from svcnet.apiclient.resources import PODS, Resource
from svcnet.controlplane.controllers import metrics
from svcnet.controlplane.controllers import scheduler as sched
from svcnet.controlplane.controllers.base import Controller
from svcnet.controlplane.controllers.clock import format_time
from svcnet.controlplane.controllers.events import EventRecorder
from svcnet.controlplane.controllers.informers import NODE_INDEX, Informers
from svcnet.controlplane.controllers.pod_status import node_name_of

log = logging.getLogger(__name__)


class SchedulerController(Controller):
    name = "scheduler"
    retry_unschedulable = 30.0

    def __init__(self, inf: Informers, client: Any, events: EventRecorder) -> None:
        super().__init__()
        self.inf, self.client, self.events = inf, client, events
        self.assumed: dict[str, str] = {}  # pod key -> node, until the cache shows the binding
        self.use_binding = True
        self._cycle = asyncio.Lock()
        inf.pods.add_handler(FuncHandler(on_add=self._pod, on_update=lambda o, n: self._pod(n),
                                         on_delete=self._pod_deleted))
        inf.nodes.add_handler(FuncHandler(on_add=lambda n: self._retry_pending(),
                                          on_update=lambda o, n: self._retry_pending()))

    def _pod(self, pod: Obj) -> None:
        if node_name_of(pod):
            self.assumed.pop(key_of(pod), None)
        elif sched.needs_scheduling(pod):
            self.enqueue(key_of(pod))

    def _pod_deleted(self, pod: Obj) -> None:
        self.assumed.pop(key_of(pod), None)

    def _retry_pending(self) -> None:
        for pod in self.inf.pods.by_index(NODE_INDEX, ""):
            if sched.needs_scheduling(pod) and key_of(pod) not in self.assumed:
                self.enqueue(key_of(pod))

    async def sync(self, key: str) -> None:
        # Decide one pod at a time and assume the result before binding, as kube-scheduler's
        # scheduling cycle does: concurrent decisions would all pick the same emptiest node.
        async with self._cycle:
            pod = self.inf.pods.get(key)
            if pod is None or not sched.needs_scheduling(pod) or key in self.assumed:
                return
            counts = sched.count_pods(self.inf.pods.list())
            for pkey, node in self.assumed.items():
                cached = self.inf.pods.get(pkey)
                if cached is not None and not node_name_of(cached):
                    counts[node] += 1
            decision = sched.schedule(pod, self.inf.nodes.list(), counts)
            if decision.node is not None:
                self.assumed[key] = decision.node
        if decision.node is None:
            metrics.SCHEDULE_ATTEMPTS.labels("unschedulable").inc()
            await self._unschedulable(pod, decision.message)
            self.queue.add_after(key, self.retry_unschedulable)
            return
        try:
            await self._bind(pod, decision.node)
        except BaseException:
            self.assumed.pop(key, None)  # forget the assumption; the retry decides afresh
            metrics.SCHEDULE_ATTEMPTS.labels("error").inc()
            raise
        metrics.SCHEDULE_ATTEMPTS.labels("scheduled").inc()
        log.info("scheduled pod=%s node=%s", key, decision.node)
        await self.events.record(pod, "Normal", "Scheduled",
                                 f"Successfully assigned {key} to {decision.node}")

    async def _bind(self, pod: Obj, node: str) -> None:
        """POST pods/NAME/binding as kube-scheduler does; where the server does not serve
        that subresource, set spec.nodeName with an update (once that works, keep doing it)."""
        ns, name = namespace_of(pod), name_of(pod)
        if self.use_binding:
            # The binding subresource is a collection under the pod: .../pods/NAME/binding.
            binding_res = Resource("", "v1", f"pods/{name}/binding", "Binding")
            try:
                await self.client.create(binding_res, sched.binding(pod, node), ns)
                return
            except (errors.NotFound, errors.MethodNotAllowed, errors.BadRequest) as e:
                failure: Exception = e
        updated = dict(pod)
        updated["spec"] = {**(pod.get("spec") or {}), "nodeName": node}
        await self.client.update(PODS, updated, ns)
        if self.use_binding:
            log.info("pods/binding is not served (%s); binding by updating spec.nodeName", failure)
            self.use_binding = False

    async def _unschedulable(self, pod: Obj, message: str) -> None:
        conds = (pod.get("status") or {}).get("conditions") or []
        current = next((c for c in conds if c.get("type") == "PodScheduled"), None)
        if current and current.get("status") == "False" and current.get("message") == message:
            return
        log.info("unschedulable pod=%s: %s", key_of(pod), message)
        cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                "lastProbeTime": None, "lastTransitionTime": format_time(self.events.clock.now())}
        new = dict(pod)
        new["status"] = {**(pod.get("status") or {}),
                         "conditions": [c for c in conds if c.get("type") != "PodScheduled"] + [cond]}
        new["status"].setdefault("phase", "Pending")
        await self.client.update_status(PODS, new, namespace_of(pod))
        await self.events.record(pod, "Warning", "FailedScheduling", message)
