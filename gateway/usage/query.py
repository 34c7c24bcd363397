"""Answering "who spent what": the usage API's figures, read from the store's rollups.

`Query` is what `GET /api/v1/usage` asks (a time range, an optional step, group-by dimensions,
exact-value filters); `answer()` returns the pinned JSON shape. Figures come from the table
that holds them:

* calls, errors, tokens, cost and turns from the per-minute (per-hour past compaction) rollups,
  or from the per-day user / session rollups when the question names a user or a session;
* `sessions` and `active_users` from the per-day tables: they count the UTC days the range (or
  a series point) touches, and are null where they cannot be derived (a filter or grouping on
  provider, model, operation or status, which those tables do not hold; a series step under a day).

Range bounds are rounded down to the rows' resolution (a minute; an hour for compacted rows).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.usage.recorder import PEOPLE_FIELDS, ROLLUP_DIMS
from gateway.usage.store import Store

DAY = 86400
FIELDS = (*PEOPLE_FIELDS[:8], "turns", "sessions", "active_users")
SUMMED = PEOPLE_FIELDS  # calls .. cost_usd, turns
DIMENSIONS = (*ROLLUP_DIMS, "user", "session")
GROUPABLE = (*DIMENSIONS, "day")
PEOPLE_DIMS = ("tenant", "app", "environment")  # held by the per-day tables too
FLOW_DIMS = ("provider", "model", "operation", "status")  # only in the rollups
MAX_POINTS = 10_000
_STEP = re.compile(r"^(\d+)(s|m|h|d)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, None: 1}


class QueryError(ValueError):
    """A question the API cannot answer as asked: the message says why (HTTP 400)."""


@dataclass(slots=True)
class Query:
    start: int
    end: int
    step: int | None = None
    group_by: tuple[str, ...] = ()
    filters: dict[str, str] = field(default_factory=dict)
    top: int = 10
    limit: int = 1000


def parse_time(text: str, name: str) -> int:
    """RFC 3339 (`2026-12-02T10:00:00Z`, offsets allowed) or Unix seconds."""
    text = text.strip()
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise QueryError(f"{name}: expected RFC 3339 (2026-12-02T10:00:00Z) or Unix seconds, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())


def parse_step(text: str) -> int:
    m = _STEP.match(text.strip())
    if not m or int(m.group(1)) <= 0:
        raise QueryError(f"step: expected seconds or a duration such as 60, 5m, 1h, 1d, got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_query(params: Mapping[str, str], now: float) -> Query:
    end = parse_time(params["to"], "to") if params.get("to") else int(now)
    start = parse_time(params["from"], "from") if params.get("from") else end - DAY
    if start >= end:
        raise QueryError("from must be before to")
    step = parse_step(params["step"]) if params.get("step") else None
    if step is not None and math.ceil((end - start) / step) > MAX_POINTS:
        raise QueryError(f"step: {math.ceil((end - start) / step)} points; at most {MAX_POINTS} (choose a larger step)")
    group_by = tuple(d.strip() for d in params.get("group_by", "").split(",") if d.strip())
    for d in group_by:
        if d not in GROUPABLE:
            raise QueryError(f"group_by: unknown dimension {d!r} (one of {', '.join(GROUPABLE)})")
    if len(set(group_by)) != len(group_by):
        raise QueryError("group_by: a dimension is listed twice")
    filters = {d: params[d] for d in DIMENSIONS if d in params}
    top = _int(params, "top", 10, 0, 1000)
    limit = _int(params, "limit", 1000, 1, 100_000)
    known = {"from", "to", "step", "group_by", "top", "limit", *DIMENSIONS}
    unknown = sorted(set(params) - known)
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return Query(start, end, step, group_by, filters, top, limit)


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in params:
        return default
    try:
        value = int(params[name])
    except ValueError:
        raise QueryError(f"{name}: expected an integer, got {params[name]!r}") from None
    if not low <= value <= high:
        raise QueryError(f"{name}: between {low} and {high}")
    return value


def rfc3339(t: int) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(t: int) -> int:
    return t // DAY * DAY


class _Sql:
    """A WHERE clause and its parameters, built up condition by condition."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.params: list[Any] = []

    def add(self, condition: str, *params: Any) -> None:
        self.conditions.append(condition)
        self.params.extend(params)

    def where(self) -> str:
        return " WHERE " + " AND ".join(self.conditions) if self.conditions else ""


_COLUMN = {"user": "user_id", "session": "session_id"}
_SUMS = ", ".join(f"CAST(SUM({f}) AS {'DOUBLE PRECISION' if f == 'cost_usd' else 'BIGINT'})" for f in SUMMED)


def _zero() -> dict[str, Any]:
    out: dict[str, Any] = {f: 0 for f in FIELDS}
    out["cost_usd"] = 0.0
    return out


def _fill(target: dict[str, Any], sums: tuple[Any, ...]) -> None:
    for name, value in zip(SUMMED, sums):
        target[name] = (float(value) if name == "cost_usd" else int(value)) if value is not None else target[name]


class Answerer:
    """Builds the figures of one `Query` with a handful of grouped SELECTs."""

    def __init__(self, store: Store, query: Query) -> None:
        self.store, self.q = store, query
        f = query.filters
        people = "user" in f or "session" in f or "user" in query.group_by or "session" in query.group_by
        self.flow = any(d in f for d in FLOW_DIMS)
        if people and (self.flow or any(d in FLOW_DIMS for d in query.group_by)):
            raise QueryError("user and session figures are kept by tenant, app and environment only: they cannot be "
                             "combined with provider, model, operation or status")
        if ("user" in f or "session" in f) and query.step is not None and query.step < DAY:
            raise QueryError("step: a user's or a session's figures are kept per day: use a step of 1d or more")

    def _table(self, group: tuple[str, ...]) -> tuple[str, str]:
        """The table the summed fields of `group` come from, and its time column."""
        f = self.q.filters
        if "session" in f or "session" in group:
            return "usage_session_day", "day"
        if "user" in f or "user" in group:
            return "usage_user_day", "day"
        return "usage_rollup", "ts"

    def _where(self, time_col: str, start: int, end: int, dims: tuple[str, ...]) -> _Sql:
        sql = _Sql()
        if time_col == "day":
            sql.add("day >= ? AND day < ?", _day(start), end)
        else:
            sql.add("ts > ? AND ts < ? AND ts + res > ?", start - 3600, end, start)  # rows overlapping the range
        for d, value in self.q.filters.items():
            if d in dims:
                sql.add(f"{_COLUMN.get(d, d)} = ?", value)
        return sql

    def _dims_of(self, table: str) -> tuple[str, ...]:
        if table == "usage_rollup":
            return ROLLUP_DIMS
        if table == "usage_user_day":
            return (*PEOPLE_DIMS, "user")
        return (*PEOPLE_DIMS, "session", "user")

    async def summed(self, group: tuple[str, ...], start: int, end: int,
                     step: int | None = None) -> dict[tuple[Any, ...], dict[str, Any]]:
        """SUM of the summed fields by `group` (and by series point when `step`)."""
        table, time_col = self._table(group)
        dims = self._dims_of(table)
        sql = self._where(time_col, start, end, dims)
        exprs = [self._expr(d, time_col) for d in group]
        origin = start if time_col == "ts" else _day(start)
        if step is not None:
            exprs.append(f"(({time_col} - ?) / ?)")
        select = ", ".join([*exprs, _SUMS])
        group_sql = f" GROUP BY {', '.join(exprs)}" if exprs else ""
        lead = [origin, step] if step is not None else []
        params = lead + sql.params + lead
        rows = await self.store.fetch(f"SELECT {select} FROM {table}{sql.where()}{group_sql}", params)
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        n = len(exprs)
        for row in rows:
            if row[n] is None:
                continue  # SUM over no rows
            entry = _zero()
            _fill(entry, row[n:])
            out[tuple(row[:n])] = entry
        return out

    async def counted(self, group: tuple[str, ...], start: int, end: int,
                      step: int | None = None) -> dict[tuple[Any, ...], dict[str, Any]] | None:
        """Distinct sessions and active users by `group` (and series point); None where underivable."""
        if self.flow or any(d in FLOW_DIMS for d in group) or (step is not None and step < DAY):
            return None
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        for name, table, column in (("sessions", "usage_session_day", "session_id"),
                                    ("active_users", "usage_session_day" if "session" in self.q.filters or "session" in group
                                     else "usage_user_day", "user_id")):
            dims = self._dims_of(table)
            if any(d not in dims for d in group):
                continue  # e.g. sessions by user come from the session table (it has user), users by session too
            sql = self._where("day", start, end, dims)
            if column == "user_id":
                sql.add("user_id <> ''")
            exprs = [self._expr(d, "day") for d in group]
            if step is not None:
                exprs.append("((day - ?) / ?)")
            select = ", ".join([*exprs, f"COUNT(DISTINCT {column})"])
            group_sql = f" GROUP BY {', '.join(exprs)}" if exprs else ""
            lead = [_day(start), step] if step is not None else []
            rows = await self.store.fetch(f"SELECT {select} FROM {table}{sql.where()}{group_sql}",
                                          lead + sql.params + lead)
            for row in rows:
                out.setdefault(tuple(row[:-1]), {})[name] = int(row[-1])
        return out

    @staticmethod
    def _expr(dim: str, time_col: str) -> str:
        if dim == "day":
            return f"(({time_col} / {DAY}) * {DAY})"
        return _COLUMN.get(dim, dim)

    async def top(self, what: str) -> list[dict[str, Any]]:
        q = self.q
        if q.top == 0 or self.flow:
            return []
        table = "usage_user_day" if what == "user" else "usage_session_day"
        column = _COLUMN[what]
        sql = self._where("day", q.start, q.end, self._dims_of(table))
        if what == "user":
            sql.add("user_id <> ''")
        extra = ", MAX(user_id)" if what == "session" else ""
        rows = await self.store.fetch(
            f"SELECT {column}{extra}, {_SUMS} FROM {table}{sql.where()} GROUP BY {column} "
            f"ORDER BY SUM(cost_usd) DESC, SUM(calls) DESC, {column} LIMIT ?", [*sql.params, q.top])
        out = []
        for row in rows:
            entry: dict[str, Any] = {what: row[0]}
            if what == "session":
                entry["user"] = row[1]
            sums = row[2:] if what == "session" else row[1:]
            base = _zero()
            _fill(base, sums)
            entry.update({k: base[k] for k in SUMMED})
            out.append(entry)
        return out


def _key(group: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
    return {d: (rfc3339(int(v))[:10] if d == "day" else v) for d, v in zip(group, values)}


async def answer(store: Store, query: Query) -> dict[str, Any]:
    a = Answerer(store, query)
    q = query
    totals = (await a.summed((), q.start, q.end)).get((), _zero())
    counts = await a.counted((), q.start, q.end)
    totals.update({"sessions": None, "active_users": None} if counts is None else
                  {"sessions": 0, "active_users": 0, **counts.get((), {})})
    groups: list[dict[str, Any]] = []
    if q.group_by:
        sums = await a.summed(q.group_by, q.start, q.end)
        counted = await a.counted(q.group_by, q.start, q.end)
        ordered = sorted(sums.items(), key=lambda kv: (-kv[1]["cost_usd"], -kv[1]["calls"], [str(v) for v in kv[0]]))
        for values, entry in ordered[:q.limit]:
            c = None if counted is None else counted.get(values, {})
            entry["sessions"] = None if c is None else c.get("sessions", 0)
            entry["active_users"] = None if c is None else c.get("active_users", 0)
            groups.append({"key": _key(q.group_by, values), **entry})
    series: list[dict[str, Any]] = []
    if q.step is not None:
        points = math.ceil((q.end - q.start) / q.step)
        sums = await a.summed((), q.start, q.end, q.step)
        counted = await a.counted((), q.start, q.end, q.step)
        for i in range(points):
            entry = sums.get((i,), _zero())
            if counted is None:
                entry["sessions"] = entry["active_users"] = None
            else:
                c = counted.get((i,), {})
                entry["sessions"], entry["active_users"] = c.get("sessions", 0), c.get("active_users", 0)
            series.append({"t": rfc3339(q.start + i * q.step), **entry})
    return {"from": rfc3339(q.start), "to": rfc3339(q.end), "totals": totals, "groups": groups, "series": series,
            "top_users": await a.top("user"), "top_sessions": await a.top("session")}

