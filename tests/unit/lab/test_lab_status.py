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
