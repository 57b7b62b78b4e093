"""`svcnet apiserver` driven by the real kubectl 1.32 (the commands of issue 2 §4).

One server process per module (HTTPS, tokens, SQLite in a tmp data dir); each test works
in its own namespace. The restart tests run their own server.
"""

from __future__ import annotations

import itertools
import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from .apiserver_process import ApiServer

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed"),
]

_ns_counter = itertools.count()

SVC_YAML = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: %(target)s}
"""


def new_server(tmp: Path) -> ApiServer:
    return ApiServer(data_dir=tmp / "data", kubeconfig=tmp / "kubeconfig", cache_dir=tmp / "cache",
                     log=tmp / "apiserver.log")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = new_server(tmp_path_factory.mktemp("apiserver"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ns(api: ApiServer) -> Iterator[str]:
    name = f"t{next(_ns_counter)}-{int(time.time()) % 100000}"
    out = api.kubectl("create", "namespace", name).stdout  # a protobuf body in kubectl 1.32
    assert f"namespace/{name} created" in out
    yield name
    api.kubectl("delete", "namespace", name, "--wait=false", check=False)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- discovery, version, explain ------------------------------------------------------------

def test_version_and_api_resources(api: ApiServer) -> None:
    version = json.loads(api.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["major"] == "1" and version["serverVersion"]["minor"] == "32"
    lines = api.kubectl("api-resources", "--no-headers").stdout.splitlines()
    table = {line.split()[0]: line.split() for line in lines}
    assert table["services"] == ["services", "svc", "v1", "true", "Service"]
    assert table["endpointslices"] == ["endpointslices", "discovery.k8s.io/v1", "true", "EndpointSlice"]
    assert table["namespaces"] == ["namespaces", "ns", "v1", "false", "Namespace"]
    assert table["deployments"] == ["deployments", "deploy", "apps/v1", "true", "Deployment"]


def test_explain_service_spec_ports(api: ApiServer) -> None:
    out = api.kubectl("explain", "service.spec.ports").stdout
    assert "FIELD: ports <[]ServicePort>" in out
    assert "port\t<integer> -required-" in out and "targetPort\t<" in out
    assert "The list of ports that are exposed by this service" in out


def test_bootstrap_objects(api: ApiServer) -> None:
    names = api.kubectl("get", "namespaces", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(names)
    svc = api.kubectl_json("get", "svc", "kubernetes", "-n", "default")
    assert svc["spec"]["clusterIP"] == "10.96.0.1"
    assert svc["spec"]["ports"][0]["port"] == 443
    port = int(api.server.rsplit(":", 1)[1])
    slices = api.kubectl_json("get", "endpointslices", "-n", "default",
                              "-l", "kubernetes.io/service-name=kubernetes")
    assert slices["items"][0]["endpoints"][0]["addresses"] == ["127.0.0.1"]
    assert slices["items"][0]["ports"][0]["port"] == port


# --- create, get, apply ------------------------------------------------------------------------

def test_create_and_get_in_every_output_form(api: ApiServer, ns: str, tmp_path: Path) -> None:
    path = write(tmp_path, "svc.yaml", SVC_YAML % {"target": 8080})
    assert "service/web created" in api.kubectl("create", "-f", path, "-n", ns).stdout

    table = api.kubectl("get", "svc", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    cells = table[1].split()
    assert cells[:2] == ["web", "ClusterIP"] and cells[3:5] == ["<none>", "80/TCP"]
    assert cells[2].startswith("10.") and cells[2] != "10.96.0.1"

    wide = api.kubectl("get", "svc", "web", "-n", ns, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-1] == "SELECTOR" and wide[1].split()[-1] == "app=web"

    obj = api.kubectl_json("get", "svc", "web", "-n", ns)
    assert obj["spec"]["clusterIP"] == cells[2]
    assert obj["spec"]["ports"][0] == {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
    as_yaml = yaml.safe_load(api.kubectl("get", "svc", "web", "-n", ns, "-o", "yaml").stdout)
    assert as_yaml["metadata"]["uid"] == obj["metadata"]["uid"]

    labels = api.kubectl("get", "svc", "-n", ns, "--show-labels").stdout.splitlines()
    assert labels[1].split()[-1] == "app=web"  # rows carry PartialObjectMetadata
    dup = api.kubectl("create", "-f", path, "-n", ns, check=False)
    assert dup.returncode != 0 and "AlreadyExists" in dup.stderr


def test_apply_twice_then_server_side(api: ApiServer, ns: str, tmp_path: Path) -> None:
    path = write(tmp_path, "svc.yaml", SVC_YAML % {"target": 8080})
    assert "service/web created" in api.kubectl("apply", "-f", path, "-n", ns).stdout
    assert "service/web unchanged" in api.kubectl("apply", "-f", path, "-n", ns).stdout
    path = write(tmp_path, "svc.yaml", SVC_YAML % {"target": 9090})
    assert "service/web configured" in api.kubectl("apply", "-f", path, "-n", ns).stdout
    assert api.kubectl_json("get", "svc", "web", "-n", ns)["spec"]["ports"][0]["targetPort"] == 9090

    ssa = write(tmp_path, "ssa.yaml", (SVC_YAML % {"target": 7070}).replace("name: web", "name: ssa"))
    assert "service/ssa serverside-applied" in api.kubectl("apply", "--server-side", "-f", ssa, "-n", ns).stdout
    ssa = write(tmp_path, "ssa.yaml", (SVC_YAML % {"target": 7171}).replace("name: web", "name: ssa"))
    assert "service/ssa serverside-applied" in api.kubectl("apply", "--server-side", "-f", ssa, "-n", ns).stdout
    obj = api.kubectl_json("get", "svc", "ssa", "-n", ns, "--show-managed-fields")
    assert obj["spec"]["ports"][0]["targetPort"] == 7171
    assert any(m["manager"] == "kubectl" and m["operation"] == "Apply" for m in obj["metadata"]["managedFields"])


def test_create_dry_run_stores_nothing(api: ApiServer, ns: str, tmp_path: Path) -> None:
    path = write(tmp_path, "svc.yaml", SVC_YAML % {"target": 8080})
    assert "(server dry run)" in api.kubectl("create", "-f", path, "-n", ns, "--dry-run=server").stdout
    res = api.kubectl("get", "svc", "web", "-n", ns, check=False)
    assert res.returncode != 0 and "NotFound" in res.stderr


def test_strict_field_validation(api: ApiServer, ns: str, tmp_path: Path) -> None:
    bad = (SVC_YAML % {"target": 8080}).replace("  selector:", "  bogusField: 1\n  selector:")
    res = api.kubectl("create", "-f", write(tmp_path, "bad.yaml", bad), "-n", ns, check=False)
    assert res.returncode != 0 and 'unknown field "spec.bogusField"' in res.stderr
    res = api.kubectl("create", "-f", write(tmp_path, "bad.yaml", bad), "-n", ns, "--validate=warn")
    assert 'unknown field "spec.bogusField"' in res.stderr  # the Warning header, printed by kubectl
    assert api.kubectl_json("get", "svc", "web", "-n", ns)["metadata"]["name"] == "web"


# --- generators (protobuf request bodies) ------------------------------------------------------

def test_generators_send_protobuf(api: ApiServer, ns: str) -> None:
    assert "service/cip created" in api.kubectl("create", "service", "clusterip", "cip", "--tcp=80:8080",
                                                "-n", ns).stdout
    assert "service/np created" in api.kubectl("create", "service", "nodeport", "np", "--tcp=80:8080",
                                               "-n", ns).stdout
    assert "deployment.apps/web created" in api.kubectl("create", "deployment", "web", "--image=nginx:1.27",
                                                        "--replicas=2", "--port=80", "-n", ns).stdout
    np = api.kubectl_json("get", "svc", "np", "-n", ns)
    assert np["spec"]["type"] == "NodePort" and 30000 <= np["spec"]["ports"][0]["nodePort"] <= 32767
    assert np["spec"]["ports"][0]["targetPort"] == 8080
    dep = api.kubectl_json("get", "deploy", "web", "-n", ns)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    table = api.kubectl("get", "deploy", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[:2] == ["web", "0/2"]


# --- patch, label, annotate, delete ---------------------------------------------------------------

def test_patch_label_annotate_delete(api: ApiServer, ns: str, tmp_path: Path) -> None:
    api.kubectl("create", "-f", write(tmp_path, "svc.yaml", SVC_YAML % {"target": 8080}), "-n", ns)
    svc = ["svc", "web", "-n", ns]
    out = api.kubectl("patch", *svc, "-p", '{"spec":{"ports":[{"port":80,"targetPort":8081}]}}').stdout
    assert "service/web patched" in out
    ports = api.kubectl_json("get", *svc)["spec"]["ports"]
    assert ports == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8081}]  # merged by port

    api.kubectl("patch", *svc, "--type=merge", "-p", '{"spec":{"sessionAffinity":"ClientIP"}}')
    spec = api.kubectl_json("get", *svc)["spec"]
    assert spec["sessionAffinity"] == "ClientIP"
    assert spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 10800

    api.kubectl("patch", *svc, "--type=json", "-p", '[{"op":"replace","path":"/spec/ports/0/port","value":81}]')
    assert api.kubectl_json("get", *svc)["spec"]["ports"][0]["port"] == 81
    res = api.kubectl("patch", *svc, "--type=json", "-p", '[{"op":"test","path":"/spec/type","value":"NodePort"}]',
                      check=False)
    assert res.returncode != 0

    rv = api.kubectl_json("get", *svc)["metadata"]["resourceVersion"]
    assert "(no change)" in api.kubectl("patch", *svc, "--type=merge", "-p", '{"spec":{"type":"ClusterIP"}}').stdout
    assert api.kubectl_json("get", *svc)["metadata"]["resourceVersion"] == rv

    api.kubectl("label", *svc, "env=prod")
    api.kubectl("annotate", *svc, "owner=team-a")
    meta = api.kubectl_json("get", *svc)["metadata"]
    assert meta["labels"]["env"] == "prod" and meta["annotations"]["owner"] == "team-a"
    assert api.kubectl("get", "svc", "-n", ns, "-l", "env=prod", "-o", "name").stdout.split() == ["service/web"]
    assert api.kubectl("get", "svc", "-n", ns, "-l", "env!=prod", "-o", "name").stdout.split() == []
    api.kubectl("label", *svc, "env-")
    assert "env" not in api.kubectl_json("get", *svc)["metadata"].get("labels", {})

    assert 'service "web" deleted' in api.kubectl("delete", *svc).stdout
    res = api.kubectl("get", *svc, check=False)
    assert res.returncode != 0 and 'services "web" not found' in res.stderr


# --- watch ---------------------------------------------------------------------------------------------

class LineReader:
    """Reads a process's stdout on a thread so the test can wait for lines with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True).start()

    def wait_for(self, predicate: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if predicate in line:
                return line
        raise AssertionError(f"no line containing {predicate!r} within {timeout}s; saw {self.seen}")


def service_watchers(api: ApiServer) -> float:
    _, _, body = api.request("GET", "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith("apiserver_registered_watchers{") and 'kind="Service"' in line)


def wait_for_service_watchers(api: ApiServer, at_least: int = 0, at_most: int | None = None,
                              timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = service_watchers(api)
        if n >= at_least and (at_most is None or n <= at_most):
            return
        time.sleep(0.05)
    raise AssertionError(f"Service watchers stayed at {service_watchers(api)}")


@pytest.fixture
def no_watchers(api: ApiServer) -> None:
    """Watch tests count watchers: start when earlier tests' streams have closed."""
    wait_for_service_watchers(api, at_most=0)


@pytest.mark.usefixtures("no_watchers")
def test_get_watch_sees_added_modified_deleted(api: ApiServer, ns: str, tmp_path: Path) -> None:
    cmd = ["kubectl", "--kubeconfig", str(api.kubeconfig), "--cache-dir", str(api.cache_dir),
           "get", "svc", "-n", ns, "-w", "--output-watch-events"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        reader = LineReader(proc)
        wait_for_service_watchers(api, at_least=1)  # the (empty) list is done, the watch is open
        api.kubectl("create", "-f", write(tmp_path, "svc.yaml", SVC_YAML % {"target": 8080}), "-n", ns)
        assert reader.wait_for("ADDED").split()[1] == "web"
        api.kubectl("label", "svc", "web", "-n", ns, "color=blue")
        assert reader.wait_for("MODIFIED").split()[1] == "web"
        api.kubectl("delete", "svc", "web", "-n", ns)
        assert reader.wait_for("DELETED").split()[1] == "web"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.usefixtures("no_watchers")
def test_get_single_object_watch_does_not_lose_first_change(api: ApiServer, ns: str, tmp_path: Path) -> None:
    """`get NAME -w` discards the first event; the server must send a synthetic ADDED first."""
    api.kubectl("create", "-f", write(tmp_path, "svc.yaml", SVC_YAML % {"target": 8080}), "-n", ns)
    cmd = ["kubectl", "--kubeconfig", str(api.kubeconfig), "--cache-dir", str(api.cache_dir),
           "get", "svc", "web", "-n", ns, "-w", "-o", "custom-columns=NAME:.metadata.name,COLOR:.metadata.labels.color"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        reader = LineReader(proc)
        reader.wait_for("<none>")  # the initial GET
        wait_for_service_watchers(api, at_least=1)  # a change before the watch opens is legitimately missed
        api.kubectl("label", "svc", "web", "-n", ns, "color=red")
        assert reader.wait_for("red").split() == ["web", "red"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- errors: 401 403 404 413 415 422 400 -------------------------------------------------------------

def test_unauthorized_and_forbidden(api: ApiServer, ns: str, tmp_path: Path) -> None:
    res = api.kubectl("get", "svc", "--token", "not-a-token", check=False)
    assert res.returncode != 0 and "Unauthorized" in res.stderr
    status, _, body = api.request("GET", "/api/v1/namespaces", token=None)
    assert status == 401 and json.loads(body)["reason"] == "Unauthorized"

    ro = api.readonly_kubeconfig
    assert "kubernetes" in api.kubectl("get", "svc", "-n", "default", kubeconfig=ro).stdout
    res = api.kubectl("create", "-f", write(tmp_path, "svc.yaml", SVC_YAML % {"target": 8080}), "-n", ns,
                      kubeconfig=ro, check=False)
    assert res.returncode != 0 and "Forbidden" in res.stderr and "svcnet:agent" in res.stderr
    res = api.kubectl("delete", "svc", "kubernetes", "-n", "default", kubeconfig=ro, check=False)
    assert res.returncode != 0 and "Forbidden" in res.stderr
    status, _, _ = api.request("GET", "/healthz", token=None)
    assert status == 200


def test_invalid_service_is_422_with_causes(api: ApiServer, ns: str, tmp_path: Path) -> None:
    bad = SVC_YAML.replace("  - {name: http, port: 80, targetPort: %(target)s}",
                           "  - {port: 80}\n  - {port: 81}")
    res = api.kubectl("create", "-f", write(tmp_path, "bad.yaml", bad), "-n", ns, check=False)
    assert res.returncode != 0
    assert 'The Service "web" is invalid' in res.stderr and "spec.ports[0].name: Required value" in res.stderr
    res = api.kubectl("get", "svc", "nosuch", "-n", ns, check=False)
    assert 'Error from server (NotFound): services "nosuch" not found' in res.stderr


def test_raw_http_errors(api: ApiServer, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/services"
    json_hdr = {"Content-Type": "application/json"}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "big"},
           "spec": {"ports": [{"port": 80}]}}
    cases = [
        (base, json.dumps({**svc, "metadata": {"name": "big", "annotations": {"a": "x" * (3 * 1024 * 1024)}}}),
         json_hdr, 413),
        (base, "{not json", json_hdr, 400),
        (base, json.dumps({**svc, "kind": "Pod"}), json_hdr, 400),
        (base, json.dumps({**svc, "metadata": {"name": "big", "namespace": "elsewhere"}}), json_hdr, 400),
        (base, "x", {"Content-Type": "text/plain"}, 415),
        (f"/api/v1/namespaces/{ns}/widgets", json.dumps(svc), json_hdr, 404),
    ]
    for path, body, headers, code in cases:
        status, _, raw = api.request("POST", path, body.encode(), headers=headers)
        assert status == code, (path, body[:60], raw[:300])
        doc = json.loads(raw)
        assert doc["kind"] == "Status" and doc["code"] == code
    status, _, raw = api.request("GET", f"{base}/big")
    assert status == 404  # nothing was stored by any of the bad requests


def test_metrics_and_health(api: ApiServer) -> None:
    for path in ("/healthz", "/livez", "/readyz"):
        status, _, body = api.request("GET", path, token=None)
        assert (status, body) == (200, b"ok")
    status, _, body = api.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and "apiserver_request_total{" in text
    assert "apiserver_request_duration_seconds_bucket{" in text


# --- restart -----------------------------------------------------------------------------------------

def test_restart_after_kill_keeps_objects_certs_and_tokens(tmp_path: Path) -> None:
    server = new_server(tmp_path)
    server.start()
    try:
        server.kubectl("create", "namespace", "keep")
        server.kubectl("create", "-f", write(tmp_path, "svc.yaml", SVC_YAML % {"target": 8080}), "-n", "keep")
        before = server.kubectl_json("get", "svc", "web", "-n", "keep")
        ca, token = server.config["clusters"][0]["cluster"]["certificate-authority-data"], server.admin_token
        server.stop(kill=True)  # SIGKILL: every acknowledged write must survive

        server.start()
        after = server.kubectl_json("get", "svc", "web", "-n", "keep")
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert after["spec"]["clusterIP"] == before["spec"]["clusterIP"]
        assert server.config["clusters"][0]["cluster"]["certificate-authority-data"] == ca
        assert server.admin_token == token
        server.kubectl("label", "svc", "web", "-n", "keep", "after=restart")
        again = server.kubectl_json("get", "svc", "web", "-n", "keep")
        assert int(again["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
        assert server.stop() == 0  # SIGTERM: clean shutdown
    finally:
        server.stop(kill=True)
