"""The controller-manager: informers in, pure plans computed, writes out.

`ControllerManager(source)` asks an `ApiSource` for the informers the controllers
share, waits until every one has listed, then runs the controllers. Each controller
maps informer events to keys (handlers only enqueue), and a `sync(key)` computes the
plan with the pure function of its module and writes the difference through
`source.client`:

| controller      | key             | plan from                          | writes                        |
|-----------------|-----------------|------------------------------------|-------------------------------|
| endpointslice   | ns/service      | `endpointslice.reconcile_slices`   | EndpointSlices                |
| scheduler       | ns/pod          | `scheduler.schedule`               | pods/binding (or spec.nodeName)|
| node-lifecycle  | node            | `node_lifecycle` tracker           | nodes/status, pods/status     |
| deployment      | ns/deployment   | `deployment.plan`                  | pods, deployments/status      |

There is no garbage collector in svcnet's control plane, so the owners clean up: the
EndpointSlice controller deletes the slices of a Service that is gone and the
deployment controller deletes the pods of a Deployment that is gone (what the garbage
collector does for their ownerReferences in Kubernetes).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from svcnet.apiclient import errors
from svcnet.apiclient.informer import FuncHandler, IndexFunc, Informer
from svcnet.apiclient.objects import Obj, key_of, labels_of, meta, name_of, namespace_of
from svcnet.apiclient.resources import DEPLOYMENTS, ENDPOINT_SLICES, EVENTS, LEASES, NODES, PODS, SERVICES, Resource
from svcnet.controlplane.controllers import deployment as deploy_plan
from svcnet.controlplane.controllers import endpointslice as es
from svcnet.controlplane.controllers import metrics
from svcnet.controlplane.controllers import node_lifecycle as nl
from svcnet.controlplane.controllers import scheduler as sched
from svcnet.controlplane.controllers.base import Controller, Expectations, WriteTracker
from svcnet.controlplane.controllers.clock import Clock, SystemClock, format_time
from svcnet.controlplane.controllers.pod_status import node_name_of, selector_matches, zone_of
from svcnet.controlplane.controllers.trigger_time import TriggerTimeTracker

log = logging.getLogger(__name__)

NODE_INDEX = "node"
SERVICE_INDEX = "service"
ALL_CONTROLLERS = ("endpointslice", "scheduler", "node-lifecycle", "deployment")


@dataclass(frozen=True)
class ManagerConfig:
    node_monitor_grace_period: float = 40.0
    node_startup_grace_period: float = 60.0
    node_monitor_period: float = 5.0
    max_endpoints_per_slice: int = es.DEFAULT_MAX_ENDPOINTS_PER_SLICE
    workers: int = 2
    controllers: tuple[str, ...] = ALL_CONTROLLERS


class Source(Protocol):
    """What the manager needs of an ApiSource (kept narrow for tests)."""

    @property
    def client(self) -> Any: ...
    def informer(self, resource: Resource, indexers: dict[str, IndexFunc] | None = None, *,
                 namespace: str | None = None) -> Informer: ...
    async def run(self) -> None: ...


@dataclass
class Informers:
    services: Informer
    pods: Informer
    nodes: Informer
    slices: Informer
    leases: Informer
    deployments: Informer

    def all(self) -> list[Informer]:
        return [self.services, self.pods, self.nodes, self.slices, self.leases, self.deployments]


def _slice_service_key(obj: Obj) -> list[str]:
    labels = labels_of(obj)
    if labels.get(es.MANAGED_BY_LABEL) != es.CONTROLLER_NAME or not labels.get(es.SERVICE_NAME_LABEL):
        return []
    return [f"{namespace_of(obj)}/{labels[es.SERVICE_NAME_LABEL]}"]


def open_informers(source: Source) -> Informers:
    return Informers(
        services=source.informer(SERVICES),
        pods=source.informer(PODS, {NODE_INDEX: lambda p: [node_name_of(p)]}),
        nodes=source.informer(NODES),
        slices=source.informer(ENDPOINT_SLICES, {SERVICE_INDEX: _slice_service_key}),
        leases=source.informer(LEASES, namespace=nl.NODE_LEASE_NAMESPACE),
        deployments=source.informer(DEPLOYMENTS),
    )


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


# -- EndpointSlices ----------------------------------------------------------------


class EndpointSliceController(Controller):
    name = "endpointslice"

    def __init__(self, inf: Informers, client: Any, config: ManagerConfig) -> None:
        super().__init__()
        self.inf, self.client, self.config = inf, client, config
        self.triggers = TriggerTimeTracker()
        self.written = WriteTracker()  # our slice writes the cache must show before we plan again
        inf.services.add_handler(FuncHandler(
            on_add=lambda s: self.enqueue(key_of(s)),
            on_update=lambda o, n: self.enqueue(key_of(n)),
            on_delete=lambda s: self.enqueue(key_of(s))))
        inf.pods.add_handler(FuncHandler(
            on_add=self._pod_changed, on_update=self._pod_changed, on_delete=self._pod_changed))
        inf.slices.add_handler(FuncHandler(
            on_add=self._slice_changed, on_update=lambda o, n: self._slice_changed(n),
            on_delete=lambda s: self._slice_changed(s, deleted=True)))
        inf.nodes.add_handler(FuncHandler(on_update=self._node_changed))

    def _pod_changed(self, *pods: Obj) -> None:
        for svc in self.inf.services.by_index("namespace", namespace_of(pods[-1])):
            selector = (svc.get("spec") or {}).get("selector") or {}
            if selector and any(selector_matches(selector, labels_of(p)) for p in pods):
                self.enqueue(key_of(svc))

    def _slice_changed(self, obj: Obj, deleted: bool = False) -> None:
        for key in _slice_service_key(obj):
            self.written.observed(key, name_of(obj), None if deleted else str(meta(obj).get("resourceVersion")))
            self.enqueue(key)

    def _node_changed(self, old: Obj, new: Obj) -> None:
        if zone_of(old) != zone_of(new):  # endpoints carry the zone: revisit every Service
            for key in self.inf.services.keys():
                self.enqueue(key)

    async def sync(self, key: str) -> None:
        existing = self.inf.slices.by_index(SERVICE_INDEX, key)
        self.written.check(key, {name_of(o): meta(o).get("resourceVersion") for o in existing})
        service = self.inf.services.get(key)
        if service is None:
            self.triggers.forget(key)
            changes = es.SliceChanges(delete=existing)
        else:
            pods = self.inf.pods.by_index("namespace", namespace_of(service))
            selected = es.selected_pods(service, pods)
            trigger = self.triggers.compute(key, service, selected)
            zones = {name_of(n): z for n in self.inf.nodes.list() if (z := zone_of(n))}
            changes = es.reconcile_slices(service, selected, existing, zones,
                                          max_endpoints_per_slice=self.config.max_endpoints_per_slice,
                                          trigger_time=trigger)
        if changes.empty:
            return
        ns = key.partition("/")[0]
        for obj in changes.create:
            made = await self.client.create(ENDPOINT_SLICES, obj, ns)
            self.written.wrote(key, name_of(made), str(meta(made).get("resourceVersion") or ""))
        for obj in changes.update:
            made = await self.client.update(ENDPOINT_SLICES, obj, ns)
            self.written.wrote(key, name_of(made), str(meta(made).get("resourceVersion") or ""))
        for obj in changes.delete:
            try:
                await self.client.delete(ENDPOINT_SLICES, name_of(obj), ns)
            except errors.NotFound:
                pass
            self.written.wrote(key, name_of(obj), None)
        metrics.ENDPOINTSLICE_CHANGES.labels("create").inc(len(changes.create))
        metrics.ENDPOINTSLICE_CHANGES.labels("update").inc(len(changes.update))
        metrics.ENDPOINTSLICE_CHANGES.labels("delete").inc(len(changes.delete))
        log.info("endpointslices service=%s created=%d updated=%d deleted=%d", key,
                 len(changes.create), len(changes.update), len(changes.delete))


# -- scheduler ---------------------------------------------------------------------


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


# -- node lifecycle ----------------------------------------------------------------


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


# -- deployments -------------------------------------------------------------------


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
        await self._delete(key, plan.delete)
        await self._create(key, plan.pod_template, plan.create)
        if plan.status is not None:
            made = await self.client.update_status(DEPLOYMENTS, {**d, "status": plan.status}, ns)
            self.status_written.wrote(key, name_of(made), str(meta(made).get("resourceVersion") or ""))
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)

    async def _create(self, key: str, template: Obj, count: int) -> None:
        if not count:
            return
        self.expectations.expect(key, adds=count)
        results = await asyncio.gather(*(self.client.create(PODS, template, namespace_of(template))
                                         for _ in range(count)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for _ in failed:
            self.expectations.observed_add(key)
        if failed:
            raise failed[0]

    async def _delete(self, key: str, pods: list[Obj]) -> None:
        if not pods:
            return
        self.expectations.expect(key, deletes={name_of(p) for p in pods})
        for pod in pods:
            try:
                await self.client.delete(PODS, name_of(pod), namespace_of(pod),
                                         preconditions={"uid": str(meta(pod).get("uid"))} if meta(pod).get("uid") else None)
            except (errors.NotFound, errors.Conflict):
                self.expectations.observed_delete(key, name_of(pod))

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


# -- the manager -------------------------------------------------------------------


@dataclass
class ControllerManager:
    """Runs the configured controllers over one source until cancelled."""

    source: Source
    config: ManagerConfig = field(default_factory=ManagerConfig)
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        self.informers = open_informers(self.source)
        client = self.source.client
        events = EventRecorder(client, "svcnet-controller-manager", self.clock)
        inf, cfg = self.informers, self.config
        factories: dict[str, Callable[[], Controller]] = {
            "endpointslice": lambda: EndpointSliceController(inf, client, cfg),
            "scheduler": lambda: SchedulerController(inf, client, events),
            "node-lifecycle": lambda: NodeLifecycleController(inf, client, cfg, self.clock, events),
            "deployment": lambda: DeploymentController(inf, client, self.clock, events),
        }
        unknown = set(cfg.controllers) - set(factories)
        if unknown:
            raise ValueError(f"unknown controllers: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(ALL_CONTROLLERS)})")
        self.controllers = {n: factories[n]() for n in ALL_CONTROLLERS if n in cfg.controllers}
        self.running = False  # caches synced and controllers started (`/readyz`)

    async def run(self, ready: Callable[[], Awaitable[None]] | None = None) -> None:
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(self.source.run(), name="informers")]
        try:
            await self._wait_for_caches(tasks[0])
            log.info("caches synced; starting controllers: %s", ", ".join(self.controllers))
            self.running = True
            for name, ctl in self.controllers.items():
                tasks.append(asyncio.create_task(ctl.run(self.config.workers), name=name))
            lifecycle = self.controllers.get("node-lifecycle")
            if isinstance(lifecycle, NodeLifecycleController):
                tasks.append(asyncio.create_task(lifecycle.monitor(), name="node-monitor"))
            if ready is not None:
                await ready()
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            self.running = False
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait_for_caches(self, feeder: asyncio.Task[None]) -> None:
        """Controllers must not act on a partial world (kube-controller-manager's
        WaitForCacheSync); give up if the feeder dies first."""
        async def all_synced() -> None:
            for inf in self.informers.all():
                await inf.wait_for_sync()

        synced: asyncio.Task[None] = asyncio.create_task(all_synced())
        await asyncio.wait([feeder, synced], return_when=asyncio.FIRST_COMPLETED)
        if not synced.done():
            synced.cancel()
            feeder.result()
            raise RuntimeError("the informers stopped before they synced")
