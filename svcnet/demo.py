"""`make demo` (`python -m svcnet.demo`): svcnet's control plane driven by the real kubectl.

Until the netns lab exists this is the walk-through: start `svcnet apiserver` on a free
port in a temporary directory, create a Service and its EndpointSlice with
`kubectl apply`, show them with `kubectl get svc,endpointslices -A`, and stop
everything. Every step prints the command it runs, so a reader can repeat it by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from svcnet.controlplane.command import readonly_path

MANIFEST = """\
# A Service without a selector: its endpoints are whatever EndpointSlices say.
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels:
    kubernetes.io/service-name: web
    endpointslice.kubernetes.io/managed-by: demo.svcnet.io
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: ["10.244.1.5"]
  conditions: {ready: true}
  nodeName: node-a
- addresses: ["10.244.2.7"]
  conditions: {ready: true}
  nodeName: node-b
"""

START_TIMEOUT = 60.0


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(kubectl: list[str], *args: str) -> str:
    cmd = [*kubectl, *args]
    print("$ kubectl " + " ".join(args), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out = (result.stdout + result.stderr).rstrip()
    if out:
        print(out, flush=True)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed with exit code {result.returncode}")
    return result.stdout


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"svcnet apiserver exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"svcnet apiserver did not start within {START_TIMEOUT:.0f}s:\n"
                               f"{log.read_text()[-2000:]}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    kubectl_bin = shutil.which("kubectl")
    if kubectl_bin is None:
        print("demo: kubectl is not installed (make bootstrap installs it)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="svcnet-demo-"))
    data, kubeconfig, log = workdir / "data", workdir / "kubeconfig", workdir / "apiserver.log"
    kubectl = [kubectl_bin, "--kubeconfig", str(kubeconfig), "--cache-dir", str(workdir / "kube-cache")]
    proc: subprocess.Popen[bytes] | None = None
    try:
        step("Start the API server (HTTPS, a CA and tokens generated into the data dir)")
        cmd = [sys.executable, "-m", "svcnet", "apiserver", "--data-dir", str(data),
               "--listen", "127.0.0.1:0", "--kubeconfig-out", str(kubeconfig)]
        print("$ svcnet " + " ".join(cmd[3:]), flush=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_file(kubeconfig, proc, log)
        print(f"ready: kubeconfig {kubeconfig} (read-only agent token in {readonly_path(kubeconfig)})",
              flush=True)

        step("What the server serves")
        run(kubectl, "version")
        run(kubectl, "get", "namespaces")

        step("Create a Service and its EndpointSlice")
        manifest = workdir / "web.yaml"
        manifest.write_text(MANIFEST)
        print(MANIFEST.rstrip(), flush=True)
        run(kubectl, "apply", "-f", str(manifest))

        step("Every Service and EndpointSlice, in every namespace")
        run(kubectl, "get", "svc,endpointslices", "-A", "-o", "wide")

        step("How kubectl describes the Service (endpoints come from the slice)")
        run(kubectl, "describe", "svc", "web")

        step("Stop the API server")
        stop(proc)
        print(f"svcnet apiserver exited with {proc.returncode}", flush=True)
        return 0 if proc.returncode == 0 else 1
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        if log.exists():
            print(f"--- apiserver log ---\n{log.read_text()[-3000:]}", file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            stop(proc)
        if os.environ.get("SVCNET_DEMO_KEEP"):
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
