"""ClusterIP and NodePort allocation, persisted with the Service that holds them.

Every allocated value is a key in storage (`/registry/allocations/clusterips/<ip>`,
`/registry/allocations/nodeports/<port>`) written in the **same transaction** as the
Service, guarded by "key absent" compares. So an IP or port can never be handed out
twice, even by two API servers on one etcd, and a crash never leaves a Service without
its allocation or an allocation without its Service (the fault kube's old bitmap
repair loop existed for).

In memory, a `committed` set per range mirrors the keys (loaded at start, then kept
current by a watch on the allocation prefix, so several API servers on one etcd see
each other's allocations), and a `pending` set holds values picked by writes in flight.
A value is reserved synchronously when picked (no `await` in between), so 50
concurrent creates in one process pick 50 different values without round trips; the
storage compare is the backstop. A failed or dry-run write gives its picks back.

Dynamic picks prefer the upper part of each range so the lower band stays free for
static choices (KEP-3070 for ClusterIPs, e.g. DNS at .10; KEP-3668 for NodePorts):
band size min(max(16, size/16), 256) for IPs and min(max(16, size/32), 128) for ports.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry.strategies.service import (
    needs_cluster_ip, needs_health_check_node_port, needs_node_ports, ports_of, spec_of,
)
from svcnet.controlplane.registry.strategies.validation import FieldError, as_api_error, invalid_value
from svcnet.controlplane.storage.interface import (
    REGISTRY_ROOT, CompactedError, Compare, Delete, Op, Put, Storage,
)

ALLOCATIONS_PREFIX = f"{REGISTRY_ROOT}/allocations/"
log = logging.getLogger(__name__)

CLUSTER_IP_PREFIX = ALLOCATIONS_PREFIX + "clusterips/"
NODE_PORT_PREFIX = ALLOCATIONS_PREFIX + "nodeports/"

# Random probes before falling back to a scan (a nearly full range).
_PROBES = 64


class RangeFull(Exception):
    pass


class OffsetRange:
    """Integers [first, last] with a static lower band.

    `committed` mirrors the allocation keys in storage, `pending` holds values picked by
    writes still in flight. `rev_of` remembers the revision of the latest known state
    of each value, so a late watch event never undoes a newer local commit."""

    def __init__(self, first: int, last: int, band: int) -> None:
        self.first, self.last = first, last
        self.band_end = min(first + band, last + 1)   # [first, band_end) is the static band
        self.committed: set[int] = set()
        self.pending: set[int] = set()
        self.rev_of: dict[int, int] = {}
        self._rand = random.Random()

    @property
    def used(self) -> set[int]:
        """Every value that may not be handed out now."""
        return self.committed | self.pending

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def contains(self, value: int) -> bool:
        return self.first <= value <= self.last

    def _taken(self, value: int) -> bool:
        return value in self.committed or value in self.pending

    def reserve(self, value: int) -> bool:
        if self._taken(value):
            return False
        self.pending.add(value)
        return True

    def reserve_next(self) -> int:
        """A free value, preferring the dynamic (upper) band; reserved on return."""
        for lo, hi in ((self.band_end, self.last), (self.first, self.band_end - 1)):
            if lo > hi:
                continue
            for _ in range(_PROBES):
                v: int = self._rand.randint(lo, hi)
                if not self._taken(v):
                    self.pending.add(v)
                    return v
            start = self._rand.randint(lo, hi)
            for v in (*range(start, hi + 1), *range(lo, start)):
                if not self._taken(v):
                    self.pending.add(v)
                    return v
        raise RangeFull()

    def unreserve(self, value: int) -> None:
        """A pick that was not written (failed or dry-run write)."""
        self.pending.discard(value)

    def observe(self, value: int, present: bool, revision: int) -> None:
        """Storage says `value` is (not) allocated as of `revision`."""
        if revision < self.rev_of.get(value, 0):
            return
        self.rev_of[value] = revision
        if present:
            self.committed.add(value)
        else:
            self.committed.discard(value)


@dataclass
class AllocationPlan:
    """What one write claims and releases; `commit()` or `abort()` after the txn."""

    allocator: "ServiceAllocator"
    claim_ips: list[str] = field(default_factory=list)
    claim_ports: list[int] = field(default_factory=list)
    release_ips: list[str] = field(default_factory=list)
    release_ports: list[int] = field(default_factory=list)
    owner: str = ""

    def compares(self) -> list[Compare]:
        return ([Compare(CLUSTER_IP_PREFIX + ip, 0) for ip in self.claim_ips]
                + [Compare(f"{NODE_PORT_PREFIX}{p}", 0) for p in self.claim_ports])

    def ops(self) -> list[Op]:
        value = json.dumps({"owner": self.owner}).encode()
        ops: list[Op] = [Put(CLUSTER_IP_PREFIX + ip, value) for ip in self.claim_ips]
        ops += [Put(f"{NODE_PORT_PREFIX}{p}", value) for p in self.claim_ports]
        ops += [Delete(CLUSTER_IP_PREFIX + ip) for ip in self.release_ips]
        ops += [Delete(f"{NODE_PORT_PREFIX}{p}") for p in self.release_ports]
        return ops

    def commit(self, revision: int) -> None:
        """The write landed at `revision`."""
        a = self.allocator
        for ip in self.claim_ips:
            a.observe_ip(ip, True, revision)
        for p in self.claim_ports:
            a.ports.observe(p, True, revision)
        self.abort()  # the picks are committed now, no longer pending
        for ip in self.release_ips:
            a.observe_ip(ip, False, revision)
        for p in self.release_ports:
            a.ports.observe(p, False, revision)

    def abort(self) -> None:
        """The write did not happen: give the picks back."""
        for ip in self.claim_ips:
            self.allocator.unreserve_ip(ip)
        for p in self.claim_ports:
            self.allocator.ports.unreserve(p)


def held_ips(svc: dict[str, Any]) -> set[str]:
    if not needs_cluster_ip(svc):
        return set()
    spec = spec_of(svc)
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return {ip for ip in ips if isinstance(ip, str) and ip and ip != "None"}


def held_ports(svc: dict[str, Any]) -> set[int]:
    out = {p["nodePort"] for p in ports_of(svc) if isinstance(p.get("nodePort"), int) and p["nodePort"]}
    hc = spec_of(svc).get("healthCheckNodePort")
    if isinstance(hc, int) and hc:
        out.add(hc)
    return out


class IPRange:
    """One service CIDR: its usable offsets and how they map to addresses."""

    def __init__(self, cidr: str) -> None:
        try:
            self.network = ipaddress.ip_network(cidr.strip(), strict=True)
        except ValueError as err:
            raise ValueError(f"invalid --service-cidr {cidr!r}: {err}") from None
        size = self.network.num_addresses
        # IPv4 loses the network and broadcast addresses; IPv6 only the subnet-router
        # anycast (offset 0). Huge IPv6 ranges are capped as kube caps its bitmap.
        last = size - 2 if self.network.version == 4 else min(size - 1, (1 << 20))
        if last < 1:
            raise ValueError(f"--service-cidr {cidr} is too small")
        self.offsets = OffsetRange(1, last, min(max(16, size // 16), 256))
        self.family = "IPv4" if self.network.version == 4 else "IPv6"

    def offset(self, ip: str) -> int | None:
        """The offset of `ip` in this range, None when it is not inside."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if addr.version != self.network.version or addr not in self.network:
            return None
        off = int(addr) - int(self.network.network_address)
        return off if self.offsets.contains(off) else None

    def ip(self, offset: int) -> str:
        return str(self.network.network_address + offset)


class ServiceAllocator:
    """Allocates a Service's ClusterIPs (one per IP family: `--service-cidr` holds one
    CIDR, or two of different families for a dual-stack cluster, primary first),
    NodePorts and healthCheckNodePort."""

    def __init__(self, service_cidr: str = "10.96.0.0/12", node_port_range: str = "30000-32767") -> None:
        cidrs = [c for c in service_cidr.split(",") if c.strip()]
        if not 1 <= len(cidrs) <= 2:
            raise ValueError(f"invalid --service-cidr {service_cidr!r}: want one CIDR, or two of "
                             "different IP families")
        ranges = [IPRange(c) for c in cidrs]
        if len(ranges) == 2 and ranges[0].family == ranges[1].family:
            raise ValueError(f"invalid --service-cidr {service_cidr!r}: the two CIDRs must be of "
                             "different IP families")
        self.ip_ranges: dict[str, IPRange] = {r.family: r for r in ranges}
        self.families: tuple[str, ...] = tuple(r.family for r in ranges)
        primary = ranges[0]
        self.network, self.ips, self.family = primary.network, primary.offsets, primary.family
        try:
            lo_s, hi_s = node_port_range.split("-")
            lo, hi = int(lo_s), int(hi_s)
        except ValueError:
            raise ValueError(f"invalid --node-port-range {node_port_range!r}: want FROM-TO") from None
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"invalid --node-port-range {node_port_range!r}")
        self.node_port_range = node_port_range
        n = hi - lo + 1
        self.ports = OffsetRange(lo, hi, min(max(16, n // 32), 128))

    @property
    def cidrs(self) -> list[str]:
        return [str(r.network) for r in self.ip_ranges.values()]

    def _range_of(self, ip: str) -> tuple[IPRange, int] | None:
        for r in self.ip_ranges.values():
            off = r.offset(ip)
            if off is not None:
                return r, off
        return None

    def unreserve_ip(self, ip: str) -> None:
        found = self._range_of(ip)
        if found is not None:
            found[0].offsets.unreserve(found[1])

    # -- state ---------------------------------------------------------------------------

    async def load(self, storage: Storage) -> int:
        """Fill the committed sets from the allocation keys in storage; returns the
        revision they were read at."""
        page = await storage.range(ALLOCATIONS_PREFIX)
        for kv in page.kvs:
            self.observe_key(kv.key, True, kv.mod_revision)
        return page.revision

    def observe_key(self, key: str, present: bool, revision: int) -> None:
        if key.startswith(CLUSTER_IP_PREFIX):
            self.observe_ip(key[len(CLUSTER_IP_PREFIX):], present, revision)
        elif key.startswith(NODE_PORT_PREFIX):
            try:
                self.ports.observe(int(key[len(NODE_PORT_PREFIX):]), present, revision)
            except ValueError:
                pass

    def observe_ip(self, ip: str, present: bool, revision: int) -> None:
        found = self._range_of(ip)
        if found is not None:
            found[0].offsets.observe(found[1], present, revision)

    async def follow(self, storage: Storage, start: int) -> None:
        """Track allocations other API servers make and release on a shared store
        (etcd); runs until cancelled or the store closes."""
        while True:
            w = storage.watch(ALLOCATIONS_PREFIX, start)
            try:
                async for ev in w:
                    self.observe_key(ev.key, ev.type == "PUT", ev.revision)
                    start = ev.revision + 1
                return  # the store closed
            except CompactedError:
                log.warning("allocation watch fell behind compaction; reloading")
                start = await self.load(storage) + 1
            finally:
                w.close()

    def first_ip(self) -> str:
        """The address of the `kubernetes` Service (the primary range's first usable IP)."""
        return str(self.network.network_address + 1)

    # -- planning ------------------------------------------------------------------------

    def plan(self, svc: dict[str, Any], old: dict[str, Any] | None, owner: str) -> AllocationPlan:
        """Fill `svc`'s missing allocations and reserve them; raise 422 on a requested
        value that is out of range or taken. `old` is the stored Service on update."""
        plan = AllocationPlan(self, owner=owner)
        name = str((svc.get("metadata") or {}).get("name") or "")
        before_ips = held_ips(old) if old else set()
        before_ports = held_ports(old) if old else set()
        errs: list[FieldError] = []
        try:
            self._plan_ip(svc, before_ips, plan, errs)
            self._plan_ports(svc, before_ports, plan, errs)
        except BaseException:
            plan.abort()
            raise
        if errs:
            plan.abort()
            raise as_api_error("Service", name, errs)
        after_ips, after_ports = held_ips(svc), held_ports(svc)
        plan.release_ips = sorted(before_ips - after_ips)
        plan.release_ports = sorted(before_ports - after_ports)
        return plan

    def _plan_ip(self, svc: dict[str, Any], before: set[str], plan: AllocationPlan,
                 errs: list[FieldError]) -> None:
        """One ClusterIP per entry of spec.ipFamilies: requested ones are claimed (422
        when out of range or taken), missing ones picked from that family's range."""
        if not needs_cluster_ip(svc):
            return
        spec = svc["spec"]
        if spec.get("clusterIP") == "None":
            spec["clusterIPs"] = ["None"]
            return
        families = spec.get("ipFamilies") or [self.family]
        wanted = list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
        got: list[str] = []
        for i, fam in enumerate(families):
            r = self.ip_ranges.get(fam)
            if r is None:
                continue  # validation rejected families this cluster does not have
            ip = wanted[i] if i < len(wanted) else ""
            if not ip:
                try:
                    ip = r.ip(r.offsets.reserve_next())
                except RangeFull:
                    msg = f"failed to allocate a serviceIP: range is full ({r.network})"
                    raise APIError(500, "InternalError", f"Internal error occurred: {msg}",
                                   {"causes": [{"message": msg}]}) from None
                plan.claim_ips.append(ip)
            elif ip not in before:
                off = r.offset(ip)
                if off is None:
                    errs.append(invalid_value("spec.clusterIPs", wanted,
                                              f"failed to allocate IP {ip}: the provided IP ({ip}) "
                                              "is not in the valid range. The range of valid IPs "
                                              f"is {r.network}"))
                    continue
                if not r.offsets.reserve(off):
                    errs.append(invalid_value("spec.clusterIPs", wanted,
                                              f"failed to allocate IP {ip}: provided IP is already "
                                              "allocated"))
                    continue
                plan.claim_ips.append(ip)
            got.append(ip)
        if got and not errs:
            spec["clusterIPs"] = got
            spec["clusterIP"] = got[0]

    def _claim_port(self, value: int, path: str, before: set[int], plan: AllocationPlan,
                    errs: list[FieldError]) -> None:
        if value in before or value in plan.claim_ports:
            return
        if not self.ports.contains(value):
            errs.append(invalid_value(path, value, "provided port is not in the valid range. "
                                      f"The range of valid ports is {self.node_port_range}"))
        elif not self.ports.reserve(value):
            errs.append(invalid_value(path, value, "provided port is already allocated"))
        else:
            plan.claim_ports.append(value)

    def _next_port(self, plan: AllocationPlan) -> int:
        try:
            value = self.ports.reserve_next()
        except RangeFull:
            raise APIError(500, "InternalError",
                           "Internal error occurred: failed to allocate a nodePort: range is full"
                           ) from None
        plan.claim_ports.append(value)
        return value

    def _plan_ports(self, svc: dict[str, Any], before: set[int], plan: AllocationPlan,
                    errs: list[FieldError]) -> None:
        spec = spec_of(svc)
        if needs_node_ports(svc) or spec.get("type") == "LoadBalancer":
            auto = needs_node_ports(svc)
            # Explicit values first, so an automatic pick never takes a requested port.
            for i, p in enumerate(ports_of(svc)):
                if isinstance(p.get("nodePort"), int) and p["nodePort"]:
                    self._claim_port(p["nodePort"], f"spec.ports[{i}].nodePort", before, plan, errs)
            if auto:
                for p in ports_of(svc):
                    if not p.get("nodePort"):
                        p["nodePort"] = self._next_port(plan)
        if needs_health_check_node_port(svc):
            hc = spec.get("healthCheckNodePort")
            if isinstance(hc, int) and hc:
                self._claim_port(hc, "spec.healthCheckNodePort", before, plan, errs)
            else:
                spec["healthCheckNodePort"] = self._next_port(plan)

    def release_all(self, svc: dict[str, Any]) -> AllocationPlan:
        """The plan for deleting `svc`: release everything it holds."""
        plan = AllocationPlan(self)
        plan.release_ips = sorted(held_ips(svc))
        plan.release_ports = sorted(held_ports(svc))
        return plan

