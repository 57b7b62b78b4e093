"""`svcnet lab loadbalancer --kubeconfig F --pool CIDR`: LoadBalancer IPs for the lab.

A cloud controller's job, done the way MetalLB's layer-3 mode and
cloud-provider-kind do it for a lab: every Service of type LoadBalancer (without a
`spec.loadBalancerClass`) gets the lowest free address of the pool in
`status.loadBalancer.ingress` (ipMode VIP). `spec.loadBalancerIP`, when inside the
pool and free, is honoured. The lab routes the pool from the `external` namespace
to every node (ECMP), and each node's `svcnet proxy` accepts traffic for the
ingress IP, so a client outside the cluster reaches the Service through any node.

Allocation is computed from the whole Service list each time (`plan`), so a
restart rebuilds the same assignments from the statuses already written, and a
Service that stops being a LoadBalancer gives its address back.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
from typing import Any

from svcnet.apiclient.objects import Obj, key_of

log = logging.getLogger("svcnet.lab.loadbalancer")


def _ingress_ip(svc: Obj) -> str | None:
    for ing in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        if ing.get("ip"):
            return str(ing["ip"])
    return None


def _wants(svc: Obj) -> bool:
    spec = svc.get("spec") or {}
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def plan(services: list[Obj], pool: ipaddress.IPv4Network) -> dict[str, str | None]:
    """Service key -> the ingress IP it should have (None: none), for every Service
    whose status must change. Existing valid assignments are kept."""
    hosts = [str(h) for h in pool.hosts()] if pool.prefixlen < 31 else [str(h) for h in pool]
    used: dict[str, str] = {}
    changes: dict[str, str | None] = {}
    pending: list[Obj] = []
    for svc in sorted(services, key=key_of):
        ip = _ingress_ip(svc)
        if not _wants(svc):
            if ip is not None and ip in hosts:
                changes[key_of(svc)] = None  # no longer a LoadBalancer: give it back
            continue
        if ip is not None and ip in hosts and ip not in used:
            used[ip] = key_of(svc)
        else:
            pending.append(svc)
    for svc in pending:
        asked = str((svc.get("spec") or {}).get("loadBalancerIP") or "")
        choice = asked if asked in hosts and asked not in used else next((h for h in hosts if h not in used), None)
        if choice is not None:
            used[choice] = key_of(svc)
        if choice != _ingress_ip(svc):
            changes[key_of(svc)] = choice
    return changes


class LoadBalancerController:
    def __init__(self, source: Any, pool: ipaddress.IPv4Network) -> None:
        from svcnet.apiclient.informer import FuncHandler
        from svcnet.apiclient.resources import SERVICES

        self.source, self.pool = source, pool
        self.services = source.informer(SERVICES)
        self._dirty = asyncio.Event()
        mark = FuncHandler(lambda o: self._dirty.set(), lambda a, b: self._dirty.set(), lambda o: self._dirty.set())
        self.services.add_handler(mark)

    async def run(self) -> None:
        task = asyncio.create_task(self.source.run())
        try:
            await self.services.wait_for_sync()
            self._dirty.set()
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                await self.sync()
        finally:
            task.cancel()

    async def sync(self) -> None:
        from svcnet.apiclient import errors
        from svcnet.apiclient.client import PatchType
        from svcnet.apiclient.resources import SERVICES

        for key, ip in plan(self.services.list(), self.pool).items():
            ns, name = key.split("/", 1)
            ingress = [{"ip": ip, "ipMode": "VIP"}] if ip else []
            try:
                await self.source.client.patch(SERVICES, name, {"status": {"loadBalancer": {"ingress": ingress}}},
                                               ns, patch_type=PatchType.MERGE, subresource="status")
                log.info("service=%s loadBalancer ingress=%s", key, ip or "(released)")
            except errors.NotFound:
                pass
            except (errors.ApiError, errors.TransportError, OSError) as e:
                log.warning("service=%s: status not written (will retry): %s", key, e)
                await asyncio.sleep(1)
                self._dirty.set()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--pool", required=True, help="CIDR to hand out, e.g. 172.19.0.0/28")
    parser.add_argument("-v", "--verbose", action="count", default=0)


def run(args: argparse.Namespace) -> int:
    from svcnet.apiclient.api_source import ApiSource
    from svcnet.common.log_setup import setup_logging

    setup_logging("loadbalancer", verbosity=args.verbose)
    pool = ipaddress.IPv4Network(args.pool)

    async def main() -> None:
        await LoadBalancerController(ApiSource.from_kubeconfig(args.kubeconfig), pool).run()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0
