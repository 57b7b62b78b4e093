"""Throwaway etcd members on loopback: start a 1- or 3-member cluster in its own data
dirs, on free ports (never etcd's defaults 2379/2380, which Debian's own unit may hold),
wait until it serves, kill or restart members, and always stop what was started.

Used by the integration tests and bench/apiserver_etcd.py; a person can run the same
command lines by hand (`EtcdMember.command()`).

    with EtcdCluster(tmp_dir, members=3) as cluster:
        cluster.endpoints            # ["127.0.0.1:41234", ...]
        cluster.kill(1)              # SIGKILL member 1
        cluster.restart(1)           # same name, data dir and ports
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

ETCD_BINARY = "etcd"
DEFAULT_PORTS = frozenset({2379, 2380})
START_TIMEOUT = 30.0


class EtcdNotFound(RuntimeError):
    """The etcd binary is not installed (Debian: apt-get install etcd-server)."""


def etcd_binary() -> str:
    path = shutil.which(ETCD_BINARY) or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None)
    if path is None:
        raise EtcdNotFound("etcd is not installed (Debian package etcd-server)")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on `host`, never etcd's default ports."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in DEFAULT_PORTS:
            return port


@dataclass
class EtcdMember:
    """One member: its name, ports, data dir and (while running) its process."""

    name: str
    data_dir: Path
    host: str
    client_port: int
    peer_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def command(self, initial_cluster: str, token: str, state: str,
                progress_notify_interval: str) -> list[str]:
        return [
            etcd_binary(), "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", token,
            "--logger", "zap", "--log-level", "warn",
            # Loopback members on a shared 2-core machine: a slow fsync must not look
            # like a dead leader (defaults: 100 ms heartbeat, 1 s election).
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            "--experimental-watch-progress-notify-interval", progress_notify_interval,
        ]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    """`members` etcd members on loopback under `base_dir`; a context manager that
    always stops every member it started (SIGTERM, then SIGKILL) and removes nothing
    but its own data dirs when `cleanup` is set."""

    base_dir: Path
    members: int = 1
    host: str = "127.0.0.1"
    progress_notify_interval: str = "2s"
    cleanup: bool = True
    token: str = field(default_factory=lambda: f"svcnet-{os.getpid()}-{time.monotonic_ns()}")
    nodes: list[EtcdMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        ports: set[int] = set()
        for i in range(self.members):
            pair: list[int] = []
            while len(pair) < 2:
                p = free_port(self.host)
                if p not in ports:
                    ports.add(p)
                    pair.append(p)
            name = f"m{i + 1}"
            self.nodes.append(EtcdMember(name, self.base_dir / f"{name}.etcd", self.host, pair[0], pair[1],
                                         self.base_dir / f"{name}.log"))

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.nodes]

    @property
    def url(self) -> str:
        """The `--storage` value for svcnet apiserver."""
        return "etcd://" + ",".join(self.endpoints)

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.nodes)

    def _spawn(self, m: EtcdMember, state: str) -> None:
        cmd = m.command(self._initial_cluster(), self.token, state, self.progress_notify_interval)
        with m.log_path.open("ab") as out:
            m.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.info("etcd member started name=%s pid=%d client=%s", m.name, m.proc.pid, m.client_url)

    def start(self) -> "EtcdCluster":
        try:
            for m in self.nodes:
                self._spawn(m, "new")
            for m in self.nodes:
                self.wait_healthy(m)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, m: EtcdMember, timeout: float = START_TIMEOUT) -> None:
        """Until the member answers a linearizable read (it has a leader)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if m.proc is not None and m.proc.poll() is not None:
                raise RuntimeError(f"etcd {m.name} exited with {m.proc.returncode}:\n{self.log_tail(m)}")
            try:
                req = urllib.request.Request(m.client_url + "/v3/kv/range", data=b'{"key":"AA=="}',
                                             method="POST", headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if "header" in json.loads(resp.read()):
                        return
            except (OSError, ValueError, urllib.error.URLError) as err:
                last = str(err)
            time.sleep(0.05)
        raise RuntimeError(f"etcd {m.name} not ready in {timeout}s ({last}):\n{self.log_tail(m)}")

    def log_tail(self, m: EtcdMember, n: int = 3000) -> str:
        return m.log_path.read_text(errors="replace")[-n:] if m.log_path.exists() else ""

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        m = self.nodes[i]
        if m.running:
            assert m.proc is not None
            m.proc.send_signal(sig)
            m.proc.wait(timeout=20)
        m.proc = None

    def restart(self, i: int, wait: bool = True) -> None:
        m = self.nodes[i]
        if m.running:
            return
        self._spawn(m, "existing" if m.data_dir.exists() else "new")
        if wait:
            self.wait_healthy(m)

    def stop(self) -> None:
        for m in self.nodes:
            if m.proc is None:
                continue
            if m.proc.poll() is None:
                m.proc.send_signal(signal.SIGTERM)
                try:
                    m.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()
            m.proc = None
        if self.cleanup:
            for m in self.nodes:
                shutil.rmtree(m.data_dir, ignore_errors=True)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
