"""The per-service-port decisions both backends take from topology.categorize():
which endpoints serve internal and external traffic, what traffic without a usable
endpoint gets, and the endpoints that need per-endpoint rules."""

from __future__ import annotations

from typing import Any

import pytest

from svcnet.proxy.topology import categorize
from tests.unit.proxy.builders import NODE, config, ep, eps, state, svc

LOCAL, REMOTE = "10.244.1.1", "10.244.2.1"


def decide(*endpoints: dict[str, Any], **spec: Any) -> tuple[set[str], set[str], str, list[str]]:
    st = state([svc("s", "10.96.0.9", ("p80", 80, "TCP", 30080), type="NodePort", **spec),
                eps("s", *endpoints)])
    (name, sp), = st.services.items()
    cat = categorize(sp, st.endpoints.get(name, ()), NODE, "")
    return ({e.ip for e in cat.internal(sp)}, {e.ip for e in cat.external(sp)}, cat.when_none_usable,
            [e.ip for e in cat.distinct])


@pytest.mark.parametrize("spec, endpoints, internal, external, none_usable, distinct", [
    pytest.param({}, (ep(LOCAL, node=NODE), ep(REMOTE)), {LOCAL, REMOTE}, {LOCAL, REMOTE}, "drop",
                 [LOCAL, REMOTE], id="Cluster/Cluster: every endpoint"),
    pytest.param({"externalTrafficPolicy": "Local"}, (ep(LOCAL, node=NODE), ep(REMOTE)), {LOCAL, REMOTE},
                 {LOCAL}, "drop", [LOCAL, REMOTE], id="external Local: only this node's for external"),
    pytest.param({"internalTrafficPolicy": "Local"}, (ep(REMOTE),), set(), {REMOTE}, "drop", [REMOTE],
                 id="internal Local, none here: ClusterIP dropped (endpoints exist elsewhere)"),
    pytest.param({"externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local"}, (ep(LOCAL, node=NODE),),
                 {LOCAL}, {LOCAL}, "drop", [LOCAL], id="both Local, one local endpoint, listed once"),
    pytest.param({}, (ep(REMOTE, ready=False, serving=False),), set(), set(), "reject", [],
                 id="no usable endpoint anywhere: reject"),
    pytest.param({}, (), set(), set(), "reject", [], id="no endpoints: reject"),
])
def test_service_port_decisions(spec: dict[str, Any], endpoints: tuple[dict[str, Any], ...], internal: set[str],
                                external: set[str], none_usable: str, distinct: list[str]) -> None:
    assert decide(*endpoints, **spec) == (internal, external, none_usable, distinct)


def test_node_ip_in_source_ranges_is_per_family() -> None:
    cfg = config()  # node 192.168.0.2
    assert cfg.node_ip_in(["192.168.0.0/24"])
    assert not cfg.node_ip_in(["203.0.113.0/24", "::/0"])
    assert not config(family=6, node_ips=("fd00::2",)).node_ip_in(["192.168.0.0/24"])
