"""ServiceCIDRs (networking.k8s.io/v1): the ranges ClusterIPs come from."""

from __future__ import annotations

import ipaddress
from typing import Any

from svcnet.controlplane.registry.strategies.base import Obj, Strategy
from svcnet.controlplane.registry.strategies.validation import (
    FieldError, cidr, immutable, invalid_value, required, too_many,
)


class ServiceCIDRStrategy(Strategy):
    def initial_status(self, obj: Obj) -> dict[str, Any] | None:
        return {}

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = self.validate_meta(obj)
        cidrs = (obj.get("spec") or {}).get("cidrs") or []
        if not cidrs:
            errs.append(required("spec.cidrs"))
        elif len(cidrs) > 2:
            errs.append(too_many("spec.cidrs", len(cidrs), 2))
        fams = []
        for i, c in enumerate(cidrs):
            e = cidr(f"spec.cidrs[{i}]", c)
            errs += e
            if not e:
                fams.append(ipaddress.ip_network(str(c)).version)
        if len(fams) == 2 and fams[0] == fams[1]:
            errs.append(invalid_value("spec.cidrs", cidrs, "may specify no more than one IP for "
                                      "each IP family, i.e 192.168.0.0/24 and 2001:db8::/64"))
        return errs

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        oc, nc = (old.get("spec") or {}).get("cidrs"), (new.get("spec") or {}).get("cidrs")
        if oc != nc:
            return [immutable("spec.cidrs", nc)]
        return []
