"""Property test: the SQLite store against a plain-dict model of etcd's MVCC semantics.

Random puts and deletes on a few keys (one transaction each), then a random compaction:
every read at every retained revision, and every watch from every retained revision,
must match what the model says."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svcnet.controlplane.storage import CompactedError, Delete, Put, SQLiteStorage

KEYS = ("/m/a", "/m/b", "/m/c", "/n/x")
ops_strategy = st.lists(
    st.tuples(st.sampled_from(KEYS), st.one_of(st.none(), st.binary(min_size=1, max_size=4))),
    min_size=1, max_size=25)


async def _check(ops: list[tuple[str, bytes | None]], compact_at: float) -> None:
    workdir = Path(tempfile.mkdtemp())
    store = await SQLiteStorage.open(workdir)
    try:
        snapshots: dict[int, dict[str, bytes]] = {0: {}}
        events: list[tuple[int, str, bytes | None]] = []
        state: dict[str, bytes] = {}
        for key, value in ops:
            op = Put(key, value) if value is not None else Delete(key)
            res = await store.txn([], [op])
            if value is None and key not in state:
                assert res.revision == store.revision == max(snapshots)  # nothing written
                continue
            if value is None:
                del state[key]
            else:
                state[key] = value
            snapshots[res.revision] = dict(state)
            events.append((res.revision, key, value))
        head = store.revision
        assert head == max(snapshots)
        compact = int(compact_at * head)
        if compact:
            await store.compact(compact)
        for rev in range(1, head + 1):  # (revision 0 means "now" in the API)
            model = snapshots[max(r for r in snapshots if r <= rev)]
            if rev and rev < compact:
                try:
                    await store.range("/m/", revision=rev)
                except CompactedError:
                    continue
                raise AssertionError(f"range at compacted revision {rev} succeeded")
            page = await store.range("/m/", revision=rev)
            assert {kv.key: kv.value for kv in page.kvs} == {
                k: v for k, v in model.items() if k.startswith("/m/")}, rev
        for start in range(compact + 1, head + 2):
            w = store.watch("/m/", start)
            got = []
            while (ev := await w.next(0.01)) is not None:
                got.append((ev.revision, ev.key, ev.kv.value if ev.kv else None))
            w.close()
            assert got == [e for e in events if e[0] >= start and e[1].startswith("/m/")], start
    finally:
        await store.close()
        shutil.rmtree(workdir, ignore_errors=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy, compact_at=st.floats(min_value=0, max_value=1))
def test_store_matches_the_mvcc_model(ops: list[tuple[str, bytes | None]], compact_at: float) -> None:
    asyncio.run(_check(ops, compact_at))
