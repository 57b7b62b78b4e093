"""Prometheus metrics named like kube-controller-manager's and kube-scheduler's.

* `workqueue_depth`, `workqueue_adds_total`, `workqueue_retries_total`,
  `workqueue_work_duration_seconds` with label `name` (client-go's workqueue metrics).
* `endpoint_slice_controller_changes{operation=create|update|delete}` (exported as
  `…_changes_total`: prometheus-client names every counter `_total`).
* `scheduler_schedule_attempts_total{result=scheduled|unschedulable|error}`.
* `svcnet_node_lifecycle_transitions_total{to=Ready|NotReady}`: the node Ready changes
  the node lifecycle controller wrote (upstream has no direct equivalent).

One registry per process (`REGISTRY`), served on `--metrics-bind-address` next to
`/healthz` and `/readyz`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

WORKQUEUE_DEPTH = Gauge("workqueue_depth", "Current depth of workqueue", ["name"], registry=REGISTRY)
WORKQUEUE_ADDS = Counter("workqueue_adds_total", "Total number of adds handled by workqueue", ["name"],
                         registry=REGISTRY)
WORKQUEUE_RETRIES = Counter("workqueue_retries_total", "Total number of retries handled by workqueue",
                            ["name"], registry=REGISTRY)
WORKQUEUE_WORK_DURATION = Histogram(
    "workqueue_work_duration_seconds", "How long in seconds processing an item from workqueue takes.",
    ["name"], buckets=(1e-4, 1e-3, 0.01, 0.1, 1, 10), registry=REGISTRY)
ENDPOINTSLICE_CHANGES = Counter(
    "endpoint_slice_controller_changes", "Number of EndpointSlice changes", ["operation"], registry=REGISTRY)
SCHEDULE_ATTEMPTS = Counter(
    "scheduler_schedule_attempts_total", "Number of attempts to schedule pods, by the result.", ["result"],
    registry=REGISTRY)
NODE_TRANSITIONS = Counter(
    "svcnet_node_lifecycle_transitions_total", "Node Ready transitions made by the node lifecycle controller.",
    ["to"], registry=REGISTRY)
