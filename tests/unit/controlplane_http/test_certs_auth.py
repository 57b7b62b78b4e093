"""PKI in the data dir, tokens, the authorizer, and the kubeconfig the command writes."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from svcnet.controlplane.apiserver.auth import ADMIN, AGENT, authorize, load_or_create_tokens
from svcnet.controlplane.apiserver.certs import ensure_pki
from svcnet.controlplane.command import kubeconfig, readonly_path
from svcnet.controlplane.errors import APIError


def sans(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ({str(i) for i in san.get_values_for_type(x509.IPAddress)}, set(san.get_values_for_type(x509.DNSName)))


def test_pki_is_generated_then_reused(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path, ["192.0.2.10", "10.96.0.1"])
    ips, names = sans(pki.serving_cert)
    assert {"192.0.2.10", "127.0.0.1", "10.96.0.1"} <= ips
    assert {"localhost", "kubernetes", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} <= names
    assert stat.S_IMODE(pki.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.serving_key.stat().st_mode) == 0o600
    ca, serving = pki.ca_cert.read_bytes(), pki.serving_cert.read_bytes()
    again = ensure_pki(tmp_path, ["192.0.2.10"])
    assert again.ca_cert.read_bytes() == ca and again.serving_cert.read_bytes() == serving
    # a new listen address needs a new serving certificate, signed by the same CA
    third = ensure_pki(tmp_path, ["198.51.100.7", "10.96.0.1"])
    assert third.ca_cert.read_bytes() == ca and third.serving_cert.read_bytes() != serving
    assert "198.51.100.7" in sans(third.serving_cert)[0]
    cert = x509.load_pem_x509_certificate(third.serving_cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    third.server_ssl_context()  # key and certificate match
    third.client_ssl_context()


def test_ipv6_san(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path, ["fd00::1"])
    assert str(ipaddress.ip_address("fd00::1")) in sans(pki.serving_cert)[0]


def test_tokens_are_created_once(tmp_path: Path) -> None:
    tokens = load_or_create_tokens(tmp_path)
    assert tokens.admin != tokens.readonly and len(tokens.admin) >= 40
    assert load_or_create_tokens(tmp_path) == tokens
    assert stat.S_IMODE((tmp_path / "pki" / "tokens.json").stat().st_mode) == 0o600
    assert tokens.authenticate(f"Bearer {tokens.admin}") is ADMIN
    assert tokens.authenticate(f"bearer {tokens.readonly}") is AGENT
    for header in (None, "", "Bearer", f"Basic {tokens.admin}", "Bearer nope", f"Bearer {tokens.admin}x"):
        with pytest.raises(APIError) as err:
            tokens.authenticate(header)
        assert err.value.code == 401


def test_authorizer() -> None:
    for verb in ("get", "list", "watch", "create", "delete", "patch"):
        authorize(ADMIN, verb, "services", "", "default", "web")
    for verb in ("get", "list", "watch"):
        authorize(AGENT, verb, "endpointslices", "discovery.k8s.io", None, None)
    with pytest.raises(APIError) as err:
        authorize(AGENT, "patch", "pods", "", "default", "p1", "status")
    assert err.value.code == 403 and err.value.reason == "Forbidden"
    assert err.value.message == ('pods "p1" is forbidden: User "svcnet:agent" cannot patch resource '
                                 '"pods/status" in API group "" in the namespace "default"')
    with pytest.raises(APIError) as err:
        authorize(AGENT, "create", "leases", "coordination.k8s.io", "kube-node-lease", None)
    assert "leases.coordination.k8s.io is forbidden" in err.value.message


def test_kubeconfig_shape_and_readonly_name() -> None:
    assert readonly_path(Path("/x/kubeconfig")) == Path("/x/kubeconfig-readonly")
    assert readonly_path(Path("/x/admin.yaml")) == Path("/x/admin-readonly.yaml")
    cfg = kubeconfig("https://127.0.0.1:6443", b"PEM", "svcnet-admin", "tok", "svcnet")
    assert cfg["current-context"] == "svcnet"
    assert cfg["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:6443",
                                             "certificate-authority-data": "UEVN"}
    assert cfg["users"][0]["user"] == {"token": "tok"}


def test_gc_tuned_for_serving_freezes_start_up_state() -> None:
    import gc
    import weakref

    from svcnet.controlplane.command import GC_GEN0_THRESHOLD, tune_gc_for_serving

    thresholds = gc.get_threshold()
    survivor = {"kept": ["across", "collections"]}  # start-up state, alive for good
    try:
        tune_gc_for_serving()
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] >= GC_GEN0_THRESHOLD
        assert gc.get_threshold()[1:] == thresholds[1:]
        # frozen objects are out of every generation, so no collection walks them again
        assert not any(o is survivor for gen in range(3) for o in gc.get_objects(gen))
        assert gc.is_tracked(survivor)  # in the permanent generation, alive
        # cyclic garbage made after the freeze is still collected

        class Node:
            pass

        node = Node()
        node.self = node  # type: ignore[attr-defined]
        gone = weakref.ref(node)
        del node
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
