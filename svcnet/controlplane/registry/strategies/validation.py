"""Field errors and the common validators, worded as kube-apiserver words them.

`FieldError` is `field.Error` from k8s.io/apimachinery: a reason (FieldValueRequired,
FieldValueInvalid, ...), a field path (`spec.ports[0].name`) and a message that starts
the way kube's does (`Required value`, `Invalid value: "Web": a DNS-1035 label ...`),
because kubectl prints `* <field>: <message>` for each cause of a 422.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from svcnet.controlplane.errors import APIError, invalid
from svcnet.controlplane.registry.selectors import validate_label_value, validate_qualified_name


@dataclass(frozen=True)
class FieldError:
    reason: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def go_value(value: Any) -> str:
    """A value as Go's %#v prints it in field errors: strings quoted, numbers bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[]string{" + ", ".join(json.dumps(v) for v in value) + "}"
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return "map[string]string{" + ", ".join(
            f"{json.dumps(k)}:{json.dumps(v)}" for k, v in sorted(value.items())) + "}"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def required(field: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", field, "Required value" + (f": {detail}" if detail else ""))


def invalid_value(field: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", field, f"Invalid value: {go_value(value)}: {detail}")


def unsupported(field: str, value: Any, supported: Iterable[str]) -> FieldError:
    opts = ", ".join(json.dumps(s) for s in sorted(supported))
    return FieldError("FieldValueNotSupported", field,
                      f"Unsupported value: {go_value(value)}: supported values: {opts}")


def duplicate(field: str, value: Any) -> FieldError:
    return FieldError("FieldValueDuplicate", field, f"Duplicate value: {go_value(value)}")


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", field, f"Forbidden: {detail}")


def too_many(field: str, actual: int, limit: int) -> FieldError:
    return FieldError("FieldValueTooMany", field,
                      f"Too many: {actual}: must have at most {limit} items")


def too_long(field: str, limit: int) -> FieldError:
    return FieldError("FieldValueTooLong", field, f"Too long: may not be more than {limit} bytes")


def immutable(field: str, value: Any) -> FieldError:
    return invalid_value(field, value, "field is immutable")


def type_error(field: str, value: Any, expected: str) -> FieldError:
    return FieldError("FieldValueTypeInvalid", field,
                      f"Invalid value: {go_value(value)}: must be {expected}")


def raise_invalid(kind: str, name: str, errors: list[FieldError], group: str = "") -> None:
    """Raise the 422 for `errors` (no-op when empty)."""
    if errors:
        raise invalid(kind, name, [(e.reason, e.field, e.message) for e in errors], group)


def as_api_error(kind: str, name: str, errors: list[FieldError], group: str = "") -> APIError:
    return invalid(kind, name, [(e.reason, e.field, e.message) for e in errors], group)


# -- names (k8s.io/apimachinery/pkg/util/validation) ---------------------------------

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(f"^{_DNS1123_LABEL_FMT}$")
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + r"(\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN_RE = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}$")
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035_LABEL_RE = re.compile(f"^{_DNS1035_LABEL_FMT}$")


def _name_format(value: str, max_length: int, pattern: re.Pattern[str], message: str) -> list[str]:
    """apimachinery's IsDNS1123Label & co.: a length error and/or a format error."""
    errs = []
    if len(value) > max_length:
        errs.append(f"must be no more than {max_length} characters")
    if not pattern.match(value):
        errs.append(message)
    return errs


def dns1123_label(value: str) -> list[str]:
    return _name_format(value, 63, _DNS1123_LABEL_RE,
                        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                        "or '-', and must start and end with an alphanumeric character (e.g. "
                        "'my-name',  or '123-abc', regex used for validation is "
                        f"'{_DNS1123_LABEL_FMT}')")


def dns1123_subdomain(value: str) -> list[str]:
    return _name_format(value, 253, _DNS1123_SUBDOMAIN_RE,
                        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                        "characters, '-' or '.', and must start and end with an alphanumeric "
                        "character (e.g. 'example.com', regex used for validation is "
                        f"'{_DNS1123_SUBDOMAIN_FMT}')")


def dns1035_label(value: str) -> list[str]:
    return _name_format(value, 63, _DNS1035_LABEL_RE,
                        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                        "start with an alphabetic character, and end with an alphanumeric character "
                        "(e.g. 'my-name',  or 'abc-123', regex used for validation is "
                        f"'{_DNS1035_LABEL_FMT}')")


def iana_svc_name(value: str) -> list[str]:
    """`validation.IsValidPortName`: what a named targetPort or container port may be."""
    errs = []
    if len(value) > 15:
        errs.append("must be no more than 15 characters")
    if not re.fullmatch(r"[-a-z0-9]+", value):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in value:
        errs.append("must not contain consecutive hyphens")
    if not re.search(r"[a-z]", value):
        errs.append("must contain at least one letter (a-z)")
    if value.startswith("-") or value.endswith("-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def port_number(field: str, value: Any, *, allow_zero: bool = False) -> list[FieldError]:
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int):
        return [type_error(field, value, "an integer")]
    if not lo <= value <= 65535:
        return [invalid_value(field, value, f"must be between {lo} and 65535, inclusive")]
    return []


def ip_address(field: str, value: Any) -> list[FieldError]:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return [invalid_value(field, value, "must be a valid IP address, (e.g. 10.9.8.7 or "
                              "2001:db8::ffff)")]
    return []


def cidr(field: str, value: Any) -> list[FieldError]:
    try:
        ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        return [invalid_value(field, value, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or "
                              "2001:db8::/64)")]
    return []


# -- ObjectMeta (apimachinery/pkg/api/validation/objectmeta.go) -----------------------

TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024


def labels(field: str, value: Any) -> list[FieldError]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [type_error(field, value, "a map of strings")]
    errs = []
    for k, v in value.items():
        for msg in validate_qualified_name(str(k)):
            errs.append(invalid_value(field, k, msg))
        if not isinstance(v, str):
            errs.append(type_error(f"{field}[{k}]", v, "a string"))
            continue
        for msg in validate_label_value(v):
            errs.append(invalid_value(f"{field}[{k}]", v, msg))
    return errs


def annotation_map(field: str, value: Any) -> list[FieldError]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [type_error(field, value, "a map of strings")]
    errs = []
    size = 0
    for k, v in value.items():
        for msg in validate_qualified_name(str(k).lower()):
            errs.append(invalid_value(field, k, msg))
        if not isinstance(v, str):
            errs.append(type_error(f"{field}[{k}]", v, "a string"))
            continue
        size += len(k) + len(v)
    if size > TOTAL_ANNOTATION_SIZE_LIMIT:
        errs.append(too_long(field, TOTAL_ANNOTATION_SIZE_LIMIT))
    return errs


def object_meta(meta: Mapping[str, Any], *, namespaced: bool,
                name_fn: Any = dns1123_subdomain) -> list[FieldError]:
    """`ValidateObjectMeta`: name (or generateName), namespace, labels, annotations,
    finalizers, ownerReferences."""
    errs: list[FieldError] = []
    name = meta.get("name") or ""
    if not name:
        errs.append(required("metadata.name", "name or generateName is required"))
    else:
        for msg in name_fn(name):
            errs.append(invalid_value("metadata.name", name, msg))
    ns = meta.get("namespace") or ""
    if namespaced:
        if not ns:
            errs.append(required("metadata.namespace"))
        else:
            for msg in dns1123_label(ns):
                errs.append(invalid_value("metadata.namespace", ns, msg))
    elif ns:
        errs.append(forbidden("metadata.namespace", "not allowed on this type"))
    errs += labels("metadata.labels", meta.get("labels"))
    errs += annotation_map("metadata.annotations", meta.get("annotations"))
    fins = meta.get("finalizers") or []
    if not isinstance(fins, list):
        errs.append(type_error("metadata.finalizers", fins, "a list of strings"))
    else:
        seen: set[str] = set()
        for i, f in enumerate(fins):
            if not isinstance(f, str):
                errs.append(type_error(f"metadata.finalizers[{i}]", f, "a string"))
                continue
            for msg in validate_qualified_name(f):
                errs.append(invalid_value(f"metadata.finalizers[{i}]", f, msg))
            if f in seen:
                errs.append(duplicate(f"metadata.finalizers[{i}]", f))
            seen.add(f)
    refs = meta.get("ownerReferences") or []
    if not isinstance(refs, list):
        errs.append(type_error("metadata.ownerReferences", refs, "a list"))
    else:
        controllers = 0
        for i, ref in enumerate(refs):
            path = f"metadata.ownerReferences[{i}]"
            if not isinstance(ref, Mapping):
                errs.append(type_error(path, ref, "an object"))
                continue
            for f in ("apiVersion", "kind", "name", "uid"):
                if not ref.get(f):
                    errs.append(required(f"{path}.{f}", f"{f} must not be empty"))
            controllers += bool(ref.get("controller"))
        if controllers > 1:
            errs.append(invalid_value("metadata.ownerReferences", refs,
                                      "Only one reference can have Controller set to true"))
    return errs


def object_meta_update(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[FieldError]:
    """`ValidateObjectMetaUpdate`: what may not change."""
    errs = []
    for f in ("name", "namespace", "uid", "creationTimestamp"):
        if (new.get(f) or "") != (old.get(f) or ""):
            errs.append(immutable(f"metadata.{f}", new.get(f) or ""))
    return errs
