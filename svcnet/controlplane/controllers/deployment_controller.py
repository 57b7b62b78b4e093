"""The deployment controller's write side: Deployments and their pods → `plan()` →
pod creations and deletions and a status write, guarded by expectations so a lagging
cache never doubles a scale-up (the planning lives in `deployment.py`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from svcnet.apiclient import errors
from svcnet.apiclient.informer import FuncHandler
from svcnet.apiclient.objects import Obj, key_of, meta, name_of, namespace_of
from svcnet.apiclient.resources import DEPLOYMENTS, PODS
from svcnet.controlplane.controllers import deployment as deploy_plan
from svcnet.controlplane.controllers.base import Controller, Expectations, WriteTracker
from svcnet.controlplane.controllers.clock import Clock
from svcnet.controlplane.controllers.events import EventRecorder
from svcnet.controlplane.controllers.informers import Informers

log = logging.getLogger(__name__)


class DeploymentController(Controller):
    name = "deployment"

    def __init__(self, inf: Informers, client: Any, clock: Clock, events: EventRecorder) -> None:
        super().__init__()
        self.inf, self.client, self.clock, self.events = inf, client, clock, events
        self.expectations = Expectations()
        self.deleted_uids: dict[str, str] = {}
        self.status_written = WriteTracker()  # our status writes the cache must show first
        inf.deployments.add_handler(FuncHandler(
            on_add=lambda d: self.enqueue(key_of(d)), on_update=self._deployment_updated,
            on_delete=self._deployment_deleted))
        inf.pods.add_handler(FuncHandler(on_add=self._pod_added, on_update=self._pod_updated,
                                         on_delete=self._pod_deleted))

    @staticmethod
    def _owner_key(pod: Obj) -> str | None:
        for ref in meta(pod).get("ownerReferences") or []:
            if ref.get("kind") == "Deployment" and ref.get("controller"):
                return f"{namespace_of(pod)}/{ref.get('name')}"
        return None

    def _deployment_updated(self, old: Obj, new: Obj) -> None:
        self.status_written.observed(key_of(new), name_of(new), str(meta(new).get("resourceVersion")))
        self.enqueue(key_of(new))

    def _deployment_deleted(self, d: Obj) -> None:
        self.deleted_uids[key_of(d)] = str(meta(d).get("uid") or "")
        self.enqueue(key_of(d))

    def _pod_added(self, pod: Obj) -> None:
        if (key := self._owner_key(pod)) is not None:
            self.expectations.observed_add(key)
            self.enqueue(key)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if (key := self._owner_key(new)) is not None:
            if meta(new).get("deletionTimestamp"):
                self.expectations.observed_delete(key, name_of(new))
            self.enqueue(key)

    def _pod_deleted(self, pod: Obj) -> None:
        if (key := self._owner_key(pod)) is not None:
            self.expectations.observed_delete(key, name_of(pod))
            self.enqueue(key)

    async def sync(self, key: str) -> None:
        d = self.inf.deployments.get(key)
        ns = key.partition("/")[0]
        if d is None:
            self.status_written.forget(key)
            await self._collect_garbage(key, ns)
            return
        if not self.expectations.satisfied(key):
            return  # the informer events that satisfy them enqueue the key again
        self.status_written.check(key, {name_of(d): meta(d).get("resourceVersion")})
        now = self.clock.now()
        plan = deploy_plan.plan(d, self.inf.pods.by_index("namespace", ns), now)
        if plan.create or plan.delete:
            log.info("deployment=%s hash=%s create=%d delete=%d", key, plan.pod_hash, plan.create,
                     len(plan.delete))
        await self._delete(d, key, plan.delete)
        await self._create(d, key, plan.pod_template, plan.create)
        if plan.status is not None:
            made = await self.client.update_status(DEPLOYMENTS, {**d, "status": plan.status}, ns)
            self.status_written.wrote(key, name_of(made), str(meta(made).get("resourceVersion") or ""))
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)

    async def _create(self, d: Obj, key: str, template: Obj, count: int) -> None:
        if not count:
            return
        self.expectations.expect(key, adds=count)
        results = await asyncio.gather(*(self.client.create(PODS, template, namespace_of(template))
                                         for _ in range(count)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for _ in failed:
            self.expectations.observed_add(key)
        # The ReplicaSet controller's events; here the Deployment is the pods' owner.
        for made in results:
            if isinstance(made, dict):
                await self.events.record(d, "Normal", "SuccessfulCreate", f"Created pod: {name_of(made)}")
        if failed:
            await self.events.record(d, "Warning", "FailedCreate", f"Error creating: {failed[0]}")
            raise failed[0]

    async def _delete(self, d: Obj, key: str, pods: list[Obj]) -> None:
        if not pods:
            return
        self.expectations.expect(key, deletes={name_of(p) for p in pods})
        for pod in pods:
            uid = meta(pod).get("uid")
            try:
                # The uid precondition: never delete a newer pod that took the same name.
                await self.client.delete(PODS, name_of(pod), namespace_of(pod),
                                         preconditions={"uid": str(uid)} if uid else None)
            except (errors.NotFound, errors.Conflict):
                self.expectations.observed_delete(key, name_of(pod))
                continue
            await self.events.record(d, "Normal", "SuccessfulDelete", f"Deleted pod: {name_of(pod)}")

    async def _collect_garbage(self, key: str, ns: str) -> None:
        """The Deployment is gone: delete its pods (the garbage collector's job upstream)."""
        self.expectations.forget(key)
        uid = self.deleted_uids.pop(key, "")
        name = key.partition("/")[2]
        for pod in self.inf.pods.by_index("namespace", ns):
            for ref in meta(pod).get("ownerReferences") or []:
                if ref.get("kind") == "Deployment" and ref.get("name") == name and ref.get("controller") \
                        and (not uid or ref.get("uid") == uid) and not meta(pod).get("deletionTimestamp"):
                    try:
                        await self.client.delete(PODS, name_of(pod), ns)
                    except errors.NotFound:
                        pass
