"""The rendered ruleset (the `--dry-run` output) compared as normalised text with a
diff, like kube-proxy's assertNFTablesTransactionEqual. Regenerate after an intended
change with: SVCNET_UPDATE_GOLDEN=1 pytest tests/unit/proxy/test_ruleset_golden.py"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from tests.unit.proxy.builders import NODE, ep, eps, ruleset, svc

GOLDEN = Path(__file__).parent / "golden" / "basic.nft"

OBJECTS = [
    svc("svc1", "10.96.0.41", ("p80", 80, "TCP")),
    eps("svc1", ep("10.244.1.1"), ep("10.244.2.1")),
    svc("svc2", "10.96.0.42", ("p80", 80, "TCP", 30080), type="LoadBalancer", externalTrafficPolicy="Local",
        externalIPs=["198.18.0.42"], loadBalancerSourceRanges=["203.0.113.0/25"],
        status={"loadBalancer": {"ingress": [{"ip": "198.18.1.42"}]}}),
    eps("svc2", ep("10.244.1.2", node=NODE), ep("10.244.2.2")),
    svc("svc3", "10.96.0.43", ("p53", 53, "UDP")),
    svc("svc4", "10.96.0.44", ("p80", 80, "TCP"), sessionAffinity="ClientIP"),
    eps("svc4", ep("10.244.2.4")),
]


def normalise(text: str) -> list[str]:
    """Whitespace-insensitive lines; element lists split and sorted (order is not meaning)."""
    out = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line:
            continue
        if line.startswith("add element ") and "{" in line:
            head, body = line.split("{", 1)
            items = sorted(x.strip() for x in body.rstrip("}").split(","))
            out.extend(f"{head}{{ {i} }}" for i in items)
        else:
            out.append(line)
    return out


def test_ruleset_matches_golden_text() -> None:
    text = ruleset(OBJECTS).render()
    if os.environ.get("SVCNET_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    want, got = normalise(GOLDEN.read_text()), normalise(text)
    diff = "\n".join(difflib.unified_diff(want, got, "golden", "computed", lineterm=""))
    assert want == got, f"ruleset differs from {GOLDEN.name}:\n{diff}"


def test_every_rule_of_a_service_chain_names_its_service_port() -> None:
    """kube-proxy-style comments: `nft list ruleset` reads service by service, so every
    rule of a service port's chains (service-, local-, external-, firewall-) starts its
    comment with `ns/name:port`, endpoint draws and affinity lookups included."""
    table = ruleset(OBJECTS)
    seen = 0
    for name, rules in table.services.items():
        for chain in rules.chains:
            for rule in chain.rules:
                assert f'comment "{name}' in rule, f"{chain.name}: {rule}"
                seen += 1
    assert seen >= 12  # svc1's two draws, svc2's four chains, svc4's affinity rules
