"""Two API servers sharing one identity: `--pki-dir` holds the CA and tokens, each data
dir its own serving certificate with its own SANs, all signed by the one CA."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

from cryptography import x509

from svcnet.controlplane.apiserver.auth import load_or_create_tokens
from svcnet.controlplane.apiserver.certs import ensure_pki


def sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_shared_ca_own_serving_certificates(tmp_path: Path) -> None:
    shared = tmp_path / "shared-pki"
    a = ensure_pki(tmp_path / "a", ["192.0.2.10", "10.96.0.1"], pki_dir=shared)
    b = ensure_pki(tmp_path / "b", ["192.0.2.11", "10.96.0.1"], pki_dir=shared)
    assert a.ca_cert == b.ca_cert == shared / "ca.crt"
    assert a.serving_cert == tmp_path / "a" / "pki" / "apiserver.crt"
    assert "192.0.2.10" in sans(a.serving_cert) and "192.0.2.11" not in sans(a.serving_cert)
    assert "192.0.2.11" in sans(b.serving_cert)
    ca = x509.load_pem_x509_certificate(shared.joinpath("ca.crt").read_bytes())
    for pki in (a, b):
        x509.load_pem_x509_certificate(pki.serving_cert.read_bytes()).verify_directly_issued_by(ca)
    assert not (tmp_path / "a" / "pki" / "ca.crt").exists()


def test_moving_to_a_shared_ca_reissues_the_serving_certificate(tmp_path: Path) -> None:
    own = ensure_pki(tmp_path / "a", ["192.0.2.10"])  # first alone, its own CA
    before = own.serving_cert.read_bytes()
    shared = ensure_pki(tmp_path / "a", ["192.0.2.10"], pki_dir=tmp_path / "shared")
    # same SANs, same CA name, but another CA: the old certificate would not verify
    assert shared.serving_cert.read_bytes() != before
    ca = x509.load_pem_x509_certificate(shared.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(shared.serving_cert.read_bytes()).verify_directly_issued_by(ca)


def test_servers_starting_together_make_one_ca_and_one_token_pair(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    results: dict[int, tuple[bytes, object]] = {}

    def start(i: int) -> None:
        pki = ensure_pki(tmp_path / f"s{i}", [str(ipaddress.ip_address("192.0.2.10") + i)], pki_dir=shared)
        results[i] = (pki.ca_pem(), load_or_create_tokens(tmp_path / f"s{i}", pki_dir=shared))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({ca for ca, _ in results.values()}) == 1
    assert len({tokens for _, tokens in results.values()}) == 1
    assert (shared / "tokens.json").stat().st_mode & 0o777 == 0o600
