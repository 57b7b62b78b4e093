"""The informers the controllers share, and the indexes they look things up by.

One informer per resource for the whole process (client-go's SharedInformerFactory):
every controller adds its handlers to the same caches. Leases are watched only in
`kube-node-lease`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from svcnet.apiclient.informer import IndexFunc, Informer
from svcnet.apiclient.objects import Obj, labels_of, namespace_of
from svcnet.apiclient.resources import DEPLOYMENTS, ENDPOINT_SLICES, LEASES, NODES, PODS, SERVICES, Resource
from svcnet.controlplane.controllers import endpointslice as es
from svcnet.controlplane.controllers.node_lifecycle import NODE_LEASE_NAMESPACE
from svcnet.controlplane.controllers.pod_status import node_name_of

NODE_INDEX = "node"  # pods by spec.nodeName ("" = not scheduled)
SERVICE_INDEX = "service"  # our EndpointSlices by "ns/service"


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


def slice_service_key(obj: Obj) -> list[str]:
    labels = labels_of(obj)
    if labels.get(es.MANAGED_BY_LABEL) != es.CONTROLLER_NAME or not labels.get(es.SERVICE_NAME_LABEL):
        return []
    return [f"{namespace_of(obj)}/{labels[es.SERVICE_NAME_LABEL]}"]


def open_informers(source: Source) -> Informers:
    return Informers(
        services=source.informer(SERVICES),
        pods=source.informer(PODS, {NODE_INDEX: lambda p: [node_name_of(p)]}),
        nodes=source.informer(NODES),
        slices=source.informer(ENDPOINT_SLICES, {SERVICE_INDEX: slice_service_key}),
        leases=source.informer(LEASES, namespace=NODE_LEASE_NAMESPACE),
        deployments=source.informer(DEPLOYMENTS),
    )
