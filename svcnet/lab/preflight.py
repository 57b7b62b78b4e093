"""Checks before `svcnet lab up` touches anything, each failing with advice
(faucet's required-tools table, minikube's reasons): root, the tools the lab and
its proxies call, and the kernel features it needs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    id: str
    message: str
    advice: str

    def __str__(self) -> str:
        return f"[{self.id}] {self.message}\n    advice: {self.advice}"


TOOLS = {
    "ip": ("iproute2", "runs pod processes the way `ip netns exec` does"),
    "nsenter": ("util-linux", "starts agents in node namespaces"),
    "kubectl": ("kubectl", "applies the lab's manifests"),
}


def check(proxy_mode: str) -> list[Problem]:
    problems: list[Problem] = []
    if os.geteuid() != 0:
        problems.append(Problem("LAB_NOT_ROOT", "svcnet lab needs root: it creates network namespaces",
                                "run it with sudo (sudo -E keeps your environment)"))
    for tool, (pkg, why) in TOOLS.items():
        if shutil.which(tool) is None:
            problems.append(Problem("LAB_MISSING_TOOL", f"`{tool}` not found ({why})",
                                    f"install it: apt-get install {pkg}"))
    if proxy_mode == "nftables":
        nft = shutil.which("nft")
        if nft is None:
            problems.append(Problem("LAB_MISSING_NFT", "`nft` not found (the nftables proxy mode needs it)",
                                    "apt-get install nftables, or set proxyMode: iptables"))
        else:
            out = subprocess.run([nft, "--version"], capture_output=True, text=True).stdout
            m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
            if m and tuple(int(x) for x in m.groups()) < (1, 0, 1):
                problems.append(Problem("LAB_OLD_NFT", f"nft {m.group(0)} is older than 1.0.1",
                                        "upgrade nftables (kube-proxy's nftables mode needs 1.0.1)"))
    elif shutil.which("iptables-restore") is None:
        problems.append(Problem("LAB_MISSING_IPTABLES", "`iptables-restore` not found",
                                "apt-get install iptables, or set proxyMode: nftables"))
    if not Path("/proc/sys/net/ipv4/ip_forward").exists():
        problems.append(Problem("LAB_NO_IPV4", "no /proc/sys/net/ipv4: IPv4 networking is unavailable",
                                "run on a Linux host with IPv4 enabled"))
    for mod, why in (("bridge", "the underlay bridge"), ("veth", "pod and node links")):
        if not _kernel_has(mod):
            problems.append(Problem("LAB_KERNEL_MODULE", f"kernel module {mod} is not available ({why})",
                                    f"modprobe {mod}"))
    return problems


def _kernel_has(module: str) -> bool:
    """Loaded, built in, or loadable (the kernel loads bridge and veth on first use)."""
    if Path(f"/sys/module/{module}").exists():
        return True
    release = os.uname().release
    for base in (Path("/lib/modules") / release, Path("/usr/lib/modules") / release):
        builtin = base / "modules.builtin"
        if builtin.exists() and f"/{module}.ko" in builtin.read_text():
            return True
        if any(base.glob(f"kernel/**/{module}.ko*")):
            return True
    # veth has no /sys/module entry when built in and unused; try the config.
    try:
        import gzip
        cfg = gzip.open("/proc/config.gz", "rt").read()
        return f"CONFIG_{module.upper()}=y" in cfg or f"CONFIG_{module.upper()}=m" in cfg
    except OSError:
        return True  # cannot tell: let the netlink call say so
