"""`svcnet node-agent --kubeconfig F --node-name N`: run pods on this node.

    svcnet node-agent --kubeconfig admin.kubeconfig --node-name svcnet-worker \\
        --node-ip 172.18.0.3 --pod-cidr 10.244.1.0/24 [--state-dir DIR] \\
        [--cluster-dns 10.96.0.10] [--cluster-domain cluster.local] [--pod-manifest-path DIR]

Run it inside the node's network namespace with the host's mount namespace
(`nsenter --net=/run/netns/<node> -- svcnet node-agent …`, which is what
`svcnet lab up` does), so the pod namespaces it creates show up in `ip netns list`.
Flag names follow the kubelet's where one exists.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import sys
from pathlib import Path

from svcnet.common.log_setup import setup_logging

log = logging.getLogger("svcnet.lab.agent")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig with write access to pods and nodes")
    parser.add_argument("--pod-kubeconfig", default=None,
                        help="kubeconfig handed to built-in pods that watch the API, e.g. svcnet/dns "
                             "(default: --kubeconfig); it must work from the pod network")
    parser.add_argument("--node-name", required=True, help="the Node to register and run pods for")
    parser.add_argument("--node-ip", default="", help="InternalIP to report (default: this namespace's first address)")
    parser.add_argument("--pod-cidr", default="",
                        help="pod addresses on this node (default: the Node's spec.podCIDR once set)")
    parser.add_argument("--node-labels", default="", help="labels to add to the Node, k=v,k2=v2")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="state file, pod logs (default /var/lib/svcnet/node-agent/<node>)")
    parser.add_argument("--cluster-dns", default="10.96.0.10", help="nameserver for ClusterFirst pods")
    parser.add_argument("--cluster-domain", default="cluster.local", help="cluster DNS domain")
    parser.add_argument("--pod-manifest-path", type=Path, default=None, help="directory of static pod manifests")
    parser.add_argument("--node-netns", default=None,
                        help="node namespace name when the agent runs outside it (tests); default: this one")
    parser.add_argument("--lease-interval", type=float, default=10.0, help="seconds between Lease renewals")
    parser.add_argument("--stop-pods-on-exit", action="store_true",
                        help="stop this node's pods on SIGTERM (the kubelet leaves them running)")
    parser.add_argument("-v", "--verbose", action="count", default=0)


def _first_address() -> str:
    """This namespace's first global IPv4 address (the node's underlay address in the lab)."""
    from svcnet.lab.netns import Netns

    async def find() -> str:
        async with Netns(None) as ns:
            for link in await ns.links():
                if link == "lo":
                    continue
                for cidr in await ns.addresses(link):
                    ip = ipaddress.ip_interface(cidr).ip
                    if not ip.is_loopback and not ip.is_link_local:
                        return str(ip)
        return ""

    return asyncio.run(find())


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise ValueError(f"--node-labels: {part!r} is not key=value")
        out.append((k, v))
    return tuple(out)


async def _run(args: argparse.Namespace) -> int:
    from svcnet.apiclient.api_source import ApiSource
    from svcnet.lab.agent.agent import NodeAgent
    from svcnet.lab.agent.node import NodeConfig
    from svcnet.lab.agent.podspec import ClusterDNS
    from svcnet.apiclient.resources import NODES

    source = ApiSource.from_kubeconfig(args.kubeconfig)
    client = source.client
    pod_cidr = args.pod_cidr
    if not pod_cidr:
        log.info("waiting for node=%s spec.podCIDR (no --pod-cidr given)", args.node_name)
        while not pod_cidr:
            try:
                node = await client.get(NODES, args.node_name)
                pod_cidr = (node.get("spec") or {}).get("podCIDR") or ""
            except Exception as e:  # the Node may not exist yet: keep asking
                log.debug("no podCIDR yet: %s", e)
            if not pod_cidr:
                await asyncio.sleep(2)
    cfg = NodeConfig(args.node_name, args.node_ip, pod_cidr, _labels(args.node_labels))
    try:
        host_resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        host_resolv = ""
    state_dir = args.state_dir or Path("/var/lib/svcnet/node-agent") / args.node_name
    agent = NodeAgent(client, source, cfg, kubeconfig=str(Path(args.pod_kubeconfig or args.kubeconfig).resolve()), state_dir=state_dir,
                      dns=ClusterDNS(args.cluster_dns, args.cluster_domain), node_netns=args.node_netns,
                      manifest_path=args.pod_manifest_path, lease_interval=args.lease_interval,
                      host_resolv=host_resolv)
    main = asyncio.create_task(agent.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({main, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if main.done():
        main.result()  # raises what ended it
        return 1
    log.info("stopping (pods %s)", "stopped" if args.stop_pods_on_exit else "left running")
    await agent.shutdown(args.stop_pods_on_exit)
    main.cancel()
    await asyncio.gather(main, return_exceptions=True)
    return 0


def main(args: argparse.Namespace) -> int:
    setup_logging("node-agent", args.node_name, args.verbose)
    try:
        _labels(args.node_labels)
        if args.pod_cidr:
            ipaddress.ip_network(args.pod_cidr)
        if not args.node_ip:
            args.node_ip = _first_address() or socket.gethostbyname(socket.gethostname())
        ipaddress.ip_address(args.node_ip)
    except ValueError as e:
        print(f"svcnet node-agent: {e}", file=sys.stderr)
        return 2
    if not Path(args.kubeconfig).is_file():
        print(f"svcnet node-agent: --kubeconfig {args.kubeconfig}: no such file", file=sys.stderr)
        return 2
    return asyncio.run(_run(args))
