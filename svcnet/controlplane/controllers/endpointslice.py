"""The EndpointSlices a Service should have, computed as data from its pods.

This is the reconciler of Kubernetes' EndpointSlice controller
(`k8s.io/endpointslice` `reconciler.go`, `utils.go`) as a pure function:
`reconcile_slices(service, pods, existing, zones)` returns `SliceChanges` — the
slices to create, update and delete — and writes nothing. The manager applies it.

What it reproduces, because kube-proxy and DNS rely on it:

* Address types follow `spec.ipFamilies` (one slice set per family); an old Service
  without families uses its ClusterIP's family, a headless one both.
* Which pods: selector match in the Service's namespace, not terminal, with an IP of
  the family. Terminating pods stay, with `terminating: true`.
* Conditions: `serving` = the pod's Ready condition, `terminating` = deletionTimestamp
  set, `ready = serving and not terminating`, or always true with
  `publishNotReadyAddresses`.
* Ports: one per Service port, named like it; a named targetPort is resolved per pod
  from its container ports of the same protocol, so pods that resolve differently land
  in different slices (one slice set per port mapping). Ports that do not resolve are
  left out for that pod.
* `hostname` when the pod's `spec.hostname` is set and its `spec.subdomain` names the
  Service; `nodeName` and `zone` (the node's `topology.kubernetes.io/zone` label);
  `targetRef` to the pod.
* Slices carry the Service's labels (minus reserved keys), `kubernetes.io/service-name`,
  `endpointslice.kubernetes.io/managed-by`, `service.kubernetes.io/headless` for
  headless Services, a controller ownerReference, `generateName: <svc>-`, and the
  `endpoints.kubernetes.io/last-change-trigger-time` annotation on every write.
* Churn is minimal: endpoints stay in the slice they are in; a slice is written only
  when its endpoints, ports or labels changed; new endpoints first fill slices that are
  being updated anyway (fullest first), then the fullest unchanged slice that can take
  all of them, and only then a new slice; a slice that would be deleted is reused for a
  slice that would be created. A Service with no endpoints keeps one placeholder slice.

Differences from upstream, on purpose: endpoints are ordered by address rather than
popped from a hash set, so results are deterministic; hints come only from
`spec.trafficDistribution` (`PreferClose`/`PreferSameZone`: `forZones` = the endpoint's
zone; `PreferSameNode`: also `forNodes` = its node), not from the proportional
`service.kubernetes.io/topology-mode: Auto` heuristic;
the placeholder is made once per Service (for its primary family) rather than per family.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from svcnet.apiclient.objects import Obj, labels_of, meta, name_of, namespace_of
from svcnet.controlplane.controllers.pod_status import (
    ip_family,
    is_pod_ready,
    is_terminal,
    is_terminating,
    node_name_of,
    pod_ips,
    selector_matches,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
HEADLESS_LABEL = "service.kubernetes.io/headless"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
RESERVED_LABELS = frozenset({SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL})
DEFAULT_MAX_ENDPOINTS_PER_SLICE = 100
# trafficDistribution values that give each endpoint a hint for its own zone
TRAFFIC_DISTRIBUTION_HINTS = frozenset({"PreferClose", "PreferSameZone", "PreferSameNode"})


# -- the model ---------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class EndpointPort:
    name: str | None
    port: int | None
    protocol: str
    app_protocol: str | None = None

    def to_obj(self) -> Obj:
        out: Obj = {}
        if self.name is not None:
            out["name"] = self.name
        if self.port is not None:
            out["port"] = self.port
        out["protocol"] = self.protocol
        if self.app_protocol is not None:
            out["appProtocol"] = self.app_protocol
        return out

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> "EndpointPort":
        port = obj.get("port")
        return cls(obj.get("name"), int(port) if port is not None else None,
                   str(obj.get("protocol") or "TCP"), obj.get("appProtocol"))


@dataclass(frozen=True)
class TargetRef:
    kind: str
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Endpoint:
    """One endpoint as the controller writes it. `None` conditions mean "unset",
    which only occurs in slices someone else wrote; they never equal ours."""

    addresses: tuple[str, ...]
    ready: bool | None
    serving: bool | None
    terminating: bool | None
    hostname: str | None = None
    node_name: str | None = None
    zone: str | None = None
    target_ref: TargetRef | None = None
    hint_zones: tuple[str, ...] = ()
    hint_nodes: tuple[str, ...] = ()

    def identity(self) -> tuple[Any, ...]:
        """What makes two endpoints "the same endpoint" (upstream `hashEndpoint`):
        addresses, hostname and the pod it refers to; conditions may differ."""
        ref = (self.target_ref.namespace, self.target_ref.name) if self.target_ref else ("", "")
        return (tuple(sorted(self.addresses)), self.hostname or "", ref)

    def to_obj(self) -> Obj:
        out: Obj = {"addresses": list(self.addresses), "conditions": {}}
        for key, value in (("ready", self.ready), ("serving", self.serving),
                           ("terminating", self.terminating)):
            if value is not None:
                out["conditions"][key] = value
        if self.hostname is not None:
            out["hostname"] = self.hostname
        if self.target_ref is not None:
            ref: Obj = {"kind": self.target_ref.kind, "namespace": self.target_ref.namespace,
                        "name": self.target_ref.name}
            if self.target_ref.uid:
                ref["uid"] = self.target_ref.uid
            out["targetRef"] = ref
        if self.node_name is not None:
            out["nodeName"] = self.node_name
        if self.zone is not None:
            out["zone"] = self.zone
        if self.hint_zones or self.hint_nodes:
            hints: Obj = {}
            if self.hint_zones:
                hints["forZones"] = [{"name": z} for z in self.hint_zones]
            if self.hint_nodes:
                hints["forNodes"] = [{"name": n} for n in self.hint_nodes]
            out["hints"] = hints
        return out

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> "Endpoint":
        cond = obj.get("conditions") or {}
        ref = obj.get("targetRef")
        target = TargetRef(str(ref.get("kind") or ""), str(ref.get("namespace") or ""),
                           str(ref.get("name") or ""), str(ref.get("uid") or "")) if ref else None
        hints = obj.get("hints") or {}
        return cls(tuple(str(a) for a in obj.get("addresses") or ()), cond.get("ready"),
                   cond.get("serving"), cond.get("terminating"), obj.get("hostname"),
                   obj.get("nodeName"), obj.get("zone"), target,
                   tuple(str(z.get("name")) for z in hints.get("forZones") or []),
                   tuple(str(n.get("name")) for n in hints.get("forNodes") or []))


PortMapping = tuple[EndpointPort, ...]


@dataclass(frozen=True)
class SliceChanges:
    """What to write. `update` entries keep the existing slice's metadata (name,
    resourceVersion) so writes are conditional; `create` entries have generateName."""

    create: list[Obj] = field(default_factory=list)
    update: list[Obj] = field(default_factory=list)
    delete: list[Obj] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


# -- desired state ---------------------------------------------------------------


def has_selector(service: Obj) -> bool:
    spec = service.get("spec") or {}
    return bool(spec.get("selector")) and spec.get("type") != "ExternalName"


def address_types(service: Obj) -> list[str]:
    """upstream `getAddressTypesForService`, primary family first."""
    spec = service.get("spec") or {}
    types = [f for f in spec.get("ipFamilies") or [] if f in ("IPv4", "IPv6")]
    if types:
        return list(dict.fromkeys(types))
    cluster_ip = spec.get("clusterIP") or ""
    if cluster_ip and cluster_ip != "None":
        return [ip_family(cluster_ip) or "IPv4"]
    return ["IPv4", "IPv6"]  # headless without families: both, as upstream assumes


def is_headless(service: Obj) -> bool:
    return (service.get("spec") or {}).get("clusterIP") in (None, "", "None")


def resolve_target_port(pod: Obj, service_port: Mapping[str, Any]) -> int | None:
    """upstream `podutil.FindPort`: a number is used as is; a name is looked up in the
    pod's container ports with the Service port's protocol (sidecar init containers too)."""
    target = service_port.get("targetPort")
    if target is None or target == "" or target == 0:
        target = service_port.get("port")
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = service_port.get("protocol") or "TCP"
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or [])
    containers += [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    for container in containers:
        for port in container.get("ports") or []:
            if port.get("name") == target and (port.get("protocol") or "TCP") == protocol:
                cport = port.get("containerPort")
                return int(cport) if cport is not None else None
    return None


def endpoint_ports(service: Obj, pod: Obj) -> PortMapping:
    ports = []
    for sp in (service.get("spec") or {}).get("ports") or []:
        number = resolve_target_port(pod, sp)
        if number is None:
            continue
        ports.append(EndpointPort(sp.get("name") or "", number, sp.get("protocol") or "TCP",
                                  sp.get("appProtocol")))
    return tuple(ports)


def pod_endpoint(pod: Obj, service: Obj, address_type: str, zones: Mapping[str, str]) -> Endpoint | None:
    """upstream `podToEndpoint`; None when the pod has no address of this family."""
    addresses = tuple(ip for ip in pod_ips(pod) if ip_family(ip) == address_type)
    if not addresses:
        return None
    serving = is_pod_ready(pod)
    terminating = is_terminating(pod)
    publish = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    spec = pod.get("spec") or {}
    hostname = None
    if spec.get("hostname") and spec.get("subdomain") == name_of(service) \
            and namespace_of(pod) == namespace_of(service):
        hostname = str(spec["hostname"])
    node = node_name_of(pod) or None
    zone = zones.get(node) if node else None
    distribution = (service.get("spec") or {}).get("trafficDistribution")
    hint_zones = (zone,) if zone and distribution in TRAFFIC_DISTRIBUTION_HINTS else ()
    hint_nodes = (node,) if node and distribution == "PreferSameNode" else ()
    return Endpoint(
        addresses=addresses,
        ready=publish or (serving and not terminating),
        serving=serving,
        terminating=terminating,
        hostname=hostname,
        node_name=node,
        zone=zone,
        target_ref=TargetRef("Pod", namespace_of(pod), name_of(pod), str(meta(pod).get("uid") or "")),
        hint_zones=hint_zones,
        hint_nodes=hint_nodes,
    )


def selected_pods(service: Obj, pods: Iterable[Obj]) -> list[Obj]:
    """Pods the Service selects that belong in its slices (upstream `ShouldPodBeInEndpoints`
    with terminating pods included)."""
    selector = (service.get("spec") or {}).get("selector") or {}
    ns = namespace_of(service)
    return [p for p in pods
            if namespace_of(p) == ns and selector and selector_matches(selector, labels_of(p))
            and not is_terminal(p) and pod_ips(p)]


def desired_endpoints(service: Obj, pods: Iterable[Obj], address_type: str,
                      zones: Mapping[str, str]) -> dict[PortMapping, dict[tuple[Any, ...], Endpoint]]:
    """Endpoints of one family grouped by port mapping, each group keyed by identity."""
    out: dict[PortMapping, dict[tuple[Any, ...], Endpoint]] = {}
    for pod in selected_pods(service, pods):
        ep = pod_endpoint(pod, service, address_type, zones)
        if ep is None:
            continue
        out.setdefault(endpoint_ports(service, pod), {}).setdefault(ep.identity(), ep)
    return out


def slice_labels(service: Obj) -> dict[str, str]:
    labels = {k: v for k, v in labels_of(service).items() if k not in RESERVED_LABELS}
    if is_headless(service):
        labels[HEADLESS_LABEL] = ""
    labels[SERVICE_NAME_LABEL] = name_of(service)
    labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
    return labels


def owner_reference(service: Obj) -> Obj:
    return {"apiVersion": "v1", "kind": "Service", "name": name_of(service),
            "uid": str(meta(service).get("uid") or ""), "controller": True,
            "blockOwnerDeletion": True}


def owned_by(slice_obj: Obj, service: Obj) -> bool:
    """The slice's controller reference points at this Service (by uid when known),
    so slices left behind by a deleted Service of the same name are not reused."""
    uid = meta(service).get("uid")
    for ref in meta(slice_obj).get("ownerReferences") or []:
        if ref.get("kind") == "Service" and ref.get("controller"):
            return bool(ref.get("uid") == uid if uid else ref.get("name") == name_of(service))
    return False


# -- reconciling against what exists ---------------------------------------------


@dataclass
class _Draft:
    """A slice being planned: an existing one (possibly modified) or a new one."""

    address_type: str
    ports: PortMapping
    endpoints: list[Endpoint]
    existing: Obj | None = None
    changed: bool = False


def _parse_slice(obj: Obj) -> _Draft:
    return _Draft(
        address_type=str(obj.get("addressType") or ""),
        ports=tuple(EndpointPort.from_obj(p) for p in obj.get("ports") or []),
        endpoints=[Endpoint.from_obj(e) for e in obj.get("endpoints") or []],
        existing=obj,
    )


def _port_key(ports: PortMapping) -> PortMapping:
    return tuple(sorted(ports, key=lambda p: (p.name or "", p.port or 0, p.protocol, p.app_protocol or "")))


def _reconcile_port_mapping(existing: list[_Draft], desired: dict[tuple[Any, ...], Endpoint],
                            ports: PortMapping, address_type: str, max_per_slice: int) -> list[_Draft]:
    """upstream `reconcileByPortMapping`: returns drafts; `changed` marks the ones to write."""
    remaining = dict(desired)
    # 1. keep, refresh or drop the endpoints already in each slice
    for draft in existing:
        kept: list[Endpoint] = []
        for ep in draft.endpoints:
            want = remaining.pop(ep.identity(), None)
            if want is None:
                draft.changed = True
            else:
                kept.append(want)
                if want != ep:
                    draft.changed = True
        draft.endpoints = kept
        if draft.ports != ports:  # same mapping, different order or spelling
            draft.ports = ports
            draft.changed = True
    new_eps = [remaining[k] for k in sorted(remaining)]
    # 2. slices being written anyway take new endpoints first, fullest first
    for draft in sorted((d for d in existing if d.changed and d.endpoints),
                        key=lambda d: -len(d.endpoints)):
        while new_eps and len(draft.endpoints) < max_per_slice:
            draft.endpoints.append(new_eps.pop(0))
    # 3. then the fullest unchanged slice that can take all the rest, else new slices
    created: list[_Draft] = []
    while new_eps:
        target = None
        if len(new_eps) < max_per_slice:
            fits = [d for d in existing if not d.changed and len(d.endpoints) + len(new_eps) <= max_per_slice]
            target = max(fits, key=lambda d: len(d.endpoints), default=None)
        if target is None:
            target = _Draft(address_type, ports, [])
            created.append(target)
        target.changed = True
        while new_eps and len(target.endpoints) < max_per_slice:
            target.endpoints.append(new_eps.pop(0))
    return existing + created


def reconcile_slices(
    service: Obj,
    pods: Iterable[Obj],
    existing: Iterable[Obj],
    zones: Mapping[str, str] | None = None,
    *,
    max_endpoints_per_slice: int = DEFAULT_MAX_ENDPOINTS_PER_SLICE,
    trigger_time: str | None = None,
) -> SliceChanges:
    """The writes that make `existing` (this controller's slices for the Service) right.

    `pods` may hold any pods; the Service's selector and namespace pick. `zones` maps
    node name → zone. A Service without a selector (or of type ExternalName) should
    have none of this controller's slices, so they are all deleted.
    """
    if max_endpoints_per_slice < 1:
        raise ValueError("max_endpoints_per_slice must be at least 1")
    existing = list(existing)
    if not has_selector(service):
        return SliceChanges(delete=existing)
    zones = zones or {}
    pods = list(pods)
    families = address_types(service)
    labels = slice_labels(service)

    to_delete: list[Obj] = []
    drafts: list[_Draft] = []
    by_family: dict[str, dict[PortMapping, list[_Draft]]] = {f: {} for f in families}
    for obj in existing:
        draft = _parse_slice(obj)
        if draft.address_type not in by_family or not owned_by(obj, service):
            to_delete.append(obj)
            continue
        if labels_of(obj) != labels or meta(obj).get("ownerReferences") != [owner_reference(service)]:
            draft.changed = True
        by_family[draft.address_type].setdefault(_port_key(draft.ports), []).append(draft)

    for family in families:
        wanted = desired_endpoints(service, pods, family, zones)
        wanted_by_key = {_port_key(ports): (ports, eps) for ports, eps in wanted.items()}
        for key, slices in by_family[family].items():
            if key not in wanted_by_key:
                to_delete.extend(d.existing for d in slices if d.existing is not None)
        for key, (ports, eps) in sorted(wanted_by_key.items()):
            drafts += _reconcile_port_mapping(by_family[family].pop(key, []), eps, ports, family,
                                              max_endpoints_per_slice)

    # Slices left with no endpoints are deleted, not written empty.
    for draft in [d for d in drafts if d.changed and not d.endpoints]:
        drafts.remove(draft)
        if draft.existing is not None:
            to_delete.append(draft.existing)
    # Placeholder: a Service with a selector always has at least one slice.
    if not drafts:
        placeholder = next((o for o in to_delete if _is_placeholder(o, families[0], labels, service)), None)
        if placeholder is not None:
            to_delete.remove(placeholder)
        else:
            drafts.append(_Draft(families[0], (), [], changed=True))

    creates = [d for d in drafts if d.changed and d.existing is None]
    updates = [d for d in drafts if d.changed and d.existing is not None]
    # Rather than delete one slice and create another, rewrite the one being deleted
    # (same family, owned by this Service: addressType is immutable).
    for old in list(to_delete):
        if not creates:
            break
        if owned_by(old, service) and old.get("addressType") == creates[-1].address_type:
            draft = creates.pop()
            draft.existing = old
            updates.append(draft)
            to_delete.remove(old)
    return SliceChanges(
        create=[_render(service, d, labels, trigger_time) for d in creates],
        update=[_render(service, d, labels, trigger_time) for d in updates],
        delete=to_delete,
    )


def _is_placeholder(obj: Obj, family: str, labels: dict[str, str], service: Obj) -> bool:
    return (obj.get("addressType") == family and not obj.get("endpoints") and not obj.get("ports")
            and labels_of(obj) == labels and owned_by(obj, service))


def _render(service: Obj, draft: _Draft, labels: dict[str, str], trigger_time: str | None) -> Obj:
    if draft.existing is not None:
        obj = copy.deepcopy(draft.existing)
        md = obj.setdefault("metadata", {})
    else:
        obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice"}
        md = obj["metadata"] = {"generateName": f"{name_of(service)}-", "namespace": namespace_of(service)}
    md["labels"] = dict(labels)
    md["ownerReferences"] = [owner_reference(service)]
    annotations = dict(md.get("annotations") or {})
    if trigger_time:
        annotations[TRIGGER_TIME_ANNOTATION] = trigger_time
    else:
        annotations.pop(TRIGGER_TIME_ANNOTATION, None)
    if annotations:
        md["annotations"] = annotations
    else:
        md.pop("annotations", None)
    obj["addressType"] = draft.address_type
    obj["endpoints"] = [ep.to_obj() for ep in draft.endpoints]
    obj["ports"] = [p.to_obj() for p in draft.ports]
    return obj
