"""`svcnet proxy` flags: kube-proxy's names, clear errors, the backend seam."""

from __future__ import annotations

import argparse

import pytest

from svcnet.proxy import command
from svcnet.proxy.backend import BackendError, BackendOptions, load_backend


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    command.configure(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("text,seconds", [("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("2h", 7200.0)])
def test_go_durations(text: str, seconds: float) -> None:
    assert command.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["1", "1x", "s", "1s2"])
def test_bad_durations_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        command.parse_duration(bad)


def test_defaults_follow_kube_proxy() -> None:
    o = command.options_from_args(parse("--objects", "f", "--hostname-override", "n1"))
    assert (o.min_sync_period, o.sync_period, o.masquerade_bit) == (1.0, 30.0, 14)
    assert o.nodeport_addresses == ("primary",) and o.detect_local_mode == "ClusterCIDR"
    ipt = command.options_from_args(parse("--objects", "f", "--proxy-mode", "iptables"))
    assert ipt.nodeport_addresses == ("0.0.0.0/0", "::/0"), "iptables mode: every local IP"


def test_flag_values_are_parsed() -> None:
    o = command.options_from_args(parse(
        "--objects", "f", "--hostname-override", "n1", "--node-ip", "192.168.0.2,fd00::2",
        "--cluster-cidr", "10.244.0.0/16, fd00:244::/48", "--nodeport-addresses", "192.168.0.0/24",
        "--masquerade-all", "--masquerade-bit", "3", "--service-cidr", "10.96.0.0/12"))
    assert o.node_ips == ("192.168.0.2", "fd00::2") and o.cluster_cidrs == ("10.244.0.0/16", "fd00:244::/48")
    assert o.nodeport_addresses == ("192.168.0.0/24",) and o.masquerade_all and o.masquerade_bit == 3


@pytest.mark.parametrize("argv,message", [
    (("--node-ip", "nope"), "--node-ip"),
    (("--cluster-cidr", "10.0.0.0/33"), "--cluster-cidr"),
    (("--masquerade-bit", "32"), "--masquerade-bit"),
    (("--min-sync-period", "1m", "--sync-period", "30s"), "exceeds"),
])
def test_bad_flags_get_one_clear_line(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        command.options_from_args(parse("--objects", "f", *argv))


def test_main_reports_bad_flags_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert command.main(parse("--objects", "f", "--node-ip", "x")) == 2
    assert "svcnet proxy: --node-ip" in capsys.readouterr().err


def test_unknown_or_missing_backend_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake_import(name: str, *a: object) -> object:
        if name == "svcnet.proxy.iptables":
            raise ModuleNotFoundError(name=name)
        return real(name)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(BackendError, match="no iptables backend"):
        load_backend("iptables", BackendOptions())
    with pytest.raises(BackendError, match="unknown --proxy-mode"):
        load_backend("ipvs", BackendOptions())
    assert load_backend("nftables", BackendOptions(nft_binary="/bin/false")).mode == "nftables"


def test_dry_run_prints_the_ruleset_and_touches_nothing(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from tests.unit.proxy.builders import ep, eps, svc

    f = tmp_path / "objs.yaml"
    f.write_text(yaml.safe_dump_all([svc("web", "10.96.0.10", ("http", 80, "TCP")),
                                     eps("web", ep("10.244.1.5"), ports=(("http", 8080, "TCP"),))]))
    rc = command.main(parse("--objects", str(f), "--hostname-override", "n1", "--node-ip", "192.168.0.2",
                            "--cluster-cidr", "10.244.0.0/16", "--dry-run"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "table ip svcnet {" in out and "table ip6 svcnet {" in out
    assert "dnat to 10.244.1.5:8080" in out and "10.96.0.10 . tcp . 80 : goto service-" in out


@pytest.mark.parametrize("content,message", [
    (None, "No such file"),
    ("kind: [unclosed", "not valid JSON or YAML"),
])
def test_once_with_bad_objects_exits_1_with_one_line(tmp_path, capsys, content, message) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "objs.yaml"
    if content is not None:
        f.write_text(content)
    rc = command.main(parse("--objects", str(f), "--hostname-override", "n1", "--once"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("svcnet proxy: ") and message in err[-1]


class _Recorder:
    def __init__(self, mode: str, calls: list[str], result: list[str] | Exception) -> None:
        self.mode, self.calls, self.result = mode, calls, result

    def cleanup(self) -> list[str]:
        self.calls.append(self.mode)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.mark.parametrize("mode, other", [("nftables", "iptables"), ("iptables", "nftables")])
def test_startup_removes_only_the_other_modes_rules(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                    mode: str, other: str) -> None:
    calls: list[str] = []
    monkeypatch.setattr("svcnet.proxy.backend.load_backend",
                        lambda m, o: _Recorder(m, calls, [f"{m} leftovers"]))
    with caplog.at_level("INFO", logger="svcnet.proxy"):
        assert command.remove_other_mode(mode, (4, 6)) == [f"{other} leftovers"]
    assert calls == [other]
    assert f"switched to {mode} mode: removed the {other} rules of an earlier run: {other} leftovers" in caplog.text


def test_a_failed_removal_of_the_other_mode_is_a_warning_not_fatal(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    monkeypatch.setattr("svcnet.proxy.backend.load_backend",
                        lambda m, o: _Recorder(m, calls, BackendError("iptables-nft-restore failed")))
    with caplog.at_level("WARNING", logger="svcnet.proxy"):
        assert command.remove_other_mode("nftables", (4,)) == []
    assert calls == ["iptables"] and "could not remove iptables rules" in caplog.text
