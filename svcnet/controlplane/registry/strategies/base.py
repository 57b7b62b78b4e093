"""What a kind's strategy decides: kube-apiserver's `rest.RESTCreateStrategy` and friends.

The registry runs the same pipeline for every kind and asks the strategy at each step:

    create: prepare_for_create -> default -> validate
    update: prepare_for_update (or prepare_for_status_update) -> default -> validate
            -> validate_update -> generation bump if the spec changed

A strategy works on plain dicts in place and returns `FieldError`s; the registry turns
them into one 422 `Status` with causes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from svcnet.controlplane.registry.kinds import KindInfo
from svcnet.controlplane.registry.strategies.validation import (
    FieldError, dns1123_subdomain, object_meta,
)

Obj = dict[str, Any]

# Top-level keys that are not "spec" for the generation rule.
_NON_SPEC = frozenset({"metadata", "status", "kind", "apiVersion"})


class Strategy:
    """Defaults for a kind with nothing special; subclasses override what differs."""

    #: metadata.name format (kube's `ValidateXName` for the kind)
    name_validator: Callable[[str], list[str]] = staticmethod(dns1123_subdomain)
    #: kube sets metadata.generation and bumps it on spec changes for this kind
    tracks_generation: bool = False
    #: PUT on a missing object creates it (`AllowCreateOnUpdate`)
    allow_create_on_update: bool = False

    def __init__(self, kind: KindInfo) -> None:
        self.kind = kind

    @property
    def has_status(self) -> bool:
        return "status" in self.kind.subresources

    # -- create ------------------------------------------------------------------------

    def prepare_for_create(self, obj: Obj) -> None:
        """Server-owned state on create; by default a status subresource starts empty."""
        if self.has_status:
            obj.pop("status", None)
            status = self.initial_status(obj)
            if status is not None:
                obj["status"] = status

    def initial_status(self, obj: Obj) -> dict[str, Any] | None:
        return None

    def default(self, obj: Obj) -> None:
        """Fill defaulted fields (SetDefaults_X and the registry's own defaulting)."""

    def validate(self, obj: Obj) -> list[FieldError]:
        return self.validate_meta(obj)

    def validate_meta(self, obj: Obj) -> list[FieldError]:
        return object_meta(obj.get("metadata") or {}, namespaced=self.kind.namespaced,
                           name_fn=self.name_validator)

    # -- update ------------------------------------------------------------------------

    def prepare_for_update(self, new: Obj, old: Obj) -> None:
        """Writes to the main resource do not change status (kinds with /status)."""
        if self.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)

    def prepare_for_status_update(self, new: Obj, old: Obj) -> None:
        """/status writes change only status: everything else comes from `old`
        (`ResetObjectMetaForStatus`: labels, annotations, finalizers ... too)."""
        status = new.get("status")
        new.clear()
        new.update(copy.deepcopy(old))
        if status is None:
            new.pop("status", None)
        else:
            new["status"] = status

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        return []

    def validate_status(self, new: Obj, old: Obj) -> list[FieldError]:
        return []

    def spec_changed(self, new: Obj, old: Obj) -> bool:
        keys = (set(new) | set(old)) - _NON_SPEC
        return any(new.get(k) != old.get(k) for k in keys)
