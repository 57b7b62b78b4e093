"""UDP conntrack cleanup after a sync (kube-proxy's conntrack/cleanup.go).

UDP has no connection teardown, so a conntrack entry created while a Service pointed
at endpoint A keeps sending a client's datagrams to A after A is gone, for as long
as the client keeps talking (DNS clients reusing a socket are the classic victim).
After every successful sync we delete, for UDP service ports that have endpoints,
each entry whose original destination is a service address of that port (ClusterIP,
externalIP, LoadBalancer IP, or any address on the NodePort) but whose reply source
is not one of the port's currently serving endpoints. That also clears entries made
while the Service had no endpoints (their reply source is the service IP itself).
TCP is never touched: its entries end with the connection.

Entries are read and deleted over conntrack netlink with pyroute2 in the proxy's own
network namespace (the node's).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Iterable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UdpTarget:
    """One UDP service port after the sync: where clients send, who may answer."""

    family: int
    service_ips: frozenset[str]
    port: int
    node_port: int
    serving: frozenset[tuple[str, int]]  # (endpoint ip, port)


@dataclass(frozen=True)
class Flow:
    """The parts of a conntrack entry the cleanup looks at."""

    family: int
    orig_dst: str
    orig_dport: int
    reply_src: str
    reply_sport: int


def is_stale(flow: Flow, targets: Iterable[UdpTarget]) -> bool:
    for t in targets:
        if t.family != flow.family or not t.serving:
            continue
        to_service = flow.orig_dst in t.service_ips and flow.orig_dport == t.port
        to_nodeport = bool(t.node_port) and flow.orig_dport == t.node_port
        if (to_service or to_nodeport) and (flow.reply_src, flow.reply_sport) not in t.serving:
            return True
    return False


class ConntrackCleaner:
    """Deletes stale UDP entries through conntrack netlink (blocking; run in a thread)."""

    def cleanup(self, targets: list[UdpTarget]) -> int:
        if not targets:
            return 0
        from pyroute2 import Conntrack  # netlink only when there is something to clean
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        deleted = 0
        by_family: dict[int, list[UdpTarget]] = {}
        for t in targets:
            by_family.setdefault(t.family, []).append(t)
        for family, fam_targets in by_family.items():
            af = socket.AF_INET if family == 4 else socket.AF_INET6
            # the netlink family selects which table the kernel dumps: one socket per family
            with Conntrack(nfgen_family=af) as ct:
                stale = []
                for entry in ct.dump_entries(tuple_orig=NFCTAttrTuple(family=af, proto=socket.IPPROTO_UDP)):
                    o, r = entry.tuple_orig, entry.tuple_reply
                    if o.proto != socket.IPPROTO_UDP:
                        continue
                    flow = Flow(family, str(o.daddr), int(o.dport or 0), str(r.saddr), int(r.sport or 0))
                    if is_stale(flow, fam_targets):
                        stale.append(entry)
                for entry in stale:
                    try:
                        ct.delete(entry)
                        deleted += 1
                    except Exception as e:  # already gone (it timed out meanwhile) is fine
                        log.debug("conntrack delete failed: %s", e)
        if deleted:
            log.info("deleted stale UDP conntrack entries count=%d", deleted)
        return deleted
