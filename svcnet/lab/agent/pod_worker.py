"""One pod on this node, from sandbox to final deletion: the kubelet's pod worker.

    sandbox ─► containers started ─► probes ─► status reported ─► … ─► terminate
                     ▲      │ exit / liveness failure
                     └──────┘ restartPolicy, with back-off (10 s doubling to 5 min)

Each container has its own task: start the process, run its probes, wait for the
exit, decide whether to restart (Always; OnFailure on a non-zero exit; Never), and
wait out the back-off in `CrashLoopBackOff`. A failing liveness probe stops the
process (SIGTERM, grace, SIGKILL) and counts as an exit. Every change recomputes the
pod's status and hands it to the agent, which coalesces the writes.

Status follows the API: phase (Pending, Running, Succeeded, Failed), conditions
PodReadyToStartContainers, Initialized, ContainersReady, Ready, PodScheduled,
podIP(s), hostIP(s), startTime, and per container state, lastState, ready, started
and restartCount.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from svcnet.apiclient.objects import Obj, meta
from svcnet.lab.agent.container import AdoptedProcess, ContainerProcess
from svcnet.lab.agent.events import PodEvent
from svcnet.lab.agent.podspec import PodContext, PodSpecError, container_argv, container_env, parse_probe
from svcnet.lab.agent.probes import ProbeState, run_probe
from svcnet.lab.agent.sandbox import Sandbox, SandboxManager
from svcnet.lab.state import process_start_time

log = logging.getLogger(__name__)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Backoff:
    """The kubelet's crash back-off: `initial` doubling to `maximum`, reset after
    the container ran for `reset_after` seconds."""

    initial: float = 10.0
    maximum: float = 300.0
    reset_after: float = 600.0
    current: float = 0.0

    def next(self, ran_for: float) -> float:
        if ran_for >= self.reset_after:
            self.current = 0.0
        self.current = self.initial if self.current == 0 else min(self.current * 2, self.maximum)
        return self.current


@dataclass
class WorkerContext:
    node_name: str
    host_ip: str
    kubeconfig: str
    sandboxes: SandboxManager
    log_dir: Path
    report: Callable[["PodWorker"], None]
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    service_env: Callable[[str], dict[str, str]] = lambda ns: {}
    event: Callable[[PodEvent], None] = lambda e: None
    checkpoint_dir: Path | None = None  # where pods are checkpointed for adoption after an agent restart


@dataclass
class ContainerState:
    name: str
    image: str
    restart_count: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    has_readiness: bool = False
    done: bool = False  # exited and will not be restarted

    def to_status(self) -> Obj:
        return {"name": self.name, "image": self.image, "imageID": "", "containerID": "",
                "ready": self.ready, "started": self.started, "restartCount": self.restart_count,
                "state": self.state, "lastState": self.last_state}


class PodWorker:
    def __init__(self, pod: Obj, ctx: WorkerContext) -> None:
        self.pod = pod
        self.ctx = ctx
        m = meta(pod)
        self.namespace, self.name, self.uid = str(m.get("namespace") or "default"), str(m["name"]), str(m.get("uid") or "")
        self.sandbox: Sandbox | None = None
        self.sandbox_error = ""
        self.start_time = ""
        self.containers = {c["name"]: ContainerState(c["name"], str(c.get("image") or ""))
                           for c in (pod.get("spec") or {}).get("containers") or []}
        self.processes: dict[str, ContainerProcess] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self.terminated = asyncio.Event()
        self._adopt: dict[str, Any] = {}  # container -> {"pid", "start_time", ...} from a checkpoint

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self._main = asyncio.get_running_loop().create_task(self._run(), name=f"pod {self.key}")

    def update(self, pod: Obj) -> None:
        self.pod = pod

    def adopt(self, sandbox: Sandbox, checkpoint: Obj) -> None:
        """Take over a pod an earlier run of the agent started (call before start())."""
        self.sandbox = sandbox
        self.start_time = str(checkpoint.get("startTime") or now_rfc3339())
        api = {c.get("name"): c for c in (self.pod.get("status") or {}).get("containerStatuses") or []}
        for name, c in (checkpoint.get("containers") or {}).items():
            st = self.containers.get(name)
            if st is None:
                continue
            st.restart_count = int(c.get("restartCount") or 0)
            if process_start_time(int(c.get("pid") or 0)) == c.get("startTime"):
                self._adopt[name] = c
                st.ready = bool((api.get(name) or {}).get("ready"))  # no blip until probes speak

    def _checkpoint(self) -> None:
        if self.ctx.checkpoint_dir is None or self.sandbox is None:
            return
        data = {"uid": self.uid, "namespace": self.namespace, "name": self.name, "startTime": self.start_time,
                "sandbox": dataclasses.asdict(self.sandbox),
                "containers": {n: {"pid": p.pid, "startTime": process_start_time(p.pid or 0),
                                   "restartCount": self.containers[n].restart_count,
                                   "startedAt": self.containers[n].state.get("running", {}).get("startedAt")}
                               for n, p in self.processes.items() if p.running()}}
        path = self.ctx.checkpoint_dir / f"{self.uid}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    async def _run(self) -> None:
        if self.sandbox is not None:  # adopted: the sandbox is already there
            self._report()
            for c in (self.pod.get("spec") or {}).get("containers") or []:
                self._tasks.append(asyncio.get_running_loop().create_task(self._container_loop(c)))
            return
        delay = 1.0
        while not self._stopping.is_set():
            try:
                self.sandbox = await self.ctx.sandboxes.create(self.pod)
                self.sandbox_error = ""
                break
            except Exception as e:  # a sandbox failure is reported and retried, never fatal
                self.sandbox_error = f"failed to create pod sandbox: {e}"
                log.error("pod=%s: %s", self.key, self.sandbox_error)
                self._event("Warning", "FailedCreatePodSandBox", self.sandbox_error)
                self._report()
                try:
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                except TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)
        if self.sandbox is None:
            return
        self.start_time = now_rfc3339()
        self._report()
        for c in (self.pod.get("spec") or {}).get("containers") or []:
            self._tasks.append(asyncio.get_running_loop().create_task(self._container_loop(c)))

    async def terminate(self, grace: float) -> None:
        """Stop every container within `grace` seconds, then remove the sandbox."""
        self._stopping.set()
        for name, p in self.processes.items():
            if p.running():
                self._event("Normal", "Killing", f"Stopping container {name}", name)
        stops = [p.stop(grace) for p in self.processes.values()]
        await asyncio.gather(*stops, return_exceptions=True)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._main is not None:
            self._main.cancel()
            await asyncio.gather(self._main, return_exceptions=True)
        if self.sandbox is not None:
            await self.ctx.sandboxes.remove(self.sandbox)
        if self.ctx.checkpoint_dir is not None:
            (self.ctx.checkpoint_dir / f"{self.uid}.json").unlink(missing_ok=True)
        self.terminated.set()
        log.info("pod=%s terminated", self.key)

    # -- containers --------------------------------------------------------------

    def _context(self) -> PodContext:
        assert self.sandbox is not None
        spec = self.pod.get("spec") or {}
        return PodContext(self.name, self.namespace, self.sandbox.ip, self.ctx.node_name, self.ctx.host_ip,
                          self.ctx.kubeconfig, str(spec.get("serviceAccountName") or "default"))

    async def _container_loop(self, c: Obj) -> None:
        st = self.containers[c["name"]]
        backoff = Backoff(self.ctx.backoff_initial, self.ctx.backoff_max)
        policy = (self.pod.get("spec") or {}).get("restartPolicy") or "Always"
        grace = float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        try:
            readiness = parse_probe(c.get("readinessProbe"), c)
            liveness = parse_probe(c.get("livenessProbe"), c)
            ctx = self._context()
            argv = container_argv(c, ctx)
            env = container_env(c, self.pod, ctx, dict(os.environ), self.ctx.service_env(self.namespace))
        except PodSpecError as e:
            st.state = {"waiting": {"reason": e.reason, "message": str(e)}}
            self._event("Warning", "Failed", f"Error: {e}", st.name)
            self._report()
            return
        st.has_readiness = readiness is not None
        while not self._stopping.is_set():
            proc: ContainerProcess = ContainerProcess(
                st.name, self.sandbox.netns if self.sandbox else "", argv, env, c.get("workingDir"),
                self.ctx.log_dir / self.namespace / self.name / f"{st.name}.log")
            adopted = self._adopt.pop(st.name, None)
            try:
                if adopted is not None:
                    proc = AdoptedProcess(st.name, int(adopted["pid"]))
                else:
                    await proc.start()
            except OSError as e:
                st.state = {"waiting": {"reason": "RunContainerError", "message": str(e)}}
                self._event("Warning", "Failed", f"Error: {e}", st.name)
                self._report()
                code, started_at, ran_for = 128, now_rfc3339(), 0.0
            else:
                self.processes[st.name] = proc
                started_at, t0 = now_rfc3339(), time.monotonic()
                if adopted is not None:
                    started_at = str(adopted.get("startedAt") or started_at)
                    log.info("pod=%s container=%s adopted pid=%s", self.key, st.name, proc.pid)
                else:
                    st.ready = readiness is None
                    self._event("Normal", "Started", f"Started container {st.name}", st.name)
                st.state = {"running": {"startedAt": started_at}}
                st.started = True
                if readiness is None:
                    st.ready = True
                self._checkpoint()
                self._report()
                probes = [asyncio.get_running_loop().create_task(self._probe_loop(st, proc, readiness, "readiness"))
                          if readiness else None,
                          asyncio.get_running_loop().create_task(self._probe_loop(st, proc, liveness, "liveness", grace))
                          if liveness else None]
                code = await proc.wait()
                for t in probes:
                    if t is not None:
                        t.cancel()
                ran_for = time.monotonic() - t0
            if self._stopping.is_set():
                return
            st.ready, st.started = False, False
            reason = "Completed" if code == 0 else "Error"
            terminated = {"exitCode": code if code >= 0 else 128 - code, "reason": reason,
                          "startedAt": started_at, "finishedAt": now_rfc3339()}
            if isinstance(proc, AdoptedProcess):  # not our child: its exit status is lost
                terminated.update(reason="ContainerStatusUnknown",
                                  message="exit status unknown: started by an earlier run of the agent")
            if code < 0:
                terminated["signal"] = -code
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            log.info("pod=%s container=%s exited code=%d restart=%s", self.key, st.name, code, restart)
            if not restart:
                st.state = {"terminated": terminated}
                st.done = True
                self._report()
                return
            st.last_state = {"terminated": terminated}
            delay = backoff.next(ran_for)
            st.state = {"waiting": {"reason": "CrashLoopBackOff",
                                    "message": f"back-off {delay:g}s restarting failed container={st.name} "
                                               f"pod={self.name}_{self.namespace}({self.uid})"}}
            st.restart_count += 1
            self._event("Warning", "BackOff", f"Back-off restarting failed container {st.name} in pod "
                        f"{self.name}_{self.namespace}({self.uid})", st.name)
            self._report()
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    async def _probe_loop(self, st: ContainerState, proc: ContainerProcess, spec: Any, kind: str,
                          grace: float = 30.0) -> None:
        assert self.sandbox is not None
        state = ProbeState(spec, initially_ok=(kind == "liveness") or st.ready)
        await asyncio.sleep(spec.initial_delay)
        while proc.running():
            result = await run_probe(spec, self.sandbox.ip, self.sandbox.netns, self.ctx.sandboxes.node_netns)
            changed = state.observe(result)
            if not result.ok:
                self._event("Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {result.message}", st.name)
            if kind == "readiness" and (changed or st.ready != state.ok):
                st.ready = state.ok
                log.info("pod=%s container=%s ready=%s %s", self.key, st.name, st.ready, result.message)
                self._report()
            if kind == "liveness" and not state.ok:
                log.info("pod=%s container=%s failed liveness probe, will be restarted: %s",
                         self.key, st.name, state.last_message)
                self._event("Normal", "Killing", f"Container {st.name} failed liveness probe, will be restarted",
                            st.name)
                await proc.stop(grace)
                return
            await asyncio.sleep(spec.period)

    # -- status ------------------------------------------------------------------

    def _report(self) -> None:
        self.ctx.report(self)

    def _event(self, etype: str, reason: str, message: str, container: str = "") -> None:
        self.ctx.event(PodEvent(self.pod, etype, reason, message, container))

    def status(self) -> Obj:
        return build_status(self)


def _condition(ctype: str, ok: bool, reason: str = "", message: str = "",
               previous: list[Obj] | None = None) -> Obj:
    status = "True" if ok else "False"
    transition = now_rfc3339()
    for old in previous or []:
        if old.get("type") == ctype and old.get("status") == status:
            transition = old.get("lastTransitionTime") or transition
    cond: Obj = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": transition}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def build_status(w: PodWorker) -> Obj:
    previous = ((w.pod.get("status") or {}).get("conditions")) or []
    states = list(w.containers.values())
    all_ready = bool(states) and all(s.ready for s in states)
    not_ready = [s.name for s in states if not s.ready]
    msg = f"containers with unready status: [{' '.join(not_ready)}]" if not_ready else ""
    if all(s.done for s in states) and states:
        failed = any(s.state.get("terminated", {}).get("exitCode", 0) != 0 for s in states)
        phase = "Failed" if failed else "Succeeded"
    elif w.sandbox is not None and any("running" in s.state or s.restart_count > 0 or s.done for s in states):
        phase = "Running"
    else:
        phase = "Pending"
    status: Obj = {
        "phase": phase,
        "conditions": [
            _condition("PodReadyToStartContainers", w.sandbox is not None, previous=previous),
            _condition("Initialized", True, previous=previous),
            _condition("Ready", all_ready, "" if all_ready else "ContainersNotReady", msg, previous),
            _condition("ContainersReady", all_ready, "" if all_ready else "ContainersNotReady", msg, previous),
            _condition("PodScheduled", True, previous=previous),
        ],
        "hostIP": w.ctx.host_ip,
        "hostIPs": [{"ip": w.ctx.host_ip}],
        "containerStatuses": [s.to_status() for s in states],
        "qosClass": "BestEffort",
    }
    if w.sandbox is not None:
        status["podIP"] = w.sandbox.ip
        status["podIPs"] = [{"ip": w.sandbox.ip}]
    if w.start_time:
        status["startTime"] = w.start_time
    if w.sandbox_error:
        status["conditions"][0]["message"] = w.sandbox_error
    return status
