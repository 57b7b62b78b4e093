"""Deployment planning: scale, replace, and rolling updates step by step."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from svcnet.controlplane.controllers.deployment import (
    POD_TEMPLATE_HASH_LABEL,
    plan,
    surge_and_unavailable,
    template_hash,
)

Obj = dict[str, Any]
NOW = 1_800_000_000.0


def deployment(replicas: int = 3, image: str = "svcnet/echo", *, surge: Any = None, unavailable: Any = None,
               strategy: str = "RollingUpdate", min_ready: int = 0) -> Obj:
    spec: Obj = {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": image}]}},
                 "strategy": {"type": strategy}}
    if strategy == "RollingUpdate":
        spec["strategy"]["rollingUpdate"] = {k: v for k, v in (("maxSurge", surge), ("maxUnavailable", unavailable))
                                             if v is not None}
    if min_ready:
        spec["minReadySeconds"] = min_ready
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d1", "generation": 1}, "spec": spec}


class Cluster:
    """Pods as the apiserver and node agents would leave them."""

    def __init__(self) -> None:
        self.pods: dict[str, Obj] = {}
        self.seq = itertools.count()

    def apply(self, d: Obj, ready: bool = True) -> Any:
        p = plan(d, list(self.pods.values()), NOW)
        for victim in p.delete:
            del self.pods[victim["metadata"]["name"]]
        for _ in range(p.create):
            pod = copy.deepcopy(p.pod_template)
            pod["metadata"]["name"] = pod["metadata"]["generateName"] + f"z{next(self.seq):04d}"
            pod["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
            pod["spec"]["nodeName"] = "n1"
            pod["status"] = {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            self.pods[pod["metadata"]["name"]] = pod
        if p.status is not None:
            d["status"] = p.status
        return p

    def set_ready(self, ready: bool = True) -> None:
        for pod in self.pods.values():
            pod["status"]["conditions"][0]["status"] = "True" if ready else "False"

    def hashes(self) -> list[str]:
        return sorted(p["metadata"]["labels"][POD_TEMPLATE_HASH_LABEL] for p in self.pods.values())


def test_scale_up_names_labels_owner() -> None:
    d, c = deployment(3), Cluster()
    p = c.apply(d)
    assert p.create == 3
    h = template_hash(d["spec"]["template"])
    assert p.pod_hash == h and all(ch in "bcdfghjklmnpqrstvwxz2456789" for ch in h)
    tmpl = p.pod_template
    assert tmpl["metadata"]["generateName"] == f"web-{h}-"
    assert tmpl["metadata"]["labels"] == {"app": "web", POD_TEMPLATE_HASH_LABEL: h}
    assert tmpl["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert tmpl["spec"] == d["spec"]["template"]["spec"]
    again = c.apply(d)
    assert again.create == 0 and again.delete == []
    assert d["status"]["replicas"] == 3 and d["status"]["availableReplicas"] == 3
    assert {x["type"]: x["reason"] for x in d["status"]["conditions"]} == \
        {"Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}
    assert c.apply(d).status is None  # nothing changed: no status write


def test_scale_down_prefers_unready_then_unscheduled() -> None:
    d, c = deployment(4), Cluster()
    c.apply(d)
    names = sorted(c.pods)
    c.pods[names[1]]["status"]["conditions"][0]["status"] = "False"
    c.pods[names[3]]["spec"]["nodeName"] = ""
    d["spec"]["replicas"] = 2
    p = c.apply(d)
    assert sorted(v["metadata"]["name"] for v in p.delete) == sorted([names[1], names[3]])


def test_deleted_and_failed_pods_replaced() -> None:
    d, c = deployment(3), Cluster()
    c.apply(d)
    names = sorted(c.pods)
    del c.pods[names[0]]
    c.pods[names[1]]["status"]["phase"] = "Failed"
    p = c.apply(d)
    assert p.create == 2 and [v["metadata"]["name"] for v in p.delete] == [names[1]]
    assert len(c.pods) == 3


def test_terminating_pods_not_counted() -> None:
    d, c = deployment(2), Cluster()
    c.apply(d)
    next(iter(c.pods.values()))["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:10Z"
    assert c.apply(d).create == 1


def test_pods_of_others_ignored() -> None:
    d, c = deployment(1), Cluster()
    c.apply(d)
    other = copy.deepcopy(next(iter(c.pods.values())))
    other["metadata"]["name"] = "stranger"
    other["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    c.pods["stranger"] = other
    assert c.apply(d).create == 0 and "stranger" in c.pods


@pytest.mark.parametrize("replicas, surge, unavailable, expected", [
    pytest.param(4, None, None, (1, 1), id="defaults-25%"),
    pytest.param(10, "25%", "25%", (3, 2), id="surge-rounds-up-unavailable-down"),
    pytest.param(3, 0, 0, (0, 1), id="both-zero"),
    pytest.param(3, 2, "0%", (2, 0), id="ints"),
])
def test_fenceposts(replicas: int, surge: Any, unavailable: Any, expected: tuple[int, int]) -> None:
    assert surge_and_unavailable(deployment(replicas, surge=surge, unavailable=unavailable)) == expected


def rollout(d: Obj, c: Cluster, max_steps: int = 30) -> list[tuple[int, int, int]]:
    """Drive a rolling update; record (old, new, ready) after each step and check bounds."""
    surge, unavailable = surge_and_unavailable(d)
    replicas = d["spec"]["replicas"]
    new_hash = template_hash(d["spec"]["template"])
    trace = []
    for _ in range(max_steps):
        c.apply(d, ready=False)
        new = sum(1 for h in c.hashes() if h == new_hash)
        ready = sum(1 for p in c.pods.values() if p["status"]["conditions"][0]["status"] == "True")
        trace.append((len(c.pods) - new, new, ready))
        assert len(c.pods) <= replicas + surge, trace
        assert ready >= replicas - unavailable, trace
        if new == replicas == len(c.pods) and ready == replicas:
            return trace
        c.set_ready()  # the node agents report the new pods Ready
    raise AssertionError(f"rollout did not finish: {trace}")


@pytest.mark.parametrize("replicas, surge, unavailable", [
    pytest.param(3, 1, 0, id="surge-only"),
    pytest.param(3, 0, 1, id="unavailable-only"),
    pytest.param(4, "25%", "25%", id="percent"),
    pytest.param(5, 2, 2, id="wide"),
])
def test_rolling_update_honours_bounds(replicas: int, surge: Any, unavailable: Any) -> None:
    d, c = deployment(replicas, surge=surge, unavailable=unavailable), Cluster()
    c.apply(d)
    old_hash = c.hashes()[0]
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "svcnet/echo:v2"
    d["metadata"]["generation"] = 2
    trace = rollout(d, c)
    assert len(trace) > 1 and old_hash not in c.hashes()
    assert d["status"]["observedGeneration"] == 2


def test_rollout_waits_for_new_pods_to_be_ready() -> None:
    d, c = deployment(2, surge=1, unavailable=0), Cluster()
    c.apply(d)
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "v2"
    c.apply(d, ready=False)  # surge one new pod, not ready
    for _ in range(3):
        p = c.apply(d, ready=False)
        assert p.create == 0 and p.delete == []  # stuck until it is Ready
    assert d["status"]["updatedReplicas"] == 1 and d["status"]["replicas"] == 3


def test_recreate_deletes_all_then_creates() -> None:
    d, c = deployment(2, strategy="Recreate"), Cluster()
    c.apply(d)
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "v2"
    p = c.apply(d)
    assert len(p.delete) == 2 and p.create == 0
    assert c.apply(d).create == 2


def test_min_ready_seconds_delays_availability() -> None:
    d, c = deployment(1, min_ready=30), Cluster()
    p = c.apply(d)
    assert p.create == 1
    pod = next(iter(c.pods.values()))
    pod["status"]["conditions"][0]["lastTransitionTime"] = "2027-01-15T07:59:50Z"  # NOW - 10 s
    p = c.apply(d)
    assert d["status"].get("availableReplicas", 0) == 0 and p.requeue_after is not None
    assert 19 < p.requeue_after < 21


def progressing(d: Obj) -> tuple[str, str]:
    c = next(c for c in d["status"]["conditions"] if c["type"] == "Progressing")
    return c["status"], c["reason"]


def test_progress_deadline_exceeded_and_recovered() -> None:
    d, c = deployment(2, surge=1, unavailable=0), Cluster()
    c.apply(d)
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "broken"
    d["spec"]["progressDeadlineSeconds"] = 60
    c.apply(d, ready=False)  # one new pod that never becomes Ready
    c.apply(d, ready=False)  # the status now counts it (progress at NOW)
    assert progressing(d) == ("True", "ReplicaSetUpdated")
    p = plan(d, list(c.pods.values()), NOW + 30)
    assert p.status is None and p.requeue_after is not None and 30 < p.requeue_after <= 32
    p = plan(d, list(c.pods.values()), NOW + 61)
    assert p.status is not None
    d["status"] = p.status
    assert progressing(d) == ("False", "ProgressDeadlineExceeded")
    assert plan(d, list(c.pods.values()), NOW + 120).status is None  # stays failed, no rewrite
    c.set_ready()  # the pod comes up after all: progress resumes
    p = plan(d, list(c.pods.values()), NOW + 130)
    assert p.status is not None
    d["status"] = p.status
    assert progressing(d) == ("True", "ReplicaSetUpdated")
