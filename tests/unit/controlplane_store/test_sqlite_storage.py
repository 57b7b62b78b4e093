"""What is SQLite's own beyond the storage contract (test_storage.py): the history and
the revision survive reopening the file, one server per data dir, a corrupt file is a
clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from svcnet.controlplane.storage import SQLiteStorage


async def test_history_survives_reopen_so_watches_resume(tmp_path: Path) -> None:
    s = await SQLiteStorage.open(tmp_path)
    await s.create("/k/a", b"1")
    await s.update("/k/a", b"2", 1)
    await s.close()
    s = await SQLiteStorage.open(tmp_path)
    try:
        assert s.revision == 2
        w = s.watch("/k/", start_revision=2)
        ev = await w.next(1)
        assert ev is not None and ev.kv is not None and ev.kv.value == b"2"
        res = await s.create("/k/b", b"3")
        assert res.revision == 3  # revisions keep increasing across restarts
        w.close()
    finally:
        await s.close()


async def test_one_server_per_data_dir(tmp_path: Path) -> None:
    first = await SQLiteStorage.open(tmp_path)
    try:
        with pytest.raises(Exception, match="in use by another svcnet apiserver"):
            await SQLiteStorage.open(tmp_path)
    finally:
        await first.close()
    again = await SQLiteStorage.open(tmp_path)  # the lock went with the first store
    await again.close()


async def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "store.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(Exception, match="cannot open .*store.db"):
        await SQLiteStorage.open(tmp_path)
