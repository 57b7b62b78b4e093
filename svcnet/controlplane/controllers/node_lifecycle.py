"""Node health from heartbeats: the node lifecycle controller's monitor, as data.

After Kubernetes' `nodelifecycle` controller (`tryUpdateNodeHealth`, `MarkPodsNotReady`):

* A node proves it is alive by renewing its Lease in `kube-node-lease` (or by a new
  `lastHeartbeatTime` on its Ready condition). The controller does not trust the
  timestamps' clock: it remembers *when it saw them change* (the probe timestamp),
  measured on its own injectable clock.
* When nothing changed for `grace_period` (kube-controller-manager's
  `--node-monitor-grace-period`, 40 s), the Ready, MemoryPressure, DiskPressure and
  PIDPressure conditions become `Unknown`, reason `NodeStatusUnknown`, "Kubelet stopped
  posting node status." A node that never posted a Ready condition gets
  `startup_grace_period` (60 s) and reason `NodeStatusNeverUpdated`.
* Pods on a node that is not Ready get their Ready condition set to False, so their
  endpoints leave every Service.
* Recovery: when heartbeats resume, the conditions this controller turned Unknown get
  back the status and reason the node last posted (remembered in memory; after a
  controller restart, what a live kubelet posts: Ready True/KubeletReady, pressures
  False). A kubelet rewrites its own status too; this is the safety net for agents that
  only renew their Lease. Pods whose Ready condition this controller forced to False
  (reason NodeNotReady) get Ready back from their containerStatuses. Conditions set by
  anybody else are left alone.

Not implemented: NoExecute taints and eviction of pods from lost nodes, zone
disruption states.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

from svcnet.apiclient.objects import Obj, name_of
from svcnet.controlplane.controllers.clock import format_time
from svcnet.controlplane.controllers.pod_status import condition, is_terminal, node_name_of

NODE_LEASE_NAMESPACE = "kube-node-lease"
MONITORED_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
REASON_UNKNOWN = "NodeStatusUnknown"
REASON_NEVER_UPDATED = "NodeStatusNeverUpdated"
REASON_POD_NODE_NOT_READY = "NodeNotReady"


@dataclass
class _Health:
    heartbeat: tuple[str, str]  # (lease renewTime, Ready lastHeartbeatTime) as last seen
    probe: float  # our clock when the heartbeat last changed
    saved: dict[str, tuple[str, str]] = field(default_factory=dict)  # condition -> (status, reason)


# What a live kubelet posts; used to restore a condition whose earlier value we do not
# remember (the controller restarted while the node was silent).
HEALTHY = {
    "Ready": ("True", "KubeletReady"),
    "MemoryPressure": ("False", "KubeletHasSufficientMemory"),
    "DiskPressure": ("False", "KubeletHasNoDiskPressure"),
    "PIDPressure": ("False", "KubeletHasSufficientPID"),
}


@dataclass
class NodeHealthTracker:
    """Per-node probe timestamps; `plan_node` says how a node's status should change."""

    grace_period: float = 40.0
    startup_grace_period: float = 60.0
    _health: dict[str, _Health] = field(default_factory=dict)

    def observe(self, node: Obj, lease: Obj | None, now: float) -> None:
        """Record a heartbeat if the Lease or the Ready heartbeat moved since last seen."""
        ready = condition(node, "Ready") or {}
        beat = (str(((lease or {}).get("spec") or {}).get("renewTime") or ""),
                str(ready.get("lastHeartbeatTime") or ""))
        h = self._health.get(name_of(node))
        if h is None:
            # First sight (also after our own restart): give the node a whole grace period.
            self._health[name_of(node)] = _Health(beat, now)
        elif beat != h.heartbeat:
            h.heartbeat, h.probe = beat, now

    def forget(self, name: str) -> None:
        self._health.pop(name, None)

    def _grace(self, node: Obj) -> float:
        return self.grace_period if condition(node, "Ready") else self.startup_grace_period

    def is_silent(self, node: Obj, now: float) -> bool:
        h = self._health.get(name_of(node))
        return h is not None and now > h.probe + self._grace(node)

    def seconds_until_silent(self, node: Obj, now: float) -> float | None:
        """How long until the node counts as silent; None for a node never observed."""
        h = self._health.get(name_of(node))
        return None if h is None else max(0.0, h.probe + self._grace(node) - now)

    def plan_node(self, node: Obj, now: float) -> Obj | None:
        """The node with updated status conditions, or None when nothing should change."""
        h = self._health.get(name_of(node))
        if h is None:
            return None
        if self.is_silent(node, now):
            return self._mark_unknown(node, h, now)
        return self._restore(node, h, now)

    def _mark_unknown(self, node: Obj, h: _Health, now: float) -> Obj | None:
        new = copy.deepcopy(node)
        conds: list[dict[str, Any]] = new.setdefault("status", {}).setdefault("conditions", [])
        stamp = format_time(now)
        changed = False
        for ctype in MONITORED_CONDITIONS:
            cond = next((c for c in conds if c.get("type") == ctype), None)
            if cond is None:
                conds.append({"type": ctype, "status": "Unknown", "reason": REASON_NEVER_UPDATED,
                              "message": "Kubelet never posted node status.",
                              "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
                changed = True
            elif cond.get("status") != "Unknown":
                h.saved[ctype] = (str(cond.get("status")), str(cond.get("reason") or ""))
                cond.update(status="Unknown", reason=REASON_UNKNOWN,
                            message="Kubelet stopped posting node status.", lastTransitionTime=stamp)
                changed = True
        return new if changed else None

    def _restore(self, node: Obj, h: _Health, now: float) -> Obj | None:
        """Undo the Unknown this controller set, for conditions nobody rewrote since."""
        new = copy.deepcopy(node)
        changed = False
        for cond in (new.get("status") or {}).get("conditions") or []:
            ctype = cond.get("type")
            if ctype in MONITORED_CONDITIONS and cond.get("reason") == REASON_UNKNOWN:
                status, reason = h.saved.get(ctype) or HEALTHY[ctype]
                cond.update(status=status, reason=reason, message="Node heartbeats resumed.",
                            lastTransitionTime=format_time(now))
                changed = True
        h.saved.clear()
        return new if changed else None


def node_ready_status(node: Obj) -> str:
    cond = condition(node, "Ready")
    return str(cond.get("status")) if cond else "Unknown"


def plan_pod_updates(node: Obj, pods: Iterable[Obj], now: float) -> list[Obj]:
    """Pods on `node` whose Ready condition should change, as updated pod objects."""
    ready_node = node_ready_status(node) == "True"
    out = []
    for pod in pods:
        if node_name_of(pod) != name_of(node) or is_terminal(pod):
            continue
        new = copy.deepcopy(pod)
        cond = condition(new, "Ready")
        if cond is None:
            continue
        if not ready_node and cond.get("status") != "False":
            cond.update(status="False", reason=REASON_POD_NODE_NOT_READY,
                        message=f"Node {name_of(node)} is not ready", lastTransitionTime=format_time(now))
            out.append(new)
        elif ready_node and cond.get("reason") == REASON_POD_NODE_NOT_READY:
            if containers_ready(new):
                cond.update(status="True", lastTransitionTime=format_time(now))
            cond.pop("reason", None)
            cond.pop("message", None)
            out.append(new)
    return out


def containers_ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    return status.get("phase") == "Running" and bool(statuses) and all(s.get("ready") for s in statuses)
