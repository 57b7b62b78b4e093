import io

from svcnet.lab.lab_status import render_table, summarize
from svcnet.lab.progress import Status

META = {"name": "demo", "proxyMode": "nftables", "nodes": [{"name": "demo-w", "ip": "172.18.0.3"}],
        "external": {"netns": "demo-external", "ip": "172.18.0.254"}}
SVC = {"metadata": {"name": "web", "namespace": "default"},
       "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]},
       "status": {"loadBalancer": {"ingress": [{"ip": "172.19.0.1"}]}}}
SLICE = {"metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
         "ports": [{"port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["10.244.1.2"], "nodeName": "demo-w", "targetRef": {"name": "web-1"},
                        "conditions": {"ready": False, "serving": True, "terminating": True}}]}


def test_services_show_frontends_and_endpoints():
    s = summarize(META, [], [], [SVC], [SLICE])
    web = s["services"][0]
    assert web["frontends"] == ["10.96.0.20:80/TCP", "172.18.0.3:30080/TCP (NodePort)",
                                "172.19.0.1:80/TCP (LoadBalancer)"]
    assert web["endpoints"] == [{"address": "10.244.1.2", "ports": "8080/TCP", "node": "demo-w", "pod": "web-1",
                                 "ready": False, "serving": True, "terminating": True}]
    table = render_table(s)
    assert "1) → 10.244.1.2 8080/TCP" in table and "serving/terminating" in table


def test_progress_marks_steps_without_a_tty():
    out = io.StringIO()
    st = Status(out, tty=False)
    with st.step("Preparing nodes"):
        pass
    try:
        with st.step("Starting"):
            raise RuntimeError("x")
    except RuntimeError:
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == " • Preparing nodes ..." and lines[1].startswith(" ✓ Preparing nodes")
    assert lines[3].startswith(" ✗ Starting")


def test_loadbalancer_plan_keeps_assigns_honours_and_releases():
    import ipaddress

    from svcnet.lab.loadbalancer import plan

    pool = ipaddress.IPv4Network("172.19.0.0/29")  # .1-.6

    def svc(name, type_="LoadBalancer", ip=None, asked=None, cls=None):
        spec = {"type": type_}
        if asked:
            spec["loadBalancerIP"] = asked
        if cls:
            spec["loadBalancerClass"] = cls
        st = {"loadBalancer": {"ingress": [{"ip": ip}]}} if ip else {}
        return {"metadata": {"name": name, "namespace": "default"}, "spec": spec, "status": st}

    changes = plan([svc("a", ip="172.19.0.1"), svc("b"), svc("c", asked="172.19.0.5"), svc("d", cls="other"),
                    svc("e", type_="ClusterIP", ip="172.19.0.6"), svc("f", ip="10.0.0.1")], pool)
    assert changes == {"default/b": "172.19.0.2", "default/c": "172.19.0.5", "default/e": None,
                       "default/f": "172.19.0.3"}
    full = [svc(str(i)) for i in range(8)]
    assert list(plan(full, pool).values()).count(None) == 0  # unassignable ones are simply not listed
    assert len(plan(full, pool)) == 6
