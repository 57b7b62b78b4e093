"""Prometheus metrics under CoreDNS's names, cheap enough for the hot path.

A prometheus_client `Counter.labels(...).inc()` costs about a microsecond, which is a
sizeable slice of a 7 us cached answer. So per-query counts are plain integers in
per-thread `QueryStats` objects (one writer each, so no lost updates between the UDP
threads and the event loop), indexed by a small integer that the response cache stores
next to each reply; `DnsCollector` turns them into the CoreDNS metric families only
when /metrics is scraped. Low-rate metrics (forwarding, cache, programming latency)
are ordinary prometheus_client objects on the same registry.

Names and labels follow CoreDNS: `coredns_dns_requests_total{server,zone,view,proto,
family,type}`, `coredns_dns_responses_total{server,zone,view,rcode,plugin}`,
`coredns_dns_request_duration_seconds{server,zone,view,type}`. `zone` is the server
block's zone, "." for svcnet's single block, as in the kubeadm Corefile.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from svcnet.dns import wire

# CoreDNS: prometheus.ExponentialBuckets(0.00025, 2, 16)
DURATION_BUCKETS = tuple(0.00025 * 2 ** i for i in range(16))
MAX_LABEL_SETS = 1024  # (server, proto, family, type, rcode, plugin) combinations

# CoreDNS reports these query types by name and every other one as "other".
_KNOWN_TYPES = {wire.A, wire.AAAA, wire.NS, wire.PTR, wire.SOA, wire.SRV, wire.TXT, wire.CNAME,
                wire.MX, wire.ANY, wire.AXFR, wire.IXFR, wire.HINFO, 43, 46, 47, 48, 64, 65}


def type_name(qtype: int) -> str:
    return wire.TYPE_NAMES.get(qtype, str(qtype)) if qtype in _KNOWN_TYPES else "other"


def rcode_name(rcode: int) -> str:
    return wire.RCODE_NAMES.get(rcode, str(rcode))


class LabelTable:
    """Interns (server, proto, family, type, rcode, plugin) tuples as small integers."""

    def __init__(self) -> None:
        self._raw: dict[tuple[str, str, str, int, int, str], int] = {}
        self._ids: dict[tuple[str, str, str, str, str, str], int] = {}
        self.labels: list[tuple[str, str, str, str, str, str]] = []
        self._lock = threading.Lock()

    def id(self, server: str, proto: str, family: str, qtype: int, rcode: int, plugin: str) -> int:
        raw = (server, proto, family, qtype, rcode, plugin)
        found = self._raw.get(raw)
        if found is not None:
            return found
        with self._lock:
            key = (server, proto, family, type_name(qtype), rcode_name(rcode), plugin)
            found = self._ids.get(key)
            if found is None:
                if len(self.labels) >= MAX_LABEL_SETS:
                    return 0
                found = len(self.labels)
                self._ids[key] = found
                self.labels.append(key)
            if len(self._raw) < 4 * MAX_LABEL_SETS:  # unknown qtypes all map to "other"
                self._raw[raw] = found
        return found


class QueryStats:
    """Counts and durations written by one thread only (a UDP loop or the event loop).

    Plain lists indexed by label id, so the UDP loop can update them inline:
    `buckets[id][bisect_left(bounds, dt)] += 1; sums[id] += dt`. The request count of a
    label is the sum of its buckets."""

    __slots__ = ("buckets", "sums", "bounds")

    def __init__(self) -> None:
        self.bounds = DURATION_BUCKETS
        n = len(self.bounds) + 1
        # one histogram per label id (type matters for CoreDNS's duration metric)
        self.buckets: list[list[int]] = [[0] * n for _ in range(MAX_LABEL_SETS)]
        self.sums: list[float] = [0.0] * MAX_LABEL_SETS

    def observe(self, label_id: int, seconds: float) -> None:
        self.buckets[label_id][bisect_left(self.bounds, seconds)] += 1
        self.sums[label_id] += seconds


class DnsCollector(Collector):
    """Exports the per-thread QueryStats as CoreDNS's request/response metrics."""

    def __init__(self, table: LabelTable) -> None:
        self.table = table
        self.stats: list[QueryStats] = []

    def new_stats(self) -> QueryStats:
        s = QueryStats()
        self.stats.append(s)
        return s

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "coredns_dns_requests", "Counter of DNS requests made per zone, protocol and family.",
            labels=["server", "zone", "view", "proto", "family", "type"])
        responses = CounterMetricFamily(
            "coredns_dns_responses", "Counter of response status codes.",
            labels=["server", "zone", "view", "rcode", "plugin"])
        duration = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds", "Histogram of the time (in seconds) each request took.",
            labels=["server", "zone", "view", "type"])
        req: dict[tuple[str, ...], int] = {}
        resp: dict[tuple[str, ...], int] = {}
        hist: dict[tuple[str, ...], tuple[list[int], float]] = {}
        labels = list(self.table.labels)
        for st in list(self.stats):
            for i, lab in enumerate(labels):
                b = list(st.buckets[i])
                n = sum(b)
                if not n:
                    continue
                server, proto, family, qtype, rcode, plugin = lab
                k1 = (server, ".", "", proto, family, qtype)
                req[k1] = req.get(k1, 0) + n
                k2 = (server, ".", "", rcode, plugin)
                resp[k2] = resp.get(k2, 0) + n
                k3 = (server, ".", "", qtype)
                prev, total = hist.get(k3, ([0] * len(b), 0.0))
                hist[k3] = ([x + y for x, y in zip(prev, b)], total + st.sums[i])
        for k, n in sorted(req.items()):
            requests.add_metric(list(k), n)
        for k, n in sorted(resp.items()):
            responses.add_metric(list(k), n)
        for k, (b, total) in sorted(hist.items()):
            cumulative, acc = [], 0
            for bound, n in zip(DURATION_BUCKETS + (float("inf"),), b):
                acc += n
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), acc))
            duration.add_metric(list(k), cumulative, total)
        yield requests
        yield responses
        yield duration


class Metrics:
    """Everything `svcnet dns` exports, on one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.table = LabelTable()
        self.collector = DnsCollector(self.table)
        self.registry.register(self.collector)
        r = self.registry
        self.cache_hits = Counter("coredns_cache_hits", "The count of cache hits.",
                                  ["server", "type", "zones", "view"], registry=r)
        self.cache_misses = Counter("coredns_cache_misses", "The count of cache misses.",
                                    ["server", "zones", "view"], registry=r)
        self.cache_entries = Gauge("coredns_cache_entries", "The number of elements in the cache.",
                                   ["server", "type", "zones", "view"], registry=r)
        self.forward_requests = Counter("coredns_forward_requests", "Counter of requests made per upstream.",
                                        ["to"], registry=r)
        self.forward_responses = Counter("coredns_forward_responses", "Counter of responses per upstream.",
                                         ["to", "rcode"], registry=r)
        self.forward_duration = Histogram("coredns_proxy_request_duration_seconds",
                                          "Histogram of the time each request took.",
                                          ["proxy_name", "to", "rcode"], buckets=DURATION_BUCKETS, registry=r)
        self.healthcheck_failures = Counter("coredns_proxy_healthcheck_failures",
                                            "Count of failed health checks per upstream.",
                                            ["proxy_name", "to"], registry=r)
        self.healthcheck_broken = Counter("coredns_forward_healthcheck_broken",
                                          "Counter of the number of complete failures of the health checks.",
                                          registry=r)
        self.programming = Histogram(
            "coredns_kubernetes_dns_programming_duration_seconds",
            "Histogram of the time (in seconds) it took to program a dns instance.",
            ["service_kind"],
            buckets=(0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
                     2.048, 4.096, 8.192, 16.384, 32.768, 65.536, 131.072, 262.144, 524.288),
            registry=r)
        self.autopath_success = Counter("coredns_autopath_success", "Counter of requests that did autopath.",
                                        ["server"], registry=r)
        self.panics = Counter("coredns_panics", "A metrics that counts the number of panics.", registry=r)
