"""`svcnet proxy`: flags (kube-proxy's names) and the process around the Proxier.

    svcnet proxy --objects cluster.yaml --hostname-override node-a --node-ip 192.168.0.2 \\
        --cluster-cidr 10.244.0.0/16 [--once | --dry-run | --cleanup]

`--once` syncs fully one time and exits 0, or 1 with the error; `--dry-run` prints
the ruleset it would load and touches nothing; `--cleanup` removes every table or
chain svcnet programmed (both modes) and exits. Otherwise, before its first sync, the
proxy removes the rules of the other mode (`remove_other_mode`), as kube-proxy does.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import re
import signal
import socket
import sys

from svcnet.common.endpoints import metrics_handler, serve
from svcnet.common.log_setup import setup_logging

log = logging.getLogger("svcnet.proxy")

ONCE_LIST_TIMEOUT = 60.0


def configure(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kubeconfig", metavar="FILE", help="read Services and EndpointSlices from this API")
    src.add_argument("--objects", metavar="FILE",
                     help="read Service, EndpointSlice, Node and ServiceCIDR objects from this manifest "
                          "file (reloaded when it changes)")
    p.add_argument("--hostname-override", metavar="NAME", default=None,
                   help="this node's name: endpoints with this nodeName are local (default: hostname)")
    p.add_argument("--node-ip", metavar="IP[,IP]", default="",
                   help="this node's addresses, primary first per family (default: from its Node object)")
    p.add_argument("--cluster-cidr", metavar="CIDR[,CIDR]", default="", help="pod CIDRs of the cluster")
    p.add_argument("--proxy-mode", choices=("nftables", "iptables"), default="nftables")
    p.add_argument("--masquerade-all", action="store_true", help="SNAT all traffic sent to ClusterIPs")
    p.add_argument("--masquerade-bit", type=int, default=14, metavar="N",
                   help="fwmark bit marking packets to masquerade (0-31, default 14)")
    p.add_argument("--detect-local-mode", choices=("ClusterCIDR", "NodeCIDR", "None"), default="ClusterCIDR")
    p.add_argument("--nodeport-addresses", metavar="CIDR,...|primary", default=None,
                   help="addresses that accept NodePorts (default: primary in nftables mode, all local "
                        "IPs in iptables mode)")
    p.add_argument("--iptables-localhost-nodeports", choices=("true", "false"), default="true",
                   help="iptables mode: accept NodePorts on 127.0.0.1")
    p.add_argument("--service-cidr", metavar="CIDR,...", default="",
                   help="service CIDRs (also learnt from ServiceCIDR objects)")
    p.add_argument("--min-sync-period", metavar="DURATION", default="1s")
    p.add_argument("--sync-period", metavar="DURATION", default="30s")
    p.add_argument("--healthz-bind-address", metavar="HOST:PORT", default="0.0.0.0:10256")
    p.add_argument("--metrics-bind-address", metavar="HOST:PORT", default="127.0.0.1:10249")
    p.add_argument("--once", action="store_true", help="one full sync, then exit")
    p.add_argument("--cleanup", action="store_true", help="remove everything svcnet programmed, then exit")
    p.add_argument("--dry-run", action="store_true", help="print the ruleset instead of loading it")
    p.add_argument("-v", "--verbose", action="count", default=0)


def parse_duration(text: str) -> float:
    """A Go duration (`1s`, `500ms`, `1m30s`, `2h`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"{text!r} is not a duration (like 1s, 500ms, 1m30s)")
    return sum(float(n) * units[u] for n, u in parts)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _cidrs(flag: str, value: str) -> tuple[str, ...]:
    out = []
    for c in _split(value):
        try:
            out.append(str(ipaddress.ip_network(c, strict=False)))
        except ValueError:
            raise ValueError(f"{flag}: {c!r} is not a CIDR") from None
    return tuple(out)


def options_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from svcnet.proxy.proxier import ProxierOptions

    node_ips = []
    for ip in _split(args.node_ip):
        try:
            node_ips.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            raise ValueError(f"--node-ip: {ip!r} is not an IP address") from None
    if not 0 <= args.masquerade_bit <= 31:
        raise ValueError(f"--masquerade-bit: {args.masquerade_bit} is not in 0-31")
    nodeport: tuple[str, ...]
    if args.nodeport_addresses is None:
        nodeport = ("primary",) if args.proxy_mode == "nftables" else ("0.0.0.0/0", "::/0")
    elif args.nodeport_addresses.strip() == "primary":
        nodeport = ("primary",)
    else:
        nodeport = _cidrs("--nodeport-addresses", args.nodeport_addresses)
    min_sync = parse_duration(args.min_sync_period)
    sync = parse_duration(args.sync_period)
    if min_sync > sync:
        raise ValueError(f"--min-sync-period {args.min_sync_period} exceeds --sync-period {args.sync_period}")
    cluster = _cidrs("--cluster-cidr", args.cluster_cidr)
    if args.detect_local_mode == "ClusterCIDR" and not cluster:
        log.warning("--detect-local-mode ClusterCIDR without --cluster-cidr: no local traffic detection")
    return ProxierOptions(
        node_name=args.hostname_override or socket.gethostname().lower(),
        node_ips=tuple(node_ips),
        cluster_cidrs=cluster,
        masquerade_all=args.masquerade_all,
        masquerade_bit=args.masquerade_bit,
        detect_local_mode=args.detect_local_mode,
        nodeport_addresses=nodeport,
        service_cidrs=_cidrs("--service-cidr", args.service_cidr),
        min_sync_period=min_sync,
        sync_period=sync,
    )


def main(args: argparse.Namespace) -> int:
    setup_logging("proxy", args.hostname_override or "", args.verbose)
    try:
        opts = options_from_args(args)
    except ValueError as e:
        print(f"svcnet proxy: {e}", file=sys.stderr)
        return 2
    if args.cleanup:
        return _cleanup(args)
    if not (args.kubeconfig or args.objects):
        print("svcnet proxy: one of --kubeconfig or --objects is required", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, opts))
    except Exception as e:
        from svcnet.apiclient.manifests import ManifestError
        from svcnet.proxy.backend import BackendError

        if isinstance(e, (BackendError, ManifestError, OSError)):
            print(f"svcnet proxy: {' '.join(str(e).split())}", file=sys.stderr)  # one line
            return 1
        raise


def _cleanup(args: argparse.Namespace) -> int:
    from svcnet.proxy.backend import BackendError, BackendOptions, load_backend

    status = 0
    for mode in ("nftables", "iptables"):
        try:
            removed = load_backend(mode, BackendOptions()).cleanup()
            log.info("removed %s rules: %s", mode, "; ".join(removed) or "none were present")
        except BackendError as e:
            if "has no" in str(e):
                continue  # a backend this build does not have programmed nothing
            print(f"svcnet proxy: cleanup ({mode}): {e}", file=sys.stderr)
            status = 1
    return status


def remove_other_mode(mode: str, families: tuple[int, ...]) -> list[str]:
    """Remove what the other `--proxy-mode` programmed, through that backend's own
    cleanup() (only `svcnet` nft tables, only SVCNET- iptables chains and the jumps
    into them), as kube-proxy does at startup: after a mode switch the old mode's rules
    would otherwise keep DNATting in front of (iptables nat runs at the same hooks) or
    after the new ones. A failure is logged, never fatal: the new mode works anyway."""
    from svcnet.proxy.backend import MODES, BackendError, BackendOptions, load_backend

    removed: list[str] = []
    for other in (m for m in MODES if m != mode):
        try:
            gone = load_backend(other, BackendOptions(families=families)).cleanup()
        except (BackendError, OSError) as e:
            if "has no" in str(e):
                continue
            log.warning("could not remove %s rules left by an earlier run: %s", other, e)
            continue
        if gone:
            log.info("switched to %s mode: removed the %s rules of an earlier run: %s",
                     mode, other, "; ".join(gone))
        else:
            log.debug("no %s rules to remove", other)
        removed += gone
    return removed


async def _run(args: argparse.Namespace, opts) -> int:  # type: ignore[no-untyped-def]
    from svcnet.apiclient.source import open_source
    from svcnet.proxy.backend import BackendOptions, load_backend
    from svcnet.proxy.healthcheck import ProxyHealth, ServiceHealthServers
    from svcnet.proxy.metrics import ProxyMetrics
    from svcnet.proxy.proxier import Proxier

    backend = load_backend(args.proxy_mode, BackendOptions(
        families=opts.families, localhost_nodeports=args.iptables_localhost_nodeports == "true"))
    if not args.dry_run:
        await asyncio.to_thread(remove_other_mode, args.proxy_mode, opts.families)
    source = open_source(args.kubeconfig, args.objects)
    metrics = ProxyMetrics(args.proxy_mode)
    health = ProxyHealth(2 * opts.sync_period, metrics)
    one_shot = args.once or args.dry_run
    hc_addrs = [] if opts.nodeport_addresses == ("primary",) else ["0.0.0.0"]
    service_health = None if one_shot else ServiceHealthServers(hc_addrs or ["0.0.0.0"], health)
    proxier = Proxier(backend, opts, metrics, health, service_health)
    proxier.attach(source)
    feed = asyncio.create_task(source.run(), name="object-source")
    try:
        if one_shot:
            await _wait_initialized(proxier, feed)
            if args.dry_run:
                sys.stdout.write(backend.render(proxier.desired()))
                return 0
            result = await proxier.sync(force_full=True)
            if result is None or result.error:
                print(f"svcnet proxy: sync failed: {result.error if result else 'not initialized'}",
                      file=sys.stderr)
                return 1
            return 0
        runners = [await serve(args.healthz_bind_address, {"/healthz": health.handle_healthz,
                                                           "/livez": health.handle_livez}),
                   await serve(args.metrics_bind_address, {"/metrics": metrics_handler(metrics.registry)})]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sync_task = asyncio.create_task(proxier.run(), name="sync-loop")
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({feed, sync_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (sync_task, stopper):
            t.cancel()
        for r in runners:
            await r.cleanup()
        if service_health is not None:
            await service_health.close()
        if feed in done and feed.exception():
            raise feed.exception()  # type: ignore[misc]
        return 0
    finally:
        feed.cancel()
        try:  # let the source close its connections (ApiSource closes its HTTP client)
            await feed
        except BaseException:  # cancelled, or the error already reported above
            pass


async def _wait_initialized(proxier, feed: asyncio.Task[None]) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ONCE_LIST_TIMEOUT
    while not proxier.ready_for_first_sync():
        if feed.done():
            exc = feed.exception()
            raise exc if exc else RuntimeError("object source stopped before listing")
        if loop.time() > deadline:
            raise TimeoutError(f"Services and EndpointSlices not listed within {ONCE_LIST_TIMEOUT:.0f}s")
        await asyncio.sleep(0.02)
