"""NodeAgent: the kubelet of the netns lab.

    Node + Lease ◄── NodeRegistration (node.py)
    pods informer (spec.nodeName=<node>) ──► reconcile ──► PodWorker per pod (pod_worker.py)
                                                              │ status changes
    PATCH pods/<name>/status ◄── status writer (coalesced) ◄──┘

`reconcile` is level-triggered: any pod event marks it dirty and one pass compares
the pods bound here with the workers running. A new pod gets a worker; a pod with
a deletionTimestamp is stopped within its grace period, its sandbox removed, and
then deleted for good (grace 0, uid precondition) — as the kubelet finishes a
graceful deletion. A pod that vanished (force-deleted) is stopped at once.

Static pods come from `--pod-manifest-path` (rescanned every 5 s): they run from
the file, named `<name>-<node>`, and a mirror pod (annotation
`kubernetes.io/config.mirror`) makes them and their status visible in the API;
removing the file stops the pod and deletes the mirror.

On start, pods an earlier run of this agent left running are adopted (each pod
has a checkpoint: its sandbox and container pids with their start times), as the
kubelet keeps containers across its own restarts; whatever else that run created
is torn down from its state file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from svcnet.apiclient import errors
from svcnet.apiclient.client import PatchType, RestClient
from svcnet.apiclient.informer import FuncHandler, Informer
from svcnet.apiclient.manifests import ManifestError, load_manifests
from svcnet.apiclient.objects import Obj, key_of, meta
from svcnet.apiclient.resources import PODS, SERVICES
from svcnet.lab.agent.events import EventRecorder
from svcnet.lab.agent.node import NodeConfig, NodeRegistration
from svcnet.lab.agent.pod_worker import PodWorker, WorkerContext
from svcnet.lab.agent.podspec import ClusterDNS
from svcnet.lab.agent.sandbox import Sandbox, SandboxManager
from svcnet.lab.netns import netns_exists
from svcnet.lab.state import StateFile
from svcnet.lab.teardown import teardown

log = logging.getLogger(__name__)

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
SOURCE_ANNOTATION = "kubernetes.io/config.source"


class NodeAgent:
    def __init__(self, client: RestClient, source: Any, cfg: NodeConfig, *, kubeconfig: str,
                 state_dir: Path, dns: ClusterDNS, node_netns: str | None = None,
                 manifest_path: Path | None = None, lease_interval: float = 10.0,
                 backoff_initial: float = 10.0, host_resolv: str = "") -> None:
        self.client, self.source, self.cfg = client, source, cfg
        self.state = StateFile(state_dir / "state.jsonl")
        self.sandboxes = SandboxManager(cfg.name, cfg.pod_cidr, self.state, dns, node_netns,
                                        host_resolv=host_resolv)
        self.events = EventRecorder(client, cfg.name)
        self.ctx = WorkerContext(cfg.name, cfg.ip, kubeconfig, self.sandboxes, state_dir / "pods",
                                 report=self._on_worker_status, backoff_initial=backoff_initial,
                                 service_env=self._service_env, event=self.events.emit,
                                 checkpoint_dir=state_dir / "checkpoints")
        self.registration = NodeRegistration(client, cfg, lease_interval=lease_interval)
        self.manifest_path = manifest_path
        self.workers: dict[str, PodWorker] = {}  # by pod uid
        self.terminating: set[str] = set()
        self._dirty = asyncio.Event()
        self._adopted = asyncio.Event()
        self._status_dirty: set[str] = set()
        self._status_event = asyncio.Event()
        self._written: dict[str, Obj] = {}
        self.static_pods: dict[str, Obj] = {}  # uid -> pod from file
        self.pods: Informer | None = None
        self.services: Informer | None = None

    # -- running -------------------------------------------------------------------

    async def run(self) -> None:
        await self.registration.register()
        self.pods = self.source.informer(PODS, field_selector={"spec.nodeName": self.cfg.name})
        self.services = self.source.informer(SERVICES)
        mark = FuncHandler(lambda o: self._dirty.set(), lambda a, b: self._dirty.set(), lambda o: self._dirty.set())
        self.pods.add_handler(mark)
        tasks = [asyncio.create_task(t, name=n) for n, t in (
            ("source", self.source.run()), ("lease", self.registration.lease_loop()),
            ("node-status", self.registration.status_loop()), ("status-writer", self._status_writer()),
            ("reconcile", self._reconcile_loop()), ("events", self.events.run()))]
        try:
            await self.pods.wait_for_sync()
            await self.services.wait_for_sync()
            await self._adopt_or_clean()
            self._adopted.set()
            tasks.append(asyncio.create_task(self._static_pod_loop(), name="static-pods"))
            self.registration.set_ready(True)
            log.info("node=%s ready: pods synced", self.cfg.name)
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self, stop_pods: bool) -> None:
        """On SIGTERM: like the kubelet, leave pods running unless asked to stop them."""
        if stop_pods:
            await asyncio.gather(*(w.terminate(2.0) for w in self.workers.values()), return_exceptions=True)

    async def _adopt_or_clean(self) -> None:
        """After a restart: take over the pods an earlier run left running (their
        checkpoint matches a pod still bound here and the namespace still exists),
        and remove everything else that run created, as the kubelet keeps running
        containers across its own restarts."""
        assert self.pods is not None
        ckpt_dir = self.ctx.checkpoint_dir
        alive = {str(meta(p).get("uid")): p for p in self.pods.list()
                 if (p.get("spec") or {}).get("nodeName") == self.cfg.name and not meta(p).get("deletionTimestamp")}
        owners: set[str] = set()
        for f in sorted(ckpt_dir.glob("*.json")) if ckpt_dir and ckpt_dir.is_dir() else []:
            try:
                ck = json.loads(f.read_text())
                sb = Sandbox(**ck["sandbox"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("unreadable checkpoint %s: %s", f, e)
                f.unlink(missing_ok=True)
                continue
            pod = alive.get(str(ck.get("uid")))
            if pod is None or not netns_exists(sb.netns):
                f.unlink(missing_ok=True)
                continue
            w = PodWorker(pod, self.ctx)
            w.adopt(sb, ck)
            self.sandboxes.ipam.reserve(sb.ip, sb.uid)
            self.workers[sb.uid] = w
            owners.add(f"pod/{sb.namespace}/{sb.name}")
            log.info("adopted pod=%s netns=%s ip=%s", key_of(pod), sb.netns, sb.ip)
            w.start()
        if self.state.exists():
            report = await teardown(self.state, grace=2.0, keep=lambda r: r.owner in owners)
            if report.removed:
                log.info("removed %d objects an earlier run left", len(report.removed))

    async def _reconcile_loop(self) -> None:
        await self._adopted.wait()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                self.reconcile()
            except Exception:  # never let one bad pod stop the node
                log.exception("reconcile failed")
            await asyncio.sleep(0.05)  # coalesce bursts of events

    def reconcile(self) -> None:
        assert self.pods is not None
        wanted: dict[str, Obj] = {}
        for pod in self.pods.list():
            m = meta(pod)
            if (pod.get("spec") or {}).get("nodeName") != self.cfg.name:
                continue
            if MIRROR_ANNOTATION in (m.get("annotations") or {}):
                continue  # runs from its file, not from the API
            wanted[str(m.get("uid"))] = pod
        wanted.update(self.static_pods)
        for uid, pod in wanted.items():
            w = self.workers.get(uid)
            m = meta(pod)
            if m.get("deletionTimestamp"):
                if uid not in self.terminating:
                    grace = float(m.get("deletionGracePeriodSeconds") or 0)
                    self._terminate(uid, pod, grace, delete_after=True)
                continue
            if w is None:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and uid not in self._written:
                    continue  # finished before we (re)started; nothing to run
                w = self.workers[uid] = PodWorker(pod, self.ctx)
                log.info("starting pod=%s uid=%s", key_of(pod), uid)
                w.start()
            else:
                w.update(pod)
        for uid in list(self.workers):
            if uid not in wanted and uid not in self.terminating:
                self._terminate(uid, self.workers[uid].pod, 2.0, delete_after=False)

    def _terminate(self, uid: str, pod: Obj, grace: float, delete_after: bool) -> None:
        self.terminating.add(uid)

        async def run() -> None:
            w = self.workers.get(uid)
            try:
                if w is not None:
                    log.info("stopping pod=%s grace=%.0fs", w.key, grace)
                    await w.terminate(grace)
                if delete_after and uid not in self.static_pods:
                    m = meta(pod)
                    try:
                        await self.client.delete(PODS, str(m["name"]), str(m.get("namespace")),
                                                 grace_period_seconds=0, preconditions={"uid": uid})
                    except errors.NotFound:
                        pass
                    except errors.ApiError as e:
                        log.warning("final delete of pod=%s failed: %s", key_of(pod), e)
            finally:
                self.workers.pop(uid, None)
                self.events.forget(uid)
                self.terminating.discard(uid)
                self._written.pop(uid, None)

        asyncio.get_running_loop().create_task(run(), name=f"terminate {uid}")

    # -- status --------------------------------------------------------------------

    def _on_worker_status(self, w: PodWorker) -> None:
        self._status_dirty.add(w.uid)
        self._status_event.set()

    async def _status_writer(self) -> None:
        while True:
            await self._status_event.wait()
            self._status_event.clear()
            for uid in list(self._status_dirty):
                self._status_dirty.discard(uid)
                w = self.workers.get(uid)
                if w is None or uid in self.terminating:
                    continue
                status = w.status()
                if self._written.get(uid) == status:
                    continue
                name = w.name  # a static pod's mirror has the same name
                try:
                    await self.client.patch(PODS, name, {"status": status}, w.namespace,
                                            patch_type=PatchType.MERGE, subresource="status")
                    self._written[uid] = status
                    w.pod = {**w.pod, "status": status}
                except errors.NotFound:
                    pass  # deleted meanwhile; reconcile will stop it
                except (errors.ApiError, errors.TransportError, OSError) as e:
                    log.warning("status of pod=%s not written (will retry): %s", w.key, e)
                    self._status_dirty.add(uid)
                    await asyncio.sleep(1)
                    self._status_event.set()

    # -- Service environment variables ----------------------------------------------

    def _service_env(self, namespace: str) -> dict[str, str]:
        """Docker-links style variables for the Services in the pod's namespace, and
        KUBERNETES_SERVICE_HOST/PORT for the API, as the kubelet sets them."""
        env: dict[str, str] = {}
        if self.services is None:
            return env
        for svc in self.services.list():
            m, spec = meta(svc), svc.get("spec") or {}
            ip = spec.get("clusterIP")
            if not ip or ip == "None":
                continue
            if m.get("namespace") != namespace and not (m.get("namespace") == "default" and m.get("name") == "kubernetes"):
                continue
            prefix = str(m.get("name")).upper().replace("-", "_")
            ports = spec.get("ports") or []
            if not ports:
                continue
            env[f"{prefix}_SERVICE_HOST"] = str(ip)
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0].get("port"))
            for p in ports:
                if p.get("name"):
                    env[f"{prefix}_SERVICE_PORT_{str(p['name']).upper().replace('-', '_')}"] = str(p.get("port"))
                proto = str(p.get("protocol") or "TCP")
                base = f"{prefix}_PORT_{p.get('port')}_{proto}"
                env[base] = f"{proto.lower()}://{ip}:{p.get('port')}"
                env[f"{base}_PROTO"], env[f"{base}_PORT"], env[f"{base}_ADDR"] = proto.lower(), str(p.get("port")), str(ip)
            first = ports[0]
            env[f"{prefix}_PORT"] = f"{str(first.get('protocol') or 'TCP').lower()}://{ip}:{first.get('port')}"
        return env

    # -- static pods ------------------------------------------------------------------

    def _read_static_pods(self) -> dict[str, Obj]:
        """Every pod in the manifest directory, by its content-derived uid."""
        found: dict[str, Obj] = {}
        if self.manifest_path is None or not self.manifest_path.is_dir():
            return found
        for f in sorted(self.manifest_path.iterdir()):
            if f.suffix not in (".yaml", ".yml", ".json"):
                continue
            try:
                objs = load_manifests(f)
            except ManifestError as e:
                log.error("static pod manifest skipped: %s", e)
                continue
            for obj in objs:
                if obj.get("kind") != "Pod":
                    log.error("%s: %s is not a Pod; static manifests hold pods only", f, obj.get("kind"))
                    continue
                pod = static_pod(obj, self.cfg.name, f)
                found[str(meta(pod)["uid"])] = pod
        return found

    async def _static_pod_loop(self, interval: float = 5.0) -> None:
        """Watch the manifest directory (a rescan every few seconds, as the kubelet's
        file source does): new files start pods and mirror pods, removed ones stop them."""
        while True:
            found = self._read_static_pods()
            if found.keys() != self.static_pods.keys():
                for uid in found.keys() - self.static_pods.keys():
                    log.info("static pod added pod=%s", key_of(found[uid]))
                    asyncio.get_running_loop().create_task(self._create_mirror(found[uid]))
                for uid in self.static_pods.keys() - found.keys():
                    log.info("static pod removed pod=%s", key_of(self.static_pods[uid]))
                    asyncio.get_running_loop().create_task(self._delete_mirror(self.static_pods[uid]))
                self.static_pods = found
                self._dirty.set()
            await asyncio.sleep(interval)

    async def _create_mirror(self, pod: Obj) -> None:
        mirror = {k: v for k, v in pod.items() if k != "status"}
        mirror["metadata"] = {k: v for k, v in mirror["metadata"].items() if k != "uid"}
        try:
            await self.client.create(PODS, mirror, meta(pod).get("namespace"))
        except errors.AlreadyExists:
            pass
        except (errors.ApiError, errors.TransportError, OSError) as e:
            log.warning("mirror pod for %s not created: %s", key_of(pod), e)

    async def _delete_mirror(self, pod: Obj) -> None:
        try:
            await self.client.delete(PODS, str(meta(pod)["name"]), str(meta(pod).get("namespace")),
                                     grace_period_seconds=0)
        except errors.NotFound:
            pass
        except (errors.ApiError, errors.TransportError, OSError) as e:
            log.warning("mirror pod for %s not deleted: %s", key_of(pod), e)


def static_pod(obj: Obj, node: str, source: Path) -> Obj:
    """A pod from a manifest file as the kubelet runs it: `<name>-<node>`, bound here,
    with a uid derived from its content so an unchanged file keeps its pod."""
    m = dict(obj.get("metadata") or {})
    content = repr(sorted(obj.items())).encode()
    uid = hashlib.sha256(content + node.encode()).hexdigest()[:32]
    m["name"] = f"{m['name']}-{node}"
    m["namespace"] = m.get("namespace") or "default"
    m["uid"] = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}"
    m["annotations"] = {**(m.get("annotations") or {}), MIRROR_ANNOTATION: uid, SOURCE_ANNOTATION: "file",
                        "kubernetes.io/config.hash": uid}
    spec = {**(obj.get("spec") or {}), "nodeName": node}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": m, "spec": spec}
