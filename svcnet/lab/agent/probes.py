"""Readiness and liveness probes, run from the node's namespace as the kubelet
runs them: tcpSocket connects to the pod IP, httpGet asks it over HTTP (2xx and
3xx succeed), exec runs the command inside the pod (entered like `ip netns exec`,
so it sees the pod's resolv.conf) and succeeds on exit 0.

`ProbeState` turns results into the probe's verdict with the API's thresholds:
a readiness probe starts as failing until `successThreshold` successes, a liveness
probe starts as passing; `failureThreshold` consecutive failures flip either one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from svcnet.lab.agent.podspec import ProbeSpec
from svcnet.lab.netns import netns_exec_argv, run_in_netns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str = ""


async def run_probe(spec: ProbeSpec, pod_ip: str, netns: str, node_netns: str | None = None) -> ProbeResult:
    """One probe attempt. `node_netns`: the node's namespace when the agent runs outside it."""
    try:
        if spec.kind == "tcp":
            return await _tcp(spec, spec.host or pod_ip, node_netns)
        if spec.kind == "http":
            return await _http(spec, spec.host or pod_ip, node_netns)
        if spec.kind == "exec":
            return await _exec(spec, netns)
    except (OSError, asyncio.TimeoutError) as e:
        return ProbeResult(False, f"{type(e).__name__}: {e}")
    return ProbeResult(False, f"unknown probe kind {spec.kind}")


async def _connect(host: str, port: int, node_netns: str | None
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if node_netns is None:
        return await asyncio.open_connection(host, port)
    # A socket made inside the node's namespace stays there; the process does not move.
    sock = run_in_netns(node_netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _tcp(spec: ProbeSpec, host: str, node_netns: str | None) -> ProbeResult:
    async with asyncio.timeout(spec.timeout):
        _, writer = await _connect(host, spec.port, node_netns)
    writer.close()
    return ProbeResult(True)


async def _http(spec: ProbeSpec, host: str, node_netns: str | None) -> ProbeResult:
    if spec.scheme.upper() != "HTTP":
        return ProbeResult(False, "only HTTP probes are supported")
    async with asyncio.timeout(spec.timeout):
        reader, writer = await _connect(host, spec.port, node_netns)
        try:
            headers = {"Host": f"{host}:{spec.port}", "User-Agent": "kube-probe/1.32", "Accept": "*/*",
                       "Connection": "close", **dict(spec.headers)}
            req = f"GET {spec.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            writer.write(req.encode())
            await writer.drain()
            status_line = (await reader.readline()).decode(errors="replace").split()
        finally:
            writer.close()
    if len(status_line) < 2 or not status_line[1].isdigit():
        return ProbeResult(False, f"not an HTTP answer: {' '.join(status_line)!r}")
    code = int(status_line[1])
    return ProbeResult(200 <= code < 400, f"HTTP probe failed with statuscode: {code}" if code >= 400 else "")


async def _exec(spec: ProbeSpec, netns: str) -> ProbeResult:
    proc = await asyncio.create_subprocess_exec(*netns_exec_argv(netns, list(spec.command)),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        async with asyncio.timeout(spec.timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return ProbeResult(False, f"command timed out after {spec.timeout:g}s")
    text = out.decode(errors="replace").strip()[-200:]
    return ProbeResult(proc.returncode == 0, text if proc.returncode else "")


class ProbeState:
    """Consecutive results -> verdict, with the thresholds of one probe."""

    def __init__(self, spec: ProbeSpec, initially_ok: bool) -> None:
        self.spec = spec
        self.ok = initially_ok
        self._successes = 0
        self._failures = 0
        self.last_message = ""

    def observe(self, result: ProbeResult) -> bool:
        """Record one result; True when the verdict changed."""
        before = self.ok
        if result.ok:
            self._successes += 1
            self._failures = 0
            if self._successes >= self.spec.success_threshold:
                self.ok = True
        else:
            self._failures += 1
            self._successes = 0
            self.last_message = result.message
            if self._failures >= self.spec.failure_threshold:
                self.ok = False
        return self.ok != before
