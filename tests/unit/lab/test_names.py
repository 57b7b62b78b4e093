import pytest

from svcnet.lab.names import (
    IFNAMSIZ, LabNameError, LabNames, hash_and_truncate, link_name, pod_host_veth, pod_netns_name,
    validate_ifname, validate_lab_name,
)


def test_short_names_are_kept_as_is():
    assert hash_and_truncate("svcnet-br", 15) == "svcnet-br"
    assert link_name("svcnet", "br") == "svcnet-br"


def test_long_names_fit_and_keep_a_readable_prefix():
    name = link_name("svcnet", "control-plane")
    assert len(name) == IFNAMSIZ
    assert name.startswith("svcnet-")


def test_long_names_sharing_a_prefix_do_not_collide():
    # systemd #10721: truncating without a hash made veths collide.
    a = hash_and_truncate("svcnet-worker-aaaaaaaaaa1", 15)
    b = hash_and_truncate("svcnet-worker-aaaaaaaaaa2", 15)
    assert a != b and len(a) == len(b) == 15


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "a:b", "x" * 16, ".", ".."])
def test_invalid_ifnames_are_refused(bad):
    with pytest.raises(LabNameError):
        validate_ifname(bad)


@pytest.mark.parametrize("bad", ["", "Svcnet", "-lab", "lab-", "a_b", "x" * 17])
def test_lab_names_are_dns_labels(bad):
    with pytest.raises(LabNameError, match="lab name"):
        validate_lab_name(bad)


def test_lab_names_carry_the_lab_everywhere():
    n = LabNames("demo")
    assert n.underlay_netns == "demo-underlay"
    assert n.external_netns == "demo-external"
    assert n.node("worker2") == "demo-worker2"
    assert n.node("demo-worker2") == "demo-worker2"
    assert n.bridge == "demo-br"
    assert n.underlay_port("demo-control-plane").startswith("u-")
    assert len(n.underlay_port("demo-control-plane")) <= IFNAMSIZ
    assert n.alias(node="demo-worker") == "svcnet lab=demo node=demo-worker"


def test_pod_names():
    assert pod_netns_name("demo-worker", "default", "web-1") == "demo-worker-default-web-1"
    long = pod_netns_name("demo-worker", "default", "w" * 200)
    assert len(long) == 63 and long.startswith("demo-worker-default-")
    v = pod_host_veth("uid-1")
    assert v.startswith("veth") and len(v) == 12 and v != pod_host_veth("uid-2")
