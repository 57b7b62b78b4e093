"""The Registry suite of tests/unit/controlplane_store, run unchanged on etcd.

The test functions are imported, not copied: pytest collects them here and resolves
their `registry` fixture from this folder's conftest (a Registry over EtcdStorage on
a throwaway etcd member). Only tests that reopen a SQLite data dir (restart on the same
file) are left out; their etcd counterparts are in test_etcd_faults.py. Below them,
`Registry.open` with `--storage etcd://…` and `--etcd-prefix`, as the apiserver opens it.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import aiohttp
import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.store import Registry
from svcnet.controlplane.storage.etcd_process import EtcdCluster
from unit.controlplane_store.test_allocators import *  # noqa: F401,F403
from unit.controlplane_store.test_registry import *  # noqa: F401,F403
from unit.controlplane_store.test_service_strategy import *  # noqa: F401,F403
from unit.controlplane_store.test_strategies import *  # noqa: F401,F403
from unit.controlplane_store.test_watch import *  # noqa: F401,F403

from .conftest import unique_prefix

# SQLite-specific: they reopen `Registry.open(tmp_path)` on the same file.
for _name in ("test_watch_resumes_across_restart", "test_allocations_survive_restart"):
    globals().pop(_name, None)
del _name


async def test_registry_open_keeps_its_keys_under_the_etcd_prefix(etcd: EtcdCluster, tmp_path: Path) -> None:
    """`Registry.open(storage=…, etcd_prefix=…)`, as `svcnet apiserver` calls it: servers on
    one prefix share objects and allocations, a server on another prefix sees none."""
    prefix = unique_prefix()
    a = await Registry.open(tmp_path / "a", storage=etcd.url, etcd_prefix=prefix)
    b = await Registry.open(tmp_path / "b", storage=etcd.url, etcd_prefix=prefix)
    other = await Registry.open(tmp_path / "c", storage=etcd.url, etcd_prefix=unique_prefix())
    try:
        await a.bootstrap("192.0.2.10", 6443)
        results = await asyncio.gather(*(
            (a if i % 2 else b).create(k.SERVICES, "default", {"metadata": {"name": f"s{i}"},
                                                               "spec": {"ports": [{"port": 80}]}})
            for i in range(10)))
        ips = {out["spec"]["clusterIP"] for out, _ in results}
        assert len(ips) == 10
        taken = (await b.get(k.SERVICES, "default", "s0"))["spec"]["clusterIP"]
        with pytest.raises(APIError, match="already allocated"):
            await b.create(k.SERVICES, "default", {"metadata": {"name": "dup"},
                                                   "spec": {"clusterIP": taken, "ports": [{"port": 80}]}})
        key = f"{prefix}/services/specs/default/s0".encode()
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://{etcd.endpoints[0]}/v3/kv/range",
                              json={"key": base64.b64encode(key).decode()}) as resp:
                assert len((await resp.json())["kvs"]) == 1
        assert (await other.list(k.SERVICES, None))["items"] == []
    finally:
        for reg in (a, b, other):
            await reg.close()
