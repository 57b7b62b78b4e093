"""`svcnet controller-manager`: the EndpointSlice, scheduler, node-lifecycle and
deployment controllers in one process, against any Kubernetes API server.

Flags carry kube-controller-manager's names where one exists
(`--node-monitor-grace-period`, `--max-endpoints-per-slice`, `--controllers`,
`--leader-elect*`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import uuid
from typing import TYPE_CHECKING

from svcnet.common.log_setup import setup_logging
from svcnet.controlplane.controllers.manager import ALL_CONTROLLERS, ControllerManager, ManagerConfig

if TYPE_CHECKING:
    from aiohttp import web

    from svcnet.apiclient.api_source import ApiSource

log = logging.getLogger("svcnet.controlplane.controllers")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """A Go duration (`40s`, `1m30s`, `500ms`) or a plain number of seconds, in seconds."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(value):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if pos != len(value) or not value:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration (like 40s, 1m30s, 500ms)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    return seconds


def parse_controllers(text: str) -> tuple[str, ...]:
    """kube-controller-manager's `--controllers`: names, `*` for all, `-name` to disable."""
    chosen: list[str] = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        if item == "*":
            chosen += [c for c in ALL_CONTROLLERS if c not in chosen]
        elif item.startswith("-"):
            if item[1:] not in ALL_CONTROLLERS:
                raise argparse.ArgumentTypeError(f"unknown controller {item[1:]!r} (known: {', '.join(ALL_CONTROLLERS)})")
            chosen = [c for c in chosen if c != item[1:]]
        elif item in ALL_CONTROLLERS:
            if item not in chosen:
                chosen.append(item)
        else:
            raise argparse.ArgumentTypeError(f"unknown controller {item!r} (known: {', '.join(ALL_CONTROLLERS)})")
    return tuple(chosen)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", metavar="FILE",
                        help="kubeconfig of the API server (default: as kubectl finds it)")
    parser.add_argument("--controllers", type=parse_controllers, default=ALL_CONTROLLERS, metavar="LIST",
                        help=f"controllers to run: names, '*' for all, '-name' to leave one out "
                             f"(default: all of {','.join(ALL_CONTROLLERS)})")
    parser.add_argument("--node-monitor-grace-period", type=parse_duration, default=40.0, metavar="DURATION",
                        help="how long a node may be silent (Lease not renewed) before it is NotReady (40s)")
    parser.add_argument("--node-monitor-period", type=parse_duration, default=5.0, metavar="DURATION",
                        help="how often every node's health is checked (5s)")
    parser.add_argument("--node-startup-grace-period", type=parse_duration, default=60.0, metavar="DURATION",
                        help="grace for a node that never reported Ready (60s)")
    parser.add_argument("--max-endpoints-per-slice", type=int, default=100, metavar="N",
                        help="endpoints per EndpointSlice, 1-1000 (100)")
    parser.add_argument("--concurrent-syncs", type=int, default=2, metavar="N",
                        help="workers per controller (2)")
    parser.add_argument("--leader-elect", action="store_true",
                        help="run only while holding the kube-system/svcnet-controller-manager Lease")
    parser.add_argument("--leader-elect-lease-duration", type=parse_duration, default=15.0, metavar="DURATION")
    parser.add_argument("--leader-elect-renew-deadline", type=parse_duration, default=10.0, metavar="DURATION")
    parser.add_argument("--leader-elect-retry-period", type=parse_duration, default=2.0, metavar="DURATION")
    parser.add_argument("--metrics-bind-address", default="", metavar="HOST:PORT",
                        help="serve /metrics, /healthz and /readyz here (default: off)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v: debug)")


def main(args: argparse.Namespace) -> int:
    setup_logging("controller-manager", socket.gethostname(), args.verbose)
    if not 1 <= args.max_endpoints_per_slice <= 1000:
        log.error("--max-endpoints-per-slice must be between 1 and 1000, got %d", args.max_endpoints_per_slice)
        return 2
    if args.concurrent_syncs < 1:
        log.error("--concurrent-syncs must be at least 1")
        return 2
    if args.kubeconfig and not os.path.exists(args.kubeconfig):
        log.error("kubeconfig %s does not exist", args.kubeconfig)
        return 2
    config = ManagerConfig(
        node_monitor_grace_period=args.node_monitor_grace_period,
        node_startup_grace_period=args.node_startup_grace_period,
        node_monitor_period=args.node_monitor_period,
        max_endpoints_per_slice=args.max_endpoints_per_slice,
        workers=args.concurrent_syncs,
        controllers=args.controllers,
    )
    try:
        return asyncio.run(_run(args, config))
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace, config: ManagerConfig) -> int:
    from svcnet.apiclient.api_source import ApiSource  # the REST stack only when running

    try:
        source = ApiSource.from_kubeconfig(args.kubeconfig)
    except Exception as e:  # a kubeconfig that does not load: one line, not a traceback
        log.error("cannot use kubeconfig %s: %s", args.kubeconfig or "(default)", e)
        return 2
    manager = ControllerManager(source, config)
    # SIGTERM (what `svcnet lab down` and process supervisors send) ends the run like
    # Ctrl-C: tasks are cancelled, watches and connections closed.
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    runner = None
    try:
        if args.metrics_bind_address:
            runner = await _serve_metrics(args.metrics_bind_address, manager)
        return await _lead_or_run(args, source, manager)
    except (ValueError, OSError) as e:  # a bad or busy --metrics-bind-address
        log.error("--metrics-bind-address %s: %s", args.metrics_bind_address, e)
        return 2
    except asyncio.CancelledError:
        log.info("terminated; stopped")
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()
        await source.client.close()  # also when we never led (the source never ran)


async def _serve_metrics(address: str, manager: ControllerManager) -> "web.AppRunner":
    from aiohttp import web

    from svcnet.common.endpoints import metrics_handler, serve
    from svcnet.controlplane.controllers.metrics import REGISTRY

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if manager.running:
            return web.Response(text="ok")
        return web.Response(status=503, text="caches not synced or not leading")

    runner = await serve(address, {"/metrics": metrics_handler(REGISTRY), "/healthz": healthz,
                                   "/readyz": readyz}, default_port=10257)
    log.info("serving metrics and health on %s", address)
    return runner


async def _lead_or_run(args: argparse.Namespace, source: "ApiSource", manager: ControllerManager) -> int:
    if not args.leader_elect:
        await manager.run()
        return 0
    from svcnet.controlplane.controllers.leader_election import LeaderElector

    elector = LeaderElector(source.client, f"{socket.gethostname()}_{uuid.uuid4()}",
                            lease_duration=args.leader_elect_lease_duration,
                            renew_deadline=args.leader_elect_renew_deadline,
                            retry_period=args.leader_elect_retry_period)
    await elector.run(manager.run)
    log.error("leaderelection lost; exiting")
    return 1
