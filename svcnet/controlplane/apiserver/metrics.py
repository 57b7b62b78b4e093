"""Request metrics with kube-apiserver's names, in one CollectorRegistry per server.

`apiserver_request_total{verb,group,version,resource,subresource,scope,code}`,
`apiserver_request_duration_seconds{verb,group,version,resource,subresource,scope}`
(watches excluded from the duration, as upstream: they are long-running),
`apiserver_registered_watchers{group,version,kind}` (open watch streams) and
`apiserver_watch_events_total{group,version,kind}`. Verbs are upstream's upper-case
forms: GET, LIST, WATCH, POST, PUT, PATCH, APPLY, DELETE, DELETECOLLECTION.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REQUEST_LABELS = ("verb", "group", "version", "resource", "subresource", "scope")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5,
                    6, 8, 10, 15, 20, 30, 45, 60)


class APIServerMetrics:
    """The apiserver's Prometheus collectors; `registry` is what /metrics renders."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("apiserver_request_total",
                                "Counter of apiserver requests broken out for each verb, group, version, "
                                "resource, scope and HTTP response code.",
                                (*REQUEST_LABELS, "code"), registry=self.registry)
        self.duration = Histogram("apiserver_request_duration_seconds",
                                  "Response latency distribution in seconds for each verb, group, "
                                  "version, resource, subresource and scope.",
                                  REQUEST_LABELS, buckets=DURATION_BUCKETS, registry=self.registry)
        self.watchers = Gauge("apiserver_registered_watchers",
                              "Number of currently registered watchers for a given resource.",
                              ("group", "version", "kind"), registry=self.registry)
        self.watch_events = Counter("apiserver_watch_events_total",
                                    "Number of events sent in watch clients.",
                                    ("group", "version", "kind"), registry=self.registry)

    def observe(self, verb: str, group: str, version: str, resource: str, subresource: str,
                scope: str, code: int, seconds: float | None) -> None:
        labels = (verb, group, version, resource, subresource, scope)
        self.requests.labels(*labels, str(code)).inc()
        if seconds is not None:
            self.duration.labels(*labels).observe(seconds)
