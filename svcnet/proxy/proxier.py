"""The proxy engine: informers -> change tracker -> rate-limited sync -> backend.

One `Proxier` per process serves both IP families. Its sync:

1. does nothing until the first Service and EndpointSlice lists have arrived
   (kube-proxy's `isInitialized`): programming from half a list would reject
   traffic to Services whose slices have not been seen yet;
2. checkpoints the change tracker (what changed since the last successful sync);
3. asks the backend to compute the ruleset (partial: only the changed service
   ports are recomputed) and to write it in one transaction, in a worker thread so
   health endpoints keep answering during a long full load;
4. on success: records metrics and network-programming latency, cleans stale UDP
   conntrack entries of the changed UDP ports, updates health-check servers;
   on failure: keeps the last good rules, forces the next sync to be full and
   retries with exponential backoff (capped at the sync period).

A full sync also happens at start, after a failure, when the node's configuration
changes (labels, addresses, ServiceCIDRs), and every `FULL_SYNC_PERIOD`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from svcnet.apiclient.informer import FuncHandler
from svcnet.apiclient.objects import Obj
from svcnet.apiclient.resources import ENDPOINT_SLICES, NODES, SERVICE_CIDRS, SERVICES
from svcnet.apiclient.source import ObjectSource
from svcnet.proxy.backend import Backend
from svcnet.proxy.change_tracker import Changes, ChangeTracker
from svcnet.proxy.conntrack import ConntrackCleaner, UdpTarget
from svcnet.proxy.healthcheck import ProxyHealth, ServiceHealthServers
from svcnet.proxy.metrics import ProxyMetrics
from svcnet.proxy.model import (
    ProxyConfig,
    ProxyState,
    ServicePortName,
    family_of,
    node_addresses,
    node_is_terminating,
    node_pod_cidrs,
    node_zone,
    normalize_cidr,
)
from svcnet.proxy.runner import BoundedFrequencyRunner, Clock, MonotonicClock
from svcnet.proxy.topology import categorize

log = logging.getLogger(__name__)

FULL_SYNC_PERIOD = 3600.0  # kube-proxy's proxyutil.FullSyncPeriod
INITIAL_BACKOFF = 1.0
# The first sync also waits this long for the Node and ServiceCIDR lists (they change
# the configuration, and a second full sync right after the first costs seconds at
# 10,000 services), but never longer: neither is required to program Services.
OPTIONAL_LIST_WAIT = 2.0


@dataclass(frozen=True)
class ProxierOptions:
    node_name: str
    node_ips: tuple[str, ...] = ()  # from --node-ip; empty = from the Node object
    cluster_cidrs: tuple[str, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = 14
    detect_local_mode: str = "ClusterCIDR"
    nodeport_addresses: tuple[str, ...] = ("primary",)
    service_cidrs: tuple[str, ...] = ()
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    families: tuple[int, ...] = (4, 6)
    conntrack_cleanup: bool = True


@dataclass
class SyncResult:
    full: bool
    ops: int
    seconds: float
    changed: int = 0
    conntrack_deleted: int = 0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Proxier:
    def __init__(
        self,
        backend: Backend,
        options: ProxierOptions,
        metrics: ProxyMetrics | None = None,
        health: ProxyHealth | None = None,
        service_health: ServiceHealthServers | None = None,
        clock: Clock | None = None,
        conntrack: ConntrackCleaner | None = None,
        local_addresses: Callable[[], list[str]] | None = None,
    ) -> None:
        self.backend = backend
        self.options = options
        self.metrics = metrics or ProxyMetrics(backend.mode)
        self.health = health or ProxyHealth(2 * options.sync_period, self.metrics)
        self.service_health = service_health
        self.clock = clock or MonotonicClock()
        self.conntrack = conntrack if conntrack is not None else (
            ConntrackCleaner() if options.conntrack_cleanup else None)
        self.local_addresses = local_addresses or list_local_addresses
        self.tracker = ChangeTracker(options.node_name, options.families)
        self.runner = BoundedFrequencyRunner("sync-proxy-rules", self._sync_from_runner,
                                             options.min_sync_period, options.sync_period, self.clock)
        self.services_synced = False
        self.slices_synced = False
        self._lists: set[str] = set()
        self._initialized_at: float | None = None
        self.ruleset: Any = None  # last ruleset the kernel accepted
        self._configs: dict[int, ProxyConfig] = {}
        self._need_full = True
        self._last_full = 0.0
        self._backoff = INITIAL_BACKOFF
        self._unsynced: list[Changes] = []  # changes whose rules are not yet in the kernel
        self.last_result: SyncResult | None = None
        self.synced_once = asyncio.Event()

    # -- wiring -------------------------------------------------------------------------

    def attach(self, source: ObjectSource) -> None:
        """Subscribe to the source's informers (kube-proxy's handler names)."""
        t = self.tracker

        def changed(fn: Callable[..., None], kind: str = "") -> Callable[..., None]:
            def handler(*objs: Obj) -> None:
                fn(*objs)
                self.health.queued()
                self._count_change(kind)
                self.runner.run()
            return handler

        svc = source.informer(SERVICES)
        svc.add_handler(FuncHandler(changed(t.on_service_add, "service"), changed(t.on_service_update, "service"),
                                    changed(t.on_service_delete, "service")))
        svc.add_synced_callback(lambda: self._synced("services"))
        eps = source.informer(ENDPOINT_SLICES)
        eps.add_handler(FuncHandler(changed(t.on_endpoint_slice_add, "endpoints"),
                                    changed(t.on_endpoint_slice_update, "endpoints"),
                                    changed(t.on_endpoint_slice_delete, "endpoints")))
        eps.add_synced_callback(lambda: self._synced("endpointslices"))
        nodes = source.informer(NODES)
        nodes.add_handler(FuncHandler(changed(t.on_node_add), changed(t.on_node_update),
                                      changed(t.on_node_delete)))
        cidrs = source.informer(SERVICE_CIDRS)

        def cidrs_changed(*_: Obj) -> None:
            t.on_service_cidrs_changed({o["metadata"]["name"]: o for o in cidrs.list()})
            self.runner.run()

        cidrs.add_handler(FuncHandler(cidrs_changed, cidrs_changed, cidrs_changed))
        nodes.add_synced_callback(lambda: self._synced("nodes"))
        cidrs.add_synced_callback(lambda: self._synced("servicecidrs"))

    def _count_change(self, kind: str) -> None:
        wall = time.time()
        for f in self.options.families:
            fam = _fam(f)
            self.metrics.last_queued.labels(fam).set(wall)
            if kind == "service":
                self.metrics.service_changes_total.labels(fam).inc()
                self.metrics.service_changes_pending.labels(fam).set(self.tracker.pending_service_changes)
            elif kind == "endpoints":
                self.metrics.endpoint_changes_total.labels(fam).inc()
                self.metrics.endpoint_changes_pending.labels(fam).set(self.tracker.pending_endpoint_changes)

    def _synced(self, what: str) -> None:
        self._lists.add(what)
        if what == "services":
            self.services_synced = True
        elif what == "endpointslices":
            self.slices_synced = True
        if self.initialized and self._initialized_at is None:
            self._initialized_at = self.clock.now()
        log.debug("initial list received kind=%s", what)
        self.runner.run()

    @property
    def initialized(self) -> bool:
        return self.services_synced and self.slices_synced

    def ready_for_first_sync(self) -> bool:
        """Initialized, and the optional lists are in or have been waited for long enough."""
        if not self.initialized:
            return False
        if self.ruleset is not None or {"nodes", "servicecidrs"} <= self._lists:
            return True
        return self._initialized_at is not None and \
            self.clock.now() - self._initialized_at >= OPTIONAL_LIST_WAIT

    # -- configuration -----------------------------------------------------------------------

    def config(self, family: int) -> ProxyConfig:
        o = self.options
        node = self.tracker.node
        node_ips = tuple(ip for ip in o.node_ips if family_of(ip) == family) or \
            tuple(ip for ip in node_addresses(node) if family_of(ip) == family)
        svc_cidrs: list[str] = [c for c in o.service_cidrs if family_of(c) == family]
        for obj in self.tracker.service_cidrs.values():
            for c in (obj.get("spec") or {}).get("cidrs") or []:
                n = normalize_cidr(c)
                if n and family_of(n) == family and n not in svc_cidrs:
                    svc_cidrs.append(n)
        wants_local = any(a != "primary" for a in o.nodeport_addresses)
        return ProxyConfig(
            family=family,
            node_name=o.node_name,
            node_ips=node_ips,
            cluster_cidrs=tuple(c for c in o.cluster_cidrs if family_of(c) == family),
            masquerade_all=o.masquerade_all,
            masquerade_bit=o.masquerade_bit,
            detect_local_mode=o.detect_local_mode,
            node_pod_cidrs=tuple(c for c in node_pod_cidrs(node) if family_of(c) == family),
            nodeport_addresses=o.nodeport_addresses,
            service_cidrs=tuple(svc_cidrs),
            node_zone=node_zone(node),
            local_addresses=tuple(a for a in self.local_addresses() if family_of(a) == family)
            if wants_local else (),
        )

    def states(self) -> dict[int, ProxyState]:
        return {f: ProxyState(self._configs.get(f) or self.config(f), self.tracker.ports[f],
                              self.tracker.endpoints[f]) for f in self.options.families}

    def desired(self) -> Any:
        """The whole ruleset for the current objects, without writing it (--dry-run)."""
        self._unsynced.append(self.tracker.checkpoint())
        return self.backend.compute(self.states())

    # -- syncing ----------------------------------------------------------------------------

    async def run(self) -> None:
        await self.runner.loop()

    async def _sync_from_runner(self) -> None:
        await self.sync()

    async def sync(self, force_full: bool = False) -> SyncResult | None:
        """One sync; returns None when not initialized yet. Never raises on kernel errors."""
        if not self.initialized:
            log.info("not syncing rules until Services and EndpointSlices have been received")
            return None
        if not self.ready_for_first_sync():
            log.debug("first sync waits briefly for the Node and ServiceCIDR lists")
            self.runner.retry_after(0.1)
            return None
        start = time.monotonic()
        changes = self.tracker.checkpoint()
        self._unsynced.append(changes)
        configs = {f: self.config(f) for f in self.options.families}
        now = self.clock.now()
        full = force_full or self._need_full or configs != self._configs or \
            now - self._last_full >= FULL_SYNC_PERIOD
        self._configs = configs
        changed = frozenset().union(*(c.services for c in self._unsynced))
        states = {f: ProxyState(configs[f], self.tracker.ports[f], self.tracker.endpoints[f])
                  for f in self.options.families}
        try:
            # Both in a worker thread, so health checks keep answering during a long
            # full sync. Safe: only checkpoint() (above, on the loop) mutates the
            # converted state the states refer to, and syncs never overlap.
            ruleset = await asyncio.to_thread(self.backend.compute, states, None if full else self.ruleset,
                                              None if full else changed)
            stats = await asyncio.to_thread(self.backend.write, ruleset, full)
        except Exception as e:
            log.error("sync failed, keeping the last good rules; next sync is full (retry in %.1fs): %s",
                      self._backoff, e)
            for f in self.options.families:
                self.metrics.sync_failures.labels(_fam(f)).inc()
            self._need_full = True
            self.runner.retry_after(self._backoff)
            self._backoff = min(self._backoff * 2, self.options.sync_period)
            self.last_result = SyncResult(full, 0, time.monotonic() - start, len(changed), error=str(e))
            return self.last_result
        self.ruleset = ruleset
        self._need_full = False
        self._backoff = INITIAL_BACKOFF
        if full:
            self._last_full = now
        unsynced, self._unsynced = self._unsynced, []
        elapsed = time.monotonic() - start
        self._record(full, elapsed, unsynced)
        deleted = await self._cleanup_conntrack(states, None if full else changed)
        await self._update_health(states)
        self.health.updated()
        self.synced_once.set()
        # one INFO line per sync that did something; the periodic no-op syncs at DEBUG
        log.log(logging.INFO if (full or stats.ops) else logging.DEBUG,
                "synced rules mode=%s %s services=%d changed=%d ops=%d in %.1f ms",
                self.backend.mode, "full" if full else "partial",
                sum(len(s.services) for s in states.values()), len(changed), stats.ops, elapsed * 1000)
        self.last_result = SyncResult(full, stats.ops, elapsed, len(changed), deleted)
        return self.last_result

    def _record(self, full: bool, elapsed: float, unsynced: list[Changes]) -> None:
        wall = time.time()
        triggers = [t for c in unsynced for t in c.trigger_times]
        for f in self.options.families:
            fam = _fam(f)
            self.metrics.sync_duration.labels(fam).observe(elapsed)
            (self.metrics.sync_full_duration if full else self.metrics.sync_partial_duration).labels(fam).observe(elapsed)
            self.metrics.last_sync.labels(fam).set(wall)
            self.metrics.service_changes_pending.labels(fam).set(0)
            self.metrics.endpoint_changes_pending.labels(fam).set(0)
            for t in triggers:
                self.metrics.network_programming.labels(fam).observe(max(0.0, wall - t))

    async def _cleanup_conntrack(self, states: dict[int, ProxyState],
                                 changed: frozenset[ServicePortName] | None) -> int:
        if self.conntrack is None:
            return 0
        targets: list[UdpTarget] = []
        for f, st in states.items():
            names = st.services.keys() if changed is None else (n for n in changed if n in st.services)
            for name in names:
                sp = st.services[name]
                if sp.protocol != "UDP":
                    continue
                serving = frozenset((e.ip, e.port) for e in st.endpoints.get(name, ()) if e.serving)
                if not serving:
                    continue
                targets.append(UdpTarget(f, frozenset((sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips)),
                                         sp.port, sp.node_port, serving))
        if not targets:
            return 0
        start = time.monotonic()
        try:
            deleted = await asyncio.to_thread(self.conntrack.cleanup, targets)
        except Exception as e:  # a missing nf_conntrack_netlink must not stop the proxy
            log.error("conntrack cleanup failed: %s", e)
            return 0
        for f in self.options.families:
            self.metrics.conntrack_duration.labels(_fam(f)).observe(time.monotonic() - start)
        if deleted:
            self.metrics.conntrack_deleted.labels(_fam(self.options.families[0])).inc(deleted)
        return deleted

    async def _update_health(self, states: dict[int, ProxyState]) -> None:
        self.health.node_eligible = not node_is_terminating(self.tracker.node)
        wanted: dict[tuple[str, str], int] = {}
        local: dict[tuple[str, str], int] = {}
        for f, st in states.items():
            no_local = {"internal": 0, "external": 0}
            for name, sp in st.services.items():
                if not (sp.internal_policy_local or sp.external_policy_local):
                    continue
                eps = st.endpoints.get(name, ())
                cat = categorize(sp, eps, st.config.node_name, st.config.node_zone)
                if cat.has_any and not cat.local:
                    no_local["internal" if sp.internal_policy_local else "external"] += 1
                if sp.health_check_node_port:
                    nsn = (name.namespace, name.name)
                    wanted[nsn] = sp.health_check_node_port
                    ready_local = {e.address for e in eps if e.is_local and e.ready}
                    local[nsn] = max(local.get(nsn, 0), len(ready_local))
            for policy, n in no_local.items():
                self.metrics.no_local_endpoints.labels(_fam(f), policy).set(n)
        if self.service_health is not None:
            await self.service_health.sync(wanted, local)


def _fam(family: int) -> str:
    return "IPv4" if family == 4 else "IPv6"


def list_local_addresses() -> list[str]:
    """Addresses on this network namespace's links (for CIDR --nodeport-addresses).

    pyroute2 0.9's IPRoute runs its own asyncio loop and refuses to start inside a
    running one (the sync loop calls this), so the query runs in a worker thread."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_list_local_addresses).result()


def _list_local_addresses() -> list[str]:
    from pyroute2 import IPRoute

    out: list[str] = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS")
            if addr:
                try:
                    out.append(str(ipaddress.ip_address(addr)))
                except ValueError:
                    continue
    return out
