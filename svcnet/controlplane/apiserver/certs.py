"""The apiserver's PKI: a CA and a serving certificate, kept in the data directory.

First start generates `pki/ca.{crt,key}` and `pki/apiserver.{crt,key}` (ECDSA P-256);
later starts reuse them, so kubeconfigs written before a restart stay valid.

Several API servers of one cluster share one identity by sharing the CA directory
(`svcnet apiserver --pki-dir DIR`, default DATA_DIR/pki): the CA and the tokens live
there, while each server's serving certificate stays in its own DATA_DIR/pki with the
SANs of its own addresses, so one kubeconfig trusts them all. Creating the CA takes a
lock on the directory, so servers started together make one CA, not two. The serving
certificate is re-issued (by the same CA) when it lacks a SAN the current flags need, or
is close to expiry. SANs follow kube-apiserver: the listen/advertise IPs, 127.0.0.1,
localhost, the `kubernetes` Service ClusterIP (first address of the service CIDR) and
the `kubernetes.default.svc…` names.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
SERVICE_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "localhost")


@dataclass(frozen=True)
class PKI:
    """Paths of the serving key pair (`directory`) and of the CA (`ca_directory`,
    the same directory unless the CA is shared between API servers)."""

    directory: Path
    ca_directory: Path | None = None

    @property
    def ca_cert(self) -> Path:
        return (self.ca_directory or self.directory) / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return (self.ca_directory or self.directory) / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()

    def server_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.serving_cert, self.serving_key)
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA (for tests, benches and probes)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _make_ca(pki: PKI) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svcnet-ca")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(pki.ca_key, _key_pem(key))
    pki.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("generated CA certificate=%s", pki.ca_cert)


def _wanted_sans(ips: Iterable[str], names: Iterable[str]) -> tuple[set[str], set[str]]:
    want_ips = {str(ipaddress.ip_address(ip)) for ip in ips if ip and ip not in ("0.0.0.0", "::")}
    want_ips.add("127.0.0.1")
    return want_ips, set(names) | set(SERVICE_NAMES)


def _serving_ok(pki: PKI, want_ips: set[str], want_names: set[str]) -> bool:
    if not (pki.serving_cert.exists() and pki.serving_key.exists()):
        return False
    cert = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    if cert.issuer != ca.subject or cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return False
    try:  # every svcnet CA is "svcnet-ca": a shared CA (--pki-dir) must have signed it
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    have_names = set(san.get_values_for_type(x509.DNSName))
    return want_ips <= have_ips and want_names <= have_names


def _make_serving(pki: PKI, want_ips: set[str], want_names: set[str]) -> None:
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(want_names)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in sorted(want_ips)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVING_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(pki.serving_key, _key_pem(key))
    pki.serving_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("issued serving certificate ips=%s", ",".join(sorted(want_ips)))


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on `directory/.lock`: API servers sharing a PKI directory
    create its CA and tokens once."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def ensure_pki(data_dir: Path, ips: Iterable[str], names: Iterable[str] = (), *,
               pki_dir: Path | None = None) -> PKI:
    """Create or reuse the CA (in `pki_dir`, default `data_dir/pki`) and this server's
    serving certificate (in `data_dir/pki`)."""
    own = data_dir / "pki"
    ca_dir = pki_dir if pki_dir is not None and pki_dir.resolve() != own.resolve() else None
    pki = PKI(own, ca_dir)
    pki.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with directory_lock(ca_dir or own):
        if not (pki.ca_cert.exists() and pki.ca_key.exists()):
            _make_ca(pki)
    want_ips, want_names = _wanted_sans(ips, names)
    if not _serving_ok(pki, want_ips, want_names):
        _make_serving(pki, want_ips, want_names)
    return pki
