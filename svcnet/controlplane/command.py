"""`svcnet apiserver`: the Kubernetes-compatible API server over HTTPS.

    svcnet apiserver --data-dir DIR --listen HOST:PORT --kubeconfig-out FILE
        [--service-cidr 10.96.0.0/12] [--node-port-range 30000-32767]
        [--storage sqlite|etcd://HOST:PORT[,HOST:PORT…]] [--etcd-prefix /registry]
        [--advertise-address IP] [--pki-dir DIR] [--apiserver-peers HOST:PORT,…]
        [--endpoint-lease-duration SECONDS]

On start it opens the store in DIR, creates or reuses the CA, serving certificate and
tokens under DIR/pki, binds HOST:PORT (port 0 picks a free port), bootstraps the
default namespaces and the `kubernetes` Service pointing at itself, and then writes two
kubeconfigs: FILE (admin token, context `svcnet`) and FILE's `-readonly` sibling
(`kubeconfig` -> `kubeconfig-readonly`, `admin.yaml` -> `admin-readonly.yaml`) with the
read-only agent token. The kubeconfigs are written last, so a file that appears means
the server is ready. SIGTERM/SIGINT end watches, stop serving and close the store.

Several API servers on one etcd (high availability): give each its own data dir and
the same `--storage`, `--etcd-prefix` and `--pki-dir` (one CA and token pair, so one
kubeconfig works with all), and serve them on one port. Each keeps its endpoint in
the `kubernetes` Service's EndpointSlice through a Lease in kube-system
(`registry/endpoint_reconciler.py`). `--apiserver-peers` lists the others in the
kubeconfigs written here, under the cluster extension `svcnet.io/servers`, which
svcnet's agents use to move to another server when one dies (kubectl uses `server`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from svcnet.common.endpoints import parse_host_port
from svcnet.common.log_setup import setup_logging
from svcnet.controlplane.storage import DEFAULT_ETCD_PREFIX

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:6443"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="directory for the store, certificates and tokens (created if missing)")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"address to serve HTTPS on; port 0 picks a free port (default {DEFAULT_LISTEN})")
    parser.add_argument("--kubeconfig-out", type=Path, metavar="FILE",
                        help="write an admin kubeconfig here, and a read-only one beside it "
                             "(default DATA_DIR/admin.kubeconfig)")
    parser.add_argument("--service-cidr", default="10.96.0.0/12",
                        help="Service ClusterIP range, or two comma-separated for dual-stack "
                             "(kube-apiserver --service-cluster-ip-range)")
    parser.add_argument("--node-port-range", default="30000-32767",
                        help="NodePort range (kube-apiserver --service-node-port-range)")
    parser.add_argument("--storage", default="sqlite", metavar="sqlite|etcd://HOST:PORT,…",
                        help="storage backend: sqlite in DATA_DIR (default), or an etcd v3 cluster "
                             "given by its client endpoints")
    parser.add_argument("--etcd-prefix", default=DEFAULT_ETCD_PREFIX,
                        help="key prefix of this cluster's objects in etcd (kube-apiserver --etcd-prefix)")
    parser.add_argument("--advertise-address", default="",
                        help="IP the `kubernetes` Service's EndpointSlice points at "
                             "(default: the listen IP, or this host's primary IP when listening on all)")
    parser.add_argument("--pki-dir", type=Path, metavar="DIR",
                        help="directory of the CA and tokens, shared by every apiserver of the cluster "
                             "(default DATA_DIR/pki; each serving certificate stays in DATA_DIR/pki)")
    parser.add_argument("--apiserver-peers", default="", metavar="HOST:PORT,…",
                        help="the cluster's other apiservers (HOST:PORT or https://HOST:PORT), listed after "
                             "this one in the kubeconfigs' svcnet.io/servers extension for agents to fail over")
    parser.add_argument("--endpoint-lease-duration", type=int, default=15, metavar="SECONDS",
                        help="how long this apiserver's endpoint Lease in kube-system lasts unrenewed (renewed "
                             "every half of it); a dead apiserver leaves the kubernetes EndpointSlice after it "
                             "(default 15, kube's endpoint reconciler TTL)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v: debug)")


# Young-generation threshold while serving. CPython's default (700) runs a gen-0
# collection every 700 net container allocations. Serving a 10,000-Service list, a
# Table of it, or one write fanned out to 100 watchers allocates hundreds of thousands
# of short-lived dicts and lists that form no cycles: with 700 the collector runs
# hundreds of times per request and promotes the response's still-live dicts through
# gen 1 into gen 2, where they are traversed again, until a full collection walks the
# whole heap mid-request. At 50,000 a young collection still walks only young objects
# (a few ms at most) and runs ~70x less often; cyclic garbage waits at most that many
# allocations longer. Gen 1 and gen 2 keep CPython's thresholds.
GC_GEN0_THRESHOLD = 50_000


def tune_gc_for_serving() -> None:
    """Call once start-up is done: collect, then freeze what survived (imported modules,
    the kinds table, Kubernetes' schemas, the store's start-up state: ~50,000 objects that
    live as long as the process) so no later collection traverses them again, and raise
    the young-generation threshold (see GC_GEN0_THRESHOLD). The hot paths that decode or
    build whole lists also pause the collector (`registry.codec.gc_paused`)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, gen2)
    log.info("gc: froze objects=%d in %.0f ms; thresholds=%s", gc.get_freeze_count(),
             (time.perf_counter() - started) * 1000, gc.get_threshold())


def readonly_path(path: Path) -> Path:
    """FILE's read-only sibling: `admin.kubeconfig` -> `admin-readonly.kubeconfig`."""
    return path.with_name(f"{path.stem}-readonly{path.suffix}")


def service_cidrs(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """`--service-cidr`: one CIDR, or two of different families (dual-stack, primary first)."""
    cidrs = [ipaddress.ip_network(c.strip(), strict=False) for c in value.split(",") if c.strip()]
    if not 1 <= len(cidrs) <= 2 or (len(cidrs) == 2 and cidrs[0].version == cidrs[1].version):
        raise ValueError(f"invalid --service-cidr {value!r}: want one CIDR, or two of different "
                         "IP families")
    return cidrs


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def primary_ip() -> str:
    """The source address of the default route (no packet is sent), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only selects a route
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def peer_urls(value: str) -> list[str]:
    """`--apiserver-peers`: HOST:PORT or https://HOST:PORT entries, as https URLs."""
    urls = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        if entry.startswith("https://"):
            entry = entry[len("https://"):].rstrip("/")
        elif "://" in entry:
            raise ValueError(f"invalid --apiserver-peers entry {entry!r}: want HOST:PORT or https://HOST:PORT")
        host, port = parse_host_port(entry)
        if not port:
            raise ValueError(f"invalid --apiserver-peers entry {entry!r}: a port is required")
        urls.append(f"https://{_url_host(host)}:{port}")
    return urls


def kubeconfig(server: str, ca_pem: bytes, user: str, token: str, context: str,
               peers: list[str] | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {"server": server,
                               "certificate-authority-data": base64.b64encode(ca_pem).decode()}
    if peers:
        from svcnet.apiclient.kubeconfig import servers_extension

        cluster["extensions"] = [servers_extension([server, *(p for p in peers if p != server)])]
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "svcnet", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": "svcnet", "user": user,
                                                   "namespace": "default"}}],
        "current-context": context,
    }


def write_private(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    os.replace(tmp, path)


def _url_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


async def serve(args: argparse.Namespace) -> int:
    # Imported here: `svcnet apiserver --help` must not pay for the registry and schemas.
    from aiohttp import web

    from svcnet.controlplane.apiserver.app import build_app, state_of
    from svcnet.controlplane.apiserver.auth import load_or_create_tokens
    from svcnet.controlplane.apiserver.certs import ensure_pki
    from svcnet.controlplane.registry import schema
    from svcnet.controlplane.registry.store import Registry

    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    host, port = parse_host_port(args.listen)
    if host == "localhost":
        host = "127.0.0.1"
    advertise = args.advertise_address or (primary_ip() if _unspecified(host) else host)
    # the `kubernetes` Service's IP: the first of the primary (first) CIDR; the Registry
    # gets the whole dual-stack list
    kubernetes_ip = str(service_cidrs(args.service_cidr)[0].network_address + 1)

    pki_dir: Path | None = args.pki_dir.resolve() if args.pki_dir else None
    tokens = load_or_create_tokens(data_dir, pki_dir=pki_dir)
    pki = ensure_pki(data_dir, ips=[host, advertise, kubernetes_ip], pki_dir=pki_dir)
    registry = await Registry.open(data_dir, service_cidr=args.service_cidr,
                                   node_port_range=args.node_port_range, storage=args.storage,
                                   etcd_prefix=args.etcd_prefix)
    runner: web.AppRunner | None = None
    try:
        app = build_app(registry, tokens, "", schema.openapi_v3_components)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=pki.server_ssl_context(), reuse_address=True,
                           shutdown_timeout=5.0)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        state_of(app).server_address = f"{_url_host(advertise)}:{bound_port}"
        registry.endpoint_lease_duration = args.endpoint_lease_duration
        await registry.bootstrap(advertise, bound_port)
        tune_gc_for_serving()

        server_host = advertise if _unspecified(host) else host
        server = f"https://{_url_host(server_host)}:{bound_port}"
        out: Path = (args.kubeconfig_out or data_dir / "admin.kubeconfig").resolve()
        peers = peer_urls(args.apiserver_peers)
        write_private(readonly_path(out), kubeconfig(server, pki.ca_pem(), "svcnet-agent", tokens.readonly,
                                                     "svcnet-readonly", peers))
        write_private(out, kubeconfig(server, pki.ca_pem(), "svcnet-admin", tokens.admin, "svcnet", peers))
        log.info("serving url=%s kubeconfig=%s readonly-kubeconfig=%s data-dir=%s", server, out,
                 readonly_path(out), data_dir)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        state_of(app).stopping.set()
    finally:
        if runner is not None:
            await runner.cleanup()
        await registry.close()
    return 0


def main(args: argparse.Namespace) -> int:
    from svcnet.controlplane.storage import StorageError, check_storage_flags

    setup_logging("apiserver", verbosity=args.verbose)
    try:
        check_storage_flags(args.storage, args.etcd_prefix)
        parse_host_port(args.listen)
        service_cidrs(args.service_cidr)
        peer_urls(args.apiserver_peers)
        if args.endpoint_lease_duration < 1:
            raise ValueError(f"invalid --endpoint-lease-duration {args.endpoint_lease_duration}: "
                             "at least 1 second")
    except ValueError as exc:
        print(f"svcnet apiserver: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            return runner.run(serve(args))
        except StorageError as exc:  # e.g. etcd unreachable at start
            print(f"svcnet apiserver: storage {args.storage}: {exc}", file=sys.stderr)
            return 1
