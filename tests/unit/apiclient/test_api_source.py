"""ApiSource: shared informers per resource, one reflector each, late informers,
writes through the same client, clean cancellation, and open_source() routing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from svcnet.apiclient.api_source import ApiSource
from svcnet.apiclient.client import RestClient
from svcnet.apiclient.informer import label_index
from svcnet.apiclient.resources import ENDPOINT_SLICES, PODS, SERVICES
from svcnet.apiclient.source import ObjectSource, open_source

from .conftest import FakeClock, eventually
from .fake_api import FakeApi

SERVICE_NAME = "kubernetes.io/service-name"


async def test_shared_informers_and_writes_through_the_client(fake: FakeApi, clock: FakeClock) -> None:
    fake.create(SERVICES, {"metadata": {"name": "web"}})
    fake.create(ENDPOINT_SLICES, {"metadata": {"name": "web-1", "labels": {SERVICE_NAME: "web"}}})
    source = ApiSource(RestClient(fake.url), clock=clock)  # type: ignore[attr-defined]
    _: ObjectSource = source  # it satisfies the protocol agents are written against
    services = source.informer(SERVICES)
    assert source.informer(SERVICES) is services
    slices = source.informer(ENDPOINT_SLICES, {"service": label_index(SERVICE_NAME)})
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(asyncio.gather(services.wait_for_sync(), slices.wait_for_sync()), 5)
        assert [o["metadata"]["name"] for o in slices.by_index("service", "web")] == ["web-1"]
        # An informer asked for while running gets its own reflector.
        pods = source.informer(PODS, namespace="default", field_selector={"spec.nodeName": "n1"})
        await asyncio.wait_for(pods.wait_for_sync(), 5)
        pod_lists = [q for m, p, q in fake.requests if p == "/api/v1/namespaces/default/pods"]
        assert pod_lists[0]["fieldSelector"] == "spec.nodeName=n1"
        # Agents write through the same client; the write comes back through the watch.
        svc = services.get_by("default", "web")
        assert svc is not None
        await source.client.update_status(SERVICES, {**svc, "status": {"conditions": []}})
        await eventually(lambda: (services.get_by("default", "web") or {}).get("status") == {"conditions": []})
        refl = source.reflector_for(SERVICES)
        assert refl is not None and refl.stats.lists == 1
        assert len(source.reflectors) == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await eventually(lambda: not fake.watchers)  # every watch connection was closed


def test_open_source_routes_kubeconfig_to_api_source(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    kc.write_text(yaml.safe_dump({
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "namespace": "lab"}}],
        "current-context": "x"}))
    source = open_source(str(kc), None)
    assert isinstance(source, ApiSource)
    assert source.client.server == "http://127.0.0.1:1" and source.client.default_namespace == "lab"
