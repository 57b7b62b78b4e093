"""Properties that must hold for any input, checked with hypothesis.

* EndpointSlices: after applying the changes, the slices hold exactly the desired
  endpoints (each once, with the right conditions), none holds more than the maximum,
  and reconciling again writes nothing.
* Rolling updates: for any replicas/maxSurge/maxUnavailable and any order in which new
  pods become Ready, the pod count never exceeds replicas + maxSurge, the available
  count never drops below replicas - maxUnavailable, and the rollout finishes.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svcnet.controlplane.controllers.deployment import plan, surge_and_unavailable, template_hash
from svcnet.controlplane.controllers.endpointslice import reconcile_slices

from .test_deployment import NOW, deployment
from .test_endpointslice import pod, service, store

Obj = dict[str, Any]

pod_state = st.tuples(st.integers(0, 59), st.booleans(), st.booleans())  # (index, ready, deleting)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(pod_state, max_size=40), min_size=1, max_size=5), st.integers(1, 7))
def test_slices_always_converge_to_desired(rounds: list[list[tuple[int, bool, bool]]], max_per: int) -> None:
    svc = service()
    slices: list[Obj] = []
    for states in rounds:
        pods = {i: pod(f"p{i}", f"10.244.1.{i + 1}", ready=r, deleting=d) for i, r, d in states}
        changes = reconcile_slices(svc, pods.values(), slices, max_endpoints_per_slice=max_per)
        slices = store(changes, slices)
        got = [(e["addresses"][0], e["conditions"]["ready"], e["conditions"]["terminating"])
               for s in slices for e in s["endpoints"]]
        want = sorted((f"10.244.1.{i + 1}", r and not d, d) for i, (r, d) in
                      {i: (r, d) for i, r, d in states}.items())
        assert sorted(got) == want
        assert all(len(s["endpoints"]) <= max_per for s in slices)
        assert len(slices) >= 1  # the placeholder when empty
        assert reconcile_slices(svc, pods.values(), slices, max_endpoints_per_slice=max_per).empty


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(0, 3), st.integers(0, 3), st.randoms(use_true_random=False))
def test_rolling_update_bounds_for_any_readiness_order(replicas: int, surge: int, unavailable: int,
                                                      rnd: random.Random) -> None:
    d = deployment(replicas, surge=surge, unavailable=unavailable)
    pods: dict[str, Obj] = {}
    counter = iter(range(10_000))

    def step(ready_new: bool) -> None:
        p = plan(d, list(pods.values()), NOW)
        for victim in p.delete:
            del pods[victim["metadata"]["name"]]
        for _ in range(p.create):
            new = copy.deepcopy(p.pod_template)
            new["metadata"]["name"] = new["metadata"]["generateName"] + str(next(counter))
            new["spec"]["nodeName"] = "n1"
            new["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready_new else "False"}]}
            pods[new["metadata"]["name"]] = new

    step(ready_new=True)  # the initial revision, all Ready
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "v2"
    max_surge, max_unavailable = surge_and_unavailable(d)
    new_hash = template_hash(d["spec"]["template"])
    for _ in range(200):
        step(ready_new=False)
        ready = [p for p in pods.values() if p["status"]["conditions"][0]["status"] == "True"]
        assert len(pods) <= replicas + max_surge
        assert len(ready) >= replicas - max_unavailable
        if len(pods) == replicas == len(ready) and all(
                p["metadata"]["labels"]["pod-template-hash"] == new_hash for p in pods.values()):
            return
        # the node agents report some of the not-ready pods Ready, in any order
        for p in pods.values():
            if p["status"]["conditions"][0]["status"] == "False" and rnd.random() < 0.5:
                p["status"]["conditions"][0]["status"] = "True"
    raise AssertionError("rollout did not finish")
