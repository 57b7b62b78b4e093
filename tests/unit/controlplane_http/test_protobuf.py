"""The protobuf request decoder: wire parsing, the field table, zero values, errors."""

from __future__ import annotations

import pytest

from svcnet.controlplane.apiserver import protobuf as pb
from svcnet.controlplane.apiserver.protobuf import encode_unknown, field_bytes as f
from svcnet.controlplane.errors import APIError


def msg(*fields: bytes) -> bytes:
    return b"".join(fields)


def map_entry(number: int, key: str, value: str) -> bytes:
    return f(number, f(1, key) + f(2, value))


def test_varint_round_trip_including_negative_int32() -> None:
    for value in (0, 1, 127, 128, 300, 2**31 - 1, 2**63 - 1):
        encoded = pb._varint(value)
        assert pb.read_varint(encoded, 0) == (value, len(encoded))
    encoded = pb._varint(-1)
    assert len(encoded) == 10
    raw, _ = pb.read_varint(encoded, 0)
    assert pb._signed(raw) == -1


def test_service_as_kubectl_create_service_nodeport_sends_it() -> None:
    # kubectl 1.32 `create service nodeport np1 --tcp=80:8080` (reference §4.3): proto2 writes
    # every scalar, so empty strings and zero ints appear on the wire.
    meta = msg(f(1, "np1"), f(2, ""), f(3, ""), map_entry(11, "app", "np1"),
               f(8, msg(f(1, 0), f(2, 0))))
    port = msg(f(1, "80-8080"), f(2, "TCP"), f(3, 80), f(4, msg(f(1, 0), f(2, 8080), f(3, ""))), f(5, 0))
    spec = msg(f(1, port), map_entry(2, "app", "np1"), f(3, ""), f(4, "NodePort"), f(7, ""), f(10, ""),
               f(11, ""), f(13, False))
    status = f(1, b"")
    raw = msg(f(1, meta), f(2, spec), f(3, status))
    obj = pb.decode_object(encode_unknown("v1", "Service", raw))
    assert obj == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "np1", "labels": {"app": "np1"}},
        "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                 "selector": {"app": "np1"}, "type": "NodePort"},
    }


def test_named_target_port_and_pointer_fields_keep_zero() -> None:
    port = msg(f(3, 53), f(4, msg(f(1, 1), f(2, 0), f(3, "dns"))))
    spec = msg(f(1, port), f(20, False), f(14, f(1, f(1, 0))))
    obj = pb.decode_object(encode_unknown("v1", "Service", f(2, spec)))
    assert obj["spec"]["ports"] == [{"port": 53, "targetPort": "dns"}]
    # *bool and *int32 written as zero are real values
    assert obj["spec"]["allocateLoadBalancerNodePorts"] is False
    assert obj["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 0}}


def test_namespace() -> None:
    raw = msg(f(1, f(1, "team-a")), f(2, b""), f(3, b""))
    assert pb.decode_object(encode_unknown("v1", "Namespace", raw)) == {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}


def test_deployment_as_kubectl_create_deployment_sends_it() -> None:
    labels = map_entry(11, "app", "web")
    container = msg(f(1, "nginx"), f(2, "nginx:1.27"), f(6, msg(f(3, 80), f(4, ""))), f(8, b""), f(5, ""))
    pod_spec = msg(f(2, container), f(3, ""))
    template = msg(f(1, labels), f(2, pod_spec))
    selector = map_entry(1, "app", "web")
    spec = msg(f(1, 3), f(2, selector), f(3, template), f(4, b""), f(5, 0))
    raw = msg(f(1, msg(f(1, "web"), labels)), f(2, spec), f(3, b""))
    obj = pb.decode_object(encode_unknown("apps/v1", "Deployment", raw))
    assert obj == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                                                       "ports": [{"containerPort": 80}]}]}}},
    }


def test_replicas_zero_is_kept() -> None:
    obj = pb.decode_object(encode_unknown("apps/v1", "Deployment", f(2, f(1, 0))))
    assert obj["spec"] == {"replicas": 0}


def test_unknown_kind_is_415() -> None:
    with pytest.raises(APIError) as err:
        pb.decode_object(encode_unknown("v1", "ConfigMap", b""))
    assert err.value.code == 415
    assert err.value.reason == "UnsupportedMediaType"


@pytest.mark.parametrize("body", [
    b"not protobuf",
    pb.MAGIC + b"\x0a\x05ab",            # length past the end
    pb.MAGIC + b"\x0a",                  # truncated varint
])
def test_malformed_is_400(body: bytes) -> None:
    with pytest.raises(APIError) as err:
        pb.decode_object(body)
    assert err.value.code == 400


def test_unsupported_non_empty_field_is_an_error_not_data_loss() -> None:
    spec = msg(f(1, f(1, "x")), f(99, "something"))
    with pytest.raises(APIError) as err:
        pb.decode_object(encode_unknown("v1", "Service", f(2, spec)))
    assert err.value.code == 400
    assert "field number 99" in err.value.message


def test_unknown_zero_field_is_ignored() -> None:
    obj = pb.decode_object(encode_unknown("v1", "Service", f(2, msg(f(4, "ClusterIP"), f(99, "")))))
    assert obj["spec"] == {"type": "ClusterIP"}


def test_creation_timestamp_decodes_to_rfc3339() -> None:
    meta = msg(f(1, "a"), f(8, msg(f(1, 1_700_000_000), f(2, 0))))
    obj = pb.decode_object(encode_unknown("v1", "Namespace", f(1, meta)))
    assert obj["metadata"]["creationTimestamp"] == "2023-11-14T22:13:20Z"
