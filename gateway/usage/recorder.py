"""The hot path of usage accounting: LLM calls added to in-memory rollups (plain dicts).

Three rollups, each a dict from its key to a list of sums:

* per minute by (tenant, app, environment, provider, model, operation, status): the fields of
  `ROLLUP_FIELDS` (calls, errors, each token kind, cost, turns, summed duration, and a latency
  histogram over `LATENCY_BUCKETS`);
* per UTC day by (tenant, app, environment, user) and by (tenant, app, environment, session,
  user): the fields of `PEOPLE_FIELDS`.

A **turn** is a trace with at least one LLM call: it is counted once, on the first call of the
trace this gateway sees (a bounded memory of the last 100,000 to 200,000 trace ids remembers
the others). Keys hold None for an unknown dimension and `status` as the error flag; the store
writes them as "" and "ok"/"error".

Nothing here waits or does I/O: the usage service takes the dicts every flush interval and
writes them off the event loop. The number of rows held is bounded (`limit`); a call whose row
would pass it is counted in `dropped` and not kept.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.llm.call import LlmCall

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)  # upper bounds (s); one more: +Inf
PEOPLE_FIELDS = ("calls", "errors", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "reasoning_tokens", "cost_usd", "turns")
LATENCY_FIELDS = tuple(f"lat_{i}" for i in range(len(LATENCY_BUCKETS) + 1))
ROLLUP_FIELDS = (*PEOPLE_FIELDS, "duration_s", *LATENCY_FIELDS)
ROLLUP_DIMS = ("tenant", "app", "environment", "provider", "model", "operation", "status")
USER_DIMS = ("tenant", "app", "environment", "user")
SESSION_DIMS = ("tenant", "app", "environment", "session", "user")
_N_ROLLUP = len(ROLLUP_FIELDS)
_N_PEOPLE = len(PEOPLE_FIELDS)
_LAT0 = ROLLUP_FIELDS.index("lat_0")
_TRACES = 100_000  # trace ids remembered (per generation) to count each turn once
_ZEROS = (0,) * (len(LATENCY_BUCKETS) + 1)


@dataclass(slots=True)
class Rollups:
    """What was accumulated since the last take: key (time first) -> sums, per rollup."""

    minutes: dict[tuple, list] = field(default_factory=dict)  # type: ignore[type-arg]
    users: dict[tuple, list] = field(default_factory=dict)  # type: ignore[type-arg]
    sessions: dict[tuple, list] = field(default_factory=dict)  # type: ignore[type-arg]

    def rows(self) -> int:
        return len(self.minutes) + len(self.users) + len(self.sessions)

    def calls(self) -> int:
        return sum(r[0] for r in self.minutes.values())

    def merge(self, other: "Rollups", limit: int) -> dict[str, int]:
        """Add `other` into this one, keeping at most `limit` rows; what was left out, by rollup."""
        lost = {"minute": 0, "user": 0, "session": 0}
        rows = self.rows()
        for name, mine, theirs in (("minute", self.minutes, other.minutes), ("user", self.users, other.users),
                                   ("session", self.sessions, other.sessions)):
            for key, values in theirs.items():
                row = mine.get(key)
                if row is None:
                    if rows >= limit:
                        lost[name] += values[0]
                        continue
                    mine[key] = values
                    rows += 1
                else:
                    for i, v in enumerate(values):
                        row[i] += v
        return lost


class Recorder:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = Rollups()
        self._rows = 0
        # Contributions not kept because the rows were at their limit, by rollup (minute, user, session).
        self.dropped = {"minute": 0, "user": 0, "session": 0}
        # Trace ids seen lately (two generations: the older is dropped when the newer fills up).
        self._seen: set[bytes] = set()
        self._older: set[bytes] = set()
        # Set by the budget evaluator: budget name -> (its config, the exceeded keys or None for all);
        # the account processor marks the calls that count toward them.
        self.exceeded: dict[str, tuple[object, set[str] | None]] = {}

    def record(self, calls: Iterable[LlmCall]) -> None:
        # Written for speed (it runs for every LLM call): locals, no helper calls, None kept in
        # keys (made "" when written), the trace memory as two generations of plain sets.
        pending, seen, older = self.pending, self._seen, self._older
        minutes, users, sessions = pending.minutes, pending.users, pending.sessions
        limit, buckets = self.limit, LATENCY_BUCKETS
        now_minute = 0
        for c in calls:
            start = c.start_time_unix_nano
            if start:
                minute = start // 60_000_000_000 * 60
            else:
                minute = now_minute = now_minute or int(time.time()) // 60 * 60
            error = c.error
            key = (minute, c.tenant, c.app, c.environment, c.provider, c.response_model or c.request_model,
                   c.operation, error)
            row = minutes.get(key)
            if row is None:
                if self._rows >= limit:
                    self.dropped["minute"] += 1
                    continue
                row = minutes[key] = [0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0.0, *_ZEROS]
                self._rows += 1
            tid = c.span.trace_id
            if tid in seen or tid in older:
                turn = 0
            else:
                turn = 1
                seen.add(tid)
                if len(seen) >= _TRACES:
                    self._older = older = seen
                    self._seen = seen = set()
            inp, out, cost = c.input_tokens or 0, c.output_tokens or 0, c.cost_usd or 0.0
            cr, cw, rs = c.cache_read_tokens or 0, c.cache_write_tokens or 0, c.reasoning_tokens or 0
            row[0] += 1
            if error:
                row[1] += 1
            row[2] += inp
            row[3] += out
            if cr:
                row[4] += cr
            if cw:
                row[5] += cw
            if rs:
                row[6] += rs
            row[7] += cost
            row[8] += turn
            end = c.end_time_unix_nano
            if start and end >= start:
                seconds = (end - start) / 1e9
                row[9] += seconds
                row[_LAT0 + bisect_left(buckets, seconds)] += 1
            user, session = c.user, c.session
            if user is None and session is None:
                continue
            day = minute // 86400 * 86400
            err = 1 if error else 0
            for name, table, pkey in (
                    ("user", users, (day, c.tenant, c.app, c.environment, user) if user is not None else None),
                    ("session", sessions,
                     (day, c.tenant, c.app, c.environment, session, user) if session is not None else None)):
                if pkey is None:
                    continue
                prow = table.get(pkey)
                if prow is None:
                    if self._rows >= limit:
                        self.dropped[name] += 1
                        continue
                    prow = table[pkey] = [0, 0, 0, 0, 0, 0, 0, 0.0, 0]
                    self._rows += 1
                prow[0] += 1
                prow[1] += err
                prow[2] += inp
                prow[3] += out
                prow[4] += cr
                prow[5] += cw
                prow[6] += rs
                prow[7] += cost
                prow[8] += turn

    def take(self) -> Rollups:
        """Hand over what was accumulated and start afresh."""
        taken, self.pending, self._rows = self.pending, Rollups(), 0
        return taken
