"""Property test: whatever sequence of Service creates, type changes and deletes runs
(concurrently, in small ranges that fill up), the allocation keys in storage are exactly
the values live Services hold, and no value is held twice."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.allocators import CLUSTER_IP_PREFIX, NODE_PORT_PREFIX
from svcnet.controlplane.registry.store import Registry

TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "Headless")
action = st.tuples(st.sampled_from(("create", "retype", "delete")), st.integers(0, 5),
                   st.sampled_from(TYPES), st.booleans())


def spec_for(typ: str, local: bool) -> dict[str, Any]:
    if typ == "ExternalName":
        return {"type": "ExternalName", "externalName": "db.example.com"}
    if typ == "Headless":
        return {"clusterIP": "None", "ports": [{"port": 80}]}
    spec: dict[str, Any] = {"type": typ, "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}
    if typ == "LoadBalancer" and local:
        spec["externalTrafficPolicy"] = "Local"
    return spec


async def run(step: tuple[str, int, str, bool], reg: Registry) -> None:
    verb, i, typ, local = step
    name = f"s{i}"
    try:
        if verb == "create":
            await reg.create(k.SERVICES, "default", {"metadata": {"name": name}, "spec": spec_for(typ, local)})
        elif verb == "delete":
            await reg.delete(k.SERVICES, "default", name)
        else:
            cur = await reg.get(k.SERVICES, "default", name)
            cur["spec"] = spec_for(typ, local)
            await reg.update(k.SERVICES, "default", name, cur)
    except APIError as err:
        # taken/full ranges, missing objects and lost races are fine; nothing else is
        assert err.code in (404, 409, 422, 500), err.message
        if err.code == 500:
            assert "range is full" in err.message


async def check(steps: list[list[tuple[str, int, str, bool]]]) -> None:
    workdir = Path(tempfile.mkdtemp())
    reg = await Registry.open(workdir, service_cidr="10.96.0.0/28", node_port_range="30000-30009")
    try:
        await reg.bootstrap("192.0.2.10", 6443)
        for batch in steps:
            await asyncio.gather(*(run(step, reg) for step in batch))
        services = (await reg.list(k.SERVICES, None))["items"]
        ips = Counter(ip for s in services for ip in s["spec"].get("clusterIPs") or [] if ip != "None")
        ports = Counter(p for s in services
                        for p in {q.get("nodePort") for q in s["spec"].get("ports") or []} |
                        {s["spec"].get("healthCheckNodePort")} if p)
        assert all(n == 1 for n in ips.values()), ips
        assert all(n == 1 for n in ports.values()), ports
        ip_keys = {kv.key[len(CLUSTER_IP_PREFIX):] for kv in (await reg.storage.range(CLUSTER_IP_PREFIX)).kvs}
        port_keys = {int(kv.key[len(NODE_PORT_PREFIX):])
                     for kv in (await reg.storage.range(NODE_PORT_PREFIX)).kvs}
        assert ip_keys == set(ips) and port_keys == set(ports)
        assert reg.allocator.ips.pending == set() and reg.allocator.ports.pending == set()
    finally:
        await reg.close()
        shutil.rmtree(workdir, ignore_errors=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.lists(action, min_size=1, max_size=6), min_size=1, max_size=6))
def test_allocations_match_live_services(steps: list[list[tuple[str, int, str, bool]]]) -> None:
    asyncio.run(check(steps))
