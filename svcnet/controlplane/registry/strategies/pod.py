"""Pods, and the PodSpec rules that Deployments' templates share.

Defaulting follows `SetDefaults_PodSpec`/`SetDefaults_Container` (the fields a pod
read back from kube-apiserver always has: restartPolicy, dnsPolicy,
terminationGracePeriodSeconds, schedulerName, imagePullPolicy, ...); validation covers
what svcnet's node agent and endpoint controller rely on (containers, their ports and
names, nodeName) with kube's field paths.
"""

from __future__ import annotations

import copy
from typing import Any

from svcnet.controlplane.registry.strategies.base import Obj, Strategy
from svcnet.controlplane.registry.strategies.validation import (
    FieldError, dns1123_label, dns1123_subdomain, duplicate, forbidden, iana_svc_name,
    invalid_value, ip_address, port_number, required, type_error, unsupported,
)

RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_GRACE_SECONDS = 30


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
            if "imagePullPolicy" not in c:
                image = str(c.get("image") or "")
                tagged = ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
                c["imagePullPolicy"] = "IfNotPresent" if tagged or "@" in image else "Always"
            for p in c.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")


def validate_pod_spec(spec: Any, path: str) -> list[FieldError]:
    if not isinstance(spec, dict):
        return [required(path)]
    errs: list[FieldError] = []
    containers = spec.get("containers")
    if not containers:
        errs.append(required(f"{path}.containers"))
    elif not isinstance(containers, list):
        errs.append(type_error(f"{path}.containers", containers, "a list"))
    names: set[str] = set()
    for key in ("initContainers", "containers"):
        items = spec.get(key) or []
        if not isinstance(items, list):
            continue
        for i, c in enumerate(items):
            errs += _validate_container(c, f"{path}.{key}[{i}]", names)
    rp = spec.get("restartPolicy")
    if rp not in RESTART_POLICIES:
        errs.append(unsupported(f"{path}.restartPolicy", rp, RESTART_POLICIES))
    dp = spec.get("dnsPolicy")
    if dp not in DNS_POLICIES:
        errs.append(unsupported(f"{path}.dnsPolicy", dp, DNS_POLICIES))
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int) or grace < 0):
        errs.append(invalid_value(f"{path}.terminationGracePeriodSeconds", grace,
                                  "must be greater than or equal to 0"))
    node = spec.get("nodeName")
    if node:
        for msg in dns1123_subdomain(str(node)):
            errs.append(invalid_value(f"{path}.nodeName", node, msg))
    for f in ("hostname", "subdomain"):
        if spec.get(f):
            for msg in dns1123_label(str(spec[f])):
                errs.append(invalid_value(f"{path}.{f}", spec[f], msg))
    return errs


def _validate_container(c: Any, path: str, names: set[str]) -> list[FieldError]:
    if not isinstance(c, dict):
        return [type_error(path, c, "an object")]
    errs: list[FieldError] = []
    name = c.get("name")
    if not name:
        errs.append(required(f"{path}.name"))
    else:
        for msg in dns1123_label(str(name)):
            errs.append(invalid_value(f"{path}.name", name, msg))
        if name in names:
            errs.append(duplicate(f"{path}.name", name))
        names.add(str(name))
    if not c.get("image"):
        errs.append(required(f"{path}.image"))
    ipp = c.get("imagePullPolicy")
    if ipp is not None and ipp not in PULL_POLICIES:
        errs.append(unsupported(f"{path}.imagePullPolicy", ipp, PULL_POLICIES))
    port_names: set[str] = set()
    for j, p in enumerate(c.get("ports") or []):
        pp = f"{path}.ports[{j}]"
        if not isinstance(p, dict):
            errs.append(type_error(pp, p, "an object"))
            continue
        errs += port_number(f"{pp}.containerPort", p.get("containerPort"))
        if p.get("hostPort"):
            errs += port_number(f"{pp}.hostPort", p.get("hostPort"))
        if p.get("protocol") not in PROTOCOLS:
            errs.append(unsupported(f"{pp}.protocol", p.get("protocol"), PROTOCOLS))
        pname = p.get("name")
        if pname:
            for msg in iana_svc_name(str(pname)):
                errs.append(invalid_value(f"{pp}.name", pname, msg))
            if pname in port_names:
                errs.append(duplicate(f"{pp}.name", pname))
            port_names.add(str(pname))
    return errs


class PodStrategy(Strategy):
    tracks_generation = True

    def initial_status(self, obj: Obj) -> dict[str, Any] | None:
        return {"phase": "Pending", "qosClass": "BestEffort"}

    def default(self, obj: Obj) -> None:
        spec = obj.get("spec")
        if isinstance(spec, dict):
            default_pod_spec(spec)

    def validate(self, obj: Obj) -> list[FieldError]:
        return self.validate_meta(obj) + validate_pod_spec(obj.get("spec"), "spec")

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        """Pod specs are immutable except container images, activeDeadlineSeconds,
        tolerations and the binding of an unscheduled pod to a node."""
        ns, os_ = copy.deepcopy(new.get("spec") or {}), copy.deepcopy(old.get("spec") or {})
        for spec in (ns, os_):
            for key in ("containers", "initContainers"):
                for c in spec.get(key) or []:
                    if isinstance(c, dict):
                        c.pop("image", None)
            spec.pop("activeDeadlineSeconds", None)
            spec.pop("tolerations", None)
        if not os_.get("nodeName"):
            ns.pop("nodeName", None)
            os_.pop("nodeName", None)
        if ns != os_:
            return [forbidden("spec", "pod updates may not change fields other than "
                              "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                              "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions "
                              "to existing tolerations),`spec.terminationGracePeriodSeconds` "
                              "(allow it to be set to 1 if it was previously negative)")]
        return []

    def validate_status(self, new: Obj, old: Obj) -> list[FieldError]:
        status = new.get("status") or {}
        errs: list[FieldError] = []
        phase = status.get("phase")
        if phase is not None and phase not in PHASES:
            errs.append(unsupported("status.phase", phase, PHASES))
        if status.get("podIP"):
            errs += ip_address("status.podIP", status["podIP"])
        for i, item in enumerate(status.get("podIPs") or []):
            ip = item.get("ip") if isinstance(item, dict) else item
            errs += ip_address(f"status.podIPs[{i}].ip", ip)
        return errs
