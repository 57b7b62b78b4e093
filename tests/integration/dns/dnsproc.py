"""Helpers for the DNS integration tests: a `svcnet dns` process on a loopback port, a
fake upstream DNS server on another, and small UDP/TCP/dig clients.

Only 127.0.0.0/8 is ever a traffic target; every process and thread a test starts is
stopped by the fixtures, also on failure."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dnslib

ROOT = Path(__file__).resolve().parents[3]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return int(port)


# -- clients -------------------------------------------------------------------------


def build(name: str, qtype: str = "A", bufsize: int | None = None, qid: int | None = None) -> bytes:
    q = dnslib.DNSRecord.question(name, qtype)
    if qid is not None:
        q.header.id = qid
    if bufsize is not None:
        q.add_ar(dnslib.EDNS0(udp_len=bufsize))
    return bytes(q.pack())


def udp_raw(port: int, data: bytes, timeout: float = 3.0, src: str = "127.0.0.1") -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        return s.recv(65535)


def udp(port: int, name: str, qtype: str = "A", bufsize: int | None = None, src: str = "127.0.0.1",
        timeout: float = 3.0) -> dnslib.DNSRecord:
    data = build(name, qtype, bufsize)
    reply = dnslib.DNSRecord.parse(udp_raw(port, data, timeout, src))
    assert reply.header.id == dnslib.DNSRecord.parse(data).header.id
    return reply


def tcp_exchange(port: int, messages: list[bytes], src: str = "127.0.0.1", timeout: float = 5.0,
                 expect: int | None = None) -> list[bytes]:
    """Send all messages on one connection at once (pipelined), read `expect` replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0)) as s:
        s.sendall(b"".join(struct.pack("!H", len(m)) + m for m in messages))
        out = []
        for _ in range(expect if expect is not None else len(messages)):
            head = _recv_exact(s, 2)
            out.append(_recv_exact(s, struct.unpack("!H", head)[0]))
        return out


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def tcp(port: int, name: str, qtype: str = "A") -> dnslib.DNSRecord:
    (reply,) = tcp_exchange(port, [build(name, qtype)])
    return dnslib.DNSRecord.parse(reply)


def dig(port: int, *args: str) -> str:
    res = subprocess.run(["dig", "-p", str(port), "@127.0.0.1", "+tries=1", "+time=3", *args],
                         capture_output=True, text=True, timeout=20)
    return res.stdout


def rcode(reply: dnslib.DNSRecord) -> str:
    return str(dnslib.RCODE.get(reply.header.rcode))


def answers(reply: dnslib.DNSRecord) -> list[str]:
    return sorted(" ".join(rr.toZone().split()) for rr in reply.rr)


# -- the server under test -----------------------------------------------------------


@dataclass
class DnsProcess:
    proc: subprocess.Popen[bytes]
    port: int
    objects: Path | None
    log: Path
    http_port: int

    def write_objects(self, objects: list[dict[str, Any]]) -> None:
        assert self.objects is not None
        tmp = self.objects.with_suffix(".tmp")
        tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        os.replace(tmp, self.objects)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def http(self, path: str) -> tuple[int, str]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_dns(tmp: Path, objects: list[dict[str, Any]] | None, *flags: str, kubeconfig: Path | None = None,
              wait_for: Callable[[int], bool] | None = None) -> DnsProcess:
    port, http_port = free_port(), free_port()
    obj_path = None
    args = [sys.executable, "-m", "svcnet", "dns", "--listen", f"127.0.0.1:{port}",
            "--health-listen", f"127.0.0.1:{http_port}", "--ready-listen", f"127.0.0.1:{http_port}",
            "--metrics-listen", f"127.0.0.1:{http_port}", *flags]
    if kubeconfig is not None:
        args += ["--kubeconfig", str(kubeconfig)]
    else:
        obj_path = tmp / f"objects-{port}.json"
        obj_path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects or []}))
        args += ["--objects", str(obj_path)]
    if not any(f.startswith("--upstream") for f in flags):
        args += ["--upstream", f"127.0.0.1:{free_port()}"]  # nothing listens: no real internet, ever
    log = tmp / f"dns-{port}.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
    dp = DnsProcess(proc, port, obj_path, log, http_port)
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"svcnet dns exited {proc.returncode}:\n{dp.logs()}")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.3)
                s.sendto(build("dns-version.cluster.local", "TXT"), ("127.0.0.1", port))
                s.recv(512)
            if wait_for is None or wait_for(port):
                return dp
        except OSError:
            pass
        time.sleep(0.1)
    dp.stop()
    raise RuntimeError(f"svcnet dns did not come up:\n{dp.logs()}")


# -- a fake upstream -----------------------------------------------------------------


@dataclass
class FakeUpstream:
    """A tiny authoritative server for upstream names, on UDP and TCP.

    `zone` maps lower-case names (with trailing dot) to zone-file lines; a name with
    no lines is NXDOMAIN with an SOA. `delay` slows every answer (for coalescing and
    drain tests); names in `truncate_udp` get an empty TC=1 reply over UDP.
    """

    zone: dict[str, list[str]] = field(default_factory=dict)
    delay: float = 0.0
    truncate_udp: set[str] = field(default_factory=set)
    port: int = 0
    queries: list[tuple[str, str, str]] = field(default_factory=list)  # (proto, name, type)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _socks: list[socket.socket] = field(default_factory=list)

    def count(self, name: str, qtype: str | None = None) -> int:
        return sum(1 for _, n, t in self.queries if n == name and (qtype is None or t == qtype))

    def answer(self, data: bytes, proto: str) -> bytes | None:
        try:
            q = dnslib.DNSRecord.parse(data)
        except Exception:
            return None
        name = str(q.q.qname).lower()
        qtype = dnslib.QTYPE.get(q.q.qtype)
        self.queries.append((proto, name, str(qtype)))
        if self.delay:
            time.sleep(self.delay)
        r = q.reply()
        if proto == "udp" and name in self.truncate_udp:
            r.header.tc = 1
            return bytes(r.pack())
        if name == ".":
            return bytes(r.pack())
        lines = self.zone.get(name)
        if lines is None:
            r.header.rcode = dnslib.RCODE.NXDOMAIN
            r.add_auth(*dnslib.RR.fromZone("test. 300 IN SOA ns.test. host.test. 1 7200 1800 86400 60"))
            return bytes(r.pack())
        for line in lines:
            rr = dnslib.RR.fromZone(line)[0]
            if rr.rtype == q.q.qtype or rr.rtype == dnslib.QTYPE.CNAME:
                r.add_answer(rr)
        if not r.rr:
            r.add_auth(*dnslib.RR.fromZone("test. 300 IN SOA ns.test. host.test. 1 7200 1800 86400 60"))
        return bytes(r.pack())

    def start(self) -> "FakeUpstream":
        self.port = self.port or free_port()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", self.port))
        u.settimeout(0.2)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("127.0.0.1", self.port))
        t.listen(16)
        t.settimeout(0.2)
        self._socks = [u, t]
        for target in (self._udp_loop, self._tcp_loop):
            th = threading.Thread(target=target, daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def _udp_loop(self) -> None:
        u = self._socks[0]
        while not self._stop.is_set():
            try:
                data, addr = u.recvfrom(65535)
            except OSError:
                continue
            threading.Thread(target=self._udp_reply, args=(u, data, addr), daemon=True).start()

    def _udp_reply(self, u: socket.socket, data: bytes, addr: Any) -> None:
        reply = self.answer(data, "udp")
        if reply is not None and not self._stop.is_set():
            try:
                u.sendto(reply, addr)
            except OSError:
                pass

    def _tcp_loop(self) -> None:
        t = self._socks[1]
        while not self._stop.is_set():
            try:
                conn, _ = t.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    n = struct.unpack("!H", _recv_exact(conn, 2))[0]
                    reply = self.answer(_recv_exact(conn, n), "tcp")
                    if reply is not None:
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(2)
        for s in self._socks:
            s.close()
