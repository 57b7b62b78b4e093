"""`svcnet dns --kubeconfig` against a real `svcnet apiserver`, objects made with the
real kubectl: what the lab does. Changes made through the API are answered live."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .dnsproc import ROOT, DnsProcess, answers, free_port, rcode, start_dns, udp

pytestmark = [pytest.mark.kubectl,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")]

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: web}
spec:
  selector: {app: front}
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: web}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: web, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  hostname: db-0
"""


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[Path]:
    kubeconfig = tmp_path / "admin.kubeconfig"
    with open(tmp_path / "apiserver.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "svcnet", "apiserver", "--data-dir", str(tmp_path / "data"),
                                 "--listen", f"127.0.0.1:{free_port()}", "--kubeconfig-out", str(kubeconfig)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.time() + 30
        while not kubeconfig.exists():
            assert proc.poll() is None, (tmp_path / "apiserver.log").read_text()
            assert time.time() < deadline, "apiserver did not start"
            time.sleep(0.05)
        yield kubeconfig
    finally:
        proc.kill()
        proc.wait()


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    res = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], input=stdin,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "condition not reached"
        time.sleep(0.05)


def test_dns_follows_the_api(tmp_path: Path, apiserver: Path) -> None:
    kubectl(apiserver, "apply", "-f", "-", stdin=MANIFESTS)
    cluster_ip = kubectl(apiserver, "get", "svc", "-n", "web", "front", "-o", "jsonpath={.spec.clusterIP}")
    dp: DnsProcess = start_dns(tmp_path, None, kubeconfig=apiserver)
    try:
        eventually(lambda: dp.http("/ready")[0] == 200)
        assert answers(udp(dp.port, "front.web.svc.cluster.local")) == [
            f"front.web.svc.cluster.local. 5 IN A {cluster_ip}"]
        assert answers(udp(dp.port, "db-0.db.web.svc.cluster.local")) == [
            "db-0.db.web.svc.cluster.local. 5 IN A 10.244.1.5"]
        srv = udp(dp.port, "_pg._tcp.db.web.svc.cluster.local", "SRV")
        assert [str(r.rdata) for r in srv.rr] == ["0 100 5432 db-0.db.web.svc.cluster.local."]
        # the kubernetes Service of the default namespace is there too
        assert rcode(udp(dp.port, "kubernetes.default.svc.cluster.local")) == "NOERROR"

        kubectl(apiserver, "delete", "svc", "-n", "web", "front")
        eventually(lambda: rcode(udp(dp.port, "front.web.svc.cluster.local")) == "NXDOMAIN")
        kubectl(apiserver, "create", "service", "clusterip", "back", "-n", "web", "--tcp=8080:8080")
        eventually(lambda: rcode(udp(dp.port, "back.web.svc.cluster.local")) == "NOERROR")
        kubectl(apiserver, "delete", "endpointslice", "-n", "web", "db-1")
        eventually(lambda: rcode(udp(dp.port, "db.web.svc.cluster.local")) == "NXDOMAIN")  # headless, no endpoints
    finally:
        dp.stop()
