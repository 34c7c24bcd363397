"""The embedded usage store: one SQLite file in WAL mode.

All SQLite work runs in two threads of its own (a writer and a reader, each with its own
connection), never on the event loop: a slow disk delays the flush, never ingestion. WAL lets
the reader answer the usage API while a flush writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.usage import store
from gateway.usage.recorder import Rollups

T = TypeVar("T")
_BUSY_MS = 5000
_CACHE_KIB = 32 * 1024  # per connection


def _wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (a no-op once it is). Switching needs the file alone for a
    moment, and when another process switches at the same time (workers starting together on
    one file) SQLite answers "database is locked" at once instead of waiting as it does for other
    locks: 10-20% of such opens failed. So wait here, as long as any other lock is waited for."""
    deadline = time.monotonic() + _BUSY_MS / 1000
    delay = 0.002
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)  # on the store's own thread, never the event loop
        delay = min(delay * 2, 0.1)


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="usage-sqlite-w")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="usage-sqlite-r")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=_BUSY_MS / 1000, isolation_level=None)
            try:
                _wal(db)
                db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
                db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
                db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")  # the day tables' pages stay in memory while written
            except BaseException:
                db.close()  # not kept half set up: the next use connects again
                raise
            self._local.db = db
        return db

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    async def open(self) -> None:
        def create() -> None:
            parent = Path(self.path).parent
            parent.mkdir(parents=True, exist_ok=True)
            db = self._db()
            for statement in store.SCHEMA:
                if statement.startswith("CREATE TABLE"):
                    statement += " WITHOUT ROWID"  # rows stored in their primary key's order: half the size
                db.execute(statement)
        await self._run(self._writer, create)

    async def write(self, rollups: Rollups) -> None:
        minutes, users, sessions = store.rows_of(rollups)

        def write() -> None:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(store.UPSERT_ROLLUP, minutes)
                db.executemany(store.UPSERT_USER, users)
                db.executemany(store.UPSERT_SESSION, sessions)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        await self._run(self._writer, write)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._run(self._reader, lambda: self._db().execute(sql, tuple(params)).fetchall())

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._run(self._writer, lambda: self._db().execute(sql, tuple(params)).rowcount)

    async def maintain(self, retain_before: int, compact_before: int) -> None:
        def maintain() -> None:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in store.RETAIN:
                    db.execute(statement, (retain_before,))
                for statement in store.COMPACT:
                    db.execute(statement, (compact_before,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        await self._run(self._writer, maintain)

    async def close(self) -> None:
        def close() -> None:
            db = getattr(self._local, "db", None)
            if db is not None:
                db.close()
                self._local.db = None
        for pool in (self._writer, self._reader):
            try:
                await self._run(pool, close)
            finally:
                pool.shutdown(wait=False)
