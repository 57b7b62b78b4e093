"""The controller-manager: informers in, pure plans computed, writes out.

`ControllerManager(source)` asks an `ApiSource` for the informers the controllers
share, waits until every one has listed, then runs the controllers. Each controller
maps informer events to keys (handlers only enqueue), and a `sync(key)` computes the
plan with the pure function of its module and writes the difference through
`source.client`:

| controller (module)                           | key           | plan from                        | writes                          |
|-----------------------------------------------|---------------|----------------------------------|---------------------------------|
| endpointslice (`endpointslice_controller`)    | ns/service    | `endpointslice.reconcile_slices` | EndpointSlices                  |
| scheduler (`scheduler_controller`)            | ns/pod        | `scheduler.schedule`             | pods/binding (or spec.nodeName) |
| node-lifecycle (`node_lifecycle_controller`)  | node          | `node_lifecycle` tracker         | nodes/status, pods/status       |
| deployment (`deployment_controller`)          | ns/deployment | `deployment.plan`                | pods, deployments/status        |

The owners also clean up after their owner is gone: the EndpointSlice controller
deletes the slices of a deleted Service and the deployment controller the pods of a
deleted Deployment. `svcnet apiserver` garbage-collects ownerReferences itself, as
kube-apiserver's garbage collector does; doing it here too keeps the controllers right
against a server without one, and a second delete is only a harmless NotFound.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from svcnet.controlplane.controllers.base import Controller
from svcnet.controlplane.controllers.clock import Clock, SystemClock
from svcnet.controlplane.controllers.config import ALL_CONTROLLERS, ManagerConfig
from svcnet.controlplane.controllers.deployment_controller import DeploymentController
from svcnet.controlplane.controllers.endpointslice_controller import EndpointSliceController
from svcnet.controlplane.controllers.events import EventRecorder
from svcnet.controlplane.controllers.informers import Source, open_informers
from svcnet.controlplane.controllers.node_lifecycle_controller import NodeLifecycleController
from svcnet.controlplane.controllers.scheduler_controller import SchedulerController

__all__ = ["ALL_CONTROLLERS", "ControllerManager", "ManagerConfig"]

log = logging.getLogger(__name__)


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
