"""Per-kind strategies: defaulting, validation and update rules, one class per kind.

`strategy_for(kind)` returns the strategy the registry uses for a served kind.
"""

from __future__ import annotations

from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.kinds import KindInfo
from svcnet.controlplane.registry.strategies.base import Strategy
from svcnet.controlplane.registry.strategies.coordination import LeaseStrategy
from svcnet.controlplane.registry.strategies.core import EventStrategy, NamespaceStrategy, NodeStrategy
from svcnet.controlplane.registry.strategies.deployment import DeploymentStrategy
from svcnet.controlplane.registry.strategies.endpointslice import EndpointSliceStrategy
from svcnet.controlplane.registry.strategies.networking import ServiceCIDRStrategy
from svcnet.controlplane.registry.strategies.pod import PodStrategy
from svcnet.controlplane.registry.strategies.service import ServiceStrategy
from svcnet.controlplane.registry.strategies.validation import FieldError

__all__ = ["Strategy", "FieldError", "strategies_for_cluster"]


def strategies_for_cluster(families: tuple[str, ...] = ("IPv4",)) -> dict[KindInfo, Strategy]:
    """One strategy per served kind; `families` are the service CIDRs' IP families,
    primary first (two on a dual-stack cluster)."""
    table: dict[KindInfo, Strategy] = {
        k.NAMESPACES: NamespaceStrategy(k.NAMESPACES),
        k.SERVICES: ServiceStrategy(k.SERVICES, families),
        k.PODS: PodStrategy(k.PODS),
        k.NODES: NodeStrategy(k.NODES),
        k.EVENTS: EventStrategy(k.EVENTS),
        k.ENDPOINT_SLICES: EndpointSliceStrategy(k.ENDPOINT_SLICES),
        k.LEASES: LeaseStrategy(k.LEASES),
        k.SERVICE_CIDRS: ServiceCIDRStrategy(k.SERVICE_CIDRS),
        k.DEPLOYMENTS: DeploymentStrategy(k.DEPLOYMENTS),
    }
    missing = set(k.KINDS) - set(table)
    assert not missing, f"kinds without a strategy: {missing}"
    return table
