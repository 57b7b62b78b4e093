"""apps/v1 Deployments, planned step by step as data.

Simplification, on purpose: there are no ReplicaSets. A Deployment owns its pods
directly (controller ownerReference to the Deployment). The role a ReplicaSet plays in
Kubernetes — a group of pods from one template revision — is played by the
`pod-template-hash` label: pods are named `<deployment>-<hash>-<5 random>` and
labelled `pod-template-hash=<hash>` exactly as a ReplicaSet's pods would be, so
`kubectl get pods -l pod-template-hash=…`, selectors and names look the same. What a
user loses: `kubectl get rs` and `kubectl rollout undo` (no revision history).

`plan(deployment, pods, now)` mirrors one pass of the deployment controller
(`pkg/controller/deployment`, `rolling.go`, `recreate.go`, `sync.go`) together with the
ReplicaSet controller's pod management:

* Pods that failed or succeeded are deleted and replaced (a ReplicaSet ignores them and
  the pod GC removes them; here the Deployment does both).
* RollingUpdate: first scale the new revision up to at most
  `replicas + maxSurge` pods in total; if nothing was scaled up, delete old pods that are
  not available (up to what `maxUnavailable` allows), then old available pods while at
  least `replicas - maxUnavailable` stay available. Percentages round up for maxSurge
  and down for maxUnavailable; both zero means maxUnavailable 1 (`ResolveFenceposts`).
* Recreate: delete every old pod, wait until they are gone, then create the new ones.
* Scaling without a template change creates or deletes pods of the current revision.
  Which pods go first follows `controller.ActivePods`: unscheduled, then pending, then
  not ready, then ready for the shortest time, more restarts, newest.
* Available = Ready for at least `minReadySeconds`.
* Status: replicas, updatedReplicas, readyReplicas, availableReplicas,
  unavailableReplicas, observedGeneration, and the Available / Progressing conditions
  that `kubectl rollout status` reads; a rollout without progress for
  `progressDeadlineSeconds` (600) gets Progressing=False/ProgressDeadlineExceeded.

A paused Deployment is left as it is (status only). Orphaned pods that match the
selector are not adopted.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from svcnet.apiclient.objects import Obj, labels_of, meta, name_of, namespace_of
from svcnet.controlplane.controllers.clock import format_time, parse_time
from svcnet.controlplane.controllers.pod_status import (
    condition,
    is_pod_ready,
    is_terminal,
    is_terminating,
    node_name_of,
)

POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery rand.SafeEncodeString


# -- revision identity -------------------------------------------------------------


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def template_hash(template: Obj, collision_count: int | None = None) -> str:
    """A short, stable name for a pod template: FNV-32a of its canonical JSON (and the
    collision count), spelled with the consonant alphabet Kubernetes uses so the hash
    never forms words. The `pod-template-hash` label is left out of the input."""
    tmpl = copy.deepcopy(template)
    (tmpl.get("metadata") or {}).get("labels", {}).pop(POD_TEMPLATE_HASH_LABEL, None)
    text = json.dumps(tmpl, sort_keys=True, separators=(",", ":"))
    if collision_count:
        text += str(collision_count)
    digits = str(_fnv32a(text.encode()))
    return "".join(_SAFE_ALPHABET[ord(c) % len(_SAFE_ALPHABET)] for c in digits)


def owner_reference(deployment: Obj) -> Obj:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name_of(deployment),
            "uid": str(meta(deployment).get("uid") or ""), "controller": True,
            "blockOwnerDeletion": True}


def owned_pods(deployment: Obj, pods: Iterable[Obj]) -> list[Obj]:
    """Pods whose controller reference is this Deployment (by uid when it has one)."""
    uid = meta(deployment).get("uid")
    out = []
    for pod in pods:
        if namespace_of(pod) != namespace_of(deployment):
            continue
        for ref in meta(pod).get("ownerReferences") or []:
            if ref.get("kind") == "Deployment" and ref.get("controller") and \
                    (ref.get("uid") == uid if uid else ref.get("name") == name_of(deployment)):
                out.append(pod)
                break
    return out


def new_pod(deployment: Obj, pod_hash: str) -> Obj:
    """A pod of the current revision; the apiserver completes the name."""
    template = copy.deepcopy((deployment.get("spec") or {}).get("template") or {})
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels[POD_TEMPLATE_HASH_LABEL] = pod_hash
    md: Obj = {"generateName": f"{name_of(deployment)}-{pod_hash}-", "namespace": namespace_of(deployment),
               "labels": labels, "ownerReferences": [owner_reference(deployment)]}
    if tmeta.get("annotations"):
        md["annotations"] = dict(tmeta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": template.get("spec") or {}}


# -- parameters --------------------------------------------------------------------


def _int_or_percent(value: Any, total: int, round_up: bool, default: str) -> int:
    if value is None:
        value = default
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("%"):
        pct = int(text[:-1])
        exact = pct * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(text)


def surge_and_unavailable(deployment: Obj) -> tuple[int, int]:
    """`ResolveFenceposts` for the RollingUpdate strategy."""
    spec = deployment.get("spec") or {}
    replicas = desired_replicas(deployment)
    ru = ((spec.get("strategy") or {}).get("rollingUpdate")) or {}
    surge = _int_or_percent(ru.get("maxSurge"), replicas, True, "25%")
    unavailable = _int_or_percent(ru.get("maxUnavailable"), replicas, False, "25%")
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def desired_replicas(deployment: Obj) -> int:
    value = (deployment.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def is_available(pod: Obj, min_ready_seconds: int, now: float) -> bool:
    if not is_pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    return since is not None and now - since >= min_ready_seconds


def deletion_order(pods: Iterable[Obj], now: float) -> list[Obj]:
    """Pods in the order they should be deleted (`controller.ActivePods` Less)."""
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}

    def key(p: Obj) -> tuple[Any, ...]:
        status = p.get("status") or {}
        ready = is_pod_ready(p)
        ready_since = parse_time((condition(p, "Ready") or {}).get("lastTransitionTime")) or 0.0
        restarts = sum(int(s.get("restartCount") or 0) for s in status.get("containerStatuses") or [])
        created = parse_time(meta(p).get("creationTimestamp")) or 0.0
        return (bool(node_name_of(p)), phase_rank.get(status.get("phase") or "Pending", 0), ready,
                -ready_since if ready else 0.0, -restarts, -created, name_of(p))

    return sorted(pods, key=key)


# -- the plan -----------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentPlan:
    """One step: create `create` copies of `pod_template`, delete `delete`, and write
    `status` if it is not None. `requeue_after` asks for another look (minReadySeconds)."""

    pod_hash: str
    pod_template: Obj
    create: int = 0
    delete: list[Obj] = field(default_factory=list)
    status: Obj | None = None
    requeue_after: float | None = None


def plan(deployment: Obj, pods: Iterable[Obj], now: float) -> DeploymentPlan:
    spec = deployment.get("spec") or {}
    pod_hash = template_hash(spec.get("template") or {}, (deployment.get("status") or {}).get("collisionCount"))
    mine = owned_pods(deployment, pods)
    finished = [p for p in mine if is_terminal(p) and not is_terminating(p)]
    active = [p for p in mine if not is_terminal(p) and not is_terminating(p)]
    new = [p for p in active if labels_of(p).get(POD_TEMPLATE_HASH_LABEL) == pod_hash]
    old = [p for p in active if labels_of(p).get(POD_TEMPLATE_HASH_LABEL) != pod_hash]
    old_terminating = [p for p in mine if is_terminating(p)
                       and labels_of(p).get(POD_TEMPLATE_HASH_LABEL) != pod_hash]
    desired = desired_replicas(deployment)
    min_ready = int(spec.get("minReadySeconds") or 0)

    def available(p: Obj) -> bool:
        return is_available(p, min_ready, now)

    create = 0
    delete: list[Obj] = list(finished)
    strategy = (spec.get("strategy") or {}).get("type") or "RollingUpdate"
    if spec.get("paused"):
        pass
    elif not old:
        if len(new) < desired and (strategy != "Recreate" or not old_terminating):
            create = desired - len(new)
        elif len(new) > desired:
            delete += deletion_order(new, now)[: len(new) - desired]
    elif strategy == "Recreate":
        delete += old
    else:
        create, scale_down = _rolling_step(deployment, new, old, desired, available, now)
        delete += scale_down

    requeue = None
    if min_ready > 0:
        waits = [min_ready - (now - (parse_time((condition(p, "Ready") or {}).get("lastTransitionTime")) or now))
                 for p in active if is_pod_ready(p) and not available(p)]
        requeue = max(0.0, min(waits)) + 0.1 if waits else None
    status = compute_status(deployment, active, new, old, available, pod_hash, now)
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    if progressing["status"] == "True" and progressing["reason"] != "NewReplicaSetAvailable" \
            and not spec.get("paused"):
        # Look again when the deadline would pass, even if no event comes.
        last = parse_time(progressing.get("lastUpdateTime")) or now
        wait = max(0.0, last + progress_deadline(deployment) - now) + 1.0
        requeue = wait if requeue is None else min(requeue, wait)
    return DeploymentPlan(pod_hash, new_pod(deployment, pod_hash), create, delete,
                          status if status != (deployment.get("status") or {}) else None, requeue)


def _rolling_step(deployment: Obj, new: list[Obj], old: list[Obj], desired: int,
                  available: Any, now: float) -> tuple[int, list[Obj]]:
    """`rolloutRolling`: scale up the new revision, or else scale down the old one."""
    surge, max_unavailable = surge_and_unavailable(deployment)
    if len(new) > desired:
        return 0, deletion_order(new, now)[: len(new) - desired]
    total = len(new) + len(old)
    scale_up = max(0, min(desired + surge - total, desired - len(new)))
    if scale_up > 0:
        return scale_up, []
    min_available = desired - max_unavailable
    new_unavailable = sum(1 for p in new if not available(p))
    max_scaled_down = total - min_available - new_unavailable
    if max_scaled_down <= 0:
        return 0, []
    # cleanupUnhealthyReplicas: old pods that serve nobody go first.
    unhealthy = deletion_order([p for p in old if not available(p)], now)[:max_scaled_down]
    # scaleDownOldReplicaSetsForRollingUpdate: then old available pods, keeping minAvailable.
    healthy = [p for p in old if available(p)]
    all_available = sum(1 for p in new if available(p)) + len(healthy)
    extra = max(0, all_available - min_available)
    return 0, unhealthy + deletion_order(healthy, now)[:extra]


def compute_status(deployment: Obj, active: list[Obj], new: list[Obj], old: list[Obj],
                   available: Any, pod_hash: str, now: float) -> Obj:
    desired = desired_replicas(deployment)
    n_available = sum(1 for p in active if available(p))
    _, max_unavailable = surge_and_unavailable(deployment)
    status: Obj = {
        "replicas": len(active),
        "updatedReplicas": len(new),
        "readyReplicas": sum(1 for p in active if is_pod_ready(p)),
        "availableReplicas": n_available,
        "unavailableReplicas": max(0, max(desired, len(active)) - n_available),
    }
    if meta(deployment).get("generation") is not None:
        status["observedGeneration"] = meta(deployment)["generation"]
    previous = deployment.get("status") or {}
    if previous.get("collisionCount") is not None:
        status["collisionCount"] = previous["collisionCount"]
    # Kubernetes omits zero counts; kubectl prints them as 0 either way.
    status = {k: v for k, v in status.items() if v != 0 or k == "replicas"}
    rs_name = f"{name_of(deployment)}-{pod_hash}"
    ok = n_available >= desired - max_unavailable
    complete = len(new) == desired and not old and len(active) == desired and n_available >= desired
    old_conds = {c.get("type"): c for c in previous.get("conditions") or []}
    available_cond = _condition(
        old_conds.get("Available"), "Available", "True" if ok else "False",
        "MinimumReplicasAvailable" if ok else "MinimumReplicasUnavailable",
        "Deployment has minimum availability." if ok else "Deployment does not have minimum availability.", now)
    status["conditions"] = [available_cond, _progressing(deployment, status, previous, old_conds.get("Progressing"),
                                                         rs_name, complete, now)]
    return status


_PROGRESS_COUNTS = ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")


def _progressing(deployment: Obj, status: Obj, previous: Obj, old: dict[str, Any] | None, rs_name: str,
                 complete: bool, now: float) -> dict[str, Any]:
    """The Progressing condition (`deploymentutil` progress semantics): its lastUpdateTime
    moves whenever the rollout makes progress; a rollout that makes none for
    `progressDeadlineSeconds` (600) turns False with ProgressDeadlineExceeded, which
    `kubectl rollout status` reports as a failure instead of waiting forever."""
    if complete:
        return _condition(old, "Progressing", "True", "NewReplicaSetAvailable",
                          f'ReplicaSet "{rs_name}" has successfully progressed.', now)
    progressed = any(status.get(k, 0) != previous.get(k, 0) for k in _PROGRESS_COUNTS)
    if progressed or old is None or (deployment.get("spec") or {}).get("paused"):
        cond = _condition(old, "Progressing", "True", "ReplicaSetUpdated",
                          f'ReplicaSet "{rs_name}" is progressing.', now)
        if progressed:
            cond["lastUpdateTime"] = format_time(now)
        return cond
    deadline = progress_deadline(deployment)
    last = parse_time(old.get("lastUpdateTime")) or now
    if old.get("reason") == "ProgressDeadlineExceeded" or now - last > deadline:
        return _condition(old, "Progressing", "False", "ProgressDeadlineExceeded",
                          f'ReplicaSet "{rs_name}" has timed out progressing.', now)
    return dict(old)


def progress_deadline(deployment: Obj) -> float:
    value = (deployment.get("spec") or {}).get("progressDeadlineSeconds")
    return 600.0 if value is None else float(value)


def _condition(old: dict[str, Any] | None, ctype: str, status: str, reason: str, message: str,
               now: float) -> dict[str, Any]:
    """A condition that keeps its timestamps while it says the same thing, so a status
    write happens only when something changed."""
    if old and old.get("status") == status and old.get("reason") == reason and old.get("message") == message:
        return dict(old)
    stamp = format_time(now)
    transition = old.get("lastTransitionTime") if old and old.get("status") == status else stamp
    return {"type": ctype, "status": status, "lastUpdateTime": stamp,
            "lastTransitionTime": transition or stamp, "reason": reason, "message": message}
