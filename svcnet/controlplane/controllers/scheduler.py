"""Which node a pod should run on: kube-scheduler's default filters, in miniature.

`schedule(pod, nodes, pods_per_node)` is pure. It runs the filters that matter on a
lab cluster and explains every node it rejects, the way kube-scheduler's
FailedScheduling event does ("0/3 nodes are available: 1 node(s) didn't match Pod's
node affinity/selector, 2 node(s) had untolerated taint {…}"):

* NodeUnschedulable / TaintToleration: a node's NoSchedule and NoExecute taints must be
  tolerated. A node that is not Ready counts as tainted `node.kubernetes.io/not-ready`
  (or `…/unreachable` when its Ready condition is Unknown) and a cordoned node as
  `node.kubernetes.io/unschedulable`, as the node lifecycle controller would taint
  them; so a pod that tolerates these may still go there, as in Kubernetes.
* NodeName is handled by the caller (pods that have one are not scheduled).
* NodeSelector: every `spec.nodeSelector` label must match.
* NodeResourcesFit, pods only: fewer bound pods than `status.allocatable.pods`.

Score: the node with the fewest pods (kube-scheduler spreads by balanced allocation and
PodTopologySpread; fewest pods is what those amount to for resource-less lab pods).
Ties go to the node name that sorts first, so decisions are reproducible.
Not implemented: node affinity expressions, pod (anti-)affinity, resources other
than the pod count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from svcnet.apiclient.objects import Obj, labels_of, name_of
from svcnet.controlplane.controllers.pod_status import condition, is_terminal, is_terminating, node_name_of

DEFAULT_SCHEDULER = "default-scheduler"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
_FILTERED_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{{{self.key}: {self.value}}}"


@dataclass(frozen=True)
class Decision:
    node: str | None
    message: str  # "0/3 nodes are available: …" when node is None


def needs_scheduling(pod: Obj, scheduler_name: str = DEFAULT_SCHEDULER) -> bool:
    spec = pod.get("spec") or {}
    return (not node_name_of(pod) and not is_terminal(pod) and not is_terminating(pod)
            and (spec.get("schedulerName") or DEFAULT_SCHEDULER) == scheduler_name)


def node_taints(node: Obj) -> list[Taint]:
    """The node's own taints plus those implied by its conditions and cordon."""
    spec = node.get("spec") or {}
    taints = [Taint(str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or ""))
              for t in spec.get("taints") or []]
    ready = condition(node, "Ready")
    status = ready.get("status") if ready else None
    implied = None
    if status == "Unknown":
        implied = TAINT_UNREACHABLE
    elif status != "True":
        implied = TAINT_NOT_READY
    if implied and not any(t.key == implied for t in taints):
        taints.append(Taint(implied, "", "NoSchedule"))
    if spec.get("unschedulable") and not any(t.key == TAINT_UNSCHEDULABLE for t in taints):
        taints.append(Taint(TAINT_UNSCHEDULABLE, "", "NoSchedule"))
    return taints


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Taint) -> bool:
    """v1.Toleration.ToleratesTaint for any of the tolerations."""
    for tol in tolerations:
        effect = tol.get("effect") or ""
        if effect and effect != taint.effect:
            continue
        key = tol.get("key") or ""
        operator = tol.get("operator") or "Equal"
        if key and key != taint.key:
            continue
        if operator == "Exists":
            return True
        if operator == "Equal" and key and (tol.get("value") or "") == taint.value:
            return True
    return False


def max_pods(node: Obj) -> int:
    alloc = (node.get("status") or {}).get("allocatable") or {}
    try:
        return int(alloc.get("pods", 110))
    except (TypeError, ValueError):
        return 110  # kubelet's default --max-pods


def count_pods(pods: Iterable[Obj]) -> Counter[str]:
    """Pods that occupy a node: bound and not finished (terminating ones still run)."""
    return Counter(node_name_of(p) for p in pods if node_name_of(p) and not is_terminal(p))


def _reject_reason(pod: Obj, node: Obj, pods_on_node: int) -> str | None:
    spec = pod.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    for taint in node_taints(node):
        if taint.effect in _FILTERED_EFFECTS and not tolerates(tolerations, taint):
            return f"node(s) had untolerated taint {taint}"
    selector = spec.get("nodeSelector") or {}
    labels = labels_of(node)
    if any(labels.get(k) != v for k, v in selector.items()):
        return "node(s) didn't match Pod's node affinity/selector"
    if pods_on_node >= max_pods(node):
        return "Too many pods"
    return None


def schedule(pod: Obj, nodes: Iterable[Obj], pods_per_node: Mapping[str, int]) -> Decision:
    """The node `pod` should be bound to, or why there is none."""
    nodes = sorted(nodes, key=name_of)
    feasible: list[Obj] = []
    reasons: Counter[str] = Counter()
    for node in nodes:
        reason = _reject_reason(pod, node, pods_per_node.get(name_of(node), 0))
        if reason is None:
            feasible.append(node)
        else:
            reasons[reason] += 1
    if feasible:
        best = min(feasible, key=lambda n: (pods_per_node.get(name_of(n), 0), name_of(n)))
        return Decision(name_of(best), "")
    detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    message = f"0/{len(nodes)} nodes are available" + (f": {detail}." if detail else ".")
    return Decision(None, message)


def binding(pod: Obj, node: str) -> Obj:
    """The Binding object POSTed to pods/NAME/binding."""
    md = pod.get("metadata") or {}
    out: Obj = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": md.get("name"), "namespace": md.get("namespace")},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    if md.get("uid"):
        out["metadata"]["uid"] = md["uid"]
    return out
