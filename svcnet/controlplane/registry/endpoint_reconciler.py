"""The `kubernetes` Service's endpoints with several API servers: kube-apiserver's lease
endpoint reconciler (`pkg/controlplane/reconcilers/lease.go`), on Lease objects.

Each API server keeps one coordination.k8s.io Lease in `kube-system`, named after its
advertised endpoint (`apiserver-192.0.2.10-6443`; labels
`apiserver.kubernetes.io/identity=kube-apiserver`, annotations
`svcnet.io/advertise-address` and `svcnet.io/advertise-port`), renewed every half
`lease_duration`. On every round each server computes the `default/kubernetes`
EndpointSlice *from the live leases alone* (`renewTime + leaseDurationSeconds` after
now), sorted by address, and writes it only when it differs from what is stored, with a
resourceVersion precondition. So servers that agree on the leases agree on the slice:
two servers on one etcd never rewrite each other's slice back and forth; a dead server
drops out once its lease expires (rounds also wake at the next peer lease's expiry),
and its expired Lease is deleted (precondition on its resourceVersion, so a late renewal
wins). A server stopping cleanly deletes its own Lease and leaves the slice at once
(the last one leaves it without endpoints, as kube's reconciler does).

All servers of a cluster serve on one port, as kube-apiserver requires of
`--secure-port`. Should they not, the slice (and the Service's targetPort) follows the
longest-held lease's family and port, and the others are left out with a warning,
rather than servers fighting over it. Expiry compares wall clocks (the servers' clocks
must agree to well under a lease duration, as for kube's apiserver identity leases).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k

if TYPE_CHECKING:
    from svcnet.controlplane.registry.store import Registry

log = logging.getLogger(__name__)

Obj = dict[str, Any]

LEASE_NAMESPACE = "kube-system"
IDENTITY_LABEL = "apiserver.kubernetes.io/identity"
IDENTITY_VALUE = "kube-apiserver"
ADDRESS_ANNOTATION = "svcnet.io/advertise-address"
PORT_ANNOTATION = "svcnet.io/advertise-port"
MANAGER = "kube-apiserver"
DEFAULT_LEASE_DURATION = 15  # seconds: kube's masterEndpointReconcileTTL


def identity_for(address: str, port: int) -> str:
    """The Lease name of the API server advertising `address:port` (a DNS subdomain)."""
    return f"apiserver-{address.lower().replace(':', '-')}-{port}"


def _format(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(value, fmt).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class Member:
    """One API server as its Lease describes it."""

    name: str
    address: str
    port: int
    acquired: str  # acquireTime, for "the longest-held lease"
    expires: dt.datetime

    @property
    def family(self) -> str:
        return "IPv6" if ":" in self.address else "IPv4"


def member_of(lease: Obj) -> Member | None:
    """The API server behind a Lease, or None when the Lease is not one of ours."""
    md = lease.get("metadata") or {}
    ann = md.get("annotations") or {}
    spec = lease.get("spec") or {}
    renewed = _parse(spec.get("renewTime"))
    try:
        port = int(ann.get(PORT_ANNOTATION, ""))
        duration = int(spec.get("leaseDurationSeconds") or 0)
    except ValueError:
        return None
    address = ann.get(ADDRESS_ANNOTATION)
    if not address or renewed is None or duration <= 0:
        return None
    return Member(str(md.get("name")), str(address), port, str(spec.get("acquireTime") or ""),
                  renewed + dt.timedelta(seconds=duration))


def desired_slice(members: list[Member]) -> tuple[Obj, list[Member]]:
    """The `kubernetes` slice's addressType/endpoints/ports for these live members, and
    the members left out because their family or port differs from the longest-held."""
    first = min(members, key=lambda m: (m.acquired, m.name))
    kept = [m for m in members if (m.family, m.port) == (first.family, first.port)]
    left = [m for m in members if m not in kept]
    body: Obj = {
        "addressType": first.family,
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}}
                      for a in sorted({m.address for m in kept})],
        "ports": [{"name": "https", "port": first.port, "protocol": "TCP"}],
    }
    return body, left


class EndpointReconciler:
    """Keeps this server's Lease and the `kubernetes` slice; see the module docstring."""

    def __init__(self, registry: Registry, address: str, port: int,
                 lease_duration: int = DEFAULT_LEASE_DURATION) -> None:
        if lease_duration < 1:
            raise ValueError("the endpoint lease duration must be at least 1 second")
        self.registry = registry
        self.address, self.port = address, port
        self.lease_duration = lease_duration
        self.identity = identity_for(address, port)
        self._left_out: frozenset[str] = frozenset()

    @property
    def renew_interval(self) -> float:
        return self.lease_duration / 2

    async def run(self) -> None:
        """Reconcile until cancelled; every failure is logged and retried next round."""
        failing = False
        while True:
            try:
                delay = await self.reconcile()
                if failing:
                    log.info("endpoint reconcile recovered identity=%s", self.identity)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as err:  # storage down, a conflict: the next round repairs
                # one warning per outage, not one a second while etcd is away
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "endpoint reconcile failed identity=%s: %s", self.identity, err)
                failing = True
                delay = min(1.0, self.renew_interval)
            await asyncio.sleep(delay)

    async def reconcile(self) -> float:
        """One round: renew our Lease, rewrite the slice if the live set changed, delete
        expired Leases. Returns the seconds until the next round is due."""
        # Our own member is the Lease as just written, not as the list shows it: a list
        # served from a watch cache that has not applied that write yet (etcd under
        # load) would leave us out, and the round would end without writing the slice
        # that `Registry.bootstrap` promises exists when it returns.
        me = member_of(await self._renew())
        if me is None:  # pragma: no cover - our own Lease always carries what member_of reads
            raise RuntimeError(f"endpoint lease {self.identity} does not describe this server")
        now = dt.datetime.now(dt.timezone.utc)
        listed = await self.registry.list(k.LEASES, LEASE_NAMESPACE,
                                          label_selector=f"{IDENTITY_LABEL}={IDENTITY_VALUE}")
        live: list[Member] = [me]
        for lease in listed["items"]:
            m = member_of(lease)
            if m is None or m.name == self.identity:
                continue
            if m.expires > now:
                live.append(m)
            else:
                await self._delete_expired(lease)
        body, left = desired_slice(live)
        self._warn_left_out(left, body)
        await self._write_slice(body)
        await self._write_target_port(body["ports"][0]["port"])
        peers = [(m.expires - now).total_seconds() for m in live if m.name != self.identity]
        # wake just after the next peer lease would expire, so a dead server goes promptly
        return max(0.05, min([self.renew_interval, *(p + 0.05 for p in peers)]))

    async def remove(self) -> None:
        """Leave: delete our Lease and rewrite the slice without us (clean shutdown)."""
        try:
            await self.registry.delete(k.LEASES, LEASE_NAMESPACE, self.identity)
        except APIError as err:
            if err.code != 404:
                raise
        now = dt.datetime.now(dt.timezone.utc)
        listed = await self.registry.list(k.LEASES, LEASE_NAMESPACE,
                                          label_selector=f"{IDENTITY_LABEL}={IDENTITY_VALUE}")
        live = [m for m in map(member_of, listed["items"])
                if m is not None and m.name != self.identity and m.expires > now]
        if live:
            await self._write_slice(desired_slice(live)[0])
        else:  # the last one out: no endpoints, rather than one pointing at a stopped server
            try:
                cur = await self.registry.get(k.ENDPOINT_SLICES, "default", "kubernetes")
            except APIError as err:
                if err.code != 404:
                    raise
            else:
                await self._write_slice({"addressType": cur.get("addressType"), "endpoints": [],
                                         "ports": cur.get("ports")})
        log.info("endpoint removed identity=%s remaining=%d", self.identity, len(live))

    # -- pieces ----------------------------------------------------------------------------

    def _lease(self, acquire_time: str, now: str) -> Obj:
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.identity, "namespace": LEASE_NAMESPACE,
                         "labels": {IDENTITY_LABEL: IDENTITY_VALUE},
                         "annotations": {ADDRESS_ANNOTATION: self.address, PORT_ANNOTATION: str(self.port)}},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_duration,
                     "acquireTime": acquire_time, "renewTime": now},
        }

    async def _renew(self) -> Obj:
        """Create or renew our Lease; the Lease as stored."""
        now = _format(dt.datetime.now(dt.timezone.utc))
        reg = self.registry
        try:
            cur = await reg.get(k.LEASES, LEASE_NAMESPACE, self.identity)
        except APIError as err:
            if err.code != 404:
                raise
            created, _ = await reg.create(k.LEASES, LEASE_NAMESPACE, self._lease(now, now),
                                          field_manager=MANAGER)
            log.info("endpoint lease created identity=%s address=%s port=%d duration=%ds",
                     self.identity, self.address, self.port, self.lease_duration)
            return created
        acquired = str((cur.get("spec") or {}).get("acquireTime") or now)
        new = self._lease(acquired, now)
        new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        for key in ("uid", "creationTimestamp"):
            if key in cur["metadata"]:
                new["metadata"][key] = cur["metadata"][key]
        renewed, _ = await reg.update(k.LEASES, LEASE_NAMESPACE, self.identity, new, field_manager=MANAGER)
        return renewed

    async def _delete_expired(self, lease: Obj) -> None:
        md = lease["metadata"]
        try:
            await self.registry.delete(k.LEASES, LEASE_NAMESPACE, md["name"], options={
                "preconditions": {"resourceVersion": md["resourceVersion"]}})
            log.info("endpoint lease expired, removed identity=%s", md["name"])
        except APIError as err:
            if err.code not in (404, 409):  # gone already, or renewed meanwhile
                raise

    def _warn_left_out(self, left: list[Member], body: Obj) -> None:
        names = frozenset(m.name for m in left)
        if names and names != self._left_out:
            log.warning("apiservers left out of the kubernetes EndpointSlice (it follows the longest-held "
                        "lease: %s port %d; every apiserver must serve on one port): %s",
                        body["addressType"], body["ports"][0]["port"],
                        ", ".join(f"{m.name}={m.address}:{m.port}" for m in left))
        self._left_out = names

    async def _write_slice(self, body: Obj) -> None:
        reg = self.registry
        try:
            cur = await reg.get(k.ENDPOINT_SLICES, "default", "kubernetes")
        except APIError as err:
            if err.code != 404:
                raise
            obj = {"metadata": {"name": "kubernetes", "namespace": "default",
                                "labels": {"kubernetes.io/service-name": "kubernetes"}}, **copy.deepcopy(body)}
            try:
                await reg.create(k.ENDPOINT_SLICES, "default", obj, field_manager=MANAGER)
            except APIError as exc:
                if exc.code != 409:  # another apiserver made it first: next round compares
                    raise
            return
        if all(cur.get(f) == body[f] for f in body):
            return
        if cur.get("addressType") != body["addressType"]:  # immutable: replace the slice
            await reg.delete(k.ENDPOINT_SLICES, "default", "kubernetes", options={
                "preconditions": {"resourceVersion": cur["metadata"]["resourceVersion"]}})
            await self._write_slice(body)
            return
        new = {**copy.deepcopy(cur), **copy.deepcopy(body)}
        try:  # the read resourceVersion guards the write: a concurrent writer wins, we re-read later
            await reg.update(k.ENDPOINT_SLICES, "default", "kubernetes", new, field_manager=MANAGER)
        except APIError as err:
            if err.code != 409:
                raise
            return
        log.info("kubernetes EndpointSlice now %s port %d",
                 ",".join(e["addresses"][0] for e in body["endpoints"]), body["ports"][0]["port"])

    async def _write_target_port(self, port: int) -> None:
        reg = self.registry
        try:
            svc = await reg.get(k.SERVICES, "default", "kubernetes")
        except APIError as err:
            if err.code != 404:
                raise
            return  # the bootstrap loop recreates it
        ports = (svc.get("spec") or {}).get("ports") or []
        if not ports or all(p.get("targetPort") == port for p in ports):
            return
        new = copy.deepcopy(svc)
        for p in new["spec"]["ports"]:
            p["targetPort"] = port
        try:
            await reg.update(k.SERVICES, "default", "kubernetes", new, field_manager=MANAGER)
        except APIError as err:
            if err.code != 409:
                raise
