"""Settings of the controller-manager, shared by the controllers (flags map onto these)."""

from __future__ import annotations

from dataclasses import dataclass

from svcnet.controlplane.controllers.endpointslice import DEFAULT_MAX_ENDPOINTS_PER_SLICE

ALL_CONTROLLERS = ("endpointslice", "scheduler", "node-lifecycle", "deployment")


@dataclass(frozen=True)
class ManagerConfig:
    node_monitor_grace_period: float = 40.0
    node_startup_grace_period: float = 60.0
    node_monitor_period: float = 5.0
    max_endpoints_per_slice: int = DEFAULT_MAX_ENDPOINTS_PER_SLICE
    workers: int = 2
    controllers: tuple[str, ...] = ALL_CONTROLLERS
