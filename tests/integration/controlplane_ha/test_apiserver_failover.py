"""kill -9 one of two API servers (one 3-member etcd behind them) while a client creates
Services: the client, an informer and kubectl carry on through the other server, the
informer sees every Service exactly once, and the `kubernetes` EndpointSlice drops the
dead server once its endpoint lease expires.

Real processes throughout: etcd members, `svcnet apiserver` over HTTPS, the installed
kubectl; the client and the informer are svcnet's own (RestClient, ApiSource) reading
the kubeconfig the first server wrote, which lists both servers.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections import Counter
from typing import Any, Awaitable, Callable, TypeVar

import pytest
import yaml

from svcnet.apiclient import errors
from svcnet.apiclient.api_source import ApiSource
from svcnet.apiclient.client import RestClient
from svcnet.apiclient.informer import FuncHandler
from svcnet.apiclient.resources import ENDPOINT_SLICES, LEASES, NAMESPACES, SERVICES

from .conftest import HOSTS, LEASE_SECONDS, HAControlPlane, needs_etcd

pytestmark = [pytest.mark.slow, needs_etcd,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")]

T = TypeVar("T")
TOTAL, KILL_AFTER = 60, 20


async def eventually(probe: Callable[[], Awaitable[T]], what: str, timeout: float = 30.0,
                     logs: Callable[[], str] = lambda: "") -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except (errors.ApiError, errors.TransportError) as err:
            last = err
        else:
            if last:
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{logs()}")


async def slice_addresses(client: RestClient) -> list[str]:
    es = await client.get(ENDPOINT_SLICES, "kubernetes", "default")
    return [e["addresses"][0] for e in es.get("endpoints") or []]


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ha"},
            "spec": {"ports": [{"port": 80}]}}


async def test_kill_9_one_apiserver_while_services_are_created(ha: HAControlPlane) -> None:
    first, second = ha.servers
    kc = yaml.safe_load(first.kubeconfig.read_text())
    assert kc["clusters"][0]["cluster"]["extensions"] == [
        {"name": "svcnet.io/servers", "extension": {"servers": [ha.url(0), ha.url(1)]}}]
    client = RestClient.from_kubeconfig(str(first.kubeconfig))
    assert client.servers == (ha.url(0), ha.url(1))
    source = ApiSource.from_kubeconfig(str(first.readonly_kubeconfig), max_backoff=2.0)
    informer = source.informer(SERVICES, namespace="ha")
    added: Counter[str] = Counter()
    deleted: list[str] = []
    informer.add_handler(FuncHandler(on_add=lambda o: added.update([o["metadata"]["name"]]),
                                     on_delete=lambda o: deleted.append(o["metadata"]["name"])))
    running = asyncio.create_task(source.run())
    try:
        # both servers keep their endpoint in the kubernetes Service's slice
        await eventually(lambda: _equal(slice_addresses(client), list(HOSTS)), "both apiservers in the slice",
                         logs=ha.logs)
        leases = await client.list(LEASES, "kube-system",
                                   label_selector="apiserver.kubernetes.io/identity=kube-apiserver")
        assert sorted(i["metadata"]["name"] for i in leases["items"]) == [
            f"apiserver-{h}-{ha.port}" for h in HOSTS]
        await client.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ha"}})
        await informer.wait_for_sync()

        acked: list[str] = []
        for i in range(TOTAL):
            name = f"svc-{i:03d}"
            if i == KILL_AFTER:
                assert first.proc is not None
                first.stop(kill=True)  # SIGKILL: no goodbye, its lease is left to expire
            for attempt in range(1, 20):
                try:
                    await client.create(SERVICES, service(name), "ha")
                except errors.AlreadyExists:
                    assert attempt > 1, f"{name} existed before it was created"
                    # an earlier attempt's answer was lost but it had landed: acknowledged now
                except errors.TransportError:
                    continue  # a write cut off by the kill: ambiguous, so try again
                break
            else:
                raise AssertionError(f"{name} was never created\n{ha.logs()}")
            acked.append(name)
        assert client.server == ha.url(1)

        # the informer resumed on the survivor and saw each Service once
        await eventually(lambda: _true(set(added) >= set(acked)), "the informer to see every Service",
                         logs=ha.logs)
        assert [n for n, c in added.items() if c != 1] == [] and deleted == []
        refl = source.reflector_for(SERVICES)
        assert refl is not None and source.client.server == ha.url(1)
        assert refl.stats.disconnects >= 1  # its watch on the killed server broke
        assert refl.stats.relists_after_expired == 0

        # the dead server leaves the slice after its lease expires; its lease is deleted
        await eventually(lambda: _equal(slice_addresses(client), [HOSTS[1]]), "the dead apiserver to go",
                         timeout=LEASE_SECONDS * 6, logs=ha.logs)
        with pytest.raises(errors.NotFound):
            await client.get(LEASES, f"apiserver-{HOSTS[0]}-{ha.port}", "kube-system")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await client.close()

    # kubectl: the survivor's kubeconfig, and the dead one's kubeconfig told the other
    # --server (one CA and one token for both servers) see the same store
    listed = second.kubectl_json("get", "services", "-n", "ha")
    assert sorted(i["metadata"]["name"] for i in listed["items"]) == sorted(acked)
    via_first = first.kubectl("--server", ha.url(1), "get", "services", "-n", "ha", "-o", "name")
    assert len(via_first.stdout.split()) == TOTAL
    # kubectl reads the kubeconfig with the svcnet.io/servers extension and uses `server`
    view = first.kubectl("config", "view", "--raw", "-o", "json").stdout
    assert "svcnet.io/servers" in view
    assert base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]) == \
        (first.data_dir.parent / "shared-pki" / "ca.crt").read_bytes()


async def _equal(value: Awaitable[T], want: T) -> bool:
    return await value == want


async def _true(value: bool) -> bool:
    return value


async def test_a_stopped_apiserver_leaves_the_slice_before_it_exits(ha: HAControlPlane) -> None:
    first, second = ha.servers
    async with RestClient.from_kubeconfig(str(second.kubeconfig)) as client:
        await eventually(lambda: _equal(slice_addresses(client), list(HOSTS)), "both apiservers in the slice",
                         logs=ha.logs)
        assert first.stop() == 0  # SIGTERM: it deletes its lease and rewrites the slice, then exits
        # no waiting for a lease to expire: both are already true when the process is gone
        assert await slice_addresses(client) == [HOSTS[1]]
        with pytest.raises(errors.NotFound):
            await client.get(LEASES, f"apiserver-{HOSTS[0]}-{ha.port}", "kube-system")
