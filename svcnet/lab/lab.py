"""`svcnet lab up`: the whole cluster, one step at a time, each through the same
command line a person would type.

    Preparing nodes            namespaces, underlay bridge, routes (plan.py)
    Starting control plane     svcnet apiserver + controller-manager + lab loadbalancer on the
                               control-plane node, a port forward to 127.0.0.1 for kubectl;
                               with `controlPlane: {etcd: 3, apiservers: 2}`, etcd members and
                               apiservers in namespaces of their own (control_plane.py)
    Starting node agents       svcnet node-agent on every node; waits for Nodes Ready
    Starting proxies           svcnet proxy --proxy-mode <mode> on every node
    Installing DNS             kube-dns Service (clusterDNS) + svcnet/dns Deployment; waits Ready
    Applying manifests         kubectl apply -f <topology manifests>

Processes start with `nsenter --net=/run/netns/<node>` (the host's mount
namespace, so namespaces an agent creates are visible to everyone) and are
journaled in the lab's state file with their start times. Everything lives under
the lab directory (`/var/lib/svcnet/labs/<lab>/`, or $SVCNET_LAB_ROOT): state,
kubeconfigs, logs/<component>.log, the apiserver's data and each agent's state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from svcnet.lab.names import LabNames
from svcnet.lab.netns import nsenter_net_argv
from svcnet.lab.plan import apply_plan, existing_namespaces, lab_network_plan
from svcnet.lab.progress import Status
from svcnet.lab.state import Record, StateFile
from svcnet.lab.teardown import teardown
from svcnet.lab.topology import Topology

log = logging.getLogger("svcnet.lab")

PROXY_HEALTHZ_PORT = 10256  # `svcnet proxy --healthz-bind-address` default, as kube-proxy's


def lab_root() -> Path:
    return Path(os.environ.get("SVCNET_LAB_ROOT", "/var/lib/svcnet/labs"))


class LabError(RuntimeError):
    """A failed step, with advice for the person at the terminal."""

    def __init__(self, message: str, advice: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.advice, self.log_tail = advice, log_tail


@dataclass(frozen=True)
class LabPaths:
    dir: Path

    @classmethod
    def of(cls, name: str) -> "LabPaths":
        return cls(lab_root() / name)

    @property
    def state(self) -> StateFile:
        return StateFile(self.dir / "state.jsonl")

    @property
    def meta(self) -> Path:
        return self.dir / "lab.json"

    @property
    def admin_kubeconfig(self) -> Path:
        """For components inside the lab: the apiserver's own address on the underlay."""
        return self.dir / "admin.kubeconfig"

    @property
    def local_kubeconfig(self) -> Path:
        """For components on the control-plane node: https://127.0.0.1 (see LabUp.up)."""
        return self.dir / "local.kubeconfig"

    @property
    def kubeconfig(self) -> Path:
        """For the host: 127.0.0.1 through the port forward."""
        return self.dir / "kubeconfig"

    def log(self, component: str) -> Path:
        return self.dir / "logs" / f"{component}.log"

    def node_dir(self, node: str) -> Path:
        return self.dir / "nodes" / node


def existing_labs() -> list[str]:
    root = lab_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "state.jsonl").exists() or (p / "lab.json").exists())


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LabUp:
    def __init__(self, topo: Topology, status: Status, python: str = sys.executable,
                 timeout: float = 120.0) -> None:
        self.topo = topo
        self.names = LabNames(topo.name)
        self.paths = LabPaths.of(topo.name)
        self.state = self.paths.state
        self.status = status
        self.python = python
        self.timeout = timeout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- processes -----------------------------------------------------------------

    def start(self, component: str, netns: str | None, argv: list[str]) -> subprocess.Popen[bytes]:
        full = nsenter_net_argv(netns, argv) if netns else argv
        logf = self.paths.log(component)
        logf.parent.mkdir(parents=True, exist_ok=True)
        with open(logf, "ab") as out:
            out.write(f"# {shlex.join(full)}\n".encode())  # the exact command, to rerun by hand
            out.flush()
            proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.state.record_process(component, proc.pid, owner="lab")
        self.procs[component] = proc
        log.debug("started %s pid=%d: %s", component, proc.pid, " ".join(full))
        return proc

    def svcnet(self, *args: str) -> list[str]:
        return [self.python, "-m", "svcnet", *args]

    async def wait_for(self, what: str, check: Callable[[], Any], components: list[str],
                       timeout: float | None = None) -> Any:
        """Poll `check` (sync or async) until it returns a true value; fail early
        with the log of any of `components` that exited."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for c in components:
                p = self.procs.get(c)
                if p is not None and p.poll() is not None:
                    raise LabError(f"{c} exited with code {p.returncode} while waiting for {what}",
                                   f"see {self.paths.log(c)}", log_tail(self.paths.log(c)))
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {c}:\n{log_tail(self.paths.log(c), 8)}" for c in components)
                raise LabError(f"timed out after {timeout or self.timeout:.0f}s waiting for {what}",
                               f"svcnet lab logs <component>; --retain keeps the lab for a look", tails)
            await asyncio.sleep(0.25)

    # -- steps ---------------------------------------------------------------------

    async def up(self) -> None:
        topo = self.topo
        if self.state.exists() or existing_namespaces(lab_network_plan(topo)):
            raise LabError(f"lab {topo.name!r} is already up (or left over from a crash)",
                           f"svcnet lab down --name {topo.name}, or pick another `name:` in the topology")
        self.paths.dir.mkdir(parents=True, exist_ok=True)
        self.state.record(Record("tree", str(self.paths.dir), owner="lab"))
        self._write_meta()

        with self.status.step(f"Preparing nodes 📦 ({len(topo.nodes)} nodes, underlay {topo.networking.underlay_subnet})"):
            await apply_plan(lab_network_plan(topo), self.state, owner="lab")

        net = topo.networking
        if topo.control_plane_spec.ha:
            await self._start_ha_control_plane()
        else:
            await self._start_control_plane()
        # LoadBalancer Services get their IPs from the lab's controller, on the control-plane node.
        self.start("loadbalancer", topo.control_plane.name, self.svcnet(
            "lab", "loadbalancer", "--kubeconfig", self._kubeconfig_for(topo.control_plane),
            "--pool", str(net.load_balancer_pool)))

        from svcnet.apiclient.client import RestClient

        async with RestClient.from_kubeconfig(str(self.paths.kubeconfig)) as client:
            with self.status.step("Starting node agents 🚜"):
                for node in topo.nodes:
                    node_dir = self.paths.node_dir(node.name)
                    (node_dir / "manifests").mkdir(parents=True, exist_ok=True)  # static pods go here
                    self.state.record(Record("include", str(node_dir / "state.jsonl"), owner=f"node/{node.name}"))
                    labels = [f"{k}={v}" for k, v in node.labels]
                    if node.role == "control-plane":
                        labels.append("node-role.kubernetes.io/control-plane=")
                    self.start(f"node-agent-{node.name}", node.name, self.svcnet(
                        "node-agent", "--kubeconfig", self._kubeconfig_for(node), "--node-name", node.name,
                        "--pod-kubeconfig", str(self.paths.admin_kubeconfig),
                        "--node-ip", str(node.underlay_ip), "--pod-cidr", str(node.pod_cidr),
                        "--state-dir", str(node_dir), "--cluster-dns", str(net.cluster_dns),
                        "--cluster-domain", net.dns_domain, *(["--node-labels", ",".join(labels)] if labels else []),
                        "--pod-manifest-path", str(node_dir / "manifests")))
                await self.wait_for("every Node to be Ready", lambda: self._nodes_ready(client),
                                    [f"node-agent-{n.name}" for n in topo.nodes] + ["apiserver"])

            with self.status.step(f"Starting proxies ({topo.proxy_mode}) 🔀"):
                for node in topo.nodes:
                    self.start(f"proxy-{node.name}", node.name, self.svcnet(
                        "proxy", "--kubeconfig", self._kubeconfig_for(node),
                        "--hostname-override", node.name, "--node-ip", str(node.underlay_ip),
                        "--cluster-cidr", str(net.pod_subnet), "--service-cidr", str(net.service_subnet),
                        "--proxy-mode", topo.proxy_mode))
                await self.wait_for("every proxy's /healthz (first sync done)", self._proxies_healthy,
                                    [f"proxy-{n.name}" for n in topo.nodes])

            if topo.dns_replicas:
                with self.status.step(f"Installing DNS ({topo.dns_replicas} × svcnet/dns behind kube-dns "
                                      f"{net.cluster_dns}) 🔎"):
                    self.kubectl_apply("-", dns_manifest(topo))
                    await self.wait_for("DNS pods to be Ready", lambda: self._dns_ready(client),
                                        ["controller-manager", "apiserver"])

            for manifest in topo.manifests:
                with self.status.step(f"Applying {manifest.name} 📜"):
                    self.kubectl_apply(str(manifest))

    async def _start_control_plane(self) -> None:
        """One apiserver on SQLite, in the control-plane node (the default)."""
        topo = self.topo
        cp = topo.control_plane
        net = topo.networking
        with self.status.step("Starting control plane 🕹️"):
            self.start("apiserver", cp.name, self.svcnet(
                "apiserver", "--data-dir", str(self.paths.dir / "apiserver"),
                # All addresses: components on the control-plane node talk to it over
                # 127.0.0.1, so their connections never look like a pod reaching itself
                # through a Service (the `kubernetes` endpoint is this node's own IP).
                "--listen", f"0.0.0.0:{topo.apiserver_port}",
                "--kubeconfig-out", str(self.paths.admin_kubeconfig),
                "--service-cidr", str(net.service_subnet),
                "--node-port-range", f"{net.node_port_range[0]}-{net.node_port_range[1]}",
                "--advertise-address", str(cp.underlay_ip)))
            await self.wait_for("the apiserver to write its kubeconfig", self.paths.admin_kubeconfig.exists,
                                ["apiserver"])
            port_file = self.paths.dir / "apiserver.port"
            self.start("portforward", None, [self.python, "-m", "svcnet.lab.portforward", "--listen", "127.0.0.1:0",
                                             "--netns", cp.name, "--to", f"127.0.0.1:{topo.apiserver_port}",
                                             "--port-file", str(port_file)])
            await self.wait_for("the apiserver port forward", port_file.exists, ["portforward"])
            self._write_host_kubeconfig(int(port_file.read_text()))
            self._write_kubeconfig(self.paths.local_kubeconfig, f"https://127.0.0.1:{topo.apiserver_port}")
            self.start("controller-manager", cp.name, self.svcnet(
                "controller-manager", "--kubeconfig", str(self.paths.local_kubeconfig)))

    async def _start_ha_control_plane(self) -> None:
        """etcd members and apiservers each in their own namespace (control_plane.py)."""
        from svcnet.lab import control_plane as cpl

        topo = self.topo
        spec = topo.control_plane_spec
        etcd, apiservers = spec.of("etcd"), spec.of("apiserver")
        with self.status.step(f"Starting etcd ({len(etcd)} members) 🗄️"):
            for m in etcd:
                data_dir = self.paths.dir / "etcd" / m.name
                # Journaled before etcd creates it, so `down` removes it even if `up` stops here.
                self.state.record(Record("tree", str(data_dir), owner="lab"))
                data_dir.parent.mkdir(parents=True, exist_ok=True)
                self.start(f"etcd-{m.name}", m.name, cpl.etcd_argv(topo, m, data_dir, self.paths.log(f"etcd-{m.name}")))
            await self.wait_for("etcd to have a leader", self._etcd_healthy, [f"etcd-{m.name}" for m in etcd])

        with self.status.step(f"Starting control plane ({len(apiservers)} apiservers) 🕹️"):
            pki_dir = self.paths.dir / "pki"
            outs = []
            for m in apiservers:
                # All at once, as a real HA control plane boots: bootstrapping one empty
                # store together is safe (the registry rereads after losing a race).
                out = self.paths.dir / f"{m.name}.kubeconfig"
                outs.append(out)
                self.start(f"apiserver-{m.name}", m.name, self.svcnet(*cpl.apiserver_argv(
                    topo, m, self.paths.dir / m.name, pki_dir, out)))
            for m, out in zip(apiservers, outs):
                await self.wait_for(f"{m.name} to write its kubeconfig", out.exists,
                                    [f"apiserver-{m.name}"] + [f"etcd-{e.name}" for e in etcd])
            # The first one's kubeconfig lists every apiserver (svcnet.io/servers): the agents' copy.
            self.paths.admin_kubeconfig.write_bytes(outs[0].read_bytes())
            os.chmod(self.paths.admin_kubeconfig, 0o600)
            port_file = self.paths.dir / "apiserver.port"
            self.start("apiserver-lb", None, [
                self.python, "-m", "svcnet.lab.control_plane", "--listen", "127.0.0.1:0",
                "--netns", topo.control_plane.name, "--port-file", str(port_file),
                *(a for m in apiservers for a in ("--to", f"{m.underlay_ip}:{topo.apiserver_port}"))])
            await self.wait_for("the apiserver load balancer", port_file.exists, ["apiserver-lb"])
            self._write_host_kubeconfig(int(port_file.read_text()))
            for m in apiservers:  # kubeadm's stacked control plane: one beside each apiserver
                self.start(f"controller-manager-{m.name}", m.name, self.svcnet(
                    "controller-manager", "--kubeconfig", str(self.paths.admin_kubeconfig), "--leader-elect"))

    async def _etcd_healthy(self) -> bool:
        """etcd's /health answers 200 once the member has a leader; asked on the underlay."""
        from svcnet.lab.agent.podspec import ProbeSpec
        from svcnet.lab.agent.probes import run_probe
        from svcnet.lab import control_plane as cpl

        spec = ProbeSpec("http", port=cpl.ETCD_CLIENT_PORT, path="/health", timeout=2)
        members = self.topo.control_plane_spec.of("etcd")
        results = [await run_probe(spec, str(m.underlay_ip), "", node_netns=m.name) for m in members]
        return all(r.ok for r in results)

    def kubectl_apply(self, path: str, stdin: str | None = None) -> None:
        cmd = ["kubectl", "--kubeconfig", str(self.paths.kubeconfig), "apply", "-f", path]
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
        with open(self.paths.log("kubectl"), "a") as f:
            f.write(f"# {' '.join(cmd)}\n{r.stdout}{r.stderr}")
        if r.returncode != 0:
            raise LabError(f"kubectl apply -f {path} failed", "check the manifest", r.stderr.strip())

    async def _proxies_healthy(self) -> bool:
        """kube-proxy's healthz answers 200 once rules are programmed; asked from each node."""
        from svcnet.lab.agent.podspec import ProbeSpec
        from svcnet.lab.agent.probes import run_probe

        spec = ProbeSpec("http", port=PROXY_HEALTHZ_PORT, path="/healthz", timeout=2)
        results = [await run_probe(spec, "127.0.0.1", "", node_netns=n.name) for n in self.topo.nodes]
        return all(r.ok for r in results)

    async def _nodes_ready(self, client: Any) -> bool:
        from svcnet.apiclient.resources import NODES
        try:
            nodes = (await client.list(NODES)).get("items") or []
        except Exception:  # the apiserver may still be starting
            return False
        ready = {n["metadata"]["name"] for n in nodes
                 if any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (n.get("status") or {}).get("conditions") or [])}
        return {n.name for n in self.topo.nodes} <= ready

    async def _dns_ready(self, client: Any) -> bool:
        from svcnet.apiclient.resources import PODS
        try:
            pods = (await client.list(PODS, "kube-system", label_selector="k8s-app=kube-dns")).get("items") or []
        except Exception:
            return False
        ready = [p for p in pods if any(c.get("type") == "Ready" and c.get("status") == "True"
                                        for c in (p.get("status") or {}).get("conditions") or [])]
        return len(ready) >= self.topo.dns_replicas

    def _kubeconfig_for(self, node: Any) -> str:
        # With several apiservers every agent takes the kubeconfig listing them all.
        if node.role == "control-plane" and not self.topo.control_plane_spec.ha:
            return str(self.paths.local_kubeconfig)
        return str(self.paths.admin_kubeconfig)

    def _write_kubeconfig(self, path: Path, server: str) -> None:
        cfg = yaml.safe_load(self.paths.admin_kubeconfig.read_text())
        for c in cfg.get("clusters") or []:
            c["cluster"]["server"] = server
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)

    def _write_host_kubeconfig(self, port: int) -> None:
        cfg = yaml.safe_load(self.paths.admin_kubeconfig.read_text())
        context = f"svcnet-{self.topo.name}"
        for c in cfg.get("clusters") or []:
            c["name"] = context
            c["cluster"]["server"] = f"https://127.0.0.1:{port}"
        for c in cfg.get("contexts") or []:
            c["name"] = context
            c["context"]["cluster"] = context
        cfg["current-context"] = context
        fd = os.open(self.paths.kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)

    def _write_meta(self) -> None:
        t = self.topo
        meta = {
            "name": t.name, "topology": str(t.source or ""), "proxyMode": t.proxy_mode,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "nodes": [{"name": n.name, "role": n.role, "ip": str(n.underlay_ip), "podCIDR": str(n.pod_cidr)}
                      for n in t.nodes],
            "external": {"netns": self.names.external_netns, "ip": str(t.external_ip)},
            "underlay": self.names.underlay_netns,
            "loadBalancerPool": str(t.networking.load_balancer_pool),
            "clusterDNS": str(t.networking.cluster_dns),
            "controlPlane": {"apiservers": t.control_plane_spec.apiservers, "etcd": t.control_plane_spec.etcd,
                             "members": [{"netns": m.name, "role": m.role, "ip": str(m.underlay_ip)}
                                         for m in t.control_plane_spec.members]},
        }
        self.paths.meta.write_text(json.dumps(meta, indent=2) + "\n")


def dns_manifest(topo: Topology) -> str:
    net = topo.networking
    docs = [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": "kube-system",
                      "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "svcnet-dns"}},
         "spec": {"clusterIP": str(net.cluster_dns), "selector": {"k8s-app": "kube-dns"},
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "svcnet-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
         "spec": {"replicas": topo.dns_replicas, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                  "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}}, "spec": {
                      # Default, not ClusterFirst: the DNS server must not ask itself (as CoreDNS does).
                      "dnsPolicy": "Default",
                      "terminationGracePeriodSeconds": 5,
                      "containers": [{
                          "name": "dns", "image": "svcnet/dns",
                          # CoreDNS's default Corefile: `kubernetes cluster.local in-addr.arpa ip6.arpa`
                          "args": ["--listen", "0.0.0.0:53", "--zone", net.dns_domain, "--zone", "in-addr.arpa",
                                   "--zone", "ip6.arpa", "--pods", "insecure",
                                   "--health-listen", "0.0.0.0:8080", "--ready-listen", "0.0.0.0:8181",
                                   "--metrics-listen", "0.0.0.0:9153"],
                          "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                    {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}],
                          "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                          "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10,
                                            "failureThreshold": 5},
                      }]}}}},
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


async def lab_down(name: str, status: Status, dry_run: bool = False) -> bool:
    """Remove lab `name`; False (and a polite message) when there is nothing to remove."""
    paths = LabPaths.of(name)
    if not paths.state.exists():
        leftovers = [n for n in existing_namespaces(lab_network_plan_for_name(name))]
        if not leftovers:
            status.line(f"No lab named {name!r} is running: nothing to do.")
            return False
        status.line(f"Lab {name!r} has no state file but namespaces {', '.join(leftovers)} exist; "
                    "removing only those named by its topology.")
        for ns in leftovers:
            paths.state.record(Record("netns", ns, owner="lab"))
    with status.step(f"Deleting lab {name!r}" + (" (dry run)" if dry_run else "")):
        report = await teardown(paths.state, grace=5.0, dry_run=dry_run)
    if dry_run:
        for line in report.removed:
            status.line(f"   {line}")
    if report.errors:
        raise LabError("some objects could not be removed:\n  " + "\n  ".join(report.errors),
                       "run `svcnet lab down` again; the state file keeps what is left")
    return True


def lab_network_plan_for_name(name: str) -> list[Any]:
    """The namespaces a default-shaped lab of this name would have (for a lab whose
    state file is lost): only its own fixed names, never a glob."""
    from svcnet.lab.topology import parse_topology

    return lab_network_plan(parse_topology(f"name: {name}"))
