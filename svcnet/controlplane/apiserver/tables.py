"""Server-side printing: objects as `meta.k8s.io/v1` Tables, the way kube-apiserver's
printers (kubernetes `pkg/printers/internalversion/printers.go`) render them.

kubectl has no client-side printers for built-in kinds any more: `kubectl get` asks for
`application/json;as=Table;v=v1;g=meta.k8s.io` and prints the cells it gets. Columns
with `priority: 1` appear only with `-o wide`. Each row carries the object's metadata
as PartialObjectMetadata (`includeObject=Metadata`, the default) so that
`--show-labels` and `-L` work. One `Printer` per kind; kinds without one get NAME AGE.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable, Iterable

Obj = dict[str, Any]
Cell = str | int

TABLE_API_VERSION = "meta.k8s.io/v1"


@dataclass(frozen=True)
class Column:
    name: str
    description: str
    cell: Callable[[Obj, datetime.datetime], Cell]
    type: str = "string"
    format: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format,
                "description": self.description, "priority": self.priority}


# --- helpers shared by the printers ------------------------------------------------------

def human_duration(seconds: float) -> str:
    """apimachinery `duration.HumanDuration`: 45s, 3m20s, 17m, 5h10m, 20h, 3d4h, 40d, 2y10d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rem = s % 60
        return f"{minutes}m{rem}s" if rem else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rem = minutes % 60
        return f"{hours}h{rem}m" if rem else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rem = hours % 24
        return f"{hours // 24}d{rem}h" if rem else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rem = (hours // 24) % 365
        return f"{hours // (24 * 365)}y{rem}d" if rem else f"{hours // (24 * 365)}y"
    return f"{hours // (24 * 365)}y"


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(obj: Obj, now: datetime.datetime) -> str:
    created = parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    return human_duration((now - created).total_seconds()) if created else "<unknown>"


def _name(obj: Obj, _: datetime.datetime) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _age(obj: Obj, now: datetime.datetime) -> str:
    return age(obj, now)


def list_with_more(items: list[str], limit: int = 3, empty: str = "<unset>") -> str:
    """`a,b,c + 2 more...` as kubectl's printers shorten long lists."""
    shown = ",".join(items[:limit])
    if len(items) > limit:
        return f"{shown} + {len(items) - limit} more..."
    return shown or empty


def label_string(labels: dict[str, str] | None) -> str:
    if not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _status(obj: Obj) -> Obj:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


NAME_COL = Column("Name", "Name must be unique within a namespace. More info: "
                  "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
                  _name, format="name")
AGE_COL = Column("Age", "CreationTimestamp is a timestamp representing the server time when this "
                 "object was created.", _age)


# --- Services -----------------------------------------------------------------------------

def service_external_ip(obj: Obj) -> str:
    spec = _spec(obj)
    svc_type = spec.get("type", "ClusterIP")
    external = list(spec.get("externalIPs") or [])
    if svc_type in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else "<none>"
    if svc_type == "LoadBalancer":
        ingress = _status(obj).get("loadBalancer", {}).get("ingress") or []
        ips = [i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")]
        ips += external
        return ",".join(ips) if ips else "<pending>"
    if svc_type == "ExternalName":
        return str(spec.get("externalName", "<none>"))
    return "<unknown>"


def service_ports(obj: Obj) -> str:
    ports = _spec(obj).get("ports") or []
    out = []
    for p in ports:
        proto = p.get("protocol", "TCP")
        if p.get("nodePort"):
            out.append(f"{p.get('port')}:{p['nodePort']}/{proto}")
        else:
            out.append(f"{p.get('port')}/{proto}")
    return ",".join(out) if out else "<none>"


def _svc_cluster_ip(obj: Obj, _: datetime.datetime) -> str:
    ip = _spec(obj).get("clusterIP")
    return str(ip) if ip else "<none>"


SERVICE_COLUMNS = (
    NAME_COL,
    Column("Type", "The type of the service.", lambda o, _: str(_spec(o).get("type", "ClusterIP"))),
    Column("Cluster-IP", "The cluster IP of the service.", _svc_cluster_ip),
    Column("External-IP", "The external IP of the service.", lambda o, _: service_external_ip(o)),
    Column("Port(s)", "The ports of the service.", lambda o, _: service_ports(o)),
    AGE_COL,
    Column("Selector", "The selector of the service.",
           lambda o, _: label_string(_spec(o).get("selector")), priority=1),
)


# --- EndpointSlices --------------------------------------------------------------------------

def slice_ports(obj: Obj) -> str:
    ports = obj.get("ports") or []
    return list_with_more([str(p["port"]) if p.get("port") is not None else str(p.get("name") or "*")
                           for p in ports])


def slice_endpoints(obj: Obj) -> str:
    addresses = [a for ep in obj.get("endpoints") or [] for a in ep.get("addresses") or []]
    return list_with_more(addresses)


ENDPOINTSLICE_COLUMNS = (
    NAME_COL,
    Column("AddressType", "The IP protocol family of the addresses.",
           lambda o, _: str(o.get("addressType", ""))),
    Column("Ports", "The ports of the endpoints.", lambda o, _: slice_ports(o)),
    Column("Endpoints", "The addresses of the endpoints.", lambda o, _: slice_endpoints(o)),
    AGE_COL,
)


# --- Pods ----------------------------------------------------------------------------------------

def pod_ready(obj: Obj) -> str:
    containers = _spec(obj).get("containers") or []
    statuses = _status(obj).get("containerStatuses") or []
    return f"{sum(1 for s in statuses if s.get('ready'))}/{len(containers)}"


def pod_status(obj: Obj) -> str:
    """The STATUS column: phase, refined by a status reason and container states."""
    status = _status(obj)
    reason = str(status.get("reason") or status.get("phase") or "Unknown")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif (state.get("terminated") or {}).get("reason") and status.get("phase") != "Succeeded":
            reason = state["terminated"]["reason"]
    if obj.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def pod_restarts(obj: Obj) -> int:
    return sum(int(cs.get("restartCount", 0)) for cs in _status(obj).get("containerStatuses") or [])


POD_COLUMNS = (
    NAME_COL,
    Column("Ready", "The aggregate readiness state of this pod for accepting traffic.",
           lambda o, _: pod_ready(o)),
    Column("Status", "The aggregate status of the containers in this pod.", lambda o, _: pod_status(o)),
    Column("Restarts", "The number of times the containers in this pod have been restarted.",
           lambda o, _: pod_restarts(o), type="string"),
    AGE_COL,
    Column("IP", "IP address allocated to the pod.",
           lambda o, _: str(_status(o).get("podIP") or "<none>"), priority=1),
    Column("Node", "Name of the Node this pod is assigned to.",
           lambda o, _: str(_spec(o).get("nodeName") or "<none>"), priority=1),
    Column("Nominated Node", "Name of the node this pod is nominated to.",
           lambda o, _: str(_status(o).get("nominatedNodeName") or "<none>"), priority=1),
    Column("Readiness Gates", "Pod readiness gates.",
           lambda o, _: "<none>" if not _spec(o).get("readinessGates") else
           f"0/{len(_spec(o)['readinessGates'])}", priority=1),
)


# --- Nodes ------------------------------------------------------------------------------------------

def node_status(obj: Obj) -> str:
    ready = "Unknown"
    for cond in _status(obj).get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = "Ready" if cond.get("status") == "True" else "NotReady"
    if _spec(obj).get("unschedulable"):
        ready += ",SchedulingDisabled"
    return ready


def node_roles(obj: Obj) -> str:
    labels = obj.get("metadata", {}).get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels
                   if k.startswith("node-role.kubernetes.io/") and "/" in k and k.split("/", 1)[1])
    if labels.get("kubernetes.io/role"):
        roles.append(labels["kubernetes.io/role"])
    return ",".join(sorted(set(roles))) or "<none>"


def _node_address(obj: Obj, kind: str) -> str:
    for addr in _status(obj).get("addresses") or []:
        if addr.get("type") == kind:
            return str(addr.get("address"))
    return "<none>"


def _node_info(obj: Obj, key: str) -> str:
    return str((_status(obj).get("nodeInfo") or {}).get(key) or "<unknown>")


NODE_COLUMNS = (
    NAME_COL,
    Column("Status", "The status of the node.", lambda o, _: node_status(o)),
    Column("Roles", "The roles of the node.", lambda o, _: node_roles(o)),
    AGE_COL,
    Column("Version", "Kubelet Version reported by the node.",
           lambda o, _: str((_status(o).get("nodeInfo") or {}).get("kubeletVersion", ""))),
    Column("Internal-IP", "List of internal IPs in the node.",
           lambda o, _: _node_address(o, "InternalIP"), priority=1),
    Column("External-IP", "List of external IPs in the node.",
           lambda o, _: _node_address(o, "ExternalIP"), priority=1),
    Column("OS-Image", "OS image reported by the node.", lambda o, _: _node_info(o, "osImage"), priority=1),
    Column("Kernel-Version", "Kernel version reported by the node.",
           lambda o, _: _node_info(o, "kernelVersion"), priority=1),
    Column("Container-Runtime", "Container runtime reported by the node.",
           lambda o, _: _node_info(o, "containerRuntimeVersion"), priority=1),
)


# --- Namespaces, Deployments, and the rest ---------------------------------------------------

NAMESPACE_COLUMNS = (
    NAME_COL,
    Column("Status", "The status of the namespace.", lambda o, _: str(_status(o).get("phase", ""))),
    AGE_COL,
)


def _containers(obj: Obj) -> list[Obj]:
    return list(((_spec(obj).get("template") or {}).get("spec") or {}).get("containers") or [])


def _selector_string(selector: Obj | None) -> str:
    if not selector:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator"), expr.get("key"), expr.get("values") or []
        parts.append({"In": f"{key} in ({','.join(values)})",
                      "NotIn": f"{key} notin ({','.join(values)})",
                      "Exists": str(key), "DoesNotExist": f"!{key}"}.get(str(op), str(key)))
    return ",".join(parts) or "<none>"


DEPLOYMENT_COLUMNS = (
    NAME_COL,
    Column("Ready", "Number of the pod with ready state",
           lambda o, _: f"{_status(o).get('readyReplicas', 0)}/{_spec(o).get('replicas', 1)}"),
    Column("Up-to-date", "Total number of non-terminated pods targeted by this deployment that have "
           "the desired template spec.", lambda o, _: int(_status(o).get("updatedReplicas", 0)),
           type="integer"),
    Column("Available", "Total number of available pods (ready for at least minReadySeconds) targeted "
           "by this deployment.", lambda o, _: int(_status(o).get("availableReplicas", 0)), type="integer"),
    AGE_COL,
    Column("Containers", "Names of each container in the template.",
           lambda o, _: ",".join(str(c.get("name", "")) for c in _containers(o)), priority=1),
    Column("Images", "Images referenced by each container in the template.",
           lambda o, _: ",".join(str(c.get("image", "")) for c in _containers(o)), priority=1),
    Column("Selector", "Label selector for pods.",
           lambda o, _: _selector_string(_spec(o).get("selector")), priority=1),
)

LEASE_COLUMNS = (
    NAME_COL,
    Column("Holder", "The holder of the lease.",
           lambda o, _: str(_spec(o).get("holderIdentity") or "")),
    AGE_COL,
)

SERVICECIDR_COLUMNS = (
    NAME_COL,
    Column("CIDRs", "The CIDRs of the service.", lambda o, _: ",".join(_spec(o).get("cidrs") or [])),
    AGE_COL,
)

# --- Events (core/v1) ----------------------------------------------------------------------
# printEvent in kube's printers.go: the server renders wide cells always; kubectl hides the
# priority-1 columns unless -o wide.

def _since(stamp: Any, now: datetime.datetime) -> str:
    when = parse_time(stamp if isinstance(stamp, str) else None)
    return human_duration((now - when).total_seconds()) if when else "<unknown>"


def event_first_seen(obj: Obj, now: datetime.datetime) -> str:
    return _since(obj.get("firstTimestamp") or obj.get("eventTime"), now)


def event_last_seen(obj: Obj, now: datetime.datetime) -> str:
    series = obj.get("series")
    if isinstance(series, dict):
        return _since(series.get("lastObservedTime"), now)
    if obj.get("lastTimestamp"):
        return _since(obj["lastTimestamp"], now)
    return event_first_seen(obj, now)


def event_count(obj: Obj) -> int:
    series = obj.get("series")
    if isinstance(series, dict):
        return int(series.get("count") or 0)
    return int(obj.get("count") or 0) or 1  # singleton events carry no count in events.k8s.io


def event_object(obj: Obj) -> str:
    involved = obj.get("involvedObject") or {}
    kind = str(involved.get("kind") or "").lower()
    return f"{kind}/{involved['name']}" if involved.get("name") else kind


def event_source(obj: Obj) -> str:
    source = obj.get("source") or {}
    component = source.get("component") or obj.get("reportingComponent") or ""
    instance = source.get("host") or obj.get("reportingInstance") or ""
    return f"{component}, {instance}" if instance else str(component)


EVENT_COLUMNS = (
    Column("Last Seen", "The time at which the most recent occurrence of this event was recorded.",
           event_last_seen),
    Column("Type", "Type of this event (Normal, Warning), new types could be added in the future",
           lambda o, _: str(o.get("type") or "")),
    Column("Reason", "This should be a short, machine understandable string that gives the reason "
           "for the transition into the object's current status.",
           lambda o, _: str(o.get("reason") or "")),
    Column("Object", "The object that this event is about.", lambda o, _: event_object(o)),
    Column("Subobject", "If referring to a piece of an object instead of an entire object, this "
           "string should contain a valid JSON/Go field access statement, such as "
           "desiredState.manifest.containers[2].",
           lambda o, _: str((o.get("involvedObject") or {}).get("fieldPath") or ""), priority=1),
    Column("Source", "The component reporting this event. Should be a short machine understandable "
           "string.", lambda o, _: event_source(o), priority=1),
    Column("Message", "A human-readable description of the status of this operation.",
           lambda o, _: str(o.get("message") or "").strip()),
    Column("First Seen", "The time at which the event was first recorded. (Time of server receipt is "
           "in TypeMeta.)", event_first_seen, priority=1),
    Column("Count", "The number of times this event has occurred.", lambda o, _: event_count(o),
           priority=1),
    Column("Name", NAME_COL.description, _name, format="name", priority=1),
)

# --- Scale (autoscaling/v1, the scale subresource: `kubectl get deploy web --subresource=scale`)

SCALE_COLUMNS = (
    NAME_COL,
    Column("Desired", "desired number of instances for the scaled object.",
           lambda o, _: int(_spec(o).get("replicas") or 0), type="integer"),
    Column("Available", "actual number of observed instances of the scaled object.",
           lambda o, _: int(_status(o).get("replicas") or 0), type="integer"),
)

DEFAULT_COLUMNS = (NAME_COL, AGE_COL)

# (group, plural) -> columns
PRINTERS: dict[tuple[str, str], tuple[Column, ...]] = {
    ("", "services"): SERVICE_COLUMNS,
    ("discovery.k8s.io", "endpointslices"): ENDPOINTSLICE_COLUMNS,
    ("", "pods"): POD_COLUMNS,
    ("", "nodes"): NODE_COLUMNS,
    ("", "namespaces"): NAMESPACE_COLUMNS,
    ("apps", "deployments"): DEPLOYMENT_COLUMNS,
    ("coordination.k8s.io", "leases"): LEASE_COLUMNS,
    ("networking.k8s.io", "servicecidrs"): SERVICECIDR_COLUMNS,
    ("", "events"): EVENT_COLUMNS,
    ("autoscaling", "scale"): SCALE_COLUMNS,  # a subresource's view: (group of its kind, name)
}


def columns_for(group: str, plural: str) -> tuple[Column, ...]:
    return PRINTERS.get((group, plural), DEFAULT_COLUMNS)


def row(columns: Iterable[Column], obj: Obj, now: datetime.datetime,
        include_object: str = "Metadata") -> dict[str, Any]:
    """One Table row; `include_object` is the `includeObject` query parameter."""
    out: dict[str, Any] = {"cells": [c.cell(obj, now) for c in columns]}
    if include_object == "Object":
        out["object"] = obj
    elif include_object == "Metadata":
        out["object"] = {"kind": "PartialObjectMetadata", "apiVersion": TABLE_API_VERSION,
                         "metadata": obj.get("metadata", {})}
    return out


def to_table(group: str, plural: str, objects: Iterable[Obj], *, resource_version: str = "",
             continue_token: str = "", remaining: int | None = None, include_object: str = "Metadata",
             with_headers: bool = True, now: datetime.datetime | None = None) -> dict[str, Any]:
    """A Table of `objects`; `with_headers=False` leaves out column definitions (watch events
    after the first, as kube-apiserver's watch does)."""
    columns = columns_for(group, plural)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    meta: dict[str, Any] = {}
    if resource_version:
        meta["resourceVersion"] = resource_version
    if continue_token:
        meta["continue"] = continue_token
    if remaining is not None:
        meta["remainingItemCount"] = remaining
    return {
        "kind": "Table", "apiVersion": TABLE_API_VERSION, "metadata": meta,
        "columnDefinitions": [c.definition() for c in columns] if with_headers else [],
        "rows": [row(columns, o, now, include_object) for o in objects],
    }
