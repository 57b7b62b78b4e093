"""`svcnet proxy --kubeconfig` against svcnet's own apiserver: objects created and
changed with the real kubectl reach the kernel, and traffic follows them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.netns import NetnsPool
from tests.integration.proxy.lab import NODE_IP, PODS, PY, ROOT, ProxyLab, reached, wait_for
from tests.unit.proxy.builders import ep, eps, svc

pytestmark = [pytest.mark.root, pytest.mark.kubectl]


def manifests(*pods: str) -> str:
    objs: list[dict[str, Any]] = [
        svc("web", "10.96.0.10", ("tcp", 80, "TCP"), ns="default"),
        eps("web", *[ep(PODS[p]) for p in pods], ports=(("tcp", 8080, "TCP"),), ns="default"),
    ]
    return yaml.safe_dump_all(objs)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_proxy_follows_the_api(tmp_path: Path) -> None:
    with NetnsPool("svpk") as pool:
        lab = ProxyLab(pool, tmp_path)
        kubeconfig = tmp_path / "admin.kubeconfig"
        api_log = open(tmp_path / "apiserver.log", "w")
        pool.popen(lab.node, PY, "-m", "svcnet", "apiserver", "--data-dir", str(tmp_path / "api"),
                   "--listen", "127.0.0.1:6443", "--kubeconfig-out", str(kubeconfig),
                   "--service-cidr", "10.96.0.0/16", stdout=api_log, stderr=api_log, cwd=str(ROOT))

        def kubectl_apply(text: str) -> bool:
            (tmp_path / "objs.yaml").write_text(text)
            out = pool.run(lab.node, "kubectl", "--kubeconfig", str(kubeconfig), "apply", "-f",
                           str(tmp_path / "objs.yaml"), check=False)
            return out.returncode == 0

        wait_for(lambda: kubeconfig.exists() and kubectl_apply(manifests("pod1", "pod2")), 30,
                 lambda: (tmp_path / "apiserver.log").read_text()[-3000:])
        log = open(lab.log_file, "w")
        pool.popen(lab.node, PY, "-m", "svcnet", "proxy", "--kubeconfig", str(kubeconfig),
                   "--hostname-override", "node-a", "--node-ip", NODE_IP, "--cluster-cidr", "10.244.0.0/16",
                   "--min-sync-period", "100ms", stdout=log, stderr=log, cwd=str(ROOT))
        wait_for(lambda: reached(lab.probe("client", "tcp", "10.96.0.10", 80, 12)) == {"pod1", "pod2"},
                 30, lab.log)
        assert kubectl_apply(manifests("pod3"))
        wait_for(lambda: reached(lab.probe("client", "tcp", "10.96.0.10", 80, 4)) == {"pod3"},
                 30, lab.log)
        # the apiserver's own `kubernetes` Service is proxied too (no endpoints: rejected, not dropped)
        assert "default/kubernetes" in subprocess.run(
            ["ip", "netns", "exec", lab.node, "nft", "list", "table", "ip", "svcnet"],
            capture_output=True, text=True).stdout
