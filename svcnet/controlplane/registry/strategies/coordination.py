"""Leases (coordination.k8s.io/v1): node heartbeats and leader election."""

from __future__ import annotations

from svcnet.controlplane.registry.strategies.base import Obj, Strategy
from svcnet.controlplane.registry.strategies.validation import FieldError, invalid_value


class LeaseStrategy(Strategy):
    allow_create_on_update = True

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = self.validate_meta(obj)
        spec = obj.get("spec") or {}
        for f in ("leaseDurationSeconds", "leaseTransitions"):
            v = spec.get(f)
            if v is None:
                continue
            bad = isinstance(v, bool) or not isinstance(v, int)
            if bad or (f == "leaseDurationSeconds" and v <= 0) or v < 0:
                errs.append(invalid_value(f"spec.{f}", v, "must be greater than 0"
                                          if f == "leaseDurationSeconds" else
                                          "must be greater than or equal to 0"))
        return errs
