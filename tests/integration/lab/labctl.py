"""Driving a lab the way a user does: the svcnet CLI and the real kubectl."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from svcnet.lab.netns import list_netns
from svcnet.lab.teardown import processes_in_netns  # noqa: F401  (re-exported for tests)

PY = sys.executable


class Lab:
    def __init__(self, name: str, root: Path) -> None:
        self.name, self.root = name, root
        self.env = {**os.environ, "SVCNET_LAB_ROOT": str(root), "KUBECONFIG": str(root / name / "kubeconfig")}

    def svcnet(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([PY, "-m", "svcnet", "lab", *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"svcnet lab {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def kubectl(self, *args: str) -> str:
        r = subprocess.run(["kubectl", *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
        return r.stdout

    def kubectl_apply(self, text: str) -> None:
        r = subprocess.run(["kubectl", "apply", "-f", "-"], input=text, env=self.env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def exec(self, target: str, *cmd: str, check: bool = True) -> str:
        r = self.svcnet("exec", target, "--", *cmd, check=check, timeout=30)
        return r.stdout.strip()

    def py(self, target: str, code: str) -> str:
        return self.exec(target, PY, "-c", code)

    def until(self, what: str, fn: Any, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = fn()
            except AssertionError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                logs = self.svcnet("logs", check=False).stdout
                raise AssertionError(f"timed out waiting for {what}; components: {logs}")
            time.sleep(0.5)

    def ready_endpoints(self, service: str) -> list[dict[str, Any]]:
        slices = self.json("get", "endpointslices", "-l", f"kubernetes.io/service-name={service}")["items"]
        return [ep for s in slices for ep in s.get("endpoints") or [] if (ep.get("conditions") or {}).get("ready")]




@contextlib.contextmanager
def running_lab(tmp_path: Path, lab_name: str, proxy_mode: str = "nftables", dns_replicas: int = 2) -> Iterator[Lab]:
    """A two-node lab, always brought down; down must leave nothing behind."""
    topo = tmp_path / "walk.lab.yaml"
    topo.write_text(f"name: {lab_name}\nproxyMode: {proxy_mode}\n"
                    f"nodes: [{{role: control-plane}}, {{role: worker}}]\ndns: {{replicas: {dns_replicas}}}\n")
    lab = Lab(lab_name, tmp_path / "labs")
    try:
        out = lab.svcnet("up", str(topo))
        assert "export KUBECONFIG=" in out.stdout
        assert ("Installing DNS" in out.stderr) == (dns_replicas > 0)
        yield lab
    finally:
        down = lab.svcnet("down", "--name", lab_name, check=False)
        assert down.returncode == 0, down.stderr
        assert not [n for n in list_netns() if n.startswith(lab_name + "-")]
        etc = Path("/etc/netns")
        assert not (etc.exists() and list(etc.glob(f"{lab_name}-*")))
        assert not (lab.root / lab_name).exists()


def lab_process(lab: Lab, component: str) -> int:
    """The pid of a lab component, from the lab's own state file."""
    from svcnet.lab.state import StateFile

    recs = [r for r in StateFile(lab.root / lab.name / "state.jsonl").records()
            if r.kind == "process" and r.name == component]
    assert recs, f"no process {component!r} in the lab's state"
    return recs[-1].pid


def logged_command(lab: Lab, component: str) -> list[str]:
    """The exact command line the lab started a component with (first line of its log)."""
    first = (lab.root / lab.name / "logs" / f"{component}.log").read_text().splitlines()[0]
    assert first.startswith("# ")
    return shlex.split(first[2:])


def pod_pids(lab: Lab, pod: str, namespace: str = "default") -> list[int]:
    """The processes of one pod: those living in its network namespace (found by the
    namespace's identity, never by a name pattern that could match another lab's)."""
    from svcnet.lab.names import pod_netns_name
    from svcnet.lab.netns import netns_inode

    node = lab.json("get", "pod", pod, "-n", namespace)["spec"]["nodeName"]
    ino = netns_inode(pod_netns_name(node, namespace, pod))
    assert ino is not None, f"pod {pod} has no namespace"
    return [pid for pid, _ in processes_in_netns({ino})]
