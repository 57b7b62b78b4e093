from svcnet.lab import preflight


def test_missing_tools_and_not_root_come_with_advice(monkeypatch):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(preflight.shutil, "which", lambda tool: None if tool in ("nft", "nsenter") else f"/bin/{tool}")
    problems = {p.id: p for p in preflight.check("nftables")}
    assert "LAB_NOT_ROOT" in problems and "sudo" in problems["LAB_NOT_ROOT"].advice
    assert "LAB_MISSING_NFT" in problems and "proxyMode: iptables" in problems["LAB_MISSING_NFT"].advice
    assert any("nsenter" in p.message for p in problems.values())
    assert "advice:" in str(problems["LAB_NOT_ROOT"])


def test_iptables_mode_needs_iptables_restore_not_nft(monkeypatch):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    monkeypatch.setattr(preflight.shutil, "which", lambda tool: None if tool in ("nft", "iptables-restore") else "/x")
    ids = [p.id for p in preflight.check("iptables")]
    assert "LAB_MISSING_IPTABLES" in ids and "LAB_MISSING_NFT" not in ids
