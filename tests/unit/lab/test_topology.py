import ipaddress
from pathlib import Path

import pytest

from svcnet.lab.topology import TopologyError, find_topology, load_topology, parse_topology

REPO = Path(__file__).resolve().parents[3]


def test_defaults_follow_design():
    t = parse_topology("")
    assert t.name == "svcnet" and t.proxy_mode == "nftables"
    assert [n.name for n in t.nodes] == ["svcnet-control-plane", "svcnet-worker", "svcnet-worker2"]
    assert [str(n.pod_cidr) for n in t.nodes] == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    assert [str(n.underlay_ip) for n in t.nodes] == ["172.18.0.2", "172.18.0.3", "172.18.0.4"]
    assert str(t.networking.cluster_dns) == "10.96.0.10"
    assert str(t.networking.service_subnet) == "10.96.0.0/12"
    assert t.control_plane.name == "svcnet-control-plane"
    assert str(t.nodes[1].pod_gateway) == "10.244.1.1"
    assert t.external_ip == ipaddress.ip_address("172.18.0.254")


def test_node_names_like_kind_and_explicit_names():
    t = parse_topology("name: lab2\nnodes:\n- role: control-plane\n- role: worker\n- role: worker\n"
                       "- {role: worker, name: edge, labels: {zone: b}}\n")
    assert [n.name for n in t.nodes] == ["lab2-control-plane", "lab2-worker", "lab2-worker2", "lab2-edge"]
    assert t.nodes[3].labels == (("zone", "b"),)
    assert t.node("edge").name == "lab2-edge"


def test_every_error_is_reported_with_its_key():
    with pytest.raises(TopologyError) as e:
        parse_topology("proxyMode: ipvs\nnetworking:\n  podSubnet: 10.244.0.0/33\n  servceSubnet: x\n"
                       "nodes:\n- role: worker\n", origin="t.yaml")
    msg = str(e.value)
    assert "t.yaml: proxyMode: 'ipvs'" in msg
    assert "networking.podSubnet" in msg
    assert "networking.servceSubnet: unknown key (did you mean 'serviceSubnet'?)" in msg
    assert "exactly one control-plane" in msg


def test_overlapping_subnets_are_refused():
    with pytest.raises(TopologyError, match="overlaps"):
        parse_topology("networking: {underlaySubnet: 10.244.5.0/24}")


def test_cluster_dns_must_be_inside_the_service_subnet():
    with pytest.raises(TopologyError, match="outside serviceSubnet"):
        parse_topology("networking: {clusterDNS: 10.0.0.10}")


def test_not_yaml_and_not_a_mapping():
    with pytest.raises(TopologyError, match="not valid YAML"):
        parse_topology("a: [", origin="x")
    with pytest.raises(TopologyError, match="expected a mapping"):
        parse_topology("- 1")


def test_manifests_are_relative_to_the_file(tmp_path):
    (tmp_path / "web.yaml").write_text("{}")
    f = tmp_path / "t.lab.yaml"
    f.write_text("manifests: [web.yaml]\n")
    t = load_topology(f)
    assert t.manifests == (tmp_path / "web.yaml",)
    assert find_topology(tmp_path) == f
    f.write_text("manifests: [missing.yaml]\n")
    with pytest.raises(TopologyError, match="missing.yaml does not exist"):
        load_topology(f)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TopologyError, match="cannot read topology"):
        load_topology(tmp_path / "nope.yaml")


def test_shipped_topologies_parse():
    # STYLE 10: every topology in netns-lab/ is parsed in CI.
    files = sorted((REPO / "netns-lab").glob("*.yaml"))
    assert files, "netns-lab/ has no topology"
    for f in files:
        load_topology(f)


def test_example_manifests_parse():
    from svcnet.apiclient.manifests import load_manifests

    files = sorted((REPO / "netns-lab" / "examples").glob("*.yaml"))
    assert files
    for f in files:
        assert load_manifests(f)
