"""Two `svcnet controller-manager`s with leader election against two API servers: the
API server the leader talks to dies (kill -9) and work goes on through the other; then
the leader itself dies and the other instance takes over within the lease duration.
(Leader election on one API server is tests/integration/controllers'
test_leader_election_failover; this adds the second API server and its death.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from integration.controllers.cluster import Api, ControllerManager, wait_for

from .conftest import HAControlPlane, needs_etcd

pytestmark = [pytest.mark.slow, needs_etcd,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")]

LEASE = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/svcnet-controller-manager"
FLAGS = ("--leader-elect", "--leader-elect-lease-duration", "2s", "--leader-elect-renew-deadline", "1500ms",
         "--leader-elect-retry-period", "200ms", "--controllers", "endpointslice")


def create_service(api: Api, name: str) -> None:
    api.call("POST", "/api/v1/namespaces/default/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}})


def test_leader_survives_its_apiserver_and_a_standby_takes_over(ha: HAControlPlane, tmp_path: Path) -> None:
    first, second = ha.servers
    # each instance's kubeconfig lists both servers, its "own" first
    cms = [ControllerManager(s.kubeconfig, tmp_path / f"cm{i}.log", FLAGS) for i, s in enumerate(ha.servers)]
    api = Api(second)

    def logs() -> str:
        return "\n".join(f"--- cm{i} ---\n{cm.log_tail(2500)}" for i, cm in enumerate(cms)) + ha.logs()

    try:
        cms[0].start()
        holder = wait_for(lambda: api.call("GET", LEASE, ok=(200, 404)).get("spec", {}).get("holderIdentity"),
                          what="a leader", logs=logs)
        cms[1].start()
        create_service(api, "one")
        wait_for(lambda: api.slices("one"), what="slices from the leader", logs=logs)

        first.stop(kill=True)  # the leader's apiserver dies; it moves to the other one
        create_service(api, "two")
        wait_for(lambda: api.slices("two"), what="slices with one apiserver left", logs=logs)

        holder = api.call("GET", LEASE)["spec"]["holderIdentity"]
        leader = next(cm for cm in cms if f"identity={holder}" in cm.log_tail(100_000))  # logged at start
        standby = cms[1] if leader is cms[0] else cms[0]
        assert leader.proc is not None and leader.proc.poll() is None, "the leader exited:\n" + logs()
        leader.stop(kill=True)
        wait_for(lambda: (h := api.call("GET", LEASE)["spec"]["holderIdentity"]) != holder and h,
                 timeout=20, what="the standby to take over", logs=logs)
        assert "successfully acquired lease" in standby.log_tail(100_000)
        create_service(api, "three")
        wait_for(lambda: api.slices("three"), what="slices from the new leader", logs=logs)
    finally:
        for cm in cms:
            cm.stop()
