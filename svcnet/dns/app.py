"""`svcnet dns` put together: informers -> ClusterIndex -> Zone -> Handler -> DnsServer.

The informer handlers (spelled like kube-proxy's: on_service_add/update/delete, ...)
convert each object into its record at the boundary and store it in the index; a
record that does not convert is logged and the last good one stays. Once every
informer has listed, the index is marked synced: until then names that would be
NXDOMAIN get SERVFAIL and /ready says 503.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from svcnet.apiclient.informer import FuncHandler
from svcnet.apiclient.objects import Obj, name_of, namespace_of
from svcnet.apiclient.resources import ENDPOINT_SLICES, NAMESPACES, PODS, SERVICES
from svcnet.apiclient.source import ObjectSource
from svcnet.common.endpoints import metrics_handler, serve
from svcnet.dns.cache import ForwardCache
from svcnet.dns.forward import Forwarder, Upstream
from svcnet.dns.handler import Handler
from svcnet.dns.index import ClusterIndex
from svcnet.dns.metrics import Metrics
from svcnet.dns.records import (HEADLESS, RecordError, pod_record, service_record, slice_record)
from svcnet.dns.server import DnsServer
from svcnet.dns.zone import PODS_VERIFIED, Zone, ZoneConfig

log = logging.getLogger(__name__)

# How often to move long-lived objects out of the garbage collector's way (see _freeze).
GC_FREEZE_INTERVAL = 300.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AppConfig:
    zone: ZoneConfig
    listen: tuple[tuple[str, int], ...]
    upstreams: tuple[Upstream, ...]
    autopath: bool = False
    host_search: tuple[str, ...] = ()
    transfer_to: tuple[Network, ...] = ()
    health_listen: str | None = None
    ready_listen: str | None = None
    metrics_listen: str | None = None


class IndexFeeder:
    """Informer handlers that keep a ClusterIndex equal to the cluster."""

    def __init__(self, index: ClusterIndex, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.index = index
        self.metrics = metrics
        self.clock = clock

    @staticmethod
    def _key(obj: Obj) -> tuple[str, str]:
        return (namespace_of(obj), name_of(obj))

    def _convert(self, fn: Callable[[Obj], Any], obj: Obj) -> tuple[bool, Any]:
        try:
            return True, fn(obj)
        except (RecordError, ValueError, TypeError, AttributeError) as e:
            log.error("ignoring update, keeping the last good record: %s", e)
            return False, None

    def on_service_add(self, obj: Obj) -> None:
        ok, rec = self._convert(service_record, obj)
        if ok:
            self.index.set_service(self._key(obj), rec)

    def on_service_update(self, old: Obj, new: Obj) -> None:
        self.on_service_add(new)

    def on_service_delete(self, obj: Obj) -> None:
        self.index.set_service(self._key(obj), None)

    def on_endpoint_slice_add(self, obj: Obj) -> None:
        ok, rec = self._convert(slice_record, obj)
        if not ok:
            return
        changed = self.index.set_slice(self._key(obj), rec)
        if changed and rec.trigger_time is not None:
            svc = self.index.service(rec.namespace, rec.service)
            kind = "cluster_ip"
            if svc is not None and svc.kind == HEADLESS:
                kind = "headless_with_selector" if svc.has_selector else "headless_without_selector"
            self.metrics.programming.labels(kind).observe(max(0.0, self.clock() - rec.trigger_time))

    def on_endpoint_slice_update(self, old: Obj, new: Obj) -> None:
        self.on_endpoint_slice_add(new)

    def on_endpoint_slice_delete(self, obj: Obj) -> None:
        self.index.set_slice(self._key(obj), None)

    def on_pod_add(self, obj: Obj) -> None:
        ok, rec = self._convert(pod_record, obj)
        if ok:
            self.index.set_pod(self._key(obj), rec)

    def on_pod_update(self, old: Obj, new: Obj) -> None:
        self.on_pod_add(new)

    def on_pod_delete(self, obj: Obj) -> None:
        self.index.set_pod(self._key(obj), None)

    def on_namespace_add(self, obj: Obj) -> None:
        self.index.set_namespace(name_of(obj), True)

    def on_namespace_update(self, old: Obj, new: Obj) -> None:
        pass

    def on_namespace_delete(self, obj: Obj) -> None:
        self.index.set_namespace(name_of(obj), False)


class DnsApp:
    """The running server: call `run()` and it serves until SIGTERM/SIGINT."""

    def __init__(self, config: AppConfig, source: ObjectSource) -> None:
        self.config = config
        self.source = source
        self.metrics = Metrics()
        self.index = ClusterIndex()
        self.zone = Zone(config.zone, self.index)
        self.cache = ForwardCache()
        self.forwarder = Forwarder(list(config.upstreams), self.cache, self.metrics) if config.upstreams else None
        self.handler = Handler(self.zone, self.forwarder, self.metrics, autopath=config.autopath,
                               host_search=config.host_search, transfer_to=config.transfer_to)
        self.server = DnsServer(self.handler, self.metrics, list(config.listen))
        self.feeder = IndexFeeder(self.index, self.metrics)
        self._wire_informers()
        self.stopped = asyncio.Event()

    def _wire_informers(self) -> None:
        f = self.feeder
        kinds: list[tuple[Any, FuncHandler]] = [
            (SERVICES, FuncHandler(f.on_service_add, f.on_service_update, f.on_service_delete)),
            (ENDPOINT_SLICES, FuncHandler(f.on_endpoint_slice_add, f.on_endpoint_slice_update,
                                          f.on_endpoint_slice_delete)),
            (NAMESPACES, FuncHandler(f.on_namespace_add, f.on_namespace_update, f.on_namespace_delete)),
        ]
        # Pods are watched only when an answer depends on them (memory, API load).
        if self.config.zone.pods == PODS_VERIFIED or self.config.autopath:
            kinds.append((PODS, FuncHandler(f.on_pod_add, f.on_pod_update, f.on_pod_delete)))
        waiting = {res.plural for res, _ in kinds}

        def synced(plural: str) -> Callable[[], None]:
            def done() -> None:
                waiting.discard(plural)
                if not waiting:
                    self.index.mark_synced()
                    log.info("synced services=%d endpointslices=%d namespaces=%d pods=%d",
                             len(self.index.services), len(self.index.slices),
                             len(self.index.namespace_objects), len(self.index.pods))
                    _freeze()
            return done

        for res, h in kinds:
            inf = self.source.informer(res)
            inf.add_handler(h)
            inf.add_synced_callback(synced(res.plural))

    async def _ops(self) -> list[web.AppRunner]:
        async def health(_: web.Request) -> web.Response:
            return web.Response(text="OK")

        async def ready(_: web.Request) -> web.Response:
            if self.index.synced and not self.stopped.is_set():
                return web.Response(text="OK")
            return web.Response(status=503, text="kubernetes")

        runners = []
        routes: dict[str, dict[str, Any]] = {}
        for addr, path, fn in ((self.config.health_listen, "/health", health),
                               (self.config.ready_listen, "/ready", ready),
                               (self.config.metrics_listen, "/metrics", metrics_handler(self.metrics.registry))):
            if addr:
                routes.setdefault(addr, {})[path] = fn
        for addr, r in routes.items():
            runners.append(await serve(addr, r))
            log.info("serving %s address=%s", ",".join(sorted(r)), addr)
        return runners

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stopped.set)
            except (NotImplementedError, RuntimeError):
                pass
        self.forwarder_label()
        await self.server.start()
        runners = await self._ops()
        feed = asyncio.ensure_future(self.source.run())
        stop = asyncio.ensure_future(self.stopped.wait())
        refreeze = asyncio.ensure_future(_refreeze_forever())
        done, _ = await asyncio.wait({feed, stop}, return_when=asyncio.FIRST_COMPLETED)
        if feed in done and feed.exception() is not None:
            log.error("object source failed: %s", feed.exception())
        log.info("shutting down: draining queries")
        await self.server.stop()
        feed.cancel()
        stop.cancel()
        refreeze.cancel()
        # Await the cancelled feed: the API source closes its HTTP session in a
        # `finally`, which only runs if someone waits for the cancellation.
        await asyncio.gather(feed, stop, refreeze, return_exceptions=True)
        if self.forwarder is not None:
            await self.forwarder.close()
        for r in runners:
            await r.cleanup()
        return 0 if stop in done else 1

    def forwarder_label(self) -> None:
        if self.forwarder is not None and self.config.listen:
            host, port = self.config.listen[0]
            self.forwarder.server_label = f"dns://{host}:{port}"


def _freeze() -> None:
    """Collect, then move every surviving object into the permanent generation.

    With 10,000 Services the informer caches hold ~10^5 container objects, and a full
    collection walks all of them: ~130 ms during which no query is answered (the hot
    path's allocations trigger collections now and then). Objects that live this
    long are the cluster state and are freed by reference counting when replaced
    (JSON dicts and frozen records have no cycles), so the collector need not look at
    them again; later collections only walk what was created since."""
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.debug("gc: froze objects=%d in %.0f ms", gc.get_freeze_count(), (time.perf_counter() - start) * 1000)


async def _refreeze_forever() -> None:
    while True:
        await asyncio.sleep(GC_FREEZE_INTERVAL)
        _freeze()
