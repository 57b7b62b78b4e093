"""The Registry suite of tests/unit/controlplane_store, run unchanged on etcd.

The test functions are imported, not copied: pytest collects them here and resolves
their `registry` fixture from this folder's conftest (a Registry over EtcdStorage on
a throwaway etcd member). Only tests that reopen a SQLite data dir (restart on the same
file) are left out; their etcd counterparts are in test_etcd_faults.py.
"""

from __future__ import annotations

from unit.controlplane_store.test_allocators import *  # noqa: F401,F403
from unit.controlplane_store.test_registry import *  # noqa: F401,F403
from unit.controlplane_store.test_service_strategy import *  # noqa: F401,F403
from unit.controlplane_store.test_strategies import *  # noqa: F401,F403
from unit.controlplane_store.test_watch import *  # noqa: F401,F403

# SQLite-specific: they reopen `Registry.open(tmp_path)` on the same file.
for _name in ("test_watch_resumes_across_restart", "test_allocations_survive_restart"):
    globals().pop(_name, None)
del _name
