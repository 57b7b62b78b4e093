"""Network namespaces, veths, bridges, addresses, routes and sysctls, through
netlink with pyroute2.

Everything here is one small, idempotent-where-it-can-be operation; the lab's plan
(plan.py) and the node agent's pod sandboxes (agent/sandbox.py) string them
together. Namespaces are named files under /run/netns, made the way `ip netns add`
makes them, so `ip netns list` and `ip netns exec` work on every one (mininet #274
is the complaint about namespaces nobody can enter).

Two things pyroute2 does not do, and how they are done here:
- sysctls of another namespace: /proc/sys/net shows the namespace of the *thread*
  that opens it, so `set_sysctl` opens it from a short-lived thread that has
  joined the namespace with setns(2). The process itself never moves.
- running a program in a namespace with /etc/netns/<name>/ applied: that needs a
  mount namespace with bind mounts, which `ip netns exec` sets up exactly
  (ip-netns(8)); see `netns_exec_argv`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2 import config as pr_config
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

# pyroute2 forks short-lived children to enter a namespace and ends them with SIGTERM.
# A child forked from an asyncio program inherits the loop's signal wake-up fd, so
# its SIGTERM would be reported to the *parent's* loop as if the agent itself had
# been asked to stop. Default signal dispositions in the child avoid that.
pr_config.disable_mp_signal = True

NETNS_RUN_DIR = Path("/run/netns")
RT_SCOPE_LINK = 253
T = TypeVar("T")


class NetnsError(OSError):
    """A netlink or namespace operation that failed; `errno` says why."""

    def is_not_found(self) -> bool:
        return self.errno in (errno.ENOENT, errno.ENODEV, errno.ESRCH)

    def already_exists(self) -> bool:
        return self.errno == errno.EEXIST


def _wrap(e: NetlinkError, what: str) -> NetnsError:
    return NetnsError(e.code, f"{what}: {os.strerror(e.code)}")


# --- namespaces --------------------------------------------------------------

def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def netns_inode(name: str) -> int | None:
    """The namespace's identity (the inode /proc/PID/ns/net links to), or None."""
    try:
        return os.stat(netns_path(name)).st_ino
    except OSError:
        return None


def create_netns(name: str) -> None:
    """`ip netns add NAME` (pyroute2 forks a child that unshares and bind-mounts)."""
    if netns_exists(name):
        raise NetnsError(errno.EEXIST, f"network namespace {name!r} already exists")
    pr_netns.create(name)
    log.debug("created netns name=%s", name)


def delete_netns(name: str) -> bool:
    """`ip netns del NAME`; False when it was not there. Links in it go with it."""
    if not netns_exists(name):
        return False
    pr_netns.remove(name)
    log.debug("deleted netns name=%s", name)
    return True


def run_in_netns(name: str, fn: Callable[[], T]) -> T:
    """Call `fn` on a fresh thread that joined namespace `name` (setns(2) is per thread).

    For work that must happen *inside* a namespace without moving the process:
    writing its /proc/sys/net, or opening a socket that belongs to it.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            pr_netns.setns(str(netns_path(name)), flags=0)
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread below
            error.append(e)

    t = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def set_sysctl(name: str | None, key: str, value: str | int) -> None:
    """Write `net.*` sysctl `key` inside namespace `name` (None: this process's)."""
    if not key.startswith("net."):
        raise ValueError(f"{key}: only net.* sysctls belong to a network namespace")
    path = Path("/proc/sys") / key.replace(".", "/")

    def write() -> None:
        path.write_text(f"{value}\n")

    if name is None:
        write()
    else:
        run_in_netns(name, write)
    log.debug("sysctl netns=%s %s=%s", name or "-", key, value)


def get_sysctl(name: str | None, key: str) -> str:
    path = Path("/proc/sys") / key.replace(".", "/")
    return (run_in_netns(name, path.read_text) if name else path.read_text()).strip()


def netns_exec_argv(name: str, argv: list[str]) -> list[str]:
    """argv that runs `argv` in namespace `name` as `ip netns exec` does.

    Why `ip` and not pyroute2's NSPopen: entering the network namespace alone leaves
    the host's /etc/resolv.conf in view (python-nsenter #9); `ip netns exec`
    also unshares the mount namespace, bind-mounts /etc/netns/<name>/* over /etc
    and remounts /sys, which is what makes dig and getaddrinfo in a pod use the
    pod's resolv.conf. It exec()s the program, so the pid is the program's.
    """
    return ["ip", "netns", "exec", name, *argv]


def nsenter_net_argv(name: str, argv: list[str]) -> list[str]:
    """argv that runs `argv` with only the network namespace switched.

    For long-running agents that create namespaces of their own: `ip netns exec`
    would give them a private mount namespace (made a slave of the host's), and
    the /run/netns mounts they create would never be seen by the host.
    """
    return ["nsenter", f"--net={netns_path(name)}", "--", *argv]


# --- links, addresses, routes -----------------------------------------------

@dataclass(frozen=True)
class Nexthop:
    gateway: str
    dev: str | None = None


class Netns:
    """Netlink operations in one namespace (None: the calling process's).

        async with Netns("svcnet-worker") as ns:
            await ns.add_veth("eth0", "u-worker", peer_netns="svcnet-underlay")
            await ns.add_address("eth0", "172.18.0.3/24")
    """

    def __init__(self, name: str | None) -> None:
        self.name = name
        self._ipr: AsyncIPRoute | None = None

    async def __aenter__(self) -> "Netns":
        if self.name is not None and not netns_exists(self.name):
            raise NetnsError(errno.ENOENT, f"network namespace {self.name!r} does not exist")
        self._ipr = AsyncIPRoute(netns=self.name, flags=0) if self.name else AsyncIPRoute()
        await self._ipr.__aenter__()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._ipr is not None:
            await self._ipr.__aexit__(t, e, tb)
            self._ipr = None

    @property
    def ipr(self) -> AsyncIPRoute:
        if self._ipr is None:
            raise RuntimeError("use `async with Netns(name) as ns:` before calling netlink operations")
        return self._ipr

    def _where(self) -> str:
        return f"netns {self.name}" if self.name else "this namespace"

    async def index(self, ifname: str) -> int:
        found = await self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetnsError(errno.ENODEV, f"no link {ifname!r} in {self._where()}")
        return int(found[0])

    async def has_link(self, ifname: str) -> bool:
        return bool(await self.ipr.link_lookup(ifname=ifname))

    async def links(self) -> list[str]:
        return [str(msg.get("ifname")) async for msg in await self.ipr.link("dump")]

    async def link_alias(self, ifname: str) -> str:
        msgs = await self.ipr.link("get", index=await self.index(ifname))
        for msg in msgs:
            return str(msg.get("ifalias") or "")
        return ""

    async def add_veth(self, ifname: str, peer: str, peer_netns: str | None = None,
                       alias: str = "") -> None:
        """A veth pair: `ifname` here, `peer` in `peer_netns` (or here), both down."""
        peer_spec: dict[str, Any] = {"ifname": peer}
        if peer_netns is not None:
            peer_spec["net_ns_fd"] = str(netns_path(peer_netns))
        try:
            await self.ipr.link("add", ifname=ifname, kind="veth", peer=peer_spec)
        except NetlinkError as e:
            raise _wrap(e, f"add veth {ifname}<->{peer} in {self._where()}") from None
        if alias:
            await self.set_alias(ifname, alias)

    async def add_bridge(self, ifname: str, alias: str = "") -> None:
        try:
            # No STP (the bridge has no loops) and no forwarding delay: ports forward at once.
            await self.ipr.link("add", ifname=ifname, kind="bridge", br_stp_state=0, br_forward_delay=0)
        except NetlinkError as e:
            raise _wrap(e, f"add bridge {ifname} in {self._where()}") from None
        if alias:
            await self.set_alias(ifname, alias)

    async def set_alias(self, ifname: str, alias: str) -> None:
        await self.ipr.link("set", index=await self.index(ifname), ifalias=alias)

    async def set_master(self, ifname: str, bridge: str) -> None:
        await self.ipr.link("set", index=await self.index(ifname), master=await self.index(bridge))

    async def link_up(self, ifname: str) -> None:
        await self.ipr.link("set", index=await self.index(ifname), state="up")

    async def delete_link(self, ifname: str) -> bool:
        """Delete a link (a veth takes its peer with it); False when it was not there."""
        found = await self.ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        try:
            await self.ipr.link("del", index=found[0])
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise _wrap(e, f"delete link {ifname} in {self._where()}") from None
        return True

    async def add_address(self, ifname: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        try:
            await self.ipr.addr("add", index=await self.index(ifname), address=str(iface.ip),
                                prefixlen=iface.network.prefixlen)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise _wrap(e, f"add address {cidr} to {ifname} in {self._where()}") from None

    async def add_route(self, dst: str, *, via: str | None = None, dev: str | None = None,
                        src: str | None = None, nexthops: tuple[Nexthop, ...] = ()) -> None:
        """`ip route replace DST [via GW] [dev DEV] [src SRC]`, or multipath with `nexthops`.

        `dev` without `via` is an on-link (scope link) route, as for a pod behind a veth.
        Replace, not add, so re-running a plan converges instead of failing on EEXIST.
        """
        spec: dict[str, Any] = {"dst": dst}
        if via:
            spec["gateway"] = via
        if dev:
            spec["oif"] = await self.index(dev)
            if not via:
                spec["scope"] = RT_SCOPE_LINK
        if src:
            spec["prefsrc"] = src
        if nexthops:
            hops = []
            for hop in nexthops:
                h: dict[str, Any] = {"gateway": hop.gateway}
                if hop.dev:
                    h["oif"] = await self.index(hop.dev)
                hops.append(h)
            spec["multipath"] = hops
        try:
            await self.ipr.route("replace", **spec)
        except NetlinkError as e:
            raise _wrap(e, f"route {dst} in {self._where()}") from None

    async def routes(self) -> list[dict[str, Any]]:
        out = []
        async for msg in await self.ipr.route("dump", family=2):
            if msg.get("table") != 254:  # main table only
                continue
            out.append({"dst": f"{msg.get('dst') or '0.0.0.0'}/{msg['dst_len']}",
                        "gateway": msg.get("gateway"), "oif": msg.get("oif")})
        return out

    async def addresses(self, ifname: str) -> list[str]:
        idx = await self.index(ifname)
        return [f"{m.get('address')}/{m['prefixlen']}" async for m in await self.ipr.addr("dump", index=idx)
                if m.get("family") == 2]
