"""The one `svcnet` entry point.

Each subcommand lives with its component in a `command.py` module that exposes
`configure(parser)` (flags only) and `main(args) -> int`. This file only routes, so
components can grow flags without touching each other. Modules are imported lazily:
`svcnet dns --help` must not pay for importing the apiserver.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from svcnet import __version__

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "apiserver": ("svcnet.controlplane.command", "run the Kubernetes-compatible API server"),
    "controller-manager": (
        "svcnet.controlplane.controllers.command",
        "run EndpointSlice, scheduler, node-lifecycle and deployment controllers",
    ),
    "proxy": ("svcnet.proxy.command", "program Service NAT rules (the kube-proxy equivalent)"),
    "dns": ("svcnet.dns.command", "serve cluster DNS (the CoreDNS equivalent)"),
    "node-agent": ("svcnet.lab.agent.command", "run pods on a node (the kubelet equivalent)"),
    "lab": ("svcnet.lab.command", "bring a network-namespace cluster up or down"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svcnet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"svcnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:]
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the component that will run
            mod = importlib.import_module(module)
            mod.configure(p)
            p.set_defaults(_module=mod)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    mod = getattr(args, "_module", None)
    if mod is None:
        parser.print_help()
        return 2
    try:
        return int(mod.main(args) or 0)
    except KeyboardInterrupt:
        return 130
