"""EndpointSlices (discovery.k8s.io/v1), validated as kube's `ValidateEndpointSlice`."""

from __future__ import annotations

import ipaddress

from svcnet.controlplane.registry.strategies.base import Obj, Strategy
from svcnet.controlplane.registry.strategies.validation import (
    FieldError, dns1123_label, dns1123_subdomain, duplicate, immutable, invalid_value,
    port_number, required, too_many, type_error, unsupported,
)

ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
PROTOCOLS = ("TCP", "UDP", "SCTP")
MAX_ENDPOINTS = 1000
MAX_PORTS = 100
MAX_ADDRESSES = 100


class EndpointSliceStrategy(Strategy):
    tracks_generation = True
    allow_create_on_update = True

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = self.validate_meta(obj)
        at = obj.get("addressType")
        if not at:
            errs.append(required("addressType"))
        elif at not in ADDRESS_TYPES:
            errs.append(unsupported("addressType", at, ADDRESS_TYPES))
        eps = obj.get("endpoints") or []
        if not isinstance(eps, list):
            return errs + [type_error("endpoints", eps, "a list")]
        if len(eps) > MAX_ENDPOINTS:
            errs.append(too_many("endpoints", len(eps), MAX_ENDPOINTS))
        for i, ep in enumerate(eps):
            errs += self._validate_endpoint(ep, f"endpoints[{i}]", at)
        ports = obj.get("ports") or []
        if not isinstance(ports, list):
            return errs + [type_error("ports", ports, "a list")]
        if len(ports) > MAX_PORTS:
            errs.append(too_many("ports", len(ports), MAX_PORTS))
        names: set[str] = set()
        for i, p in enumerate(ports):
            path = f"ports[{i}]"
            if not isinstance(p, dict):
                errs.append(type_error(path, p, "an object"))
                continue
            name = p.get("name") or ""
            if name:
                for msg in dns1123_label(name):
                    errs.append(invalid_value(f"{path}.name", name, msg))
            if name in names:
                errs.append(duplicate(f"{path}.name", name))
            names.add(name)
            if p.get("port") is not None:
                errs += port_number(f"{path}.port", p["port"], allow_zero=True)
            proto = p.get("protocol")
            if proto is not None and proto not in PROTOCOLS:
                errs.append(unsupported(f"{path}.protocol", proto, PROTOCOLS))
        return errs

    def default(self, obj: Obj) -> None:
        for p in obj.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")
                p.setdefault("name", "")

    @staticmethod
    def _validate_endpoint(ep: object, path: str, at: object) -> list[FieldError]:
        if not isinstance(ep, dict):
            return [type_error(path, ep, "an object")]
        errs: list[FieldError] = []
        addrs = ep.get("addresses") or []
        if not addrs:
            errs.append(required(f"{path}.addresses", "must contain at least 1 address"))
        elif len(addrs) > MAX_ADDRESSES:
            errs.append(too_many(f"{path}.addresses", len(addrs), MAX_ADDRESSES))
        for j, a in enumerate(addrs):
            ap = f"{path}.addresses[{j}]"
            if at == "FQDN":
                for msg in dns1123_subdomain(str(a)):
                    errs.append(invalid_value(ap, a, msg))
                continue
            try:
                ip = ipaddress.ip_address(str(a))
            except ValueError:
                errs.append(invalid_value(ap, a, "must be a valid IP address"))
                continue
            if at == "IPv4" and ip.version != 4:
                errs.append(invalid_value(ap, a, "must be an IPv4 address"))
            if at == "IPv6" and ip.version != 6:
                errs.append(invalid_value(ap, a, "must be an IPv6 address"))
        for f in ("nodeName", "hostname"):
            if ep.get(f):
                fn = dns1123_subdomain if f == "nodeName" else dns1123_label
                for msg in fn(str(ep[f])):
                    errs.append(invalid_value(f"{path}.{f}", ep[f], msg))
        return errs

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        if new.get("addressType") != old.get("addressType"):
            return [immutable("addressType", new.get("addressType"))]
        return []
