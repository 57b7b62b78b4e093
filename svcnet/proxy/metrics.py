"""Prometheus metrics under kube-proxy's names, so dashboards and clusterloader2's
network-programming measurement read svcnet the same way."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# kube-proxy: exponential buckets from 1 ms doubling 16 times
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(16))
# kube-proxy's network programming buckets: 0.25 s … 5 min
PROGRAMMING_BUCKETS = (0.25, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30, 45, 60, 120, 180, 240, 300)


class ProxyMetrics:
    """All of the proxy's metric families, in their own registry."""

    def __init__(self, mode: str = "nftables") -> None:
        r = self.registry = CollectorRegistry()
        self.sync_duration = Histogram("kubeproxy_sync_proxy_rules_duration_seconds",
                                       "SyncProxyRules latency in seconds", ["ip_family"],
                                       buckets=SYNC_BUCKETS, registry=r)
        self.sync_full_duration = Histogram("kubeproxy_sync_full_proxy_rules_duration_seconds",
                                            "SyncProxyRules latency in seconds for full resyncs",
                                            ["ip_family"], buckets=SYNC_BUCKETS, registry=r)
        self.sync_partial_duration = Histogram("kubeproxy_sync_partial_proxy_rules_duration_seconds",
                                               "SyncProxyRules latency in seconds for partial resyncs",
                                               ["ip_family"], buckets=SYNC_BUCKETS, registry=r)
        self.network_programming = Histogram("kubeproxy_network_programming_duration_seconds",
                                             "In Cluster Network Programming Latency in seconds",
                                             ["ip_family"], buckets=PROGRAMMING_BUCKETS, registry=r)
        self.last_sync = Gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                               "The last time proxy rules were successfully synced", ["ip_family"], registry=r)
        self.last_queued = Gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                 "The last time a sync of proxy rules was queued", ["ip_family"], registry=r)
        self.endpoint_changes_pending = Gauge("kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                                              "Pending proxy rules Endpoint changes", ["ip_family"], registry=r)
        self.endpoint_changes_total = Counter("kubeproxy_sync_proxy_rules_endpoint_changes",
                                              "Cumulative proxy rules Endpoint changes", ["ip_family"], registry=r)
        self.service_changes_pending = Gauge("kubeproxy_sync_proxy_rules_service_changes_pending",
                                             "Pending proxy rules Service changes", ["ip_family"], registry=r)
        self.service_changes_total = Counter("kubeproxy_sync_proxy_rules_service_changes",
                                             "Cumulative proxy rules Service changes", ["ip_family"], registry=r)
        # A gauge despite the suffix, as in kube-proxy.
        self.no_local_endpoints = Gauge("kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                                        "Number of services with a Local traffic policy and no endpoints",
                                        ["ip_family", "traffic_policy"], registry=r)
        self.sync_failures = Counter(f"kubeproxy_sync_proxy_rules_{'nftables_sync' if mode == 'nftables' else 'iptables_restore'}_failures",
                                     "Cumulative proxy rules sync failures", ["ip_family"], registry=r)
        self.cleanup_failures = Counter(f"kubeproxy_sync_proxy_rules_{mode}_cleanup_failures",
                                        "Cumulative proxy rules cleanup failures", ["ip_family"], registry=r)
        self.healthz_total = Counter("kubeproxy_proxy_healthz", "Cumulative proxy healthz HTTP status",
                                     ["code"], registry=r)
        self.livez_total = Counter("kubeproxy_proxy_livez", "Cumulative proxy livez HTTP status",
                                   ["code"], registry=r)
        self.conntrack_duration = Histogram("kubeproxy_conntrack_reconciler_sync_duration_seconds",
                                            "Conntrack cleanup latency in seconds", ["ip_family"],
                                            buckets=SYNC_BUCKETS, registry=r)
        self.conntrack_deleted = Counter("kubeproxy_conntrack_reconciler_deleted_entries",
                                         "Cumulative conntrack flows deleted by the reconciler",
                                         ["ip_family"], registry=r)
