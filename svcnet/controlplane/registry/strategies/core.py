"""Namespaces, Nodes and Events: the cluster-scaffolding kinds of core/v1."""

from __future__ import annotations

from typing import Any

from svcnet.controlplane.registry.strategies.base import Obj, Strategy
from svcnet.controlplane.registry.strategies.validation import (
    FieldError, cidr, dns1123_label, forbidden, immutable, invalid_value, ip_address, required,
    unsupported,
)

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
NAMESPACE_FINALIZER = "kubernetes"
NAMESPACE_PHASES = ("Active", "Terminating")


class NamespaceStrategy(Strategy):
    """Namespaces carry spec.finalizers ["kubernetes"], status.phase and the
    `kubernetes.io/metadata.name` label (always equal to the name)."""

    name_validator = staticmethod(dns1123_label)

    def initial_status(self, obj: Obj) -> dict[str, Any] | None:
        return {"phase": "Active"}

    def prepare_for_create(self, obj: Obj) -> None:
        super().prepare_for_create(obj)
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            spec = obj["spec"] = {}
        fins = spec.get("finalizers") or []
        if NAMESPACE_FINALIZER not in fins:
            spec["finalizers"] = [*fins, NAMESPACE_FINALIZER]

    def prepare_for_update(self, new: Obj, old: Obj) -> None:
        super().prepare_for_update(new, old)
        # spec.finalizers change only through /finalize
        new["spec"] = dict(old.get("spec") or {})

    def default(self, obj: Obj) -> None:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if name:
            labels = meta.get("labels")
            if not isinstance(labels, dict):
                labels = meta["labels"] = {}
            labels[NAMESPACE_NAME_LABEL] = name

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = self.validate_meta(obj)
        for i, f in enumerate((obj.get("spec") or {}).get("finalizers") or []):
            if not isinstance(f, str) or not f:
                errs.append(invalid_value(f"spec.finalizers[{i}]", f, "must be a qualified name"))
        return errs

    def validate_status(self, new: Obj, old: Obj) -> list[FieldError]:
        phase = (new.get("status") or {}).get("phase")
        if phase is not None and phase not in NAMESPACE_PHASES:
            return [unsupported("status.phase", phase, NAMESPACE_PHASES)]
        return []


class NodeStrategy(Strategy):
    """Nodes: the node agent registers them and writes their status."""

    def prepare_for_create(self, obj: Obj) -> None:
        """Unlike most kinds, a Node keeps the status it is created with: the kubelet
        registers itself with its addresses, capacity and conditions in one create
        (kube's nodeStrategy does not reset status)."""

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = self.validate_meta(obj)
        spec = obj.get("spec") or {}
        for i, c in enumerate(spec.get("podCIDRs") or []):
            errs += cidr(f"spec.podCIDRs[{i}]", c)
        if spec.get("podCIDR"):
            errs += cidr("spec.podCIDR", spec["podCIDR"])
        for i, t in enumerate(spec.get("taints") or []):
            if not isinstance(t, dict) or not t.get("key"):
                errs.append(required(f"spec.taints[{i}].key"))
            elif t.get("effect") not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                errs.append(unsupported(f"spec.taints[{i}].effect", t.get("effect"),
                                        ("NoSchedule", "PreferNoSchedule", "NoExecute")))
        return errs

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        errs = []
        os_, ns = old.get("spec") or {}, new.get("spec") or {}
        # podCIDR(s) may be set once (by the IPAM controller), then never change.
        for f in ("podCIDR", "podCIDRs"):
            if os_.get(f) and ns.get(f) != os_.get(f):
                errs.append(forbidden(f"spec.{f}", "node updates may not change podCIDR except "
                                      "from \"\" to valid"))
        return errs

    def validate_status(self, new: Obj, old: Obj) -> list[FieldError]:
        errs = []
        for i, a in enumerate((new.get("status") or {}).get("addresses") or []):
            if isinstance(a, dict) and a.get("type") in ("InternalIP", "ExternalIP"):
                errs += ip_address(f"status.addresses[{i}].address", a.get("address"))
        return errs


class EventStrategy(Strategy):
    """core/v1 Events: involvedObject must point into the event's namespace."""

    allow_create_on_update = True

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = self.validate_meta(obj)
        inv = obj.get("involvedObject")
        ns = (obj.get("metadata") or {}).get("namespace") or ""
        if not isinstance(inv, dict):
            errs.append(required("involvedObject"))
            return errs
        inv_ns = inv.get("namespace") or ""
        if inv_ns and inv_ns != ns:
            errs.append(invalid_value("involvedObject.namespace", inv_ns,
                                      "does not match event.namespace"))
        etype = obj.get("type")
        if etype and etype not in ("Normal", "Warning"):
            errs.append(unsupported("type", etype, ("Normal", "Warning")))
        return errs

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        if (new.get("involvedObject") or {}).get("uid") != (old.get("involvedObject") or {}).get("uid"):
            return [immutable("involvedObject", new.get("involvedObject"))]
        return []
