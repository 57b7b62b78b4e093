"""Switching --proxy-mode on a node, as kube-proxy does: at startup each mode removes
what the other mode programmed (through that backend's own cleanup), and nothing
that belongs to anybody else: a foreign nft table and a foreign iptables chain and
rule survive both switches."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.netns import NetnsPool
from tests.integration.proxy.lab import PY, ProxyLab
from tests.integration.proxy.test_nftables_traffic import objects
from tests.integration.proxy_iptables.test_iptables_traffic import iptables_save

pytestmark = pytest.mark.root

FOREIGN_NFT = "table inet other {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n" \
              "\t\ttcp dport 9999 counter accept\n\t}\n}\n"


def nft_tables(lab: ProxyLab) -> set[str]:
    out = lab.pool.run(lab.node, "nft", "list", "tables").stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def assert_foreign_rules_survive(lab: ProxyLab) -> None:
    saved = iptables_save(lab)
    assert "-A INPUT -s 192.0.2.1/32 -j ACCEPT" in saved, saved
    assert ":OTHER-CHAIN" in saved and "-A OTHER-CHAIN -p tcp -m tcp --dport 7777 -j ACCEPT" in saved, saved
    assert "tcp dport 9999 counter" in lab.pool.run(lab.node, "nft", "list", "table", "inet", "other").stdout


def assert_only_iptables_mode(lab: ProxyLab) -> None:
    tables = nft_tables(lab)
    assert "table ip svcnet" not in tables and "table ip6 svcnet" not in tables, tables
    saved = iptables_save(lab)
    assert saved.count("SVCNET-") > 50
    assert '-A PREROUTING -m comment --comment "svcnet service portals" -j SVCNET-SERVICES' in saved


def assert_only_nftables_mode(lab: ProxyLab) -> None:
    tables = nft_tables(lab)
    assert {"table ip svcnet", "table ip6 svcnet"} <= tables, tables
    assert "SVCNET" not in iptables_save(lab)
    assert "ns1/web:tcp" in lab.nft()


def test_each_mode_removes_the_other_modes_rules_and_nothing_else(tmp_path: Path) -> None:
    with NetnsPool("svpms") as pool:
        lab = ProxyLab.__new__(ProxyLab)  # only the objects file and commands, no pods
        lab.pool, lab.workdir = pool, tmp_path
        lab.objects_file = tmp_path / "objects.yaml"
        lab.node = pool.netns("node")
        lab.write_objects(objects())
        pool.run(lab.node, "iptables", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
        pool.run(lab.node, "iptables", "-t", "nat", "-N", "OTHER-CHAIN")
        pool.run(lab.node, "iptables", "-t", "nat", "-A", "OTHER-CHAIN", "-p", "tcp", "--dport", "7777",
                 "-j", "ACCEPT")
        pool.run(lab.node, "nft", "-f", "-", input=FOREIGN_NFT)

        out = lab.once("--proxy-mode", "iptables", "-v")
        assert out.returncode == 0, out.stderr
        assert_only_iptables_mode(lab)
        assert_foreign_rules_survive(lab)

        out = lab.once("--proxy-mode", "nftables", "-v")
        assert out.returncode == 0, out.stderr
        assert_only_nftables_mode(lab)
        assert_foreign_rules_survive(lab)
        assert "removed the iptables rules of an earlier run" in out.stderr, out.stderr
        assert "SVCNET- chains" in out.stderr

        out = lab.once("--proxy-mode", "iptables", "-v")
        assert out.returncode == 0, out.stderr
        assert_only_iptables_mode(lab)
        assert_foreign_rules_survive(lab)
        assert "removed the nftables rules of an earlier run: table ip svcnet; table ip6 svcnet" in out.stderr, \
            out.stderr

        # A start in the same mode finds nothing of the other mode: nothing is reported.
        out = lab.once("--proxy-mode", "iptables", "-v")
        assert out.returncode == 0, out.stderr
        assert "removed the" not in out.stderr
        assert_only_iptables_mode(lab)

        out = pool.run(lab.node, PY, "-m", "svcnet", "proxy", "--cleanup", check=False)
        assert out.returncode == 0, out.stderr
        assert "SVCNET" not in iptables_save(lab)
        assert_foreign_rules_survive(lab)
