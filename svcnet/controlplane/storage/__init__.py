"""Storage backends behind one revisioned key-value interface (`interface.Storage`):
the embedded SQLite store and an etcd v3 cluster (see README.md).

`open_storage` is the one place that turns the apiserver's `--storage` and
`--etcd-prefix` flags into a backend; `check_storage_flags` validates them up front.
"""

from __future__ import annotations

from pathlib import Path

from svcnet.controlplane.storage.interface import (
    CompactedError, Compare, Delete, FutureRevisionError, KeyValue, Put, RangeResult, Storage,
    StorageError, TxnResult, Watch, WatchClosed, WatchEvent,
)
from svcnet.controlplane.storage.sqlite import SQLiteStorage

__all__ = [
    "CompactedError", "Compare", "Delete", "FutureRevisionError", "KeyValue", "Put",
    "RangeResult", "Storage", "StorageError", "TxnResult", "Watch", "WatchClosed", "WatchEvent",
    "SQLiteStorage", "DEFAULT_ETCD_PREFIX", "check_etcd_prefix", "check_storage_flags", "open_storage",
]

SQLITE = "sqlite"
DEFAULT_ETCD_PREFIX = "/registry"


def check_storage_flags(storage: str, etcd_prefix: str = DEFAULT_ETCD_PREFIX) -> list[str]:
    """Validate `--storage` and `--etcd-prefix`; the etcd endpoints as URLs ([] for
    SQLite). Raises ValueError with a message fit for the command line."""
    if storage == SQLITE:
        return []
    from svcnet.controlplane.storage.etcd_client import parse_etcd_url

    try:
        endpoints = parse_etcd_url(storage)
    except ValueError as err:
        if "://" in storage:
            raise ValueError(f"--storage: {err}") from None  # names the bad endpoint
        raise ValueError(f"invalid --storage {storage!r}: want sqlite or etcd://HOST:PORT[,HOST:PORT…]") from None
    check_etcd_prefix(etcd_prefix)
    return endpoints


def check_etcd_prefix(prefix: str) -> None:
    """`/NAME[/…]` without a trailing slash (keys are PREFIX/services/specs/…)."""
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError(f"invalid --etcd-prefix {prefix!r}: want /NAME without a trailing slash")


async def open_storage(storage: str, *, data_dir: Path, etcd_prefix: str = DEFAULT_ETCD_PREFIX) -> Storage:
    """The backend `--storage` names: "sqlite" opens DATA_DIR/store.db; "etcd://HOST:PORT,…"
    connects to that cluster, keeping this cluster's keys under `etcd_prefix`."""
    endpoints = check_storage_flags(storage, etcd_prefix)
    if not endpoints:
        return await SQLiteStorage.open(Path(data_dir))
    from svcnet.controlplane.storage.etcd import EtcdStorage

    return await EtcdStorage.open(endpoints, prefix=etcd_prefix)
