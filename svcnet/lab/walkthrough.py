"""The walk-through, printed so a newcomer sees what happened:

    python -m svcnet.lab.walkthrough [TOPOLOGY] [--keep]

It brings a lab up, deploys three `svcnet/echo` replicas behind Services with
kubectl, asks DNS from a pod on every node, sends TCP, UDP and SCTP through the
ClusterIP, a NodePort and a LoadBalancer IP from the `external` namespace, shows
`svcnet lab status`, and takes the lab down (unless --keep). Every step prints the
exact command it runs, so each can be repeated by hand. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
CLIENT = (PY, "-m", "svcnet.lab.apps.client")


class Walk:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def say(self, text: str) -> None:
        print(f"\n\x1b[1m# {text}\x1b[0m" if sys.stdout.isatty() else f"\n# {text}", flush=True)

    def run(self, *cmd: str, show: str | None = None, check: bool = True, quiet: bool = False) -> str:
        print(f"$ {show or shlex.join(cmd)}", flush=True)
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300)
        out = (r.stdout + r.stderr).rstrip()
        if out and not quiet:
            print(out, flush=True)
        if check and r.returncode != 0:
            raise SystemExit(f"walk-through stopped: {show or shlex.join(cmd)} exited {r.returncode}")
        return r.stdout

    def svcnet(self, *args: str, **kw: Any) -> str:
        return self.run(PY, "-m", "svcnet", *args, show="svcnet " + shlex.join(args), **kw)

    def kubectl_json(self, *args: str) -> Any:
        r = subprocess.run(["kubectl", *args, "-o", "json"], env=self.env, capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def wait(self, what: str, fn: Any, timeout: float = 120) -> Any:
        print(f"  (waiting for {what})", flush=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = fn()
            if value:
                return value
            time.sleep(0.5)
        raise SystemExit(f"walk-through stopped: no {what} after {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m svcnet.lab.walkthrough", description=__doc__.splitlines()[0])
    p.add_argument("topology", nargs="?", default=str(ROOT / "netns-lab" / "default.yaml"))
    p.add_argument("--keep", action="store_true", help="leave the lab running at the end")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("the walk-through builds network namespaces: run it as root", file=sys.stderr)
        return 1
    from svcnet.lab.lab import LabPaths
    from svcnet.lab.topology import load_topology

    topo = load_topology(args.topology)
    env = {**os.environ, "KUBECONFIG": str(LabPaths.of(topo.name).kubeconfig)}
    w = Walk(env)
    w.say(f"Bring the lab up: {len(topo.nodes)} nodes as network namespaces, proxy mode {topo.proxy_mode}")
    w.svcnet("lab", "up", args.topology)
    try:
        w.say("Deploy three echo servers and put Services in front of them (TCP, UDP, SCTP, NodePort, LB)")
        w.run("kubectl", "apply", "-f", str(ROOT / "netns-lab" / "examples" / "web.yaml"))
        w.wait("3 ready endpoints", lambda: sum(
            1 for s in w.kubectl_json("get", "endpointslices", "-l", "kubernetes.io/service-name=web")
            .get("items", []) for ep in s.get("endpoints") or [] if ep.get("conditions", {}).get("ready")) >= 3)
        w.run("kubectl", "get", "pods,svc", "-o", "wide")
        pods = w.kubectl_json("get", "pods", "-l", "app=web").get("items", [])
        by_node = {p["spec"]["nodeName"]: p["metadata"]["name"] for p in pods}
        for node, pod in sorted(by_node.items()):
            w.say(f"From pod {pod} on {node}: DNS with the pod's own resolv.conf")
            w.svcnet("lab", "exec", pod, "--", "cat", "/etc/resolv.conf")
            w.svcnet("lab", "exec", pod, "--", "dig", "+search", "+short", "web")
            w.svcnet("lab", "exec", pod, "--", "dig", "+short", "SRV", "_http._tcp.web.default.svc.cluster.local")
            w.say("TCP and UDP to the Service by name: each line names the pod that answered")
            w.svcnet("lab", "exec", pod, "--", *CLIENT, "tcp", "web", "80", "-n", "6")
            w.svcnet("lab", "exec", pod, "--", *CLIENT, "udp", "web", "80", "-n", "6")
            w.say("SCTP (this kernel has no SCTP sockets: scapy on a raw socket, through the same NAT)")
            w.svcnet("lab", "exec", pod, "--", *CLIENT, "sctp", "web", "80", "-n", "3")
        nodes = w.kubectl_json("get", "nodes").get("items", [])
        np_port = w.kubectl_json("get", "svc", "web-np").get("spec", {}).get("ports", [{}])[0].get("nodePort")
        w.say("From outside the cluster (the `external` namespace): a NodePort on every node")
        for n in nodes:
            ip = next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
            w.svcnet("lab", "exec", "external", "--", *CLIENT, "tcp", ip, str(np_port), "-n", "3")
        lb = w.wait("a LoadBalancer IP", lambda: (w.kubectl_json("get", "svc", "web-lb").get("status", {})
                                                  .get("loadBalancer", {}).get("ingress") or [{}])[0].get("ip"))
        w.say(f"...and the LoadBalancer IP {lb}, routed from `external` to the nodes")
        w.wait("every proxy to program it", lambda: subprocess.run(
            [PY, "-m", "svcnet", "lab", "exec", "external", "--", *CLIENT, "tcp", lb, "80", "-n", "6"], env=env,
            capture_output=True).returncode == 0, timeout=30)
        w.svcnet("lab", "exec", "external", "--", *CLIENT, "tcp", lb, "80", "-n", "6")
        w.say("The lab's view: Services as frontends → endpoints")
        w.svcnet("lab", "status")
    finally:
        if not args.keep:
            w.say("Take it all down: namespaces, links, processes, /etc/netns entries")
            w.svcnet("lab", "down", "--name", topo.name, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
