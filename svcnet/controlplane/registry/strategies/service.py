"""Service defaulting and validation, as kube-apiserver does them.

Sources followed: `SetDefaults_Service` (pkg/apis/core/v1/defaults.go), the service
REST storage's IP-family initialisation, `patchAllocatedValues` and
`dropTypeDependentFields` (pkg/registry/core/service/storage), and
`ValidateService`/`ValidateServiceUpdate` (pkg/apis/core/validation). Allocation of
ClusterIPs and NodePorts is not here: `allocators.py` does it after validation, in the
same storage transaction as the write.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from svcnet.controlplane.registry.kinds import KindInfo
from svcnet.controlplane.registry.strategies.base import Obj, Strategy
from svcnet.controlplane.registry.strategies.validation import (
    FieldError, cidr, dns1035_label, dns1123_label, dns1123_subdomain, duplicate, forbidden,
    iana_svc_name, invalid_value, ip_address, labels, port_number, required, too_many, type_error,
    unsupported,
)

TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP", "SCTP")
AFFINITIES = ("None", "ClientIP")
TRAFFIC_POLICIES = ("Cluster", "Local")
FAMILIES = ("IPv4", "IPv6")
FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
DEFAULT_CLIENT_IP_TIMEOUT = 10800       # core/v1 DefaultClientIPServiceAffinitySeconds
MAX_CLIENT_IP_TIMEOUT = 86400           # core MaxClientIPServiceAffinitySeconds


def spec_of(svc: Obj) -> dict[str, Any]:
    spec = svc.get("spec")
    return spec if isinstance(spec, dict) else {}


def svc_type(svc: Obj) -> str:
    return str(spec_of(svc).get("type") or "ClusterIP")


def is_headless(svc: Obj) -> bool:
    return spec_of(svc).get("clusterIP") == "None"


def needs_cluster_ip(svc: Obj) -> bool:
    return svc_type(svc) != "ExternalName"


def needs_node_ports(svc: Obj) -> bool:
    t = svc_type(svc)
    return t == "NodePort" or (t == "LoadBalancer"
                               and spec_of(svc).get("allocateLoadBalancerNodePorts", True) is not False)


def needs_health_check_node_port(svc: Obj) -> bool:
    return svc_type(svc) == "LoadBalancer" and spec_of(svc).get("externalTrafficPolicy") == "Local"


def externally_accessible(svc: Obj) -> bool:
    t = svc_type(svc)
    return t in ("NodePort", "LoadBalancer") or (t == "ClusterIP"
                                                 and bool(spec_of(svc).get("externalIPs")))


def ports_of(svc: Obj) -> list[dict[str, Any]]:
    ports = spec_of(svc).get("ports")
    return [p for p in ports if isinstance(p, dict)] if isinstance(ports, list) else []


def family_of(ip: str) -> str | None:
    try:
        return "IPv4" if ipaddress.ip_address(ip).version == 4 else "IPv6"
    except ValueError:
        return None


class ServiceStrategy(Strategy):
    """Services: DNS-1035 names, status reset on create, the defaulting above."""

    name_validator = staticmethod(dns1035_label)
    allow_create_on_update = True

    def __init__(self, kind: KindInfo, families: tuple[str, ...] = ("IPv4",)) -> None:
        super().__init__(kind)
        self.families = families            # the cluster's, primary first
        self.primary_family = families[0]

    def initial_status(self, obj: Obj) -> dict[str, Any] | None:
        return {"loadBalancer": {}}

    # -- defaulting --------------------------------------------------------------------

    def default(self, obj: Obj) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            spec = obj["spec"] = {}
        spec.setdefault("type", "ClusterIP")
        if not spec.get("type"):
            spec["type"] = "ClusterIP"
        if not spec.get("sessionAffinity"):
            spec["sessionAffinity"] = "None"
        if spec["sessionAffinity"] == "None":
            spec.pop("sessionAffinityConfig", None)
        elif spec["sessionAffinity"] == "ClientIP":
            cfg = spec.get("sessionAffinityConfig")
            if not isinstance(cfg, dict):
                cfg = spec["sessionAffinityConfig"] = {}
            client = cfg.get("clientIP")
            if not isinstance(client, dict):
                client = cfg["clientIP"] = {}
            if client.get("timeoutSeconds") is None:
                client["timeoutSeconds"] = DEFAULT_CLIENT_IP_TIMEOUT
        for port in ports_of(obj):
            if not port.get("protocol"):
                port["protocol"] = "TCP"
            if port.get("targetPort") in (None, 0, ""):
                port["targetPort"] = port.get("port")
        if externally_accessible(obj) and not spec.get("externalTrafficPolicy"):
            spec["externalTrafficPolicy"] = "Cluster"
        if spec["type"] != "ExternalName" and not spec.get("internalTrafficPolicy"):
            spec["internalTrafficPolicy"] = "Cluster"
        if spec["type"] == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
            spec["allocateLoadBalancerNodePorts"] = True
        self._default_ip_fields(obj, spec)

    def _default_ip_fields(self, obj: Obj, spec: dict[str, Any]) -> None:
        """clusterIP/clusterIPs agree; ipFamilies/ipFamilyPolicy from the cluster's families
        (the registry part of kube's Service defaulting: initIPFamilyFields)."""
        if spec["type"] == "ExternalName":
            return
        ip, ips = spec.get("clusterIP"), spec.get("clusterIPs")
        if ip and not ips:
            spec["clusterIPs"] = [ip]
        elif ips and isinstance(ips, list) and not ip:
            spec["clusterIP"] = ips[0]
        families = spec.get("ipFamilies")
        if spec.get("ipFamilyPolicy") is None and isinstance(families, list) and len(families) == 2:
            spec["ipFamilyPolicy"] = "RequireDualStack"
        if spec.get("clusterIP") == "None" and not spec.get("selector"):
            # headless + selectorless: endpoints of any family may be published, so kube
            # asks for both families even on a single-stack cluster.
            if spec.get("ipFamilyPolicy") is None:
                spec["ipFamilyPolicy"] = "RequireDualStack"
            if not families:
                spec["ipFamilies"] = [self.primary_family]
            if len(spec["ipFamilies"]) < 2 and spec["ipFamilyPolicy"] != "SingleStack":
                fam = spec["ipFamilies"][0]
                spec["ipFamilies"] = [fam, "IPv6" if fam == "IPv4" else "IPv4"]
            return
        if spec.get("ipFamilyPolicy") is None:
            spec["ipFamilyPolicy"] = "SingleStack"
        if not families:
            # the families of requested IPs, else the cluster's primary family
            requested = [family_of(v) for v in spec.get("clusterIPs") or []
                         if isinstance(v, str) and v != "None"]
            families = [f for f in requested if f] or [self.primary_family]
            spec["ipFamilies"] = families
        if (spec["ipFamilyPolicy"] in ("PreferDualStack", "RequireDualStack")
                and len(self.families) == 2 and isinstance(families, list) and len(families) == 1
                and families[0] in self.families):
            # a dual-stack cluster gives a dual-stack Service its second family (and,
            # through the allocator, its second ClusterIP)
            spec["ipFamilies"] = [families[0], "IPv6" if families[0] == "IPv4" else "IPv4"]

    # -- update preparation ------------------------------------------------------------

    def prepare_for_update(self, new: Obj, old: Obj) -> None:
        super().prepare_for_update(new, old)
        if not isinstance(new.get("spec"), dict):
            new["spec"] = {}
        self._patch_allocated_values(new, old)
        self._drop_type_dependent_fields(new, old)
        ns = new["spec"]
        if ns.get("ipFamilyPolicy") == "SingleStack" and ns.get("clusterIP") != "None":
            # dual-stack -> single-stack: keep the primary family and its ClusterIP
            for field in ("ipFamilies", "clusterIPs"):
                if isinstance(ns.get(field), list) and len(ns[field]) > 1:
                    ns[field] = ns[field][:1]
        if svc_type(new) != "LoadBalancer" and isinstance(new.get("status"), dict):
            new["status"]["loadBalancer"] = {}

    def _patch_allocated_values(self, new: Obj, old: Obj) -> None:
        """A PUT that omits allocated values keeps them (kubectl replace, clients that
        do not round-trip clusterIP or nodePort)."""
        ns, os_ = new["spec"], spec_of(old)
        if needs_cluster_ip(old) and needs_cluster_ip(new):
            if not ns.get("clusterIP") and os_.get("clusterIP"):
                ns["clusterIP"] = os_["clusterIP"]
            if not ns.get("clusterIPs") and os_.get("clusterIPs"):
                ns["clusterIPs"] = copy.deepcopy(os_["clusterIPs"])
        if needs_node_ports(old) and needs_node_ports(new):
            used = ({p.get("nodePort") for p in ports_of(old)} & {p.get("nodePort") for p in ports_of(new)})
            by_name = {p.get("name", ""): p.get("nodePort") for p in ports_of(old)}
            for p in ports_of(new):
                if not p.get("nodePort"):
                    prev = by_name.get(p.get("name", ""))
                    if prev and prev not in used:
                        p["nodePort"] = prev
        if needs_health_check_node_port(old) and needs_health_check_node_port(new):
            if not ns.get("healthCheckNodePort") and os_.get("healthCheckNodePort"):
                ns["healthCheckNodePort"] = os_["healthCheckNodePort"]

    def _drop_type_dependent_fields(self, new: Obj, old: Obj) -> None:
        """Wipe fields the new type does not use, if the user left them as they were."""
        ns, os_ = new["spec"], spec_of(old)
        if needs_cluster_ip(old) and not needs_cluster_ip(new):
            if ns.get("clusterIP") == os_.get("clusterIP") and ns.get("clusterIPs") == os_.get("clusterIPs"):
                ns.pop("clusterIP", None)
                ns.pop("clusterIPs", None)
            if ns.get("ipFamilies") == os_.get("ipFamilies"):
                ns.pop("ipFamilies", None)
            if ns.get("ipFamilyPolicy") == os_.get("ipFamilyPolicy"):
                ns.pop("ipFamilyPolicy", None)
        if needs_node_ports(old) and not needs_node_ports(new):
            if [p.get("nodePort") for p in ports_of(new)] == [p.get("nodePort") for p in ports_of(old)]:
                for p in ports_of(new):
                    p.pop("nodePort", None)
        if needs_health_check_node_port(old) and not needs_health_check_node_port(new):
            if ns.get("healthCheckNodePort") == os_.get("healthCheckNodePort"):
                ns.pop("healthCheckNodePort", None)
        if svc_type(old) == "LoadBalancer" and svc_type(new) != "LoadBalancer":
            if ns.get("allocateLoadBalancerNodePorts") == os_.get("allocateLoadBalancerNodePorts"):
                ns.pop("allocateLoadBalancerNodePorts", None)
            if ns.get("loadBalancerClass") == os_.get("loadBalancerClass"):
                ns.pop("loadBalancerClass", None)
        if externally_accessible(old) and not externally_accessible(new):
            if ns.get("externalTrafficPolicy") == os_.get("externalTrafficPolicy"):
                ns.pop("externalTrafficPolicy", None)
        if needs_cluster_ip(new) and not needs_cluster_ip(old):
            if ns.get("externalName") == os_.get("externalName"):
                ns.pop("externalName", None)

    # -- validation --------------------------------------------------------------------

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = self.validate_meta(obj)
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return errs + [required("spec")]
        t = spec.get("type")
        if t not in TYPES:
            errs.append(unsupported("spec.type", t, TYPES))
            return errs
        errs += self._validate_ports(obj, spec)
        errs += self._validate_cluster_ips(obj, spec)
        errs += self._validate_families(obj, spec)
        errs += self._validate_affinity(spec)
        errs += self._validate_traffic(obj, spec)
        if t == "ExternalName":
            name = spec.get("externalName")
            if not name:
                errs.append(required("spec.externalName"))
            else:
                for msg in dns1123_subdomain(str(name).rstrip(".")):
                    errs.append(invalid_value("spec.externalName", name, msg))
        for i, ip in enumerate(spec.get("externalIPs") or []):
            errs += ip_address(f"spec.externalIPs[{i}]", ip)
        ranges = spec.get("loadBalancerSourceRanges") or []
        if ranges and t != "LoadBalancer":
            errs.append(forbidden("spec.loadBalancerSourceRanges",
                                  "may only be used when `type` is 'LoadBalancer'"))
        for i, r in enumerate(ranges):
            errs += cidr(f"spec.loadBalancerSourceRanges[{i}]", str(r).strip())
        if "allocateLoadBalancerNodePorts" in spec and t != "LoadBalancer":
            errs.append(forbidden("spec.allocateLoadBalancerNodePorts",
                                  "may only be used when `type` is 'LoadBalancer'"))
        if spec.get("loadBalancerClass") is not None and t != "LoadBalancer":
            errs.append(forbidden("spec.loadBalancerClass",
                                  "may only be used when `type` is 'LoadBalancer'"))
        selector = spec.get("selector")
        if selector is not None and not isinstance(selector, dict):
            errs.append(type_error("spec.selector", selector, "a map of strings"))
        elif selector:
            errs += labels("spec.selector", selector)
        return errs

    def _validate_ports(self, obj: Obj, spec: dict[str, Any]) -> list[FieldError]:
        errs: list[FieldError] = []
        raw = spec.get("ports")
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            return [type_error("spec.ports", raw, "a list")]
        t = spec["type"]
        if not raw and t != "ExternalName" and spec.get("clusterIP") != "None":
            errs.append(required("spec.ports"))
        names: set[str] = set()
        keys: set[tuple[Any, Any]] = set()
        node_ports: set[tuple[Any, Any]] = set()
        for i, port in enumerate(raw):
            path = f"spec.ports[{i}]"
            if not isinstance(port, dict):
                errs.append(type_error(path, port, "an object"))
                continue
            name = port.get("name") or ""
            if len(raw) > 1 and not name:
                errs.append(required(f"{path}.name"))
            elif name:
                for msg in dns1123_label(str(name)):
                    errs.append(invalid_value(f"{path}.name", name, msg))
                if name in names:
                    errs.append(duplicate(f"{path}.name", name))
                names.add(name)
            errs += port_number(f"{path}.port", port.get("port"))
            proto = port.get("protocol")
            if proto not in PROTOCOLS:
                errs.append(unsupported(f"{path}.protocol", proto, PROTOCOLS))
            key = (port.get("port"), proto)
            if key in keys:
                errs.append(duplicate(path, {"port": port.get("port"), "protocol": proto}))
            keys.add(key)
            target = port.get("targetPort")
            if isinstance(target, str):
                for msg in iana_svc_name(target):
                    errs.append(invalid_value(f"{path}.targetPort", target, msg))
            elif target is not None:
                errs += port_number(f"{path}.targetPort", target)
            np = port.get("nodePort")
            if np:
                if t in ("ClusterIP", "ExternalName"):
                    errs.append(forbidden(f"{path}.nodePort", f"may not be used when `type` is '{t}'"))
                else:
                    errs += port_number(f"{path}.nodePort", np)
                    if (np, proto) in node_ports:
                        errs.append(duplicate(f"{path}.nodePort", np))
                    node_ports.add((np, proto))
            app = port.get("appProtocol")
            if app is not None and (not isinstance(app, str) or not app):
                errs.append(invalid_value(f"{path}.appProtocol", app, "must be a non-empty string"))
        return errs

    def _validate_cluster_ips(self, obj: Obj, spec: dict[str, Any]) -> list[FieldError]:
        errs: list[FieldError] = []
        t = spec["type"]
        ip, ips = spec.get("clusterIP"), spec.get("clusterIPs")
        if t == "ExternalName":
            if ip or ips:
                errs.append(forbidden("spec.clusterIPs", "may not be set for ExternalName services"))
            if spec.get("ipFamilies"):
                errs.append(forbidden("spec.ipFamilies", "may not be set for ExternalName services"))
            if spec.get("ipFamilyPolicy"):
                errs.append(forbidden("spec.ipFamilyPolicy",
                                      "may not be set for ExternalName services"))
            return errs
        if ips is None:
            return errs
        if not isinstance(ips, list) or not all(isinstance(x, str) for x in ips):
            return [type_error("spec.clusterIPs", ips, "a list of strings")]
        if ips and ip and ips[0] != ip:
            errs.append(invalid_value("spec.clusterIPs", ips, "first value must match `clusterIP`"))
        if len(ips) > 2:
            errs.append(invalid_value("spec.clusterIPs", ips,
                                      "may only hold up to 2 values"))
        for i, value in enumerate(ips):
            path = f"spec.clusterIPs[{i}]"
            if value == "None":
                if i != 0 or len(ips) > 1:
                    errs.append(invalid_value(path, value,
                                              "must be a valid IP address when more than one "
                                              "value is specified"))
                elif t in ("NodePort", "LoadBalancer"):
                    errs.append(invalid_value(path, value, f"may not be set to 'None' for {t} services"))
                continue
            errs += ip_address(path, value)
        fams = [family_of(v) for v in ips if v != "None"]
        if len(fams) == 2 and fams[0] == fams[1] and fams[0]:
            errs.append(invalid_value("spec.clusterIPs[1]", ips[1],
                                      "must be of a different IP family than clusterIPs[0]"))
        return errs

    def _validate_families(self, obj: Obj, spec: dict[str, Any]) -> list[FieldError]:
        errs: list[FieldError] = []
        if spec["type"] == "ExternalName":
            return errs
        policy = spec.get("ipFamilyPolicy")
        if policy is not None and policy not in FAMILY_POLICIES:
            errs.append(unsupported("spec.ipFamilyPolicy", policy, FAMILY_POLICIES))
        fams = spec.get("ipFamilies") or []
        if not isinstance(fams, list):
            return errs + [type_error("spec.ipFamilies", fams, "a list of strings")]
        if len(fams) > 2:
            errs.append(too_many("spec.ipFamilies", len(fams), 2))
        seen: set[str] = set()
        for i, fam in enumerate(fams):
            if fam not in FAMILIES:
                errs.append(unsupported(f"spec.ipFamilies[{i}]", fam, FAMILIES))
            elif fam in seen:
                errs.append(duplicate(f"spec.ipFamilies[{i}]", fam))
            seen.add(fam)
        if policy == "SingleStack" and len(fams) > 1:
            errs.append(invalid_value("spec.ipFamilyPolicy", policy,
                                      "must be 'RequireDualStack' or 'PreferDualStack' when "
                                      "multiple IP families are specified"))
        headless_selectorless = spec.get("clusterIP") == "None" and not spec.get("selector")
        ips = [v for v in spec.get("clusterIPs") or [] if isinstance(v, str) and v != "None"]
        if policy == "SingleStack" and len(ips) > 1:
            errs.append(invalid_value("spec.ipFamilyPolicy", policy,
                                      "must be 'RequireDualStack' or 'PreferDualStack' when "
                                      "multiple 'clusterIPs' are specified"))
        if not headless_selectorless and not errs:
            if policy == "RequireDualStack" and len(self.families) < 2:
                errs.append(invalid_value("spec.ipFamilyPolicy", policy,
                                          "this cluster is not configured for dual-stack services"))
            for i, fam in enumerate(fams):
                if fam not in self.families:
                    errs.append(invalid_value(f"spec.ipFamilies[{i}]", fam,
                                              "not configured on this cluster"))
            for i, value in enumerate(ips):
                fam = family_of(value)
                if fam and i < len(fams) and fam != fams[i]:
                    errs.append(invalid_value(f"spec.clusterIPs[{i}]", value,
                                              f"expected an {fams[i]} value as indicated by "
                                              f"`ipFamilies[{i}]`"))
        return errs

    def _validate_affinity(self, spec: dict[str, Any]) -> list[FieldError]:
        aff = spec.get("sessionAffinity")
        if aff not in AFFINITIES:
            return [unsupported("spec.sessionAffinity", aff, AFFINITIES)]
        cfg = spec.get("sessionAffinityConfig")
        if aff == "None":
            if cfg:
                return [invalid_value("spec.sessionAffinityConfig", cfg,
                                      "must not be set when session affinity is None")]
            return []
        timeout = ((cfg or {}).get("clientIP") or {}).get("timeoutSeconds")
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= MAX_CLIENT_IP_TIMEOUT:
            return [invalid_value("spec.sessionAffinityConfig.clientIP.timeoutSeconds", timeout,
                                  f"must be greater than 0 and less than {MAX_CLIENT_IP_TIMEOUT}")]
        return []

    def _validate_traffic(self, obj: Obj, spec: dict[str, Any]) -> list[FieldError]:
        errs: list[FieldError] = []
        etp = spec.get("externalTrafficPolicy")
        if externally_accessible(obj):
            if not etp:
                errs.append(required("spec.externalTrafficPolicy"))
            elif etp not in TRAFFIC_POLICIES:
                errs.append(unsupported("spec.externalTrafficPolicy", etp, TRAFFIC_POLICIES))
        elif etp:
            errs.append(invalid_value("spec.externalTrafficPolicy", etp,
                                      "may only be set for externally-accessible services"))
        hc = spec.get("healthCheckNodePort")
        if hc:
            if spec["type"] != "LoadBalancer":
                errs.append(invalid_value("spec.healthCheckNodePort", hc,
                                          "may only be set when `type` is 'LoadBalancer'"))
            if etp != "Local":
                errs.append(invalid_value("spec.healthCheckNodePort", hc,
                                          "may only be set when `externalTrafficPolicy` is 'Local'"))
            errs += port_number("spec.healthCheckNodePort", hc)
        itp = spec.get("internalTrafficPolicy")
        if spec["type"] != "ExternalName":
            if itp not in TRAFFIC_POLICIES:
                errs.append(unsupported("spec.internalTrafficPolicy", itp, TRAFFIC_POLICIES))
        return errs

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        errs: list[FieldError] = []
        ns, os_ = spec_of(new), spec_of(old)
        if needs_cluster_ip(old) and needs_cluster_ip(new):
            old_ips = os_.get("clusterIPs") or ([os_["clusterIP"]] if os_.get("clusterIP") else [])
            new_ips = ns.get("clusterIPs") or []
            if old_ips and new_ips[:1] != old_ips[:1]:
                errs.append(invalid_value("spec.clusterIPs[0]", new_ips, "may not change once set"))
            if len(old_ips) > 1 and len(new_ips) > 1 and new_ips[1] != old_ips[1]:
                errs.append(invalid_value("spec.clusterIPs[1]", new_ips, "may not change once set"))
            old_fams, new_fams = os_.get("ipFamilies") or [], ns.get("ipFamilies") or []
            if old_fams and new_fams and old_fams[0] != new_fams[0]:
                errs.append(invalid_value("spec.ipFamilies[0]", new_fams[0], "may not change once set"))
        if (needs_health_check_node_port(old) and needs_health_check_node_port(new)
                and os_.get("healthCheckNodePort")
                and ns.get("healthCheckNodePort") != os_.get("healthCheckNodePort")):
            errs.append(invalid_value("spec.healthCheckNodePort", ns.get("healthCheckNodePort"),
                                      "field is immutable"))
        if (svc_type(old) == "LoadBalancer" and svc_type(new) == "LoadBalancer"
                and os_.get("loadBalancerClass") != ns.get("loadBalancerClass")):
            errs.append(invalid_value("spec.loadBalancerClass", ns.get("loadBalancerClass"),
                                      "may not change once set"))
        return errs
