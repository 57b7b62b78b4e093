"""The `endpoints.kubernetes.io/last-change-trigger-time` of a Service's next write.

After Kubernetes' `TriggerTimeTracker` (pkg/controller/util/endpoint): the trigger
time of a sync is the *earliest* change that has not been reflected yet — the Ready
condition's lastTransitionTime of each pod whose one moved since the last sync, and
the Service's creationTimestamp the first time it is seen. kube-proxy subtracts it
from the moment its rules are in place to report network-programming latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcnet.apiclient.objects import Obj, meta, name_of
from svcnet.controlplane.controllers.clock import format_time, parse_time
from svcnet.controlplane.controllers.pod_status import condition


def pod_trigger_time(pod: Obj) -> float | None:
    cond = condition(pod, "Ready")
    return parse_time(cond.get("lastTransitionTime")) if cond else None


@dataclass
class TriggerState:
    pod_times: dict[str, float] = field(default_factory=dict)
    service_time: float | None = None


class TriggerTimeTracker:
    """Per-Service memory of the trigger times already written.

    `compute()` does not change that memory; `commit()` does, once the sync's writes
    succeeded, so a failed write keeps its trigger time for the retry (upstream forgets
    it and the retried write loses the annotation)."""

    def __init__(self) -> None:
        self._state: dict[str, TriggerState] = {}

    def compute(self, service_key: str, service: Obj, pods: list[Obj]) -> tuple[str | None, TriggerState]:
        """The trigger time for this sync as RFC3339Nano text (None when nothing moved),
        and the state to `commit()` after writing."""
        state = self._state.get(service_key) or TriggerState()
        earliest: float | None = None
        times: dict[str, float] = {}
        for pod in pods:
            t = pod_trigger_time(pod)
            if t is None:
                continue
            times[name_of(pod)] = t
            if t > state.pod_times.get(name_of(pod), float("-inf")):
                earliest = t if earliest is None else min(earliest, t)
        svc_t = parse_time(meta(service).get("creationTimestamp"))
        if svc_t is not None and (state.service_time is None or svc_t > state.service_time):
            earliest = svc_t if earliest is None else min(earliest, svc_t)
        text = format_time(earliest, nano=True) if earliest is not None else None
        return text, TriggerState(times, svc_t)

    def commit(self, service_key: str, state: TriggerState) -> None:
        self._state[service_key] = state

    def forget(self, service_key: str) -> None:
        self._state.pop(service_key, None)
