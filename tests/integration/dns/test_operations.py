"""Operations over real sockets: /health, /ready, /metrics, SERVFAIL until the first
sync, a SIGTERM drain that still answers queries in flight, and command-line errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from unit.dns.harness import HTTP, OBJECTS, ep, slice_, svc

from .dnsproc import ROOT, FakeUpstream, answers, build, free_port, rcode, start_dns, udp

T = "testns.svc.cluster.local"


def _unreachable_kubeconfig(tmp: Path) -> Path:
    path = tmp / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


def test_servfail_and_not_ready_until_synced(tmp_path: Path) -> None:
    dp = start_dns(tmp_path, None, kubeconfig=_unreachable_kubeconfig(tmp_path))
    try:
        r = udp(dp.port, f"nope.{T}", "A")
        assert rcode(r) == "SERVFAIL" and r.auth and r.auth[0].rtype == 6  # with the SOA
        assert rcode(udp(dp.port, "cluster.local", "SOA")) == "NOERROR"
        assert dp.http("/ready")[0] == 503
        assert dp.http("/health") == (200, "OK")
    finally:
        dp.stop()


def test_health_ready_metrics(tmp_path: Path) -> None:
    trigger = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    sl = slice_("hdlsx-1", "testns", "hdlsx", [ep("10.3.0.1")], [HTTP])
    sl["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": trigger}
    up = FakeUpstream(zone={"www.example.test.": ["www.example.test. 300 IN A 192.0.2.10"]}).start()
    dp = start_dns(tmp_path, OBJECTS + [svc("hdlsx", "testns", None, [HTTP]), sl],
                   "--upstream", f"127.0.0.1:{up.port}")
    try:
        assert dp.http("/health") == (200, "OK")
        assert dp.http("/ready") == (200, "OK")
        udp(dp.port, f"svc1.{T}")
        udp(dp.port, f"svc1.{T}")  # the second from the reply cache (the UDP thread)
        udp(dp.port, f"nope.{T}")
        udp(dp.port, "www.example.test")
        udp(dp.port, "www.example.test")
        status, text = dp.http("/metrics")
        assert status == 200
        lines = text.splitlines()

        def value(prefix: str) -> float:
            return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(prefix))

        assert value('coredns_dns_requests_total{') >= 5
        assert any('proto="udp"' in ln and 'family="1"' in ln and f'server="dns://127.0.0.1:{dp.port}"' in ln
                   for ln in lines if ln.startswith("coredns_dns_requests_total"))
        assert any('type="A"' in ln for ln in lines if ln.startswith("coredns_dns_requests_total"))
        assert value('coredns_dns_responses_total{') >= 5
        assert any('rcode="NXDOMAIN"' in ln for ln in lines if ln.startswith("coredns_dns_responses_total"))
        assert value("coredns_dns_request_duration_seconds_count") >= 5
        assert value("coredns_cache_hits_total") >= 1 and value("coredns_cache_misses_total") >= 1
        assert value("coredns_forward_requests_total") >= 1
        assert value('coredns_kubernetes_dns_programming_duration_seconds_count') >= 1
        assert any('service_kind="headless_with_selector"' in ln for ln in lines)
    finally:
        assert dp.stop() == 0
        up.stop()


def test_sigterm_drains_queries_in_flight(tmp_path: Path) -> None:
    up = FakeUpstream(zone={"slow.example.test.": ["slow.example.test. 60 IN A 192.0.2.30"]}, delay=1.0).start()
    dp = start_dns(tmp_path, OBJECTS, "--upstream", f"127.0.0.1:{up.port}")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(build("slow.example.test"), ("127.0.0.1", dp.port))
            deadline = time.time() + 5
            while up.count("slow.example.test.") == 0 and time.time() < deadline:
                time.sleep(0.02)
            dp.proc.send_signal(signal.SIGTERM)  # while the upstream is still thinking
            import dnslib
            reply = dnslib.DNSRecord.parse(s.recv(4096))
        assert answers(reply) == ["slow.example.test. 60 IN A 192.0.2.30"]
        assert dp.proc.wait(10) == 0
        assert "draining" in dp.logs()
    finally:
        dp.stop()
        up.stop()


def test_bad_command_lines_fail_with_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed")
    cases = [
        (["--objects", str(bad), "--listen", "127.0.0.1:0"], "bad.yaml"),
        (["--objects", str(bad), "--listen", "nonsense"], "--listen"),
        (["--objects", str(bad), "--ttl", "99999"], "--ttl"),
        (["--objects", str(bad), "--zone", "10.0.0.0/99"], "--zone"),
        (["--objects", str(bad), "--transfer-to", "bogus"], "--transfer-to"),
    ]
    for args, needle in cases:
        res = subprocess.run([sys.executable, "-m", "svcnet", "dns", *args], capture_output=True, text=True,
                             cwd=ROOT, timeout=30)
        assert res.returncode == 2, (args, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr, res.stderr
