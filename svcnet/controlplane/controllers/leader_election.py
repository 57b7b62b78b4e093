"""Leader election on a coordination.k8s.io Lease, the way client-go's
`leaderelection` package does it, so two controller-managers never both write.

* The candidate reads the Lease (`kube-system/svcnet-controller-manager`). If nobody
  holds it, or the holder's record has not changed for `lease_duration` *as measured
  on our own clock since we last saw it change* (clocks of different machines are not
  compared), it writes itself in as holder, with a conditional update: of two
  candidates, the second gets 409 Conflict and keeps waiting.
* The leader renews every `retry_period`. If it cannot renew within `renew_deadline`,
  it has lost the lease and must stop (`run()` returns), as client-go's
  OnStoppedLeading leads kube-controller-manager to exit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine

from svcnet.apiclient import errors
from svcnet.apiclient.objects import Obj
from svcnet.apiclient.resources import LEASES
from svcnet.controlplane.controllers.clock import format_time

log = logging.getLogger(__name__)


@dataclass
class LeaderElector:
    client: Any
    identity: str
    name: str = "svcnet-controller-manager"
    namespace: str = "kube-system"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    monotonic: Callable[[], float] = time.monotonic  # injectable, for tests
    _observed: tuple[str, float] = field(default=("", 0.0))  # (record, monotonic when seen)

    def _record(self, lease: Obj) -> str:
        spec = lease.get("spec") or {}
        return f"{spec.get('holderIdentity')}|{spec.get('renewTime')}|{spec.get('leaseTransitions')}"

    def _spec(self, transitions: int, acquire_time: str | None) -> Obj:
        now = format_time(time.time(), nano=True)
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": acquire_time or now, "renewTime": now, "leaseTransitions": transitions}

    async def try_acquire_or_renew(self) -> bool:
        try:
            lease = await self.client.get(LEASES, self.name, self.namespace)
        except errors.NotFound:
            new = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(0, None)}
            try:
                await self.client.create(LEASES, new, self.namespace)
                return True
            except errors.AlreadyExists:
                return False
        spec = lease.get("spec") or {}
        record = self._record(lease)
        if record != self._observed[0]:
            self._observed = (record, self.monotonic())
        holder = spec.get("holderIdentity") or ""
        expired = self.monotonic() - self._observed[1] > float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and not expired:
            return False
        mine = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        updated = {**lease, "spec": self._spec(transitions, spec.get("acquireTime") if mine else None)}
        try:
            result = await self.client.update(LEASES, updated, self.namespace)
        except errors.Conflict:
            return False
        self._observed = (self._record(result), self.monotonic())
        return True

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Wait to become leader, run `lead()` while leading; return when leadership is lost
        (or when `lead()` returns)."""
        log.info("attempting to acquire leader lease %s/%s identity=%s", self.namespace, self.name, self.identity)
        while not await self._attempt():
            await asyncio.sleep(self.retry_period)
        log.info("successfully acquired lease %s/%s", self.namespace, self.name)
        work: asyncio.Task[None] = asyncio.create_task(lead())
        try:
            last_renew = time.monotonic()
            while not work.done():
                await asyncio.wait([work], timeout=self.retry_period)
                if work.done():
                    break
                if await self._attempt():
                    last_renew = time.monotonic()
                elif time.monotonic() - last_renew > self.renew_deadline:
                    log.error("leader election lost: could not renew within %.0fs", self.renew_deadline)
                    return
            work.result()
        finally:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)

    async def _attempt(self) -> bool:
        try:
            return await self.try_acquire_or_renew()
        except (errors.ApiError, errors.TransportError) as e:
            log.warning("leader election: %s", e)
            return False
