"""The usage store: the tables, the SQL both engines share, and the factory.

Two engines with one interface (`Store`): SQLite (embedded default, WAL, one writer thread and
one reader thread so the event loop never waits on the disk) and PostgreSQL (asyncpg; several
gateway replicas write into the same tables). Writes are additive upserts (`calls = calls +
excluded.calls`), so replicas writing the same key add up instead of overwriting each other.

SQL is written once with `?` placeholders; the PostgreSQL store numbers them (`$1`...).
Tables (times are Unix seconds, UTC):

* `usage_rollup`: (ts, res, tenant, app, environment, provider, model, operation, status) ->
  sums; `res` is 60 for per-minute rows and 3600 for rows compacted to hours;
* `usage_user_day`, `usage_session_day`: per UTC day, by user / by session (and its user);
* `usage_alert_state`: which notification (budget, key, period, threshold) was sent, so a
  restart or a second replica does not send it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from gateway.usage.config import UsageConfig
from gateway.usage.recorder import PEOPLE_FIELDS, ROLLUP_DIMS, ROLLUP_FIELDS, Rollups

_INT = "BIGINT NOT NULL DEFAULT 0"
_REAL = "DOUBLE PRECISION NOT NULL DEFAULT 0"


def _columns(fields: Sequence[str]) -> str:
    return ", ".join(f"{f} {_REAL if f in ('cost_usd', 'duration_s') else _INT}" for f in fields)


USER_KEY = ("day", "tenant", "app", "environment", "user_id")
SESSION_KEY = ("day", "tenant", "app", "environment", "session_id", "user_id")
ROLLUP_KEY = ("ts", "res", *ROLLUP_DIMS)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS usage_rollup (ts BIGINT NOT NULL, res INTEGER NOT NULL, "
    + ", ".join(f"{d} TEXT NOT NULL" for d in ROLLUP_DIMS) + ", " + _columns(ROLLUP_FIELDS)
    + f", PRIMARY KEY ({', '.join(ROLLUP_KEY)}))",
    "CREATE TABLE IF NOT EXISTS usage_user_day (day BIGINT NOT NULL, tenant TEXT NOT NULL, app TEXT NOT NULL, "
    "environment TEXT NOT NULL, user_id TEXT NOT NULL, " + _columns(PEOPLE_FIELDS)
    + f", PRIMARY KEY ({', '.join(USER_KEY)}))",
    "CREATE TABLE IF NOT EXISTS usage_session_day (day BIGINT NOT NULL, tenant TEXT NOT NULL, app TEXT NOT NULL, "
    "environment TEXT NOT NULL, session_id TEXT NOT NULL, user_id TEXT NOT NULL, " + _columns(PEOPLE_FIELDS)
    + f", PRIMARY KEY ({', '.join(SESSION_KEY)}))",
    "CREATE TABLE IF NOT EXISTS usage_alert_state (name TEXT NOT NULL, key TEXT NOT NULL, period_start BIGINT NOT NULL, "
    "threshold DOUBLE PRECISION NOT NULL, fired_at DOUBLE PRECISION NOT NULL, resolved_at DOUBLE PRECISION, "
    "PRIMARY KEY (name, key, period_start, threshold))",
    "CREATE INDEX IF NOT EXISTS usage_rollup_ts ON usage_rollup (ts)",
)


def _upsert(table: str, key: Sequence[str], fields: Sequence[str]) -> str:
    cols = (*key, *fields)
    sets = ", ".join(f"{f} = {table}.{f} + excluded.{f}" for f in fields)
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")


UPSERT_ROLLUP = _upsert("usage_rollup", ROLLUP_KEY, ROLLUP_FIELDS)
UPSERT_USER = _upsert("usage_user_day", USER_KEY, PEOPLE_FIELDS)
UPSERT_SESSION = _upsert("usage_session_day", SESSION_KEY, PEOPLE_FIELDS)

# Per-minute rows older than a cutoff become per-hour rows (one statement adds them, one deletes).
_SUMS = ", ".join(f"SUM({f})" for f in ROLLUP_FIELDS)
COMPACT = (
    f"INSERT INTO usage_rollup ({', '.join(ROLLUP_KEY)}, {', '.join(ROLLUP_FIELDS)}) "
    f"SELECT (ts / 3600) * 3600, 3600, {', '.join(ROLLUP_DIMS)}, {_SUMS} FROM usage_rollup "
    f"WHERE res = 60 AND ts < ? GROUP BY (ts / 3600) * 3600, {', '.join(ROLLUP_DIMS)} "
    f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET "
    + ", ".join(f"{f} = usage_rollup.{f} + excluded.{f}" for f in ROLLUP_FIELDS),
    "DELETE FROM usage_rollup WHERE res = 60 AND ts < ?",
)
RETAIN = (
    "DELETE FROM usage_rollup WHERE ts < ?",
    "DELETE FROM usage_user_day WHERE day < ?",
    "DELETE FROM usage_session_day WHERE day < ?",
    "DELETE FROM usage_alert_state WHERE period_start < ?",
)


def rows_of(rollups: Rollups) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The parameter rows of one flush: rollup rows get their resolution (60) after the minute."""
    minutes = [(k[0], 60, *(d or "" for d in k[1:7]), "error" if k[7] else "ok", *v) for k, v in rollups.minutes.items()]
    users = [(k[0], *(d or "" for d in k[1:]), *v) for k, v in rollups.users.items()]
    sessions = [(k[0], *(d or "" for d in k[1:]), *v) for k, v in rollups.sessions.items()]
    return minutes, users, sessions


class Store(Protocol):
    """What the usage service needs of an engine. Every method may raise (the store is down)."""

    name: str

    async def open(self) -> None: ...

    async def write(self, rollups: Rollups) -> None:
        """Add the rollups in one transaction (all or nothing)."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""

    async def maintain(self, retain_before: int, compact_before: int) -> None:
        """Delete what is past retention and compact old minutes to hours (once, even with replicas)."""

    async def close(self) -> None: ...


def create(config: UsageConfig) -> Store:
    if config.store == "postgres":
        from gateway.usage.postgres import PostgresStore
        assert config.dsn is not None
        return PostgresStore(config.dsn.get_secret_value())
    from gateway.usage.sqlite import SqliteStore
    return SqliteStore(config.path)
