"""Fixtures that put the control-plane tests on a real etcd: one throwaway loopback
member per session (its own ports and data dir, stopped at the end), and per test a
fresh key prefix, so every test sees an empty store exactly as with a new SQLite file.

The `registry` fixture has the name and shape of tests/unit/controlplane_store's, so
that suite's test functions run here unchanged, on etcd (see test_registry_on_etcd.py).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from svcnet.controlplane.registry.store import Registry
from svcnet.controlplane.storage.etcd import EtcdStorage
from svcnet.controlplane.storage.etcd_process import EtcdCluster, EtcdNotFound, etcd_binary

_prefixes = itertools.count()


def have_etcd() -> bool:
    try:
        etcd_binary()
    except EtcdNotFound:
        return False
    return True


needs_etcd = pytest.mark.skipif(not have_etcd(), reason="etcd is not installed (Debian package etcd-server)")


def unique_prefix() -> str:
    return f"/svcnet-test-{os.getpid()}-{next(_prefixes)}"


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    try:
        etcd_binary()
    except EtcdNotFound as err:
        pytest.skip(str(err))
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), members=1) as cluster:
        yield cluster


@pytest.fixture
async def etcd_store(etcd: EtcdCluster) -> AsyncIterator[EtcdStorage]:
    store = await EtcdStorage.open(etcd.endpoints, prefix=unique_prefix())
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def registry(etcd: EtcdCluster, tmp_path: Path) -> AsyncIterator[Registry]:
    """tests/unit/controlplane_store's `registry`, on etcd under a prefix of its own."""
    reg = await Registry.open(tmp_path, storage=etcd.url, etcd_prefix=unique_prefix())
    await reg.bootstrap("192.0.2.10", 6443)
    try:
        yield reg
    finally:
        await reg.close()


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Path:
    d = tmp_path / "etcd-cluster"
    d.mkdir()
    return d
