"""The embedded store: etcd's revisioned model on one SQLite file.

Layout (`<data-dir>/store.db`, WAL journal, `synchronous=FULL` so an acknowledged
write survives `kill -9` and power loss):

* ``kv``       the current state of every key (key, value, create/mod revision, version);
* ``history``  one row per key per write: the MVCC log that serves reads at a past
  revision and watch replay after a restart. A row is (revision, sub-index, key,
  deleted?, value, create_revision, version, prev_revision); `prev_revision` points at
  the key's previous row so watch events carry `prev_kv` like etcd's;
* ``meta``     the current revision and the compact revision.

All three change in the same SQLite transaction, so the store is never half-written and
revisions never go back after a crash. Every statement runs on one worker thread that
owns the connection: that serialises writes (one global revision, no lost updates) and
keeps the event loop free while SQLite fsyncs. A committed write is handed to watchers
with `call_soon_threadsafe` from that thread, in commit order, before the writer's
`await` returns; so a watch started from revision R sees every write after R exactly once.
Writes queued while the thread is busy are committed together (group commit: one fsync
for many writers, each still at its own revision and acknowledged only after COMMIT).

Compaction at C deletes history rows at or before C except each key's newest live row,
so reads at revision >= C still work and watches may start from C + 1.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from svcnet.controlplane.storage.interface import (
    CompactedError, Compare, FutureRevisionError, KeyValue, Op, Put, RangeResult,
    Storage, StorageError, TxnResult, Watch, WatchClosed, WatchEvent, prefix_end,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DB_NAME = "store.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL,
    create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL, version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    revision INTEGER NOT NULL, sub INTEGER NOT NULL, key TEXT NOT NULL,
    deleted INTEGER NOT NULL, value BLOB, create_revision INTEGER, version INTEGER,
    prev_revision INTEGER NOT NULL,
    PRIMARY KEY (revision, sub)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_key ON history (key, revision);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compact_revision', 0);
"""

# Watchers that fall this far behind are closed (kube closes slow watchers too); they
# resume from their last revision, which history still holds.
MAX_WATCH_BACKLOG = 100_000


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on `<data-dir>/store.lock` for the life of the store: two
    servers writing one SQLite file would each believe they own the revision counter."""
    path = data_dir / "store.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StorageError(f"{data_dir} is in use by another svcnet apiserver (pid {holder}); "
                           "stop it or pick another --data-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class SQLiteStorage(Storage):
    """`Storage` on SQLite; open with `await SQLiteStorage.open(data_dir)`."""

    check_name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svcnet-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db_revision = 0          # owned by the worker thread
        self._revision = 0             # delivered revision, owned by the loop
        self._compact_revision = 0
        self._watchers: set[_SQLiteWatch] = set()
        self._closed = False
        self._pending: list[tuple[tuple[Compare, ...], tuple[Op, ...], asyncio.Future[TxnResult]]] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._lock_fd: int | None = None

    @classmethod
    async def open(cls, data_dir: Path) -> "SQLiteStorage":
        data_dir.mkdir(parents=True, exist_ok=True)
        store = cls(data_dir / DB_NAME)
        store._loop = asyncio.get_running_loop()
        store._lock_fd = _lock_data_dir(data_dir)
        try:
            await store._run(store._open_sync)
        except sqlite3.Error as err:
            store._executor.shutdown(wait=False)
            os.close(store._lock_fd)
            raise StorageError(f"cannot open {store.path}: {err}") from err
        store._revision = store._db_revision
        log.info("storage opened path=%s revision=%d compact_revision=%d",
                 store.path, store._revision, store._compact_revision)
        return store

    # -- worker-thread plumbing --------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        self._db_revision = int(meta["revision"])
        self._compact_revision = int(meta["compact_revision"])

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "call SQLiteStorage.open() first"
        return self._conn

    # -- reads -------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact_revision

    def _check_revision(self, revision: int) -> None:
        if revision and revision < self._compact_revision:
            raise CompactedError(revision, self._compact_revision)
        if revision > self._db_revision:
            raise FutureRevisionError(revision, self._db_revision)

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        return await self._run(self._get_sync, key, revision)

    def _get_sync(self, key: str, revision: int) -> KeyValue | None:
        self._check_revision(revision)
        if not revision or revision == self._db_revision:
            return self._current(key)
        row = self._db.execute(
            "SELECT deleted, value, create_revision, revision, version FROM history "
            "WHERE key = ? AND revision <= ? ORDER BY revision DESC LIMIT 1",
            (key, revision)).fetchone()
        if row is None or row[0]:
            return None
        return KeyValue(key, row[1], row[2], row[3], row[4])

    def _current(self, key: str) -> KeyValue | None:
        row = self._db.execute(
            "SELECT value, create_revision, mod_revision, version FROM kv WHERE key = ?",
            (key,)).fetchone()
        return KeyValue(key, row[0], row[1], row[2], row[3]) if row else None

    async def range(self, prefix: str, *, start: str = "", revision: int = 0,
                    limit: int = 0) -> RangeResult:
        return await self._run(self._range_sync, prefix, start or prefix, revision, limit)

    def _range_sync(self, prefix: str, start: str, revision: int, limit: int) -> RangeResult:
        self._check_revision(revision)
        end = prefix_end(prefix)
        start = max(start, prefix)
        lim = limit if limit > 0 else -1
        self._db.execute("BEGIN")  # one snapshot for rows and count
        try:
            if not revision or revision == self._db_revision:
                at = self._db_revision
                rows = self._db.execute(
                    "SELECT key, value, create_revision, mod_revision, version FROM kv "
                    "WHERE key >= ? AND key < ? ORDER BY key LIMIT ?", (start, end, lim)).fetchall()
                count = self._db.execute("SELECT COUNT(*) FROM kv WHERE key >= ? AND key < ?",
                                         (start, end)).fetchone()[0]
            else:
                at = revision
                # SQLite returns the bare columns from the row holding MAX(revision).
                latest = ("SELECT key, value, create_revision, MAX(revision) AS mod, version, deleted "
                          "FROM history WHERE key >= ? AND key < ? AND revision <= ? GROUP BY key")
                rows = self._db.execute(
                    f"SELECT key, value, create_revision, mod, version FROM ({latest}) "
                    "WHERE deleted = 0 ORDER BY key LIMIT ?", (start, end, revision, lim)).fetchall()
                count = self._db.execute(f"SELECT COUNT(*) FROM ({latest}) WHERE deleted = 0",
                                         (start, end, revision)).fetchone()[0]
        finally:
            self._db.execute("COMMIT")
        kvs = tuple(KeyValue(*r) for r in rows)
        return RangeResult(kvs, more=len(kvs) < count, count=count, revision=at)

    # -- writes ------------------------------------------------------------------------

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        keys = [op.key for op in ops]
        if len(set(keys)) != len(keys):
            raise StorageError("duplicate key given in txn request")
        if self._closed:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[TxnResult] = loop.create_future()
        with self._pending_lock:
            self._pending.append((tuple(compares), tuple(ops), fut))
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._executor.submit(self._flush_sync)
        return await fut

    def _flush_sync(self) -> None:
        """Group commit: every transaction queued so far, each at its own revision, in one
        SQLite transaction, so concurrent writers share one fsync. Nothing is acknowledged
        before the COMMIT that makes it durable."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._flush_scheduled = False
        if not batch:
            return
        if self._conn is None:  # closed while these were queued
            for _, _, fut in batch:
                self._resolve(fut, None, StorageError("storage is closed"))
            return
        db = self._conn
        start_revision = self._db_revision
        results: list[tuple[TxnResult, list[WatchEvent]]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for compares, ops, _ in batch:
                results.append(self._apply_sync(compares, ops))
            if self._db_revision != start_revision:
                db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (self._db_revision,))
            db.execute("COMMIT")
        except BaseException as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._db_revision = start_revision
            for _, _, fut in batch:
                self._resolve(fut, None, StorageError(f"write failed: {err}"))
            log.error("storage write failed, %d transactions rolled back: %s", len(batch), err)
            return
        for (result, events), (_, _, fut) in zip(results, batch):
            if events:
                # Scheduled before the writer's future resolves: watchers hear first.
                self._call(self._deliver, result.revision, events)
            self._resolve(fut, result, None)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def _resolve(self, fut: "asyncio.Future[TxnResult]", result: TxnResult | None,
                 error: BaseException | None) -> None:
        def done() -> None:
            if fut.done():
                return  # the writer gave up waiting; the write stands
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)  # type: ignore[arg-type]
        self._call(done)

    def _apply_sync(self, compares: tuple[Compare, ...], ops: tuple[Op, ...]
                    ) -> tuple[TxnResult, list[WatchEvent]]:
        """One transaction inside the open SQLite transaction."""
        db = self._db
        current: dict[str, KeyValue | None] = {}
        ok = True
        for c in compares:
            kv = self._current(c.key)
            current[c.key] = kv
            if (kv.mod_revision if kv else 0) != c.mod_revision:
                ok = False
        if not ok:
            return TxnResult(False, self._db_revision, current=current), []
        rev = self._db_revision + 1
        prev: dict[str, KeyValue | None] = {}
        new: dict[str, KeyValue] = {}
        events: list[WatchEvent] = []
        for op in ops:
            old = self._current(op.key)
            prev[op.key] = old
            sub = len(events)
            if isinstance(op, Put):
                kv = KeyValue(op.key, op.value, old.create_revision if old else rev, rev,
                              old.version + 1 if old else 1)
                db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)",
                           (kv.key, kv.value, kv.create_revision, rev, kv.version))
                db.execute("INSERT INTO history VALUES (?, ?, ?, 0, ?, ?, ?, ?)",
                           (rev, sub, kv.key, kv.value, kv.create_revision, kv.version,
                            old.mod_revision if old else 0))
                new[op.key] = kv
                events.append(WatchEvent("PUT", op.key, rev, kv, old))
            elif old is not None:
                db.execute("DELETE FROM kv WHERE key = ?", (op.key,))
                db.execute("INSERT INTO history VALUES (?, ?, ?, 1, NULL, NULL, NULL, ?)",
                           (rev, sub, op.key, old.mod_revision))
                events.append(WatchEvent("DELETE", op.key, rev, None, old))
        if not events:
            return TxnResult(True, self._db_revision, current=current, prev=prev), []
        self._db_revision = rev
        return TxnResult(True, rev, current=current, prev=prev, kvs=new), events

    async def compact(self, revision: int) -> None:
        await self._run(self._compact_sync, revision)

    def _compact_sync(self, revision: int) -> None:
        if revision <= self._compact_revision:
            raise CompactedError(revision, self._compact_revision)
        if revision > self._db_revision:
            raise FutureRevisionError(revision, self._db_revision)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "DELETE FROM history WHERE revision <= ?1 AND (deleted = 1 OR revision < "
                "(SELECT MAX(h2.revision) FROM history h2 WHERE h2.key = history.key "
                "AND h2.revision <= ?1))", (revision,))
            db.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'", (revision,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._compact_revision = revision
        log.info("compacted revision=%d removed=%d", revision, cur.rowcount)

    # -- watch -------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int = 0) -> Watch:
        if self._closed:
            raise StorageError("storage is closed")
        w = _SQLiteWatch(self, prefix, start_revision or self._revision + 1)
        self._watchers.add(w)
        return w

    def _deliver(self, revision: int, events: list[WatchEvent]) -> None:
        self._revision = revision
        for w in list(self._watchers):
            w.push([ev for ev in events if ev.key.startswith(w.prefix)])

    def _history_sync(self, prefix: str, start: int) -> tuple[int, list[WatchEvent]]:
        """Events for `prefix` from `start` up to now, and the revision that covers."""
        if start <= self._compact_revision:
            raise CompactedError(start, self._compact_revision)
        rows = self._db.execute(
            "SELECT h.revision, h.key, h.deleted, h.value, h.create_revision, h.version, "
            "p.value, p.create_revision, p.revision, p.version FROM history h "
            "LEFT JOIN history p ON p.key = h.key AND p.revision = h.prev_revision AND p.deleted = 0 "
            "WHERE h.revision >= ? AND h.key >= ? AND h.key < ? ORDER BY h.revision, h.sub",
            (start, prefix, prefix_end(prefix))).fetchall()
        events = []
        for rev, key, deleted, val, crev, ver, pval, pcrev, prev_rev, pver in rows:
            prev = KeyValue(key, pval, pcrev, prev_rev, pver) if pval is not None else None
            kv = None if deleted else KeyValue(key, val, crev, rev, ver)
            events.append(WatchEvent("DELETE" if deleted else "PUT", key, rev, kv, prev))
        return self._db_revision, events

    async def check(self) -> None:
        """Nothing to reach: the file is local and every write waits for its own COMMIT,
        so a disk fault fails that write. Only a closed store cannot serve."""
        if self._closed:
            raise StorageError("storage is closed")

    async def close(self) -> None:
        if self._closed:
            return
        for w in list(self._watchers):
            w.shut()
        self._watchers.clear()
        await self._run(self._close_sync)
        self._closed = True
        self._executor.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the data-dir lock
            self._lock_fd = None

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _SQLiteWatch(Watch):
    """Replays history from the start revision on first use, then live events."""

    def __init__(self, store: SQLiteStorage, prefix: str, start: int) -> None:
        self.store, self.prefix, self.start = store, prefix, start
        self._replay: collections.deque[WatchEvent] = collections.deque()
        self._live: collections.deque[WatchEvent] = collections.deque()
        self._replayed_upto: int | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._overflow = False
        self._last = start - 1

    def push(self, events: list[WatchEvent]) -> None:
        if self._closed or not events:
            return
        self._live.extend(events)
        if len(self._live) > MAX_WATCH_BACKLOG:
            log.warning("closing watch prefix=%s: more than %d events behind", self.prefix,
                        MAX_WATCH_BACKLOG)
            self._overflow = True
            self.shut()
        self._wake.set()

    def shut(self) -> None:
        self._closed = True
        self.store._watchers.discard(self)
        self._wake.set()

    def close(self) -> None:
        self.shut()

    @property
    def progress_revision(self) -> int:
        if self._replayed_upto is not None and not self._replay and not self._live:
            return max(self._last, self.store.revision)
        return self._last

    async def next(self, timeout: float | None = None) -> WatchEvent | None:
        if self._replayed_upto is None:
            if self.start <= self.store.revision:
                upto, events = await self.store._run(self.store._history_sync, self.prefix,
                                                     self.start)
                self._replay.extend(events)
                self._replayed_upto = upto
            else:
                self._replayed_upto = self.start - 1
        while True:
            if self._replay:
                return self._take(self._replay.popleft())
            while self._live:
                ev = self._live.popleft()
                if ev.revision > self._replayed_upto and ev.revision >= self.start:
                    return self._take(ev)
            if self._closed:
                raise WatchClosed("watch fell behind" if self._overflow else "watch closed")
            self._wake.clear()
            if timeout is None:
                await self._wake.wait()
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    return None

    def _take(self, ev: WatchEvent) -> WatchEvent:
        self._last = ev.revision
        return ev
