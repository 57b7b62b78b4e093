"""Decode `application/vnd.kubernetes.protobuf` request bodies into Kubernetes JSON dicts.

kubectl 1.32 sends its generators' objects (`kubectl create namespace|service …|deployment`)
as protobuf with no JSON fallback. The encoding [k8s api-concepts, "Protobuf encoding"]:

    b"k8s\\x00" + runtime.Unknown{1: TypeMeta{1: apiVersion, 2: kind}, 2: raw object bytes,
                                  3: contentEncoding, 4: contentType}

`raw` is the object message whose field numbers are the `protobuf:"bytes,N,…"` tags of
k8s.io/api (core/v1, apps/v1 `generated.proto`). This module holds a generic wire-format
parser and ONE field-number table (`MESSAGES`) for the kinds the generators create:
Namespace, Service and Deployment (with ObjectMeta, LabelSelector, PodTemplateSpec and a
minimal Container). The messages are proto2 written by gogo-protobuf: every non-pointer
scalar is written even when it is the zero value, so zero values of non-pointer fields
mean "unset" and are dropped; pointer fields (`Field.pointer`) keep their zero values
(`replicas: 0` is meaningful). A non-empty field that the table does not know is an
error rather than silently lost data.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Iterator

from svcnet.controlplane.errors import APIError

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

# wire types
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not valid protobuf wire format."""


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; returns (value, next position)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of one message.

    Varints and fixed-width values come back as unsigned ints, length-delimited values as
    bytes; groups (wire types 3/4) are not used by Kubernetes and are rejected.
    """
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == VARINT:
            value, pos = read_varint(buf, pos)
            yield number, wire, value
        elif wire == LENGTH:
            size, pos = read_varint(buf, pos)
            if pos + size > len(buf):
                raise WireError(f"field {number}: length {size} runs past the end of the message")
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire == FIXED64:
            if pos + 8 > len(buf):
                raise WireError("truncated fixed64")
            yield number, wire, int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wire == FIXED32:
            if pos + 4 > len(buf):
                raise WireError("truncated fixed32")
            yield number, wire, int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        else:
            raise WireError(f"field {number}: unsupported wire type {wire}")


# --- the field-number table -------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One field of a message: its JSON name and how its bytes become JSON.

    `kind` is one of: string, int (int32/int64, two's complement), bool, message (`msg`
    names the message), map (string keys; values are strings, or messages when `msg` is
    set), intorstr (IntOrString), time (metav1.Time), quantity (resource.Quantity).
    """

    name: str
    kind: str = "string"
    msg: str = ""
    repeated: bool = False
    pointer: bool = False  # Go pointer field: a written zero value is a real value


def _f(name: str, kind: str = "string", msg: str = "", repeated: bool = False,
       pointer: bool = False) -> Field:
    return Field(name, kind, msg, repeated, pointer)


# Field numbers from k8s.io/api core/v1, apps/v1 and k8s.io/apimachinery meta/v1
# generated.proto. Only what the kinds above need; extend a message by adding its tags.
MESSAGES: dict[str, dict[int, Field]] = {
    "TypeMeta": {1: _f("apiVersion"), 2: _f("kind")},
    "ObjectMeta": {
        1: _f("name"), 2: _f("generateName"), 3: _f("namespace"), 5: _f("uid"),
        6: _f("resourceVersion"), 7: _f("generation", "int"),
        8: _f("creationTimestamp", "time", "Time"), 9: _f("deletionTimestamp", "time", "Time"),
        10: _f("deletionGracePeriodSeconds", "int", pointer=True),
        11: _f("labels", "map"), 12: _f("annotations", "map"),
        13: _f("ownerReferences", "message", "OwnerReference", repeated=True),
        14: _f("finalizers", repeated=True),
    },
    "OwnerReference": {
        1: _f("kind"), 3: _f("name"), 4: _f("uid"), 5: _f("apiVersion"),
        6: _f("controller", "bool", pointer=True), 7: _f("blockOwnerDeletion", "bool", pointer=True),
    },
    "LabelSelector": {
        1: _f("matchLabels", "map"),
        2: _f("matchExpressions", "message", "LabelSelectorRequirement", repeated=True),
    },
    "LabelSelectorRequirement": {1: _f("key"), 2: _f("operator"), 3: _f("values", repeated=True)},
    "IntOrString": {},  # decoded by kind "intorstr": 1 type (0 int, 1 string), 2 intVal, 3 strVal
    # core/v1 Namespace
    "Namespace": {1: _f("metadata", "message", "ObjectMeta"), 2: _f("spec", "message", "NamespaceSpec"),
                  3: _f("status", "message", "NamespaceStatus")},
    "NamespaceSpec": {1: _f("finalizers", repeated=True)},
    "NamespaceStatus": {1: _f("phase")},
    # core/v1 Service
    "Service": {1: _f("metadata", "message", "ObjectMeta"), 2: _f("spec", "message", "ServiceSpec"),
                3: _f("status", "message", "ServiceStatus")},
    "ServiceSpec": {
        1: _f("ports", "message", "ServicePort", repeated=True), 2: _f("selector", "map"),
        3: _f("clusterIP"), 4: _f("type"), 5: _f("externalIPs", repeated=True),
        7: _f("sessionAffinity"), 8: _f("loadBalancerIP"),
        9: _f("loadBalancerSourceRanges", repeated=True), 10: _f("externalName"),
        11: _f("externalTrafficPolicy"), 12: _f("healthCheckNodePort", "int"),
        13: _f("publishNotReadyAddresses", "bool"),
        14: _f("sessionAffinityConfig", "message", "SessionAffinityConfig", pointer=True),
        17: _f("ipFamilyPolicy", pointer=True), 18: _f("clusterIPs", repeated=True),
        19: _f("ipFamilies", repeated=True),
        20: _f("allocateLoadBalancerNodePorts", "bool", pointer=True),
        21: _f("loadBalancerClass", pointer=True), 22: _f("internalTrafficPolicy", pointer=True),
        23: _f("trafficDistribution", pointer=True),
    },
    "ServicePort": {1: _f("name"), 2: _f("protocol"), 3: _f("port", "int"),
                    4: _f("targetPort", "intorstr"), 5: _f("nodePort", "int"),
                    6: _f("appProtocol", pointer=True)},
    "SessionAffinityConfig": {1: _f("clientIP", "message", "ClientIPConfig", pointer=True)},
    "ClientIPConfig": {1: _f("timeoutSeconds", "int", pointer=True)},
    "ServiceStatus": {1: _f("loadBalancer", "message", "LoadBalancerStatus")},
    "LoadBalancerStatus": {1: _f("ingress", "message", "LoadBalancerIngress", repeated=True)},
    "LoadBalancerIngress": {1: _f("ip"), 2: _f("hostname")},
    # apps/v1 Deployment
    "Deployment": {1: _f("metadata", "message", "ObjectMeta"),
                   2: _f("spec", "message", "DeploymentSpec"),
                   3: _f("status", "message", "DeploymentStatus")},
    "DeploymentSpec": {
        1: _f("replicas", "int", pointer=True), 2: _f("selector", "message", "LabelSelector", pointer=True),
        3: _f("template", "message", "PodTemplateSpec"),
        4: _f("strategy", "message", "DeploymentStrategy"), 5: _f("minReadySeconds", "int"),
        6: _f("revisionHistoryLimit", "int", pointer=True), 7: _f("paused", "bool"),
        9: _f("progressDeadlineSeconds", "int", pointer=True),
    },
    "DeploymentStrategy": {1: _f("type"),
                           2: _f("rollingUpdate", "message", "RollingUpdateDeployment", pointer=True)},
    "RollingUpdateDeployment": {1: _f("maxUnavailable", "intorstr", pointer=True),
                                2: _f("maxSurge", "intorstr", pointer=True)},
    "DeploymentStatus": {1: _f("observedGeneration", "int"), 2: _f("replicas", "int"),
                         3: _f("updatedReplicas", "int"), 4: _f("availableReplicas", "int"),
                         5: _f("unavailableReplicas", "int"), 7: _f("readyReplicas", "int")},
    "PodTemplateSpec": {1: _f("metadata", "message", "ObjectMeta"), 2: _f("spec", "message", "PodSpec")},
    "PodSpec": {
        2: _f("containers", "message", "Container", repeated=True), 3: _f("restartPolicy"),
        4: _f("terminationGracePeriodSeconds", "int", pointer=True), 6: _f("dnsPolicy"),
        7: _f("nodeSelector", "map"), 8: _f("serviceAccountName"), 10: _f("nodeName"),
        11: _f("hostNetwork", "bool"), 16: _f("hostname"), 17: _f("subdomain"),
        19: _f("schedulerName"),
        20: _f("initContainers", "message", "Container", repeated=True),
    },
    "Container": {
        1: _f("name"), 2: _f("image"), 3: _f("command", repeated=True), 4: _f("args", repeated=True),
        5: _f("workingDir"), 6: _f("ports", "message", "ContainerPort", repeated=True),
        7: _f("env", "message", "EnvVar", repeated=True),
        8: _f("resources", "message", "ResourceRequirements"),
        13: _f("terminationMessagePath"), 14: _f("imagePullPolicy"),
        20: _f("terminationMessagePolicy"),
    },
    "ContainerPort": {1: _f("name"), 2: _f("hostPort", "int"), 3: _f("containerPort", "int"),
                      4: _f("protocol"), 5: _f("hostIP")},
    "EnvVar": {1: _f("name"), 2: _f("value")},
    "ResourceRequirements": {1: _f("limits", "map", "Quantity"), 2: _f("requests", "map", "Quantity")},
    "Time": {},  # decoded by kind "time": 1 seconds, 2 nanos
}

# (apiVersion, kind) -> top-level message name: the kinds a protobuf body may carry.
TOP_LEVEL: dict[tuple[str, str], str] = {
    ("v1", "Namespace"): "Namespace",
    ("v1", "Service"): "Service",
    ("apps/v1", "Deployment"): "Deployment",
}


# --- decoding --------------------------------------------------------------------------

def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _expect(field: Field, wire: int, want: int, path: str) -> None:
    if wire != want:
        raise WireError(f"{path}: wire type {wire} does not fit a {field.kind} field")


def _decode_map_entry(raw: bytes, value_msg: str, path: str) -> tuple[str, Any]:
    key: str = ""
    value: Any = "" if not value_msg else None
    for number, wire, data in iter_fields(raw):
        if number == 1 and isinstance(data, bytes):
            key = data.decode()
        elif number == 2 and isinstance(data, bytes):
            value = _decode_quantity(data) if value_msg == "Quantity" else data.decode()
        else:
            raise WireError(f"{path}: unexpected field {number} in a map entry")
    return key, value


def _decode_quantity(raw: bytes) -> str:
    for number, _, data in iter_fields(raw):
        if number == 1 and isinstance(data, bytes):
            return data.decode()
    return "0"


def _decode_intorstr(raw: bytes) -> int | str:
    kind = int_val = 0
    str_val = ""
    for number, _, data in iter_fields(raw):
        if number == 1 and isinstance(data, int):
            kind = data
        elif number == 2 and isinstance(data, int):
            int_val = _signed(data)
        elif number == 3 and isinstance(data, bytes):
            str_val = data.decode()
    return str_val if kind == 1 else int_val


def _decode_time(raw: bytes) -> str | None:
    seconds = 0
    for number, _, data in iter_fields(raw):
        if number == 1 and isinstance(data, int):
            seconds = _signed(data)
    if seconds == 0:
        return None  # the zero Time is "unset" (JSON null)
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _decode_value(field: Field, wire: int, data: int | bytes, path: str) -> Any:
    """One occurrence of `field` on the wire, as JSON."""
    if field.kind == "int":
        _expect(field, wire, VARINT, path)
        assert isinstance(data, int)
        return _signed(data)
    if field.kind == "bool":
        _expect(field, wire, VARINT, path)
        return bool(data)
    _expect(field, wire, LENGTH, path)
    assert isinstance(data, bytes)
    if field.kind == "string":
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise WireError(f"{path}: not valid UTF-8") from None
    if field.kind == "message":
        return decode_message(field.msg, data, path)
    if field.kind == "intorstr":
        return _decode_intorstr(data)
    if field.kind == "time":
        return _decode_time(data)
    if field.kind == "quantity":
        return _decode_quantity(data)
    raise AssertionError(f"unhandled field kind {field.kind}")


def _is_zero(value: Any) -> bool:
    return value in ("", 0, False, None) or value == {} or value == []


def decode_message(message: str, raw: bytes, path: str = "") -> dict[str, Any]:
    """Decode one message of the table into a JSON dict, dropping unset zero values."""
    fields = MESSAGES[message]
    out: dict[str, Any] = {}
    for number, wire, data in iter_fields(raw):
        field = fields.get(number)
        where = f"{path}.{field.name}" if field and path else (field.name if field else path)
        if field is None:
            # A zero value of a field we do not know loses nothing; anything else would.
            if (wire == LENGTH and data == b"") or (wire == VARINT and data == 0):
                continue
            raise WireError(f"{path or message}: field number {number} of {message} is not supported "
                            "by svcnet's protobuf decoder; send the object as JSON")
        if field.kind == "map":
            assert isinstance(data, bytes)
            key, value = _decode_map_entry(data, field.msg, where)
            out.setdefault(field.name, {})[key] = value
            continue
        value = _decode_value(field, wire, data, where)
        if field.repeated:
            out.setdefault(field.name, []).append(value)
        elif field.pointer or not _is_zero(value):
            out[field.name] = value
        else:
            out.pop(field.name, None)
    return out


def decode_unknown(body: bytes) -> tuple[str, str, bytes]:
    """Split the `k8s\\x00` envelope: (apiVersion, kind, raw object bytes)."""
    if not body.startswith(MAGIC):
        raise WireError("missing the k8s\\x00 protobuf prefix")
    api_version = kind = ""
    raw = b""
    for number, _, data in iter_fields(body[len(MAGIC):]):
        if number == 1 and isinstance(data, bytes):
            meta = decode_message("TypeMeta", data)
            api_version, kind = meta.get("apiVersion", ""), meta.get("kind", "")
        elif number == 2 and isinstance(data, bytes):
            raw = data
        elif number == 3 and data not in (b"", 0):
            raise WireError(f"content encoding {data!r} is not supported")
    return api_version, kind, raw


def decode_object(body: bytes) -> dict[str, Any]:
    """Decode a Kubernetes protobuf request body into the object's JSON form.

    Raises APIError 415 for kinds the table does not cover (the client should send JSON)
    and 400 for malformed bytes.
    """
    try:
        api_version, kind, raw = decode_unknown(body)
        message = TOP_LEVEL.get((api_version, kind))
        if message is None:
            raise APIError(415, "UnsupportedMediaType",
                           f'the body of the request was in an unknown format - accepted media types '
                           f'for {kind or "this kind"} ({api_version or "?"}) include: application/json, '
                           f'application/yaml; svcnet decodes protobuf only for '
                           f'{", ".join(k for _, k in sorted(TOP_LEVEL))}')
        obj = decode_message(message, raw)
    except WireError as exc:
        raise APIError(400, "BadRequest", f"unable to decode protobuf body: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}


# --- encoding (tests and benchmarks build bodies the way kubectl does) --------------------

def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number: int, value: int | bool | bytes | str) -> bytes:
    """One encoded field: ints/bools as varints, str/bytes length-delimited."""
    if isinstance(value, (bool, int)):
        return _varint(number << 3 | VARINT) + _varint(int(value))
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | LENGTH) + _varint(len(data)) + data


def encode_unknown(api_version: str, kind: str, raw: bytes) -> bytes:
    """Wrap an object message in the `k8s\\x00` + runtime.Unknown envelope."""
    type_meta = field_bytes(1, api_version) + field_bytes(2, kind)
    return MAGIC + field_bytes(1, type_meta) + field_bytes(2, raw) + field_bytes(3, "") + field_bytes(4, "")
