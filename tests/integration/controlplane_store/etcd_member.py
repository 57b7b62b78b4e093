"""A throwaway single-member etcd on loopback for tests: random ports, a temp data dir,
started and killed by PID (never by name)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def etcd_member(workdir: Path) -> Iterator[str]:
    """Yields the client URL (etcd://127.0.0.1:PORT) of a fresh member."""
    binary = shutil.which("etcd")
    if binary is None:
        raise FileNotFoundError("etcd")
    client, peer = free_port(), free_port()
    data = workdir / "etcd"
    log = open(workdir / "etcd.log", "wb")
    proc = subprocess.Popen([
        binary, "--name", "t1", "--data-dir", str(data),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"t1=http://127.0.0.1:{peer}", "--initial-cluster-state", "new",
        "--initial-cluster-token", f"svcnet-test-{client}",
        "--logger", "zap", "--log-level", "error",
        "--experimental-watch-progress-notify-interval", "1s",
    ], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1) as resp:
                    if b"true" in resp.read():
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("etcd did not become healthy: "
                                   + (workdir / "etcd.log").read_text(errors="replace")[-2000:])
            time.sleep(0.1)
        yield f"etcd://127.0.0.1:{client}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(data, ignore_errors=True)
