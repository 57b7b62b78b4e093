"""The cache for forwarded answers (CoreDNS's `cache` plugin, for upstream data only).

Cluster answers are never cached here: they are computed from the live index (the
index is the cache) and their reply bytes are flushed on every change, so a recreated
Service is visible at once (kubernetes#71308, coredns#2327).

Rules (CoreDNS cache defaults, with the issue's caps):
* a positive answer is kept for the smallest TTL in the message, at most 3600 s;
* a negative answer (NXDOMAIN, or NOERROR without answers) is kept for the SOA in the
  authority section, min(SOA TTL, SOA minimum) as RFC 2308 says, at most 1800 s, and
  not at all without an SOA;
* TTL 0, SERVFAIL, REFUSED and truncated replies are not kept;
* a hit is served with every TTL lowered by the time it spent in the cache;
* at capacity the oldest entry goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from svcnet.dns import wire
from svcnet.dns.wire import RR, Message

CacheKey = tuple[bytes, int, int, bool, bool]  # (lower name, type, class, DO, CD)


@dataclass
class _Entry:
    msg: Message
    stored: float
    expires: float
    negative: bool


class ForwardCache:
    def __init__(self, capacity: int = 9984, max_positive: int = 3600, max_negative: int = 1800,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.max_positive = max_positive
        self.max_negative = max_negative
        self.clock = clock
        self._entries: dict[CacheKey, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def counts(self) -> tuple[int, int]:
        """(positive entries, negative entries)."""
        neg = sum(1 for e in self._entries.values() if e.negative)
        return len(self._entries) - neg, neg

    def get(self, key: CacheKey) -> tuple[Message, bool] | None:
        """The cached reply with TTLs aged, and whether it is negative; None on a miss."""
        e = self._entries.get(key)
        if e is None:
            return None
        now = self.clock()
        if now >= e.expires:
            del self._entries[key]
            return None
        age = int(now - e.stored)
        m = e.msg
        aged = Message(m.id, m.flags, m.rcode, list(m.question),
                       _age(m.answer, age), _age(m.authority, age), _age(m.additional, age), m.edns)
        return aged, e.negative

    def put(self, key: CacheKey, msg: Message) -> int:
        """Store `msg` if cacheable; returns the seconds it will be kept (0 = not kept)."""
        ttl, negative = self.ttl_for(msg)
        if ttl <= 0:
            return 0
        if key not in self._entries and len(self._entries) >= self.capacity:
            self._entries.pop(next(iter(self._entries)))
        now = self.clock()
        self._entries.pop(key, None)
        self._entries[key] = _Entry(msg, now, now + ttl, negative)
        return ttl

    def ttl_for(self, msg: Message) -> tuple[int, bool]:
        if msg.flags & wire.TC:
            return 0, False
        if msg.rcode == wire.NXDOMAIN or (msg.rcode == wire.NOERROR and not msg.answer):
            soa = next((r for r in msg.authority if r.rtype == wire.SOA), None)
            if soa is None:
                return 0, True
            return min(soa.ttl, wire.soa_minimum(soa), self.max_negative), True
        if msg.rcode != wire.NOERROR:
            return 0, False
        rrs = msg.answer + msg.authority + msg.additional
        return min(min(r.ttl for r in rrs), self.max_positive), False

    def clear(self) -> None:
        self._entries.clear()


def _age(rrs: list[RR], age: int) -> list[RR]:
    if not age:
        return list(rrs)
    return [r.with_ttl(max(0, r.ttl - age)) for r in rrs]
