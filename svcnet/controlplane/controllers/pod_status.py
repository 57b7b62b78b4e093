"""Questions controllers ask about pods and nodes, answered the way Kubernetes does
(`k8s.io/kubernetes/pkg/api/v1/pod` and `.../node` helpers)."""

from __future__ import annotations

import ipaddress
from typing import Any

from svcnet.apiclient.objects import Obj

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def conditions_of(obj: Obj) -> list[dict[str, Any]]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return [c for c in conds if isinstance(c, dict)]


def condition(obj: Obj, ctype: str) -> dict[str, Any] | None:
    return next((c for c in conditions_of(obj) if c.get("type") == ctype), None)


def is_pod_ready(pod: Obj) -> bool:
    """The pod's Ready condition is True (podutil.IsPodReady)."""
    cond = condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def is_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


def is_terminating(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def is_active(pod: Obj) -> bool:
    """Counted by controllers that own pods: not finished and not being deleted
    (controller.FilterActivePods)."""
    return not is_terminal(pod) and not is_terminating(pod)


def pod_ips(pod: Obj) -> list[str]:
    """status.podIPs, falling back to status.podIP for writers that only set the old field."""
    status = pod.get("status") or {}
    ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if isinstance(p, dict) and p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return ips


def ip_family(address: str) -> str | None:
    """`IPv4` or `IPv6` (the EndpointSlice addressType spelling), None for a non-IP."""
    try:
        return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"
    except ValueError:
        return None


def node_name_of(pod: Obj) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def is_node_ready(node: Obj) -> bool:
    cond = condition(node, "Ready")
    return cond is not None and cond.get("status") == "True"


ZONE_LABEL = "topology.kubernetes.io/zone"


def zone_of(node: Obj) -> str | None:
    labels = (node.get("metadata") or {}).get("labels") or {}
    zone = labels.get(ZONE_LABEL)
    return str(zone) if zone else None


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """An equality-based selector (a Service's spec.selector, a nodeSelector)."""
    return all(labels.get(k) == v for k, v in selector.items())
