"""The kinds svcnet serves, declared once.

Discovery, OpenAPI, URL routing, storage keys and field selectors all read this
table. The shapes follow kube-apiserver's discovery documents for the same kinds
(short names, categories, `status` subresources) so kubectl behaves as it does
against a real cluster (`kubectl get svc`, `kubectl get all`, `--subresource=status`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindInfo:
    """One served kind."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    definition: str = ""
    field_selectors: tuple[str, ...] = ("metadata.name", "metadata.namespace")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def resource(self) -> str:
        """The qualified resource name kube uses in messages: `services`, `leases.coordination.k8s.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


_META = ("metadata.name", "metadata.namespace")

NAMESPACES = KindInfo(
    "", "v1", "namespaces", "namespace", "Namespace", False, short_names=("ns",),
    subresources=("status", "finalize"), definition="io.k8s.api.core.v1.Namespace",
    field_selectors=_META + ("status.phase",))
SERVICES = KindInfo(
    "", "v1", "services", "service", "Service", True, short_names=("svc",), categories=("all",),
    subresources=("status",), definition="io.k8s.api.core.v1.Service",
    field_selectors=_META + ("spec.clusterIP", "spec.type"))
PODS = KindInfo(
    "", "v1", "pods", "pod", "Pod", True, short_names=("po",), categories=("all",),
    subresources=("binding", "eviction", "status"), definition="io.k8s.api.core.v1.Pod",
    field_selectors=_META + ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                             "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
                             "status.podIP", "status.podIPs", "status.nominatedNodeName"))
NODES = KindInfo(
    "", "v1", "nodes", "node", "Node", False, short_names=("no",), subresources=("status",),
    definition="io.k8s.api.core.v1.Node", field_selectors=_META + ("spec.unschedulable",))
EVENTS = KindInfo(
    "", "v1", "events", "event", "Event", True, short_names=("ev",),
    definition="io.k8s.api.core.v1.Event",
    field_selectors=_META + ("involvedObject.kind", "involvedObject.namespace",
                             "involvedObject.name", "involvedObject.uid",
                             "involvedObject.apiVersion", "involvedObject.resourceVersion",
                             "involvedObject.fieldPath", "reason", "reportingComponent",
                             "source", "type"))
ENDPOINT_SLICES = KindInfo(
    "discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", True,
    definition="io.k8s.api.discovery.v1.EndpointSlice")
LEASES = KindInfo(
    "coordination.k8s.io", "v1", "leases", "lease", "Lease", True,
    definition="io.k8s.api.coordination.v1.Lease")
SERVICE_CIDRS = KindInfo(
    "networking.k8s.io", "v1", "servicecidrs", "servicecidr", "ServiceCIDR", False,
    subresources=("status",), definition="io.k8s.api.networking.v1.ServiceCIDR")
DEPLOYMENTS = KindInfo(
    "apps", "v1", "deployments", "deployment", "Deployment", True, short_names=("deploy",),
    categories=("all",), subresources=("status", "scale"), definition="io.k8s.api.apps.v1.Deployment")

KINDS: tuple[KindInfo, ...] = (
    NAMESPACES, SERVICES, PODS, NODES, EVENTS, ENDPOINT_SLICES, LEASES, SERVICE_CIDRS, DEPLOYMENTS,
)

# Subresources whose objects are not the parent kind: (group, version, kind) for
# discovery's responseKind and for the body of GET/PUT/PATCH on them.
SUBRESOURCE_KINDS: dict[str, tuple[str, str, str]] = {
    "scale": ("autoscaling", "v1", "Scale"),
    "binding": ("", "v1", "Binding"),
    "eviction": ("policy", "v1", "Eviction"),
}
# Subresources that are only POSTed (create), never read or written in place.
CREATE_ONLY_SUBRESOURCES = frozenset({"binding", "eviction"})
# OpenAPI definitions of the subresource kinds (their request and response bodies).
SUBRESOURCE_DEFINITIONS: dict[str, str] = {
    "scale": "io.k8s.api.autoscaling.v1.Scale",
    "binding": "io.k8s.api.core.v1.Binding",
    "eviction": "io.k8s.api.policy.v1.Eviction",
}


def subresource_kind(kind: KindInfo, subresource: str) -> tuple[str, str, str]:
    """(group, version, kind) served at <kind>/<subresource>."""
    return SUBRESOURCE_KINDS.get(subresource, (kind.group, kind.version, kind.kind))


_BY_GVR = {(k.group, k.version, k.plural): k for k in KINDS}
_BY_GVK = {(k.api_version, k.kind): k for k in KINDS}


def kind_for(group: str, version: str, plural: str) -> KindInfo | None:
    """The kind served at /apis/<group>/<version>/<plural> (group "" = /api/v1)."""
    return _BY_GVR.get((group, version, plural))


def kind_by_gvk(api_version: str, kind: str) -> KindInfo | None:
    """The kind of an object by its apiVersion and kind."""
    return _BY_GVK.get((api_version, kind))
