"""`svcnet apiserver` driven by the real kubectl 1.32: subresources (scale, binding,
eviction through `kubectl drain`), fieldManager from the User-Agent, the Events table,
streaming lists, dual-stack `--service-cidr`, and the patch/apply paths kubectl takes
(client-side apply with `$setElementOrder`, server-side apply conflicts, `$patch: delete`,
`$deleteFromPrimitiveList`, `wait --for=delete`, `--chunk-size`, stale `replace`).

One server per module, one namespace per test; the dual-stack test runs its own server.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from .apiserver_process import ApiServer

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed"),
]

_ns_counter = itertools.count()

TWO_PORTS = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: %(http)s}
  - {name: https, port: 443, targetPort: 8443}
"""


def new_server(tmp: Path, *extra: str) -> ApiServer:
    return ApiServer(data_dir=tmp / "data", kubeconfig=tmp / "kubeconfig", cache_dir=tmp / "cache",
                     log=tmp / "apiserver.log", extra_args=extra)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = new_server(tmp_path_factory.mktemp("apiserver-followups"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ns(api: ApiServer) -> Iterator[str]:
    name = f"f{next(_ns_counter)}-{int(time.time()) % 100000}"
    api.kubectl("create", "namespace", name)
    yield name
    api.kubectl("delete", "namespace", name, "--wait=false", check=False)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def raw_json(api: ApiServer, method: str, path: str, body: Any = None, *, token: str | None = "admin",
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    status, _, data = api.request(method, path, None if body is None else json.dumps(body).encode(),
                                  token=token, headers=hdrs)
    return status, json.loads(data) if data.strip() else None


# --- subresources ------------------------------------------------------------------------

def test_scale_subresource(api: ApiServer, ns: str) -> None:
    api.kubectl("create", "deployment", "web", "--image=nginx", "-n", ns)
    assert "deployment.apps/web scaled" in api.kubectl("scale", "deployment", "web", "--replicas=5",
                                                        "-n", ns).stdout
    table = api.kubectl("get", "deployment", "web", "--subresource=scale", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "DESIRED", "AVAILABLE"] and table[1].split() == ["web", "5", "0"]

    path = f"/apis/apps/v1/namespaces/{ns}/deployments/web/scale"
    code, scale = raw_json(api, "GET", path)
    assert code == 200 and (scale["apiVersion"], scale["kind"]) == ("autoscaling/v1", "Scale")
    assert scale["spec"] == {"replicas": 5} and scale["status"]["selector"] == "app=web"
    scale["spec"]["replicas"] = 2
    code, out = raw_json(api, "PUT", path, scale)
    assert code == 200 and out["kind"] == "Scale" and out["spec"]["replicas"] == 2
    assert api.kubectl_json("get", "deployment", "web", "-n", ns)["spec"]["replicas"] == 2
    # a stale resourceVersion in the Scale is a precondition, as for any PUT
    code, out = raw_json(api, "PUT", path, scale)
    assert code == 409 and out["reason"] == "Conflict"
    # the body must be a Scale
    code, out = raw_json(api, "PUT", path, {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "metadata": {"name": "web"}, "spec": {"replicas": 1}})
    assert code == 400 and out["reason"] == "BadRequest"

    resources = json.loads(api.kubectl("get", "--raw", "/apis/apps/v1").stdout)["resources"]
    entry = next(r for r in resources if r["name"] == "deployments/scale")
    assert (entry["group"], entry["version"], entry["kind"]) == ("autoscaling", "v1", "Scale")


NODE = """\
apiVersion: v1
kind: Node
metadata: {name: %(name)s}
"""
POD = """\
apiVersion: v1
kind: Pod
metadata: {name: %(name)s}
spec:
  %(node)s
  containers: [{name: c, image: nginx}]
"""


def test_binding_then_drain_evicts(api: ApiServer, ns: str, tmp_path: Path) -> None:
    node = f"node-{ns}"
    api.kubectl("create", "-f", write(tmp_path, "node.yaml", NODE % {"name": node}))
    try:
        api.kubectl("create", "-n", ns, "-f", write(tmp_path, "pod.yaml", POD % {"name": "p", "node": ""}))
        path = f"/api/v1/namespaces/{ns}/pods/p/binding"
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        code, out = raw_json(api, "POST", path, binding, token=api.readonly_token)
        assert code == 403
        code, out = raw_json(api, "POST", path, binding)
        assert code == 201 and out["status"] == "Success"
        assert api.kubectl_json("get", "pod", "p", "-n", ns)["spec"]["nodeName"] == node
        code, out = raw_json(api, "POST", path, binding)
        assert code == 409 and "already assigned" in out["message"]
        code, out = raw_json(api, "POST", path, {**binding, "metadata": {"name": "other"}})
        assert code == 400
        code, _ = raw_json(api, "GET", path)
        assert code == 405

        # kubectl drain finds pods/eviction in discovery and evicts through it
        res = api.kubectl("drain", node, "--force", "--grace-period=0", "--timeout=30s")
        assert f"evicting pod {ns}/p" in res.stdout + res.stderr and f"node/{node} drained" in res.stdout
        assert api.kubectl("get", "pods", "-n", ns, "-o", "name").stdout.strip() == ""
        assert api.kubectl_json("get", "node", node)["spec"]["unschedulable"] is True
    finally:
        api.kubectl("delete", "node", node, check=False)


# --- fieldManager, events, diff, explain ----------------------------------------------------

def test_field_manager_defaults_to_user_agent_product(api: ApiServer, ns: str) -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ua"},
           "spec": {"ports": [{"port": 80}]}}
    code, out = raw_json(api, "POST", f"/api/v1/namespaces/{ns}/services", svc,
                         headers={"User-Agent": "svcnet-probe/0.1 (linux/amd64)"})
    assert code == 201
    assert [m["manager"] for m in out["metadata"]["managedFields"]] == ["svcnet-probe"]
    code, out = raw_json(api, "PATCH", f"/api/v1/namespaces/{ns}/services/ua?fieldManager=explicit",
                         {"metadata": {"labels": {"a": "b"}}},
                         headers={"Content-Type": "application/merge-patch+json", "User-Agent": "x/1"})
    assert code == 200
    assert {m["manager"] for m in out["metadata"]["managedFields"]} == {"svcnet-probe", "explicit"}
    # kubectl scale names no manager: kube-apiserver records the User-Agent's product
    api.kubectl("create", "deployment", "d", "--image=nginx", "-n", ns)
    api.kubectl("scale", "deployment", "d", "--replicas=2", "-n", ns)
    dep = api.kubectl_json("get", "deployment", "d", "-n", ns, "--show-managed-fields")
    managers = {(m["manager"], m.get("subresource", "")) for m in dep["metadata"]["managedFields"]}
    assert managers == {("kubectl-create", ""), ("kubectl", "scale")}


EVENT = """\
apiVersion: v1
kind: Event
metadata: {name: p.1}
involvedObject: {kind: Pod, name: p, fieldPath: "spec.containers{c}"}
reason: Pulled
message: "Container image already present on machine"
type: Normal
source: {component: kubelet, host: node-1}
firstTimestamp: "2026-01-01T00:00:00Z"
lastTimestamp: "2026-01-01T00:00:00Z"
count: 3
"""


def test_events_table(api: ApiServer, ns: str, tmp_path: Path) -> None:
    api.kubectl("create", "-n", ns, "-f", write(tmp_path, "ev.yaml", EVENT))
    lines = api.kubectl("get", "events", "-n", ns).stdout.splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    cells = lines[1].split(None, 4)
    assert cells[1:] == ["Normal", "Pulled", "pod/p", "Container image already present on machine"]
    wide = api.kubectl("get", "events", "-n", ns, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE", "MESSAGE",
                               "FIRST", "SEEN", "COUNT", "NAME"]
    assert "kubelet, node-1" in wide[1] and wide[1].split()[-2:] == ["3", "p.1"]


def test_no_empty_annotations_after_patch(api: ApiServer, ns: str, tmp_path: Path) -> None:
    path = write(tmp_path, "svc.yaml", TWO_PORTS % {"http": 8080})
    api.kubectl("apply", "-n", ns, "-f", path)
    api.kubectl("patch", "svc", "web", "-n", ns, "--type=merge", "-p", '{"metadata":{"annotations":null}}')
    api.kubectl("label", "svc", "web", "-n", ns, "x=y")
    api.kubectl("label", "svc", "web", "-n", ns, "x-")
    meta = api.kubectl_json("get", "svc", "web", "-n", ns)["metadata"]
    assert "annotations" not in meta and "labels" not in meta
    res = api.kubectl("diff", "-n", ns, "-f", path, check=False)
    assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr


def test_explain_target_port_is_int_or_string(api: ApiServer) -> None:
    assert "targetPort\t<IntOrString>" in api.kubectl("explain", "service.spec.ports").stdout
    out = api.kubectl("explain", "service.spec.ports.targetPort").stdout
    assert "FIELD: targetPort <IntOrString>" in out and "Number or name of the port" in out


# --- streaming lists ---------------------------------------------------------------------------

def watch_lines(api: ApiServer, query: str, ns: str) -> tuple[int, list[dict[str, Any]]]:
    status, _, body = api.request("GET", f"/api/v1/namespaces/{ns}/services?watch=1&timeoutSeconds=1&{query}")
    if status != 200:
        return status, [json.loads(body)]
    return status, [json.loads(line) for line in body.splitlines() if line.strip()]


def test_streaming_list_ends_initial_events_with_a_bookmark(api: ApiServer, ns: str) -> None:
    for name in ("a", "b", "c"):
        api.kubectl("create", "service", "clusterip", name, "--tcp=80:80", "-n", ns)
    _, listed = raw_json(api, "GET", f"/api/v1/namespaces/{ns}/services")
    status, events = watch_lines(api, "sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
                                      "&allowWatchBookmarks=true", ns)
    assert status == 200
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events[:3]] == [
        ("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    end = events[3]
    assert end["type"] == "BOOKMARK"
    assert end["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert int(end["object"]["metadata"]["resourceVersion"]) >= int(listed["metadata"]["resourceVersion"])
    # NotOlderThan an old resourceVersion: still the full current state, never 410
    status, events = watch_lines(api, "sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
                                      "&allowWatchBookmarks=true&resourceVersion=1", ns)
    assert status == 200 and [e["type"] for e in events[:4]] == ["ADDED"] * 3 + ["BOOKMARK"]
    # sendInitialEvents=false: no synthetic events
    status, events = watch_lines(api, "sendInitialEvents=false&resourceVersionMatch=NotOlderThan", ns)
    assert status == 200 and events == []
    for bad in ("sendInitialEvents=true&resourceVersionMatch=NotOlderThan",  # no bookmarks
                "sendInitialEvents=true&allowWatchBookmarks=true",            # no resourceVersionMatch
                "resourceVersionMatch=NotOlderThan"):
        status, events = watch_lines(api, bad, ns)
        assert status == 422 and events[0]["reason"] == "Invalid", bad


# --- what kubectl's patch and apply paths send ---------------------------------------------------

def test_client_side_apply_changes_target_port_with_set_element_order(api: ApiServer, ns: str,
                                                                      tmp_path: Path) -> None:
    api.kubectl("apply", "-n", ns, "-f", write(tmp_path, "v1.yaml", TWO_PORTS % {"http": 8080}))
    res = api.kubectl("apply", "-n", ns, "-f", write(tmp_path, "v2.yaml", TWO_PORTS % {"http": 9090}),
                      "-v=8")
    assert "$setElementOrder/ports" in res.stderr  # the strategic patch kubectl sent
    ports = api.kubectl_json("get", "svc", "web", "-n", ns)["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in ports] == [("http", 80, 9090),
                                                                        ("https", 443, 8443)]


def test_server_side_apply_conflict_and_force(api: ApiServer, ns: str, tmp_path: Path) -> None:
    mine = write(tmp_path, "a.yaml", TWO_PORTS % {"http": 8080})
    api.kubectl("apply", "--server-side", "-n", ns, "-f", mine)
    other = write(tmp_path, "b.yaml", TWO_PORTS % {"http": 7070})
    res = api.kubectl("apply", "--server-side", "--field-manager=other", "-n", ns, "-f", other,
                      check=False)
    assert res.returncode != 0
    assert 'Apply failed with' in res.stderr and 'conflict with "kubectl"' in res.stderr
    assert ".spec.ports[port=80,protocol=\"TCP\"].targetPort" in res.stderr
    assert api.kubectl_json("get", "svc", "web", "-n", ns)["spec"]["ports"][0]["targetPort"] == 8080
    api.kubectl("apply", "--server-side", "--field-manager=other", "--force-conflicts", "-n", ns, "-f", other)
    svc = api.kubectl_json("get", "svc", "web", "-n", ns, "--show-managed-fields")
    assert svc["spec"]["ports"][0]["targetPort"] == 7070
    assert {m["manager"] for m in svc["metadata"]["managedFields"]} >= {"other"}


def test_strategic_patch_directives(api: ApiServer, ns: str, tmp_path: Path) -> None:
    api.kubectl("create", "-n", ns, "-f", write(tmp_path, "svc.yaml", TWO_PORTS % {"http": 8080}))
    api.kubectl("patch", "svc", "web", "-n", ns, "--type=strategic",
                "-p", '{"spec":{"ports":[{"port":443,"$patch":"delete"}]}}')
    ports = api.kubectl_json("get", "svc", "web", "-n", ns)["spec"]["ports"]
    assert [p["port"] for p in ports] == [80]

    api.kubectl("patch", "svc", "web", "-n", ns, "--type=merge",
                "-p", '{"metadata":{"finalizers":["example.com/a","example.com/b"]}}')
    api.kubectl("patch", "svc", "web", "-n", ns, "--type=strategic",
                "-p", '{"metadata":{"$deleteFromPrimitiveList/finalizers":["example.com/a"]}}')
    assert api.kubectl_json("get", "svc", "web", "-n", ns)["metadata"]["finalizers"] == ["example.com/b"]

    # deletion waits for the last finalizer; `kubectl wait --for=delete` sees it go
    api.kubectl("delete", "svc", "web", "-n", ns, "--wait=false")
    assert api.kubectl_json("get", "svc", "web", "-n", ns)["metadata"].get("deletionTimestamp")
    waiter = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(api.kubeconfig), "--cache-dir", str(api.cache_dir), "wait",
         "--for=delete", "svc/web", "-n", ns, "--timeout=30s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # let it start watching; it must also cope if the object is gone first
        api.kubectl("patch", "svc", "web", "-n", ns, "--type=strategic",
                    "-p", '{"metadata":{"$deleteFromPrimitiveList/finalizers":["example.com/b"]}}')
        out, err = waiter.communicate(timeout=40)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0, out + err
    assert api.kubectl("get", "svc", "web", "-n", ns, check=False).returncode != 0


def test_chunked_get_and_stale_replace(api: ApiServer, ns: str, tmp_path: Path) -> None:
    for i in range(5):
        api.kubectl("create", "service", "clusterip", f"s{i}", "--tcp=80:80", "-n", ns)
    res = api.kubectl("get", "svc", "-n", ns, "--chunk-size=2", "-o", "name", "-v=6")
    assert res.stdout.split() == [f"service/s{i}" for i in range(5)]
    urls = [line for line in res.stderr.splitlines() if "/services?" in line and "GET" in line]
    assert len(urls) == 3 and "limit=2" in urls[0] and all("continue=" in u for u in urls[1:])

    stale = api.kubectl("get", "svc", "s0", "-n", ns, "-o", "yaml").stdout
    api.kubectl("label", "svc", "s0", "-n", ns, "changed=yes")
    res = api.kubectl("replace", "-n", ns, "-f", write(tmp_path, "stale.yaml", stale), check=False)
    assert res.returncode != 0
    assert "Operation cannot be fulfilled on services \"s0\": the object has been modified" in res.stderr
    assert api.kubectl_json("get", "svc", "s0", "-n", ns)["metadata"]["labels"]["changed"] == "yes"


# --- dual-stack --service-cidr ------------------------------------------------------------------

def test_dual_stack_service_cidr(tmp_path: Path) -> None:
    server = new_server(tmp_path, "--service-cidr", "10.97.0.0/16,fd00:97::/112")
    server.start()
    try:
        kube = server.kubectl_json("get", "svc", "kubernetes", "-n", "default")
        assert kube["spec"]["clusterIPs"] == ["10.97.0.1"]
        svc = """\
apiVersion: v1
kind: Service
metadata: {name: ds}
spec:
  ipFamilyPolicy: PreferDualStack
  ports: [{port: 80}]
"""
        server.kubectl("create", "-f", write(tmp_path, "ds.yaml", svc))
        spec = server.kubectl_json("get", "svc", "ds")["spec"]
        assert spec["ipFamilies"] == ["IPv4", "IPv6"]
        assert spec["clusterIPs"][0].startswith("10.97.") and spec["clusterIPs"][1].startswith("fd00:97::")
    finally:
        server.stop()
