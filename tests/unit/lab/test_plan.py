from svcnet.lab.plan import NetnsAdd, RouteAdd, lab_network_plan, pod_sandbox_plan, render_plan
from svcnet.lab.topology import parse_topology


def test_lab_plan_builds_underlay_nodes_routes_and_external():
    t = parse_topology("name: demo")
    steps = lab_network_plan(t)
    assert [s.name for s in steps if isinstance(s, NetnsAdd)] == [
        "demo-underlay", "demo-control-plane", "demo-worker", "demo-worker2", "demo-external"]
    text = render_plan(steps)
    # every node reaches the other nodes' pod CIDRs over the underlay
    assert "ip -n demo-worker route replace 10.244.0.0/24 via 172.18.0.2" in text
    assert "ip -n demo-worker route replace 10.244.2.0/24 via 172.18.0.4" in text
    assert "ip -n demo-worker route replace 10.244.1.0/24" not in text
    assert "ip netns exec demo-worker sysctl -qw net.ipv4.ip_forward=1" in text
    # external: the LB pool is routed to every node
    assert ("ip -n demo-external route replace 172.19.0.0/28 nexthop via 172.18.0.2 "
            "nexthop via 172.18.0.3 nexthop via 172.18.0.4") in text
    # nothing is done in the host's namespace
    assert all(getattr(s, "netns", "x") for s in steps if not isinstance(s, NetnsAdd))


def test_pod_sandbox_is_routed_not_bridged():
    steps = pod_sandbox_plan(None, "demo-worker-default-web", "veth1234abcd", "10.244.1.5", "10.244.1.1", "a")
    text = render_plan(steps)
    assert "ip link add veth1234abcd type veth peer name eth0 netns demo-worker-default-web" in text
    assert "ip addr add 10.244.1.1/32 dev veth1234abcd" in text
    assert "ip -n demo-worker-default-web addr add 10.244.1.5/32 dev eth0" in text
    assert "ip -n demo-worker-default-web route replace default via 10.244.1.1 dev eth0" in text
    assert "ip route replace 10.244.1.5/32 dev veth1234abcd scope link src 10.244.1.1" in text
    assert [s for s in steps if isinstance(s, RouteAdd)][-1].netns is None
