"""Flags to configuration: defaults, validation messages, upstream discovery."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from svcnet.dns import command, forward, wire


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    command.configure(p)
    return p.parse_args(["--objects", "x.yaml", *argv])


def test_defaults_match_coredns() -> None:
    cfg = command.build_config(parse("--upstream", "192.0.2.1"))
    assert [z.name for z in cfg.zone.zones] == ["cluster.local"]
    assert cfg.zone.ttl == 5 and cfg.zone.pods == "disabled" and not cfg.zone.fallthrough
    assert cfg.listen == (("0.0.0.0", 53),)
    assert [(u.host, u.port) for u in cfg.upstreams] == [("192.0.2.1", 53)]
    assert cfg.transfer_to == ()


def test_full_command_line() -> None:
    cfg = command.build_config(parse(
        "--listen", "127.0.0.1:5353", "--listen", "[::1]:5353", "--zone", "example.local", "--zone", "10.96.0.0/12",
        "--pods", "verified", "--namespaces", "a,b", "--ttl", "30", "--fallthrough-zones", "in-addr.arpa",
        "--endpoint-pod-names", "--ignore-empty-service", "--transfer-to", "*",
        "--upstream", "192.0.2.1:5300,[2001:db8::1]:53"))
    assert cfg.listen == (("127.0.0.1", 5353), ("::1", 5353))
    assert cfg.zone.primary.name == "example.local" and len(cfg.zone.zones) == 17
    assert cfg.zone.local_ips == ("127.0.0.1", "::1")
    assert cfg.zone.namespaces == frozenset({"a", "b"}) and cfg.zone.ttl == 30
    assert cfg.zone.fallthrough and cfg.zone.fallthrough_zones == (wire.name_to_wire("in-addr.arpa"),)
    assert len(cfg.transfer_to) == 2
    assert [(u.host, u.port) for u in cfg.upstreams] == [("192.0.2.1", 5300), ("2001:db8::1", 53)]


@pytest.mark.parametrize("argv,needle", [
    (["--ttl", "3601"], "--ttl"), (["--zone", "10.0.0.0/40"], "--zone"), (["--transfer-to", "x"], "--transfer-to"),
    (["--upstream", "bogus"], "--upstream"), (["--listen", "1.2.3.4:99999"], "--listen"),
    (["--metrics-listen", "nope"], "--metrics-listen")])
def test_bad_flags_name_the_flag(argv: list[str], needle: str) -> None:
    with pytest.raises(command.UsageError, match=needle):
        command.build_config(parse(*argv))


def test_resolv_conf_nameservers_are_the_default_upstreams(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.test\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n")
    assert [u.host for u in forward.resolv_conf_upstreams(str(conf))] == ["192.0.2.53", "2001:db8::53"]
