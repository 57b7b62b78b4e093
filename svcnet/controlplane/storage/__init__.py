"""Storage backends behind one revisioned key-value interface (`interface.Storage`):
the embedded SQLite store now, etcd later."""

from svcnet.controlplane.storage.interface import (
    CompactedError, Compare, Delete, FutureRevisionError, KeyValue, Put, RangeResult, Storage,
    StorageError, TxnResult, Watch, WatchClosed, WatchEvent,
)
from svcnet.controlplane.storage.sqlite import SQLiteStorage

__all__ = [
    "CompactedError", "Compare", "Delete", "FutureRevisionError", "KeyValue", "Put",
    "RangeResult", "Storage", "StorageError", "TxnResult", "Watch", "WatchClosed", "WatchEvent",
    "SQLiteStorage",
]
