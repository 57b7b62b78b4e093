"""`svcnet lab up|down|status|exec|kubeconfig|logs`: the netns lab from the command line.

    svcnet lab up [TOPOLOGY] [--retain] [--dry-run]
    svcnet lab status [--format json]
    svcnet lab exec web-7d9f-abcde -- dig +search web
    svcnet lab exec external -- curl http://172.19.0.1
    svcnet lab kubeconfig           # prints the path; export KUBECONFIG=$(svcnet lab kubeconfig)
    svcnet lab logs [COMPONENT]     # apiserver, controller-manager, node-agent-<node>, proxy-<node>, …
    svcnet lab down [--dry-run]
    svcnet lab loadbalancer --kubeconfig F --pool CIDR   # LoadBalancer IPs (lab up starts it)

Every flag can also come from the environment as SVCNET_LAB_<FLAG> (containerlab's
CLAB_<CMD>_<FLAG>), e.g. SVCNET_LAB_NAME=demo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from svcnet.lab.progress import Status


def _env(flag: str, default: Any = None) -> Any:
    return os.environ.get(f"SVCNET_LAB_{flag.upper().replace('-', '_')}", default)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="build the lab and start the cluster in it")
    up.add_argument("topology", nargs="?", default=_env("topology"),
                    help="topology file (default: the one *.lab.yaml here, else netns-lab/default.yaml)")
    up.add_argument("--retain", action="store_true", default=bool(_env("retain")),
                    help="keep what was built when up fails (for a look at the logs)")
    up.add_argument("--dry-run", action="store_true", help="print the plan (as ip commands) and stop")
    up.add_argument("--timeout", type=float, default=float(_env("timeout", 180)),
                    help="seconds to wait for each step (default 180)")
    lb = sub.add_parser("loadbalancer", help="hand out LoadBalancer IPs from a pool (lab up runs it)")
    from svcnet.lab.loadbalancer import configure as lb_configure
    lb_configure(lb)
    for name, help_text in (("down", "remove everything the lab created"),
                            ("status", "nodes, pods and Services with their endpoints"),
                            ("kubeconfig", "print the path of the lab's kubeconfig"),
                            ("logs", "show a component's log (list them without an argument)"),
                            ("exec", "run a command in a pod, a node or `external`")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--name", default=_env("name"), help="the lab (default: the only one running)")
        if name == "down":
            p.add_argument("--dry-run", action="store_true", help="list what would be removed")
        if name == "status":
            p.add_argument("--format", choices=("table", "json"), default=_env("format", "table"))
        if name == "logs":
            p.add_argument("component", nargs="?")
            p.add_argument("--lines", type=int, default=0, help="only the last N lines")
            p.add_argument("--export", metavar="DIR", type=Path, default=None,
                           help="copy every log, lab.json, the state file and each pod's logs into DIR "
                                "(attach it to a bug report, as with kind export logs)")
        if name == "exec":
            p.add_argument("-n", "--namespace", default=None, help="the pod's namespace (default: search all)")
            p.add_argument("target", help="POD, NODE or external")
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS…")


def main(args: argparse.Namespace) -> int:
    status = Status()
    from svcnet.lab.lab import LabError

    try:
        if args.lab_command == "up":
            return _up(args, status)
        if args.lab_command == "loadbalancer":
            from svcnet.lab.loadbalancer import run as lb_run
            return lb_run(args)
        name = _lab_name(args, status)
        if name is None:
            return 0 if args.lab_command == "down" else 1
        if args.lab_command == "down":
            from svcnet.lab.lab import lab_down
            asyncio.run(lab_down(name, status, args.dry_run))
            return 0
        if args.lab_command == "kubeconfig":
            from svcnet.lab.lab import LabPaths
            print(LabPaths.of(name).kubeconfig)
            return 0
        if args.lab_command == "logs":
            return _logs(name, args)
        if args.lab_command == "exec":
            return _exec(name, args)
        if args.lab_command == "status":
            from svcnet.lab.lab_status import print_status
            return asyncio.run(print_status(name, args.format))
    except LabError as e:
        _fail(e)
        return 1
    return 2


def _fail(e: Any) -> None:
    print(f"ERROR: {e}", file=sys.stderr)
    if getattr(e, "log_tail", ""):
        print(e.log_tail, file=sys.stderr)
    if getattr(e, "advice", ""):
        print(f"advice: {e.advice}", file=sys.stderr)


def _lab_name(args: argparse.Namespace, status: Status) -> str | None:
    from svcnet.lab.lab import existing_labs

    if args.name:
        return str(args.name)
    labs = existing_labs()
    if len(labs) == 1:
        return labs[0]
    if not labs:
        if args.lab_command == "down":
            status.line("No lab is running: nothing to do.")
        else:
            print("ERROR: no lab is running (svcnet lab up starts one)", file=sys.stderr)
        return None
    print(f"ERROR: several labs are running ({', '.join(labs)}): pick one with --name", file=sys.stderr)
    return None


def _up(args: argparse.Namespace, status: Status) -> int:
    from svcnet.lab import preflight
    from svcnet.lab.lab import LabError, LabPaths, LabUp
    from svcnet.lab.plan import lab_network_plan, render_plan
    from svcnet.lab.topology import TopologyError, find_topology, load_topology

    try:
        topo = load_topology(args.topology or find_topology())
    except TopologyError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"# svcnet lab up {topo.source}: the network, as ip commands\n" + render_plan(lab_network_plan(topo)))
        return 0
    problems = preflight.check(topo.proxy_mode)
    if problems:
        for p in problems:
            print(f"ERROR {p}", file=sys.stderr)
        return 3
    status.line(f"Creating lab {topo.name!r} from {topo.source} ...")
    lab = LabUp(topo, status, timeout=args.timeout)
    try:
        asyncio.run(lab.up())
    except (LabError, OSError, KeyboardInterrupt) as e:
        _fail(e)
        if args.retain:
            status.line(f"Kept the lab for a look (--retain): svcnet lab logs --name {topo.name}; "
                        f"svcnet lab down --name {topo.name} when done.")
        else:
            from svcnet.lab.lab import lab_down
            try:
                asyncio.run(lab_down(topo.name, Status(open(os.devnull, "w"))))
                status.line("Removed what was built (use --retain to keep it).")
            except (LabError, OSError) as cleanup:
                _fail(cleanup)
                status.line(f"Cleanup was incomplete: run `svcnet lab down --name {topo.name}` again.")
        return 1
    kc = LabPaths.of(topo.name).kubeconfig
    status.line("")
    status.line(f"Lab {topo.name!r} is up: {len(topo.nodes)} nodes, proxy mode {topo.proxy_mode}. Try:")
    status.line(f"  export KUBECONFIG={kc}")
    status.line("  kubectl create deployment web --image=svcnet/echo --replicas=3")
    status.line("  kubectl expose deployment web --port 80 --target-port 8080")
    status.line("  svcnet lab exec external -- python3 -c ...   # or: svcnet lab status")
    print(f"export KUBECONFIG={kc}")
    return 0


def _logs(name: str, args: argparse.Namespace) -> int:
    from svcnet.lab.lab import LabPaths

    paths = LabPaths.of(name)
    logs = paths.dir / "logs"
    if args.export:
        import shutil

        dest = args.export / name
        shutil.copytree(logs, dest / "logs", dirs_exist_ok=True)
        for node_dir in sorted((paths.dir / "nodes").glob("*")):
            if (node_dir / "pods").is_dir():
                shutil.copytree(node_dir / "pods", dest / "nodes" / node_dir.name / "pods", dirs_exist_ok=True)
        for f in (paths.meta, paths.dir / "state.jsonl"):
            if f.exists():
                shutil.copy2(f, dest / f.name)
        print(dest)
        return 0
    if not args.component:
        for f in sorted(logs.glob("*.log")):
            print(f.stem)
        return 0
    f = logs / f"{args.component}.log"
    if not f.exists():
        near = [p.stem for p in logs.glob("*.log") if args.component in p.stem]
        print(f"ERROR: no log for {args.component!r}" + (f" (did you mean {', '.join(near)}?)" if near else ""),
              file=sys.stderr)
        return 1
    lines = f.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.lines:] if args.lines else lines))
    return 0


def _exec(name: str, args: argparse.Namespace) -> int:
    from svcnet.lab.lab import LabPaths
    from svcnet.lab.names import LabNames, pod_netns_name
    from svcnet.lab.netns import netns_exec_argv, netns_exists

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        cmd = [os.environ.get("SHELL", "/bin/sh")]
    names = LabNames(name)
    target = args.target
    netns: str | None = None
    if target == "external":
        netns = names.external_netns
    elif netns_exists(names.node(target)) and target != "underlay":
        netns = names.node(target)
    else:
        netns = asyncio.run(_pod_netns(LabPaths.of(name).kubeconfig, target, args.namespace, pod_netns_name))
    if netns is None or not netns_exists(netns):
        print(f"ERROR: {target!r} is not a pod, node or `external` of lab {name!r}", file=sys.stderr)
        return 1
    argv = netns_exec_argv(netns, cmd)
    os.execvp(argv[0], argv)


async def _pod_netns(kubeconfig: Path, pod: str, namespace: str | None, namer: Any) -> str | None:
    from svcnet.apiclient.client import RestClient
    from svcnet.apiclient.resources import PODS

    async with RestClient.from_kubeconfig(str(kubeconfig)) as client:
        items = (await client.list(PODS, namespace)).get("items") or []
    for p in items:
        m = p.get("metadata") or {}
        if m.get("name") == pod and (p.get("spec") or {}).get("nodeName"):
            return str(namer(p["spec"]["nodeName"], m.get("namespace") or "default", pod))
    return None
