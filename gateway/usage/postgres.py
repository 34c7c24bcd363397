"""The shared usage store: PostgreSQL through asyncpg, for several gateway replicas.

Every replica upserts its own rollups additively, so spend read back is the sum of all of them.
Maintenance (retention, compaction) takes a transaction-scoped advisory lock: one replica at a
time, and the others skip it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from gateway.usage import store
from gateway.usage.recorder import Rollups

_MAINTENANCE_LOCK = 0x6F74656C  # "otel": the advisory lock key of compaction
_PLACEHOLDER = re.compile(r"\?")
_TIMEOUT_S = 10.0


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...`."""
    count = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(count)}", sql)


class PostgresStore:
    name = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: Any = None

    async def _connected(self) -> Any:
        if self._pool is None:
            try:
                import asyncpg
            except ImportError as exc:  # pragma: no cover - an install without the extra
                raise RuntimeError("usage.store: postgres needs asyncpg: pip install 'otelgate[postgres]'") from exc
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, command_timeout=_TIMEOUT_S,
                                                   timeout=_TIMEOUT_S)
        return self._pool

    async def open(self) -> None:
        pool = await self._connected()
        async with pool.acquire() as conn:
            # Replicas starting together: one creates the tables, the others wait for it.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MAINTENANCE_LOCK + 1)
                for statement in store.SCHEMA:
                    await conn.execute(statement)

    async def write(self, rollups: Rollups) -> None:
        minutes, users, sessions = store.rows_of(rollups)
        pool = await self._connected()
        async with pool.acquire() as conn:
            async with conn.transaction():
                for sql, rows in ((store.UPSERT_ROLLUP, minutes), (store.UPSERT_USER, users),
                                  (store.UPSERT_SESSION, sessions)):
                    if rows:
                        await conn.executemany(numbered(sql), [_floats(r) for r in rows])

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        pool = await self._connected()
        return [tuple(r) for r in await pool.fetch(numbered(sql), *params)]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        pool = await self._connected()
        status = await pool.execute(numbered(sql), *params)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def maintain(self, retain_before: int, compact_before: int) -> None:
        pool = await self._connected()
        async with pool.acquire() as conn:
            async with conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _MAINTENANCE_LOCK):
                    return  # another replica is at it
                for statement in store.RETAIN:
                    await conn.execute(numbered(statement), retain_before)
                for statement in store.COMPACT:
                    await conn.execute(numbered(statement), compact_before)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


def _floats(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """asyncpg is strict about types: the cost and duration sums are floats even when 0."""
    return tuple(float(v) if isinstance(v, float) else v for v in row)
