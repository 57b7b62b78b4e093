"""Run `svcnet apiserver` as a real subprocess and drive it with the installed kubectl.

Shared by the integration tests and bench/apiserver.py: start on a free port in a data
dir, wait for the kubeconfig (written last, so it means "ready"), run kubectl with that
kubeconfig and a private discovery cache, and stop with SIGTERM (or SIGKILL to test
crash recovery).
"""

from __future__ import annotations

import base64
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

START_TIMEOUT = 60.0


@dataclass
class KubectlResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class ApiServer:
    """One `svcnet apiserver` process and the kubeconfigs it wrote."""

    data_dir: Path
    kubeconfig: Path
    cache_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def readonly_kubeconfig(self) -> Path:
        return self.kubeconfig.with_name(f"{self.kubeconfig.stem}-readonly{self.kubeconfig.suffix}")

    def start(self) -> None:
        self.kubeconfig.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "svcnet", "apiserver", "--data-dir", str(self.data_dir),
               "--listen", "127.0.0.1:0", "--kubeconfig-out", str(self.kubeconfig), *self.extra_args]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.kubeconfig.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"apiserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise RuntimeError(f"apiserver did not start in {START_TIMEOUT}s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.config = yaml.safe_load(self.kubeconfig.read_text())

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self, kill: bool = False) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    # -- clients -------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return str(self.config["clusters"][0]["cluster"]["server"])

    @property
    def admin_token(self) -> str:
        return str(self.config["users"][0]["user"]["token"])

    @property
    def readonly_token(self) -> str:
        return str(yaml.safe_load(self.readonly_kubeconfig.read_text())["users"][0]["user"]["token"])

    def ssl_context(self) -> ssl.SSLContext:
        ca = base64.b64decode(self.config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
        return ssl.create_default_context(cadata=ca)

    def kubectl(self, *args: str, input: str | None = None, kubeconfig: Path | None = None,
                check: bool = True, timeout: float = 60) -> KubectlResult:
        cmd = ["kubectl", "--kubeconfig", str(kubeconfig or self.kubeconfig), "--cache-dir",
               str(self.cache_dir), *args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        result = KubectlResult(res.returncode, res.stdout, res.stderr)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n"
                                 f"{res.stderr}\n--- apiserver log ---\n{self.log_tail(2000)}")
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def request(self, method: str, path: str, body: bytes | None = None, *, token: str | None = "admin",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A raw HTTPS request; returns (status, headers, body) also for error codes."""
        hdrs = dict(headers or {})
        if token == "admin":
            hdrs["Authorization"] = f"Bearer {self.admin_token}"
        elif token:
            hdrs["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.server + path, data=body, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()
