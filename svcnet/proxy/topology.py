"""Which endpoints a Service port may use on this node: readiness, traffic policies,
topology hints. kube-proxy's `CategorizeEndpoints`, shared by both backends.

* Cluster endpoints: the ready ones (narrowed by topology hints when every ready
  endpoint carries hints and some hint names this node or its zone); if none is
  ready, the ones that are serving and terminating (KEP-1669). `serving: false`
  endpoints are never used.
* Local endpoints: the same readiness fallback over endpoints on this node, with
  hints ignored (Local policies already pin traffic to the node).
"""

from __future__ import annotations

from dataclasses import dataclass

from svcnet.proxy.model import Endpoint, ServicePort

PREFER_SAME_NODE = "PreferSameNode"
PREFER_SAME_ZONE = "PreferSameZone"


@dataclass(frozen=True)
class Categorized:
    cluster: tuple[Endpoint, ...]  # for Cluster-policy traffic
    local: tuple[Endpoint, ...]  # for Local-policy traffic
    all_reachable: tuple[Endpoint, ...]  # union: what conntrack cleanup treats as serving
    has_any: bool  # some endpoint could serve (the service is not "without endpoints")

    # The per-service-port decisions both backends take from these sets (they
    # differ only in how they write the answer down):

    def internal(self, sp: ServicePort) -> tuple[Endpoint, ...]:
        """Endpoints for ClusterIP traffic (internalTrafficPolicy)."""
        return self.local if sp.internal_policy_local else self.cluster

    def external(self, sp: ServicePort) -> tuple[Endpoint, ...]:
        """Endpoints for NodePort, externalIP and LoadBalancer traffic (externalTrafficPolicy)."""
        return self.local if sp.external_policy_local else self.cluster

    @property
    def when_none_usable(self) -> str:
        """What traffic that finds no endpoint gets: "drop" when the Service has
        endpoints elsewhere (a Local policy with none on this node), "reject" when it
        has none at all (ICMP unreachable / TCP RST, as kube-proxy)."""
        return "drop" if self.has_any else "reject"

    @property
    def distinct(self) -> tuple[Endpoint, ...]:
        """Cluster and local endpoints once each by address (the per-endpoint rules:
        hairpin marking, affinity sets, SEP chains)."""
        return tuple({e.address: e for e in (*self.cluster, *self.local)}.values())


def topology_mode(endpoints: tuple[Endpoint, ...], node_name: str, zone: str) -> str:
    """Which hints to honour: PreferSameNode, PreferSameZone, or "" (none)."""
    ready = [e for e in endpoints if e.ready]
    if not ready:
        return ""
    if not ready[0].node_hints and not ready[0].zone_hints:
        return ""  # hints count only when every ready endpoint has them: the common case ends here
    if all(e.node_hints for e in ready) and any(node_name in e.node_hints for e in ready):
        return PREFER_SAME_NODE
    if all(e.zone_hints for e in ready) and zone and any(zone in e.zone_hints for e in ready):
        return PREFER_SAME_ZONE
    return ""


def _available(e: Endpoint, mode: str, node_name: str, zone: str) -> bool:
    if mode == PREFER_SAME_NODE:
        return node_name in e.node_hints
    if mode == PREFER_SAME_ZONE:
        return zone in e.zone_hints
    return True


def categorize(sp: ServicePort, endpoints: tuple[Endpoint, ...], node_name: str, zone: str) -> Categorized:
    cluster: tuple[Endpoint, ...] = ()
    has_any = False
    if sp.uses_cluster_endpoints:
        mode = topology_mode(endpoints, node_name, zone)
        cluster = tuple(e for e in endpoints if e.ready and _available(e, mode, node_name, zone))
        if not cluster:
            cluster = tuple(
                e for e in endpoints if e.serving and e.terminating and _available(e, mode, node_name, zone)
            )
        has_any = bool(cluster)
    if not sp.uses_local_endpoints:
        return Categorized(cluster, (), cluster, has_any)
    local_ready = tuple(e for e in endpoints if e.ready and e.is_local)
    if any(e.ready or (e.serving and e.terminating) for e in endpoints):
        has_any = True
    local = local_ready or tuple(e for e in endpoints if e.serving and e.terminating and e.is_local)
    if not sp.uses_cluster_endpoints:
        return Categorized((), local, local, has_any)
    seen = {e.address for e in cluster}
    union = cluster + tuple(e for e in local if e.address not in seen)
    return Categorized(cluster, local, union, has_any)
