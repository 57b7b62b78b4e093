"""`svcnet dns`: flags (named after CoreDNS's kubernetes plugin options) and start-up."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import socket
import sys
from typing import TYPE_CHECKING

from svcnet.common.endpoints import parse_host_port
from svcnet.common.log_setup import setup_logging

if TYPE_CHECKING:
    from svcnet.dns.app import AppConfig

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--kubeconfig", metavar="FILE", help="watch objects through the API server")
    src.add_argument("--objects", metavar="FILE",
                     help="read objects from a Kubernetes List (JSON/YAML) or multi-document YAML; "
                          "reloaded when it changes")
    parser.add_argument("--listen", metavar="HOST:PORT", action="append",
                        help="UDP+TCP address (repeatable; default 0.0.0.0:53)")
    parser.add_argument("--zone", metavar="ZONE", action="append",
                        help="zone to serve (repeatable; first = primary, default cluster.local); "
                             "reverse zones: in-addr.arpa, ip6.arpa or a CIDR such as 10.96.0.0/12")
    parser.add_argument("--pods", choices=("disabled", "insecure", "verified"), default="disabled",
                        help="pod A records <a-b-c-d>.<ns>.pod.<zone> (default disabled, as CoreDNS)")
    parser.add_argument("--namespaces", metavar="NS,NS", default="", help="expose only these namespaces")
    parser.add_argument("--ttl", metavar="SECONDS", type=int, default=5, help="record TTL, 0-3600 (default 5)")
    parser.add_argument("--fallthrough", action="store_true",
                        help="send would-be NXDOMAIN answers upstream instead")
    parser.add_argument("--fallthrough-zones", metavar="Z,Z", default="",
                        help="fall through only for names in these zones (implies --fallthrough)")
    parser.add_argument("--endpoint-pod-names", action="store_true",
                        help="name endpoints after their pod instead of the dashed IP")
    parser.add_argument("--ignore-empty-service", action="store_true",
                        help="NXDOMAIN for ClusterIP services without ready endpoints")
    parser.add_argument("--autopath", action="store_true",
                        help="walk the client pod's search path server-side (watches Pods)")
    parser.add_argument("--transfer-to", metavar="CIDR,CIDR|*", default="",
                        help="allow AXFR/IXFR over TCP from these clients; REFUSED for others")
    parser.add_argument("--upstream", metavar="IP[:PORT],...", default=None,
                        help="forward other names here (default: nameservers of /etc/resolv.conf)")
    parser.add_argument("--health-listen", metavar="HOST:PORT", help="serve /health here")
    parser.add_argument("--ready-listen", metavar="HOST:PORT", help="serve /ready here")
    parser.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve /metrics here")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v = debug)")


class UsageError(ValueError):
    pass


def _listen(values: list[str] | None) -> tuple[tuple[str, int], ...]:
    out = []
    for v in values or ["0.0.0.0:53"]:
        try:
            host, port = parse_host_port(v, 53)
        except ValueError as e:
            raise UsageError(f"--listen: {e}") from None
        if host == "localhost":
            host = "127.0.0.1"
        out.append((host, port))
    return tuple(out)


def local_addresses(listen: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    """The server's own addresses for NS answers: the listen addresses, or the
    interface addresses when listening on all of them (CoreDNS `boundIPs`)."""
    ips: list[str] = []
    for host, _ in listen:
        addr = ipaddress.ip_address(host)
        if not addr.is_unspecified:
            ips.append(str(addr))
            continue
        try:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                for a in ipr.get_addr(family=socket.AF_INET if addr.version == 4 else socket.AF_INET6):
                    ip = a.get_attr("IFA_ADDRESS")
                    if ip and not ip.startswith("fe80"):
                        ips.append(ip)
        except Exception as e:  # no netlink: fall back to loopback, as CoreDNS's default does
            log.warning("cannot list interface addresses (%s); NS glue uses loopback", e)
            ips.append("127.0.0.1" if addr.version == 4 else "::1")
    seen: dict[str, None] = dict.fromkeys(ips)
    return tuple(seen)


def build_config(args: argparse.Namespace) -> "AppConfig":
    from svcnet.dns import wire
    from svcnet.dns.app import AppConfig
    from svcnet.dns.forward import parse_upstreams, resolv_conf_upstreams
    from svcnet.dns.zone import ZoneConfig, expand_zone

    if not 0 <= args.ttl <= 3600:
        raise UsageError(f"--ttl {args.ttl}: must be between 0 and 3600")
    zones = []
    for spec in args.zone or ["cluster.local"]:
        try:
            zones.extend(expand_zone(spec))
        except ValueError as e:
            raise UsageError(f"--zone {spec!r}: {e}") from None
    listen = _listen(args.listen)
    ft_zones = tuple(wire.name_to_wire(z.strip().lower()) for z in args.fallthrough_zones.split(",") if z.strip())
    transfer: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for item in (x.strip() for x in args.transfer_to.split(",")):
        if not item:
            continue
        if item == "*":
            transfer += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            continue
        try:
            transfer.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise UsageError(f"--transfer-to: {item!r} is not a CIDR or *") from None
    if args.upstream is not None:
        try:
            upstreams = parse_upstreams(args.upstream)
        except ValueError as e:
            raise UsageError(f"--upstream: {e}") from None
    else:
        upstreams = resolv_conf_upstreams()
    host_search: tuple[str, ...] = ()
    if args.autopath:
        try:
            with open("/etc/resolv.conf") as f:
                for line in f:
                    parts = line.split()
                    if parts[:1] == ["search"]:
                        host_search = tuple(p.strip(".").lower() for p in parts[1:])
        except OSError:
            pass
    zone_config = ZoneConfig(
        zones=tuple(zones), ttl=args.ttl, pods=args.pods,
        namespaces=frozenset(n.strip() for n in args.namespaces.split(",") if n.strip()),
        endpoint_pod_names=args.endpoint_pod_names, ignore_empty_service=args.ignore_empty_service,
        local_ips=local_addresses(listen), fallthrough=args.fallthrough or bool(ft_zones),
        fallthrough_zones=ft_zones)
    for opt in ("health_listen", "ready_listen", "metrics_listen"):
        value = getattr(args, opt)
        if value:
            try:
                parse_host_port(value)
            except ValueError as e:
                raise UsageError(f"--{opt.replace('_', '-')}: {e}") from None
    return AppConfig(zone=zone_config, listen=listen, upstreams=tuple(upstreams), autopath=args.autopath,
                     host_search=host_search, transfer_to=tuple(transfer), health_listen=args.health_listen,
                     ready_listen=args.ready_listen, metrics_listen=args.metrics_listen)


def main(args: argparse.Namespace) -> int:
    setup_logging("dns", "", args.verbose)
    try:
        config = build_config(args)
    except UsageError as e:
        print(f"svcnet dns: error: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.install()  # the event loop carries TCP, misses and forwarding
    except ImportError:
        pass
    return asyncio.run(_run(config, args))


async def _run(config: "AppConfig", args: argparse.Namespace) -> int:
    from svcnet.apiclient.manifests import ManifestError
    from svcnet.apiclient.source import FileSource, open_source
    from svcnet.dns.app import DnsApp

    try:
        source = open_source(args.kubeconfig, args.objects)
        app = DnsApp(config, source)  # registers the informers the source feeds
        if isinstance(source, FileSource):
            source.load()  # a broken file at start is a usage error, not a silent empty zone
    except ImportError as e:
        print(f"svcnet dns: error: --kubeconfig needs the API client, which is not available: {e}",
              file=sys.stderr)
        return 2
    except (ManifestError, OSError, ValueError) as e:
        print(f"svcnet dns: error: {e}", file=sys.stderr)
        return 2
    try:
        return await app.run()
    except OSError as e:
        print(f"svcnet dns: error: cannot listen: {e}", file=sys.stderr)
        return 1

