"""From a Pod's spec to what runs: argv and environment per container, the
resolv.conf / nsswitch.conf / hosts a pod sees, and its probes — all pure.

Images are not pulled. An image that names one of svcnet's built-in programs runs
that program (`command` still overrides the entrypoint and `args` are appended, as
a container runtime does); any other image needs a `command`, which runs as given
on the node's own filesystem.

    svcnet/echo   python -m svcnet.lab.apps.echo --name POD --tcp/--udp/--sctp <containerPorts>
    svcnet/dns    python -m svcnet dns --kubeconfig <agent's> --listen 0.0.0.0:53
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from svcnet.apiclient.objects import Obj

BUILTIN_IMAGES = ("svcnet/echo", "svcnet/dns")


class PodSpecError(ValueError):
    """A container the agent cannot run; the message becomes the container's waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def image_name(image: str) -> str:
    """`docker.io/svcnet/echo:1.0` -> `svcnet/echo` (registry and tag/digest dropped)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rindex(":")]
    for registry in ("docker.io/", "index.docker.io/", "registry.k8s.io/"):
        if name.startswith(registry):
            name = name[len(registry):]
    return name


@dataclass(frozen=True)
class PodContext:
    """What container argv and env may depend on besides the container itself."""

    pod_name: str
    namespace: str
    pod_ip: str
    node_name: str
    host_ip: str
    kubeconfig: str
    service_account: str = "default"


def container_argv(container: Obj, ctx: PodContext, python: str = sys.executable) -> list[str]:
    image = image_name(str(container.get("image") or ""))
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if command:
        return command + args
    if image == "svcnet/echo":
        argv = [python, "-m", "svcnet.lab.apps.echo", "--name", ctx.pod_name]
        by_proto: dict[str, list[str]] = {"TCP": [], "UDP": [], "SCTP": []}
        for port in container.get("ports") or []:
            by_proto.setdefault(str(port.get("protocol") or "TCP"), []).append(str(port["containerPort"]))
        if not any(by_proto.values()):
            argv += ["--port", "8080"]
        for proto, flag in (("TCP", "--tcp"), ("UDP", "--udp"), ("SCTP", "--sctp")):
            if by_proto.get(proto):
                argv += [flag, ",".join(by_proto[proto])]
        return argv + args
    if image == "svcnet/dns":
        argv = [python, "-m", "svcnet", "dns"]
        if "--kubeconfig" not in args and "--objects" not in args:
            argv += ["--kubeconfig", ctx.kubeconfig]
        if "--listen" not in args:
            argv += ["--listen", "0.0.0.0:53"]
        return argv + args
    raise PodSpecError("CreateContainerError",
                       f"image {container.get('image')!r} is not built in (built in: "
                       f"{', '.join(BUILTIN_IMAGES)}) and the container has no command")


def _field_ref(path: str, pod: Obj, ctx: PodContext) -> str:
    meta = pod.get("metadata") or {}
    if path == "metadata.name":
        return ctx.pod_name
    if path == "metadata.namespace":
        return ctx.namespace
    if path == "metadata.uid":
        return str(meta.get("uid") or "")
    if path in ("status.podIP", "status.podIPs"):
        return ctx.pod_ip
    if path in ("status.hostIP", "status.hostIPs"):
        return ctx.host_ip
    if path == "spec.nodeName":
        return ctx.node_name
    if path == "spec.serviceAccountName":
        return ctx.service_account
    if path.startswith("metadata.labels['") and path.endswith("']"):
        return str((meta.get("labels") or {}).get(path[17:-2], ""))
    if path.startswith("metadata.annotations['") and path.endswith("']"):
        return str((meta.get("annotations") or {}).get(path[22:-2], ""))
    raise PodSpecError("CreateContainerConfigError", f"env fieldRef {path!r} is not supported")


def container_env(container: Obj, pod: Obj, ctx: PodContext, base: dict[str, str],
                  service_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a container starts with: PATH and friends, the Service
    variables (KUBERNETES_SERVICE_HOST, …), HOSTNAME, then the container's own `env`
    with `$(VAR)` references and the downward API (fieldRef)."""
    env = {k: v for k, v in base.items() if k in ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(service_env or {})
    env["HOSTNAME"] = ctx.pod_name
    for item in container.get("env") or []:
        name = str(item.get("name"))
        if "value" in item:
            env[name] = _expand(str(item.get("value") or ""), env)
        elif (item.get("valueFrom") or {}).get("fieldRef"):
            env[name] = _field_ref(str(item["valueFrom"]["fieldRef"].get("fieldPath")), pod, ctx)
        elif item.get("valueFrom"):
            raise PodSpecError("CreateContainerConfigError",
                               f"env {name}: only value and valueFrom.fieldRef are supported")
        else:
            env[name] = ""
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion; `$$(VAR)` escapes to a literal `$(VAR)`."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i:]:
            end = value.index(")", i)
            name = value[i + 2:end]
            out.append(env.get(name, value[i:end + 1]))
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


# --- DNS ---------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterDNS:
    server: str = "10.96.0.10"
    domain: str = "cluster.local"


def resolv_conf(pod: Obj, dns: ClusterDNS, host_resolv: str = "") -> str:
    """The pod's /etc/resolv.conf, as the kubelet writes it for each dnsPolicy."""
    spec = pod.get("spec") or {}
    ns = (pod.get("metadata") or {}).get("namespace") or "default"
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if spec.get("hostNetwork") and policy == "ClusterFirst":
        policy = "Default"  # the kubelet's rule: ClusterFirst on the host network means Default
    nameservers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        nameservers = [dns.server]
        searches = [f"{ns}.svc.{dns.domain}", f"svc.{dns.domain}", dns.domain]
        options = ["ndots:5"]
    elif policy == "Default":
        for line in host_resolv.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                nameservers.append(parts[1])
            elif parts and parts[0] in ("search", "domain"):
                searches = parts[1:]
            elif parts and parts[0] == "options":
                options += parts[1:]
    config = spec.get("dnsConfig") or {}
    nameservers += [str(s) for s in config.get("nameservers") or [] if str(s) not in nameservers]
    searches += [str(s) for s in config.get("searches") or [] if str(s) not in searches]
    for opt in config.get("options") or []:
        name = str(opt.get("name"))
        options = [o for o in options if o.split(":")[0] != name]
        options.append(f"{name}:{opt['value']}" if opt.get("value") is not None else name)
    lines = [f"nameserver {s}" for s in nameservers[:3]]  # glibc reads at most three
    if searches:
        lines.append("search " + " ".join(searches[:32]))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


# Bind-mounted over /etc/nsswitch.conf in the pod: `hosts: files dns` keeps
# libnss-resolve/mdns (systemd-resolved at 127.0.0.53, unreachable from a pod's
# namespace) out of the lookup path (wg-netns #29).
NSSWITCH_CONF = """\
# written by the svcnet node agent for this pod
passwd:     files
group:      files
shadow:     files
hosts:      files dns
networks:   files
protocols:  files
services:   files
ethers:     files
rpc:        files
"""


def hosts_file(pod: Obj, pod_ip: str, domain: str) -> str:
    """The pod's /etc/hosts, as the kubelet writes it (hostname and FQDN with a subdomain)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    hostname = spec.get("hostname") or meta.get("name") or ""
    names = [hostname]
    if spec.get("subdomain"):
        names.insert(0, f"{hostname}.{spec['subdomain']}.{meta.get('namespace') or 'default'}.svc.{domain}")
    lines = ["# Kubernetes-managed hosts file (svcnet node agent).", "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback", f"{pod_ip}\t{' '.join(names)}"]
    for alias in spec.get("hostAliases") or []:
        lines.append(f"{alias.get('ip')}\t{' '.join(alias.get('hostnames') or [])}")
    return "\n".join(lines) + "\n"


# --- probes ------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # tcp | http | exec
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    host: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3


def _resolve_port(port: Any, container: Obj) -> int:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise PodSpecError("CreateContainerConfigError", f"probe port {port!r} names no container port")


def parse_probe(probe: Obj | None, container: Obj) -> ProbeSpec | None:
    if not probe:
        return None
    common: dict[str, Any] = {
        "initial_delay": float(probe.get("initialDelaySeconds") or 0),
        "period": float(probe.get("periodSeconds") or 10),
        "timeout": float(probe.get("timeoutSeconds") or 1),
        "success_threshold": int(probe.get("successThreshold") or 1),
        "failure_threshold": int(probe.get("failureThreshold") or 3),
    }
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        return ProbeSpec("tcp", port=_resolve_port(t.get("port"), container), host=str(t.get("host") or ""),
                         **common)
    if "httpGet" in probe:
        h = probe["httpGet"]
        headers = tuple((str(x.get("name")), str(x.get("value"))) for x in h.get("httpHeaders") or [])
        return ProbeSpec("http", port=_resolve_port(h.get("port"), container), path=str(h.get("path") or "/"),
                         scheme=str(h.get("scheme") or "HTTP"), host=str(h.get("host") or ""),
                         headers=headers, **common)
    if "exec" in probe:
        return ProbeSpec("exec", command=tuple(str(c) for c in probe["exec"].get("command") or []), **common)
    raise PodSpecError("CreateContainerConfigError", "probe has none of tcpSocket, httpGet, exec (grpc is not supported)")
