"""The resource kinds svcnet's agents know by name, and how to address them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """One served kind: enough to build its URL and to recognise its objects."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path: `/api/v1/namespaces/NS/services/NAME` and its list forms."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        return base


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
SERVICES = Resource("", "v1", "services", "Service")
PODS = Resource("", "v1", "pods", "Pod")
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
EVENTS = Resource("", "v1", "events", "Event")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
SERVICE_CIDRS = Resource("networking.k8s.io", "v1", "servicecidrs", "ServiceCIDR", namespaced=False)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")

ALL: tuple[Resource, ...] = (
    NAMESPACES, SERVICES, PODS, NODES, EVENTS, ENDPOINT_SLICES, LEASES, SERVICE_CIDRS, DEPLOYMENTS,
)
_BY_KIND = {(r.api_version, r.kind): r for r in ALL}


def resource_for(api_version: str, kind: str) -> Resource | None:
    """The Resource of an object's apiVersion/kind, or None when svcnet does not know it."""
    return _BY_KIND.get((api_version, kind))
