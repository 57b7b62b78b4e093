"""The rendered iptables-restore payload (the `--dry-run` output) compared as
normalised text with a diff, like kube-proxy's assertIPTablesRulesEqual. Regenerate
after an intended change with:
    SVCNET_UPDATE_GOLDEN=1 pytest tests/unit/proxy_iptables/test_golden.py"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from svcnet.proxy.iptables import endpoint_chain, service_chain
from svcnet.proxy.model import ServicePortName
from tests.unit.proxy.builders import NODE, ep, eps, svc
from tests.unit.proxy.test_ruleset_golden import OBJECTS
from tests.unit.proxy_iptables.builders import ruleset

GOLDEN = Path(__file__).parent / "golden" / "basic.iptables"

MORE = [
    svc("svc5", "10.96.0.45", ("p80", 80, "TCP", 30085), type="NodePort", externalTrafficPolicy="Local",
        healthCheckNodePort=32085),
    eps("svc5", ep("10.244.2.5")),
]


def normalise(text: str) -> list[str]:
    """Whitespace-insensitive lines; a table's chain declarations and rules each sorted
    (kube-proxy sorts them too: their order is not meaning, except within a chain)."""
    out: list[str] = []
    decl: list[str] = []
    rules: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            decl.append(line)
        elif line.startswith("-A "):
            rules.setdefault(line.split()[1], []).append(line)
        elif line == "COMMIT":
            out += sorted(decl) + [r for c in sorted(rules) for r in rules[c]] + [line]
            decl, rules = [], {}
        else:
            out.append(line)
    return out


def test_payload_matches_golden_text() -> None:
    text = ruleset(OBJECTS + MORE, nodeport_addresses=("0.0.0.0/0",)).render()
    if os.environ.get("SVCNET_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    want, got = normalise(GOLDEN.read_text()), normalise(text)
    diff = "\n".join(difflib.unified_diff(want, got, "golden", "computed", lineterm=""))
    assert want == got, f"payload differs from {GOLDEN.name}:\n{diff}"


def test_chain_names_are_kube_proxys() -> None:
    # TestOverallIPTablesRules: ns1/svc1:p80 is KUBE-SVC-XPGD46QRK7WJZT7O, and its
    # endpoint 10.180.0.1:80 is KUBE-SEP-SXIVWICOYRO3J4NJ
    spn = ServicePortName("ns1", "svc1", "p80", "TCP")
    assert service_chain(spn) == "SVCNET-SVC-XPGD46QRK7WJZT7O"
    assert endpoint_chain(spn, "10.180.0.1:80") == "SVCNET-SEP-SXIVWICOYRO3J4NJ"
    assert all(len(c) <= 28 for c in (service_chain(spn), endpoint_chain(spn, "[fd00::1]:80")))


def test_chain_hash_is_base32_of_sha256() -> None:
    import base64
    import hashlib

    from svcnet.proxy.iptables import _hash16

    for text in ("ns1/svc1:p80tcp", "a", "ns/x:ytcp[fd00::1]:80", "é/ü:sctp"):
        assert _hash16(text) == base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def test_dry_run_payload_loads_as_written_order() -> None:
    """Chains are declared before any rule refers to them and the NodePort jump is last."""
    text = ruleset(OBJECTS + MORE, nodeport_addresses=("0.0.0.0/0",)).render()
    declared: set[str] = set()
    services = [ln for ln in text.splitlines() if ln.startswith("-A SVCNET-SERVICES ")]
    for ln in text.splitlines():
        if ln.startswith("*"):
            declared = set()
        elif ln.startswith(":"):
            declared.add(ln[1:].split()[0])
        elif ln.startswith("-A ") and " -j SVCNET-" in ln:
            assert ln.split(" -j ")[1].split()[0] in declared, ln
    assert "NOTE: this must be the last rule" in services[-1]
