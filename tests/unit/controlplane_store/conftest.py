from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry.store import Registry


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await Registry.open(tmp_path / "data", service_cidr="10.96.0.0/12",
                              node_port_range="30000-32767")
    await reg.bootstrap("192.0.2.10", 6443)
    try:
        yield reg
    finally:
        await reg.close()


def causes(err: APIError) -> list[tuple[str, str]]:
    """(field, message) of a 422's causes."""
    return [(c["field"], c["message"]) for c in (err.details or {}).get("causes", [])]


def svc(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
