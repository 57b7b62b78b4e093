"""Two `svcnet apiserver` processes on one 3-member etcd cluster, as a highly available
control plane runs: one shared CA and token pair (`--pki-dir`), the same port on two
loopback addresses (127.0.0.2 and 127.0.0.3, as two hosts would use one --secure-port),
a short endpoint lease, and kubeconfigs that list both servers (`--apiserver-peers`).
Everything is stopped and removed at the end, also on failure."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.controlplane.apiserver_process import ApiServer
from svcnet.controlplane.storage.etcd_process import DEFAULT_PORTS, EtcdCluster, EtcdNotFound, etcd_binary

LEASE_SECONDS = 4  # --endpoint-lease-duration: a dead server leaves the slice within ~4 s
HOSTS = ("127.0.0.2", "127.0.0.3")


def have_etcd() -> bool:
    try:
        etcd_binary()
    except EtcdNotFound:
        return False
    return True


needs_etcd = pytest.mark.skipif(not have_etcd(), reason="etcd is not installed (Debian package etcd-server)")


def common_free_port(hosts: tuple[str, ...]) -> int:
    """A port free on every host (the servers share --secure-port, as in kube)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
            if port in DEFAULT_PORTS:
                continue
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free on all of " + ", ".join(hosts))


@dataclass
class HAControlPlane:
    etcd: EtcdCluster
    servers: list[ApiServer]
    port: int

    def url(self, i: int) -> str:
        return f"https://{HOSTS[i]}:{self.port}"

    def logs(self) -> str:
        return "\n".join(f"--- apiserver {HOSTS[i]} ---\n{s.log_tail(3000)}" for i, s in enumerate(self.servers))


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[HAControlPlane]:
    try:
        etcd_binary()
    except EtcdNotFound as err:
        pytest.skip(str(err))
    cluster = EtcdCluster(tmp_path / "etcd", members=3)
    servers: list[ApiServer] = []
    try:
        cluster.start()
        port = common_free_port(HOSTS)
        prefix = f"/svcnet-ha-{os.getpid()}-{time.monotonic_ns()}"
        for i, host in enumerate(HOSTS):
            peer = HOSTS[1 - i]
            server = ApiServer(
                data_dir=tmp_path / f"apiserver-{i}", kubeconfig=tmp_path / f"apiserver-{i}.kubeconfig",
                cache_dir=tmp_path / "kube-cache", log=tmp_path / f"apiserver-{i}.log",
                extra_args=("--listen", f"{host}:{port}", "--storage", cluster.url, "--etcd-prefix", prefix,
                            "--pki-dir", str(tmp_path / "shared-pki"), "--apiserver-peers", f"{peer}:{port}",
                            "--endpoint-lease-duration", str(LEASE_SECONDS)))
            servers.append(server)
            server.start()
        yield HAControlPlane(cluster, servers, port)
    finally:
        for server in servers:
            server.stop()
        cluster.stop()
