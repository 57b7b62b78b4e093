"""Kubeconfig loading as kubectl does it, and TLS from it over a real local socket."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from svcnet.apiclient import errors
from svcnet.apiclient.client import RestClient
from svcnet.apiclient.kubeconfig import (
    KubeconfigError, in_cluster_config, load_config, load_kubeconfig,
)
from svcnet.apiclient.resources import SERVICES


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def config(clusters: dict[str, dict[str, Any]] | None = None, users: dict[str, dict[str, Any]] | None = None,
           contexts: dict[str, dict[str, Any]] | None = None, current: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Config"}
    doc["clusters"] = [{"name": n, "cluster": c} for n, c in (clusters or {}).items()]
    doc["users"] = [{"name": n, "user": u} for n, u in (users or {}).items()]
    doc["contexts"] = [{"name": n, "context": c} for n, c in (contexts or {}).items()]
    if current:
        doc["current-context"] = current
    return doc


def test_kubeconfig_list_merges_first_wins(tmp_path: Path) -> None:
    one = write(tmp_path / "one", config(
        contexts={"dev": {"cluster": "c1", "user": "u1", "namespace": "team"}}, current="dev",
        users={"u1": {"token": "first"}}))
    two = write(tmp_path / "two", config(
        clusters={"c1": {"server": "https://10.0.0.1:6443/"}},
        users={"u1": {"token": "second"}},
        contexts={"dev": {"cluster": "nope"}, "other": {"cluster": "c1"}}, current="other"))
    env = {"KUBECONFIG": f"{one}:{tmp_path / 'missing'}::{two}:{one}"}
    cfg = load_kubeconfig(env=env)
    assert (cfg.context, cfg.cluster, cfg.user, cfg.namespace) == ("dev", "c1", "u1", "team")
    assert cfg.server == "https://10.0.0.1:6443" and cfg.bearer_token() == "first"
    other = load_kubeconfig(context="other", env=env)
    assert other.namespace == "default" and other.user == "" and other.bearer_token() is None


def test_relative_paths_resolve_against_the_defining_file(tmp_path: Path) -> None:
    (tmp_path / "sub" / "pki").mkdir(parents=True)
    (tmp_path / "sub" / "pki" / "ca.crt").write_text("x")
    (tmp_path / "sub" / "pki" / "token").write_text("tok-1\n")
    path = write(tmp_path / "sub" / "config", config(
        clusters={"c": {"server": "https://k8s.test", "certificate-authority": "pki/ca.crt"}},
        users={"u": {"tokenFile": "pki/token"}}, contexts={"x": {"cluster": "c", "user": "u"}}, current="x"))
    cfg = load_kubeconfig(path)
    assert cfg.ca_file == str(tmp_path / "sub" / "pki" / "ca.crt")
    assert cfg.bearer_token() == "tok-1"
    (tmp_path / "sub" / "pki" / "token").write_text("tok-2-rotated\n")  # kubelet rotates it
    assert cfg.bearer_token() == "tok-2-rotated"


def test_home_config_and_in_cluster_fallback(tmp_path: Path) -> None:
    write(tmp_path / "home" / ".kube" / "config", config(
        clusters={"c": {"server": "http://127.0.0.1:8080"}}, contexts={"x": {"cluster": "c"}}, current="x"))
    assert load_config(env={"HOME": str(tmp_path / "home")}).server == "http://127.0.0.1:8080"
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("satoken")
    (sa / "namespace").write_text("kube-system")
    (sa / "ca.crt").write_text("x")
    env = {"HOME": str(tmp_path / "nohome"), "KUBERNETES_SERVICE_HOST": "fd00::1",
           "KUBERNETES_SERVICE_PORT": "443"}
    cfg = in_cluster_config(env, sa_dir=sa)
    assert cfg.server == "https://[fd00::1]:443" and cfg.namespace == "kube-system"
    assert cfg.bearer_token() == "satoken" and cfg.ca_file == str(sa / "ca.crt")
    with pytest.raises(KubeconfigError, match="not running in a pod"):
        load_config(env={"HOME": str(tmp_path / "nohome")})


@pytest.mark.parametrize("doc,context,message", [
    pytest.param(config(contexts={"x": {"cluster": "c"}}), None,
                 "current-context is not set", id="no-current-context"),
    pytest.param(config(contexts={"x": {"cluster": "c"}}, current="y"), None,
                 "current-context: context 'y' is not defined", id="unknown-context"),
    pytest.param(config(contexts={"x": {"cluster": "c"}}, current="x"), None,
                 "contexts[0] 'x': cluster 'c' is not defined", id="unknown-cluster"),
    pytest.param(config(clusters={"c": {"server": "https://a"}}, contexts={"x": {"cluster": "c", "user": "u"}},
                        current="x"), None, "contexts[0] 'x': user 'u' is not defined", id="unknown-user"),
    pytest.param(config(clusters={"c": {}}, contexts={"x": {"cluster": "c"}}, current="x"), None,
                 "clusters[0] 'c': cluster.server is not set", id="no-server"),
    pytest.param(config(clusters={"c": {"server": "k8s:6443"}}, contexts={"x": {"cluster": "c"}}, current="x"),
                 None, "cluster.server: 'k8s:6443' must start with https://", id="bad-server"),
    pytest.param(config(clusters={"c": {"server": "https://a", "certificate-authority-data": "!!"}},
                        contexts={"x": {"cluster": "c"}}, current="x"), None,
                 "cluster.certificate-authority-data: not valid base64", id="bad-ca-data"),
    pytest.param(config(clusters={"c": {"server": "https://a", "certificate-authority-data": "eA==",
                                        "insecure-skip-tls-verify": True}},
                        contexts={"x": {"cluster": "c"}}, current="x"), None,
                 "cannot both be set", id="insecure-with-ca"),
    pytest.param(config(clusters={"c": {"server": "https://a"}}, users={"u": {"client-certificate-data": "eA=="}},
                        contexts={"x": {"cluster": "c", "user": "u"}}, current="x"), None,
                 "users[0] 'u': user: client-certificate(-data) and client-key(-data) must be given together",
                 id="cert-without-key"),
    pytest.param(config(clusters={"c": {"server": "https://a"}},
                        users={"u": {"exec": {"command": "gke-gcloud-auth-plugin"}}},
                        contexts={"x": {"cluster": "c", "user": "u"}}, current="x"), None,
                 "user.exec: credential plugins are not supported", id="exec"),
    pytest.param(config(clusters={"c": {"server": "https://a", "certificate-authority": "/nonexistent/ca"}},
                        contexts={"x": {"cluster": "c"}}, current="x"), None,
                 "cluster.certificate-authority: /nonexistent/ca does not exist", id="missing-ca-file"),
    pytest.param({"kind": "Pod"}, None, "kind: expected Config", id="not-a-config"),
    pytest.param(config(), "nosuch", "context 'nosuch' is not defined", id="requested-context"),
])
def test_errors_name_the_file_and_the_field(tmp_path: Path, doc: dict[str, Any], context: str | None,
                                             message: str) -> None:
    path = write(tmp_path / "kc", doc)
    with pytest.raises(KubeconfigError) as e:
        load_kubeconfig(path, context=context)
    assert str(e.value).startswith(str(path)) and message in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)


def test_explicit_path_must_exist_and_parse(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="does not exist"):
        load_kubeconfig(tmp_path / "nope")
    (tmp_path / "bad").write_text("clusters: [\n")
    with pytest.raises(KubeconfigError, match="not valid YAML"):
        load_kubeconfig(tmp_path / "bad")


# -- TLS over a real socket -------------------------------------------------------


class Pki:
    def __init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
        self.ca = self._cert(name, name, self.ca_key.public_key(), ca=True)

    def _cert(self, subject: x509.Name, issuer: x509.Name, pub: Any, *, ca: bool = False,
              sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
             .not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(self.ca_key, hashes.SHA256())

    def issue(self, cn: str, sans: list[x509.GeneralName] | None = None) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), self.ca.subject,
                          key.public_key(), sans=sans)
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    @property
    def ca_pem(self) -> bytes:
        return self.ca.public_bytes(serialization.Encoding.PEM)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_tls_with_ca_client_certificate_and_server_name(tmp_path: Path) -> None:
    pki = Pki()
    cert, key = pki.issue("k8s.internal", [x509.DNSName("k8s.internal")])
    (tmp_path / "srv.crt").write_bytes(cert)
    (tmp_path / "srv.key").write_bytes(key)
    (tmp_path / "ca.crt").write_bytes(pki.ca_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.crt"))
    server_ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # only clients with a certificate from our CA

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else ""
        return web.json_response({"kind": "ServiceList", "metadata": {"resourceVersion": "1"},
                                  "items": [{"metadata": {"name": cn}}]})

    app = web.Application()
    app.router.add_get("/api/v1/services", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_ctx)
    ccert, ckey = pki.issue("system:node:n1")
    (tmp_path / "client.key").write_bytes(ckey)
    url = f"https://127.0.0.1:{server.port}"
    cluster = {"server": url, "certificate-authority-data": b64(pki.ca_pem), "tls-server-name": "k8s.internal"}
    user = {"client-certificate-data": b64(ccert), "client-key": "client.key"}
    try:
        cfg = load_kubeconfig(write(tmp_path / "kc", config({"c": cluster}, {"u": user},
                                                            {"x": {"cluster": "c", "user": "u"}}, "x")))
        async with RestClient.from_config(cfg) as c:
            assert (await c.list(SERVICES))["items"][0]["metadata"]["name"] == "system:node:n1"
        # Without tls-server-name the certificate does not match 127.0.0.1: refused.
        cfg = load_kubeconfig(write(tmp_path / "kc2", config(
            {"c": {k: v for k, v in cluster.items() if k != "tls-server-name"}}, {"u": user},
            {"x": {"cluster": "c", "user": "u"}}, "x")))
        async with RestClient.from_config(cfg) as c:
            with pytest.raises(errors.TransportError, match="certificate"):
                await c.list(SERVICES)
        # insecure-skip-tls-verify still presents the client certificate.
        cfg = load_kubeconfig(write(tmp_path / "kc3", config(
            {"c": {"server": url, "insecure-skip-tls-verify": True}}, {"u": user},
            {"x": {"cluster": "c", "user": "u"}}, "x")))
        async with RestClient.from_config(cfg) as c:
            assert (await c.list(SERVICES))["items"][0]["metadata"]["name"] == "system:node:n1"
    finally:
        await server.close()


def test_broken_client_key_is_a_clear_error(tmp_path: Path) -> None:
    pki = Pki()
    ccert, _ = pki.issue("x")
    path = write(tmp_path / "kc", config(
        {"c": {"server": "https://127.0.0.1:1", "certificate-authority-data": b64(pki.ca_pem)}},
        {"u": {"client-certificate-data": b64(ccert), "client-key-data": b64(b"not a key")}},
        {"x": {"cluster": "c", "user": "u"}}, "x"))
    cfg = load_kubeconfig(path)
    with pytest.raises(KubeconfigError, match="user 'u': cannot load the client certificate"):
        cfg.ssl_context()
