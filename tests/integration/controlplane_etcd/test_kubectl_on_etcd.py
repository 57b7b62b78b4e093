"""The kubectl scenario of tests/integration/controlplane/test_kubectl.py against
`svcnet apiserver --storage etcd://… --etcd-prefix …`, plus what only etcd makes
possible: a restart after kill -9 that keeps everything because the store lives
elsewhere, and two API servers on one etcd handing out ClusterIPs and NodePorts
without ever allocating one twice.

The scenario's test functions are imported unchanged; only the module's `api` server
fixture is replaced by one that stores in etcd.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.controlplane.apiserver_process import ApiServer
from integration.controlplane.test_kubectl import *  # noqa: F401,F403
from integration.controlplane.test_kubectl import SVC_YAML, write
from svcnet.controlplane.storage.etcd_process import EtcdCluster

from .conftest import unique_prefix

# SQLite-specific (restarts on the same data file); the etcd version is below.
globals().pop("test_restart_after_kill_keeps_objects_certs_and_tokens", None)


def etcd_server(tmp: Path, etcd: EtcdCluster, prefix: str) -> ApiServer:
    tmp.mkdir(parents=True, exist_ok=True)
    return ApiServer(data_dir=tmp / "data", kubeconfig=tmp / "kubeconfig", cache_dir=tmp / "cache",
                     log=tmp / "apiserver.log",
                     extra_args=("--storage", etcd.url, "--etcd-prefix", prefix))


@pytest.fixture(scope="module")
def api(etcd: EtcdCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = etcd_server(tmp_path_factory.mktemp("apiserver-etcd"), etcd, unique_prefix())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_objects_live_in_etcd_under_the_prefix(etcd: EtcdCluster, tmp_path: Path) -> None:
    import base64
    import urllib.request

    prefix = unique_prefix()
    server = etcd_server(tmp_path, etcd, prefix)
    server.start()
    try:
        server.kubectl("create", "-f", write(tmp_path, "svc.yaml", SVC_YAML % {"target": 8080}))
        svc = server.kubectl_json("get", "svc", "web")
        key = f"{prefix}/services/specs/default/web".encode()
        req = urllib.request.Request(f"http://{etcd.endpoints[0]}/v3/kv/range", method="POST",
                                     data=json.dumps({"key": base64.b64encode(key).decode()}).encode())
        with urllib.request.urlopen(req, timeout=5) as resp:
            kv = json.loads(resp.read())["kvs"][0]
        stored = json.loads(base64.b64decode(kv["value"]))
        assert stored["metadata"]["uid"] == svc["metadata"]["uid"]
        assert svc["metadata"]["resourceVersion"] == kv["mod_revision"]  # RV = etcd mod_revision
        ip = svc["spec"]["clusterIP"]
        alloc = f"{prefix}/allocations/clusterips/{ip}".encode()
        req = urllib.request.Request(f"http://{etcd.endpoints[0]}/v3/kv/range", method="POST",
                                     data=json.dumps({"key": base64.b64encode(alloc).decode()}).encode())
        with urllib.request.urlopen(req, timeout=5) as resp:
            akv = json.loads(resp.read())["kvs"][0]
        assert akv["mod_revision"] == kv["mod_revision"]  # one transaction: Service + its IP
    finally:
        server.stop()


def test_restart_after_kill_keeps_everything_in_etcd(etcd: EtcdCluster, tmp_path: Path) -> None:
    server = etcd_server(tmp_path, etcd, unique_prefix())
    server.start()
    try:
        server.kubectl("create", "namespace", "keep")
        server.kubectl("create", "-f", write(tmp_path, "svc.yaml", SVC_YAML % {"target": 8080}), "-n", "keep")
        before = server.kubectl_json("get", "svc", "web", "-n", "keep")
        server.stop(kill=True)
        server.start()
        after = server.kubectl_json("get", "svc", "web", "-n", "keep")
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert after["spec"]["clusterIP"] == before["spec"]["clusterIP"]
        server.kubectl("label", "svc", "web", "-n", "keep", "after=restart")
        again = server.kubectl_json("get", "svc", "web", "-n", "keep")
        assert int(again["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
        assert server.stop() == 0
    finally:
        server.stop(kill=True)


def test_two_apiservers_on_one_etcd_never_allocate_twice(etcd: EtcdCluster, tmp_path: Path) -> None:
    prefix = unique_prefix()
    a = etcd_server(tmp_path / "a", etcd, prefix)
    b = etcd_server(tmp_path / "b", etcd, prefix)
    a.start()
    b.start()
    try:
        a.kubectl("create", "namespace", "race")
        n = 24
        manifests = []
        for i in range(n):
            manifests.append(write(tmp_path, f"s{i}.yaml", json.dumps({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "namespace": "race"},
                "spec": {"type": "NodePort", "ports": [{"port": 80}]}})))

        def create(i: int) -> None:
            (a if i % 2 else b).kubectl("create", "-f", manifests[i])

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(n)))
        for server in (a, b):
            items = server.kubectl_json("get", "svc", "-n", "race")["items"]
            assert len(items) == n
            ips = [s["spec"]["clusterIP"] for s in items]
            ports = [p["nodePort"] for s in items for p in s["spec"]["ports"]]
            assert len(set(ips)) == n and len(set(ports)) == n
        # a ClusterIP taken through one server is refused by the other
        taken = a.kubectl_json("get", "svc", "s0", "-n", "race")["spec"]["clusterIP"]
        dup = write(tmp_path, "dup.yaml", json.dumps({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "dup", "namespace": "race"},
            "spec": {"clusterIP": taken, "ports": [{"port": 80}]}}))
        res = b.kubectl("create", "-f", dup, check=False)
        assert res.returncode != 0 and "already allocated" in res.stderr
    finally:
        a.stop()
        b.stop()
