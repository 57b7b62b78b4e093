"""A highly available lab control plane: `controlPlane: {apiservers: 2, etcd: 3}`.

    netns <lab>-etcd1..3        etcd, one member each, client :2379 and peer :2380 on eth0
    netns <lab>-apiserver1..2   svcnet apiserver --storage etcd://… on eth0 :6443, one shared
                                --pki-dir (one CA and token pair), --advertise-address its
                                own IP, --apiserver-peers the others; a controller-manager
                                --leader-elect beside each (as kubeadm's stacked control plane)
    host 127.0.0.1:PORT         the apiserver load balancer: a TCP forward that connects to
                                the first apiserver that accepts (kind puts haproxy there)

Agents, proxies and pods get the kubeconfig the first apiserver writes, which lists
every apiserver (`svcnet.io/servers`), so svcnet's clients move to a live one on a
connection error; kubectl on the host uses `server`, the load balancer. A short
endpoint lease takes a dead apiserver out of the `kubernetes` Service quickly.

Each member's command line is built here as data (`etcd_argv`, `apiserver_argv`) so
the lab and a person at a terminal run the same thing; `python -m
svcnet.lab.control_plane --listen … --netns … --to A --to B` is the load balancer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from pathlib import Path
from typing import Sequence

from svcnet.common.endpoints import parse_host_port
from svcnet.controlplane.storage.etcd_process import EtcdMember
from svcnet.lab.portforward import pipe
from svcnet.lab.topology import ControlPlaneMember, Topology

log = logging.getLogger("svcnet.lab.control_plane")

ETCD_CLIENT_PORT = 2379  # etcd's own ports: each member has a namespace to itself
ETCD_PEER_PORT = 2380
ENDPOINT_LEASE_SECONDS = 6  # the `kubernetes` EndpointSlice drops a dead apiserver within this
CONNECT_TIMEOUT = 1.0


def etcd_member(m: ControlPlaneMember, data_dir: Path, log_path: Path) -> EtcdMember:
    return EtcdMember(f"etcd{m.index}", data_dir, str(m.underlay_ip), ETCD_CLIENT_PORT, ETCD_PEER_PORT, log_path)


def initial_cluster(topo: Topology) -> str:
    """etcd's --initial-cluster: every member's name and peer URL."""
    return ",".join(f"etcd{m.index}=http://{m.underlay_ip}:{ETCD_PEER_PORT}"
                    for m in topo.control_plane_spec.of("etcd"))


def storage_url(topo: Topology) -> str:
    """The apiservers' --storage: every member's client endpoint."""
    return "etcd://" + ",".join(f"{m.underlay_ip}:{ETCD_CLIENT_PORT}" for m in topo.control_plane_spec.of("etcd"))


def etcd_argv(topo: Topology, m: ControlPlaneMember, data_dir: Path, log_path: Path) -> list[str]:
    # The token names this cluster: members of another lab never join it.
    return etcd_member(m, data_dir, log_path).command(initial_cluster(topo), f"svcnet-lab-{topo.name}", "new", "2s")


def apiserver_argv(topo: Topology, m: ControlPlaneMember, data_dir: Path, pki_dir: Path,
                   kubeconfig_out: Path) -> list[str]:
    net = topo.networking
    port = topo.apiserver_port
    peers = [f"{o.underlay_ip}:{port}" for o in topo.control_plane_spec.of("apiserver") if o != m]
    return [
        "apiserver", "--data-dir", str(data_dir),
        # All addresses: the load balancer reaches it over 127.0.0.1 inside its namespace.
        "--listen", f"0.0.0.0:{port}",
        "--kubeconfig-out", str(kubeconfig_out),
        "--service-cidr", str(net.service_subnet),
        "--node-port-range", f"{net.node_port_range[0]}-{net.node_port_range[1]}",
        "--advertise-address", str(m.underlay_ip),
        "--storage", storage_url(topo),
        "--pki-dir", str(pki_dir),
        *(["--apiserver-peers", ",".join(peers)] if peers else []),
        "--endpoint-lease-duration", str(ENDPOINT_LEASE_SECONDS),
    ]


# --- the apiserver load balancer ------------------------------------------------------

class Failover:
    """Targets in order of preference; the one that last accepted is tried first, so
    a dead server costs one refused (or timed out) connect, not one per connection."""

    def __init__(self, targets: Sequence[tuple[str, int]]) -> None:
        if not targets:
            raise ValueError("at least one target is needed")
        self.targets = list(targets)
        self.preferred = 0

    def order(self) -> list[tuple[str, int]]:
        return self.targets[self.preferred:] + self.targets[:self.preferred]

    def accepted(self, target: tuple[str, int]) -> None:
        self.preferred = self.targets.index(target)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        errors = []
        for target in self.order():
            try:
                conn = await asyncio.wait_for(asyncio.open_connection(*target), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as e:
                errors.append(f"{target[0]}:{target[1]}: {e or type(e).__name__}")
                continue
            if target != self.targets[self.preferred]:
                log.info("apiserver %s:%d accepted; using it first from now on", *target)
            self.accepted(target)
            return conn
        raise ConnectionError("no apiserver accepted: " + "; ".join(errors))


async def serve(listener: socket.socket, failover: Failover) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await failover.connect()
        except ConnectionError as e:
            log.warning("%s", e)
            w.close()
            return
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m svcnet.lab.control_plane",
                                description="TCP load balancer from the host to a lab's apiservers")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--netns", required=True, help="namespace the connections to the apiservers start in")
    p.add_argument("--to", required=True, action="append", metavar="HOST:PORT", help="an apiserver (repeat)")
    p.add_argument("--port-file", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s apiserver-lb: %(message)s")
    lhost, lport = parse_host_port(args.listen)
    failover = Failover([parse_host_port(t) for t in args.to])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((lhost, lport))
    listener.listen(128)
    bound = listener.getsockname()[1]

    from pyroute2 import netns as pr_netns

    # As portforward.py: the listener stays on the host's loopback, the process (one
    # thread so far) moves, and every connection it opens starts in the lab.
    pr_netns.setns(f"/run/netns/{args.netns}", flags=0)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(f"{bound}\n")
        tmp.replace(args.port_file)
    log.info("balancing %s:%d -> %s in netns %s", lhost, bound, ", ".join(args.to), args.netns)
    try:
        asyncio.run(serve(listener, failover))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
