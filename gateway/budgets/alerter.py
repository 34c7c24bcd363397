"""Budgets and alert rules, evaluated every `alerts.interval` from the usage store.

Spend is read from the store, never from this process's memory alone: a restart does not reset
it and replicas sharing PostgreSQL read the same figures (each sees the others' calls once they
flushed, so within a flush interval).

Each threshold crossing notifies once per period: before sending, the evaluator *claims* the
(budget, key, period, threshold) row in `usage_alert_state` (an insert that does nothing when
the row exists), so a restarted gateway or a second replica that finds it claimed stays quiet.
When several thresholds are crossed at once only the highest is sent (the lower ones are
claimed with it). When the period rolls over, each firing row of the past period is claimed
again (its `resolved_at` set) and a resolved notification sent. Alert rules (error rate, P95
latency, average input tokens per call, over a window, optionally per app or model) keep one
row per firing key, deleted (and a resolved notification sent) when the condition clears.

While a budget key is exceeded, its name is on the call spans it matches
(`otelgate.budget.exceeded`), through the recorder's `exceeded` table the account processor reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import zoneinfo
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.budgets.config import AlertsConfig, BudgetConfig, RuleConfig
from gateway.budgets.notify import Alert, Notifier
from gateway.llm.call import LlmCall
from gateway.logs import get_logger
from gateway.telemetry import Metrics
from gateway.usage.query import rfc3339
from gateway.usage.recorder import LATENCY_BUCKETS, LATENCY_FIELDS

_log = get_logger("budgets")
MAX_KEY_SERIES = 1000  # per budget: gauge series of keys (only keys at warning or above, for `per:` budgets)
EXCEEDED = "otelgate.budget.exceeded"
# A firing rule alert tells Alertmanager it lasts this long (it is resolved explicitly when it
# clears; the bound only matters if no gateway is left to say so).
_RULE_ENDS_S = 86400.0
# Gauges read from the store: replicas and workers report the same figure (the workers'
# supervisor reports it once instead of summing).
STORE_GAUGES = frozenset(("otelgate_budget_spend_usd", "otelgate_budget_limit_usd", "otelgate_budget_utilization_ratio"))


def period_bounds(budget: BudgetConfig, now: float) -> tuple[int, int]:
    """Start and end (Unix seconds) of the budget's period containing `now`, in its time zone."""
    zone = zoneinfo.ZoneInfo(budget.timezone)
    local = dt.datetime.fromtimestamp(now, zone)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if budget.period == "week":
        start -= dt.timedelta(days=start.weekday())
        end = start + dt.timedelta(days=7)
    elif budget.period == "month":
        start = start.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    else:
        end = start + dt.timedelta(days=1)
    # Re-localize: a period that spans a DST change keeps its wall-clock boundaries.
    start = start.replace(tzinfo=None).replace(tzinfo=zone)
    end = end.replace(tzinfo=None).replace(tzinfo=zone)
    return int(start.timestamp()), int(end.timestamp())


def _matches(match: dict[str, Any], call: LlmCall) -> bool:
    for dim, want in match.items():
        value = call.model if dim == "model" else getattr(call, dim)
        if isinstance(want, list):
            if value not in want:
                return False
        elif value != want:
            return False
    return True


def _filters(match: dict[str, Any], columns: dict[str, str]) -> tuple[list[str], list[Any]]:
    conditions, params = [], []
    for dim, want in match.items():
        column = columns.get(dim, dim)
        if isinstance(want, list):
            conditions.append(f"{column} IN ({', '.join('?' * len(want))})")
            params.extend(want)
        else:
            conditions.append(f"{column} = ?")
            params.append(want)
    return conditions, params


def quantile(q: float, buckets: list[int]) -> float:
    """Like PromQL's histogram_quantile over `LATENCY_BUCKETS` (+Inf last): linear within the bucket."""
    total = sum(buckets)
    if total == 0:
        return 0.0
    rank, seen = q * total, 0
    for i, count in enumerate(buckets):
        if seen + count >= rank and count:
            if i == len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]
            lower = LATENCY_BUCKETS[i - 1] if i else 0.0
            return lower + (LATENCY_BUCKETS[i] - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BUCKETS[-1]


class _Gauges(Collector):
    def __init__(self, owner: "Alerter") -> None:
        self._owner = owner

    def collect(self) -> Iterable[GaugeMetricFamily]:
        spend = GaugeMetricFamily("otelgate_budget_spend_usd", "Spend in USD of a budget key in its current period",
                                  labels=["budget", "key"])
        limit = GaugeMetricFamily("otelgate_budget_limit_usd", "The budget's limit in USD", labels=["budget", "key"])
        ratio = GaugeMetricFamily("otelgate_budget_utilization_ratio", "Spend over limit (the larger of USD and "
                                  "tokens); 1 = the limit", labels=["budget", "key"])
        for entry in self._owner.exposed():
            labels = [entry["name"], entry["key"]]
            spend.add_metric(labels, entry["spend_usd"])
            if entry["limit_usd"] is not None:
                limit.add_metric(labels, entry["limit_usd"])
            ratio.add_metric(labels, entry["utilization"])
        yield spend
        yield limit
        yield ratio


class Alerter:
    def __init__(self, budgets: list[BudgetConfig], alerts: AlertsConfig, usage: Any, metrics: Metrics) -> None:
        self.budgets, self.rules, self.config = budgets, alerts.rules, alerts
        self.usage = usage
        self.store = usage.store
        self.notifier = Notifier(alerts.receivers, alerts.retries, metrics.registry)
        self._report: list[dict[str, Any]] = []
        self._claimed: set[tuple[str, str, int, float]] = set()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.evaluations = 0
        metrics.registry.register(_Gauges(self))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="budgets")

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate(time.time())
                self.last_error = None
            except Exception as exc:
                if self.last_error is None:
                    _log.error("budget evaluation failed; retrying", error=f"{type(exc).__name__}: {exc}"[:300])
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            await asyncio.sleep(self.config.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.notifier.close()

    # -- budgets -----------------------------------------------------------------------------------

    async def spend(self, budget: BudgetConfig, start: int) -> dict[str, tuple[float, int]]:
        """key -> (USD, tokens) since `start`; key "" for a budget without `per:`."""
        if budget.by_user:
            table, cond = "usage_user_day", ["day >= ?"]
            columns = {"user": "user_id"}
            params: list[Any] = [start // 86400 * 86400]
        else:
            table, cond, columns, params = "usage_rollup", ["ts >= ?"], {}, [start]
        more, more_params = _filters(budget.match, columns)
        per = columns.get(budget.per, budget.per) if budget.per else None
        select = f"{per}, " if per else ""
        group = f" GROUP BY {per}" if per else ""
        rows = await self.store.fetch(
            f"SELECT {select}CAST(SUM(cost_usd) AS DOUBLE PRECISION), CAST(SUM(input_tokens + output_tokens) AS BIGINT) "
            f"FROM {table} WHERE {' AND '.join(cond + more)}{group}", params + more_params)
        out: dict[str, tuple[float, int]] = {}
        for row in rows:
            key, usd, tokens = (row[0], row[1], row[2]) if per else ("", row[0], row[1])
            if usd is None and tokens is None:
                continue
            out[str(key)] = (float(usd or 0.0), int(tokens or 0))
        if not per and "" not in out:
            out[""] = (0.0, 0)
        return out

    async def evaluate(self, now: float) -> None:
        report: list[dict[str, Any]] = []
        exceeded: dict[str, tuple[BudgetConfig, set[str] | None]] = {}
        for budget in self.budgets:
            start, end = period_bounds(budget, now)
            keys_over: set[str] = set()
            for key, (usd, tokens) in sorted((await self.spend(budget, start)).items()):
                ratios = [usd / budget.limit_usd if budget.limit_usd else 0.0,
                          tokens / budget.limit_tokens if budget.limit_tokens else 0.0]
                utilization = max(ratios)
                state = "exceeded" if utilization >= 1.0 else "warning" if utilization >= budget.warn_at[0] else "ok"
                entry = {"name": budget.name, "key": key, "period_start": rfc3339(start), "spend_usd": usd,
                         "spend_tokens": tokens, "limit_usd": budget.limit_usd, "limit_tokens": budget.limit_tokens,
                         "utilization": utilization, "state": state}
                report.append(entry)
                if state == "exceeded":
                    keys_over.add(key)
                crossed = [t for t in budget.warn_at if utilization >= t]
                if crossed:
                    await self._fire_budget(budget, entry, start, end, crossed, now)
            if keys_over:
                exceeded[budget.name] = (budget, keys_over if budget.per else None)
            await self._resolve_budget(budget, start, now)
        self._report = report
        self.usage.recorder.exceeded = exceeded
        for rule in self.rules:
            await self._evaluate_rule(rule, now)
        self.evaluations += 1

    async def _claim(self, name: str, key: str, period: int, threshold: float, now: float) -> bool:
        token = (name, key, period, threshold)
        if token in self._claimed:
            return False
        claimed = await self.store.execute(
            "INSERT INTO usage_alert_state (name, key, period_start, threshold, fired_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name, key, period_start, threshold) DO NOTHING", [name, key, period, float(threshold), now])
        self._claimed.add(token)
        if len(self._claimed) > 100_000:
            self._claimed.clear()
        return claimed == 1

    async def _fire_budget(self, budget: BudgetConfig, entry: dict[str, Any], start: int, end: int,
                           crossed: list[float], now: float) -> None:
        won = [t for t in crossed if await self._claim(f"budget:{budget.name}", entry["key"], start, t, now)]
        if not won:
            return
        threshold = max(won)
        self.notifier.send(Alert("budget", budget.name, entry["key"], "firing", threshold, entry["utilization"],
                                 starts_at=now, ends_at=end, details=self._details(entry)), budget.receivers)

    @staticmethod
    def _details(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: entry[k] for k in ("spend_usd", "limit_usd", "spend_tokens", "limit_tokens", "period_start")}

    async def _resolve_budget(self, budget: BudgetConfig, start: int, now: float) -> None:
        name = f"budget:{budget.name}"
        rows = await self.store.fetch(
            "SELECT key, period_start, MAX(threshold), MIN(fired_at) FROM usage_alert_state WHERE name = ? AND "
            "period_start < ? AND resolved_at IS NULL GROUP BY key, period_start", [name, start])
        for key, period, threshold, fired_at in rows:
            claimed = await self.store.execute(
                "UPDATE usage_alert_state SET resolved_at = ? WHERE name = ? AND key = ? AND period_start = ? "
                "AND resolved_at IS NULL", [now, name, key, period])
            if claimed:
                details = {"period_start": rfc3339(int(period)), "spend_usd": None, "limit_usd": budget.limit_usd,
                           "spend_tokens": None, "limit_tokens": budget.limit_tokens}
                self.notifier.send(Alert("budget", budget.name, key, "resolved", float(threshold), 0.0,
                                         starts_at=float(fired_at), details=details), budget.receivers)

    # -- rules ---------------------------------------------------------------------------------

    async def measure(self, rule: RuleConfig, now: float) -> dict[str, tuple[float, int]]:
        """key -> (the rule's value, calls) over its window."""
        cond, params = _filters(rule.match, {})
        by = rule.by
        select = f"{by}, " if by else ""
        group = f" GROUP BY {by}" if by else ""
        lat = ", ".join(f"CAST(SUM({f}) AS BIGINT)" for f in LATENCY_FIELDS)
        rows = await self.store.fetch(
            f"SELECT {select}CAST(SUM(calls) AS BIGINT), CAST(SUM(errors) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), "
            f"{lat} FROM usage_rollup WHERE {' AND '.join(['ts >= ?', *cond])}{group}",
            [int(now - rule.window) // 60 * 60, *params])
        out: dict[str, tuple[float, int]] = {}
        for row in rows:
            key, rest = (str(row[0]), row[1:]) if by else ("", row)
            calls = int(rest[0] or 0)
            if not calls:
                continue
            if rule.type == "error_rate":
                value = int(rest[1] or 0) / calls
            elif rule.type == "avg_input_tokens":
                value = int(rest[2] or 0) / calls
            else:
                value = quantile(0.95, [int(v or 0) for v in rest[3:]])
            out[key] = (value, calls)
        return out

    async def _evaluate_rule(self, rule: RuleConfig, now: float) -> None:
        name = f"rule:{rule.name}"
        measured = await self.measure(rule, now)
        firing = {row[0]: row[1] for row in await self.store.fetch(
            "SELECT key, fired_at FROM usage_alert_state WHERE name = ?", [name])}
        for key, (value, calls) in measured.items():
            if calls < rule.min_calls or key in firing:
                continue
            if value > rule.threshold:
                claimed = await self.store.execute(
                    "INSERT INTO usage_alert_state (name, key, period_start, threshold, fired_at) VALUES (?, ?, 0, ?, ?) "
                    "ON CONFLICT (name, key, period_start, threshold) DO NOTHING", [name, key, rule.threshold, now])
                if claimed == 1:
                    self.notifier.send(Alert("rule", rule.name, key, "firing", rule.threshold, value, starts_at=now,
                                             ends_at=now + _RULE_ENDS_S,
                                             details={"type": rule.type, "window_s": rule.window, "calls": calls}),
                                       rule.receivers)
        for key, fired_at in firing.items():
            value, calls = measured.get(key, (0.0, 0))
            if calls and (calls < rule.min_calls or value > rule.threshold):
                continue  # still firing (or too little traffic to say it cleared)
            claimed = await self.store.execute("DELETE FROM usage_alert_state WHERE name = ? AND key = ?", [name, key])
            if claimed:
                self.notifier.send(Alert("rule", rule.name, key, "resolved", rule.threshold, value,
                                         starts_at=float(fired_at), details={"type": rule.type, "window_s": rule.window,
                                                                            "calls": calls}), rule.receivers)

    # -- reading -------------------------------------------------------------------------------

    def report(self) -> list[dict[str, Any]]:
        return list(self._report)

    def exposed(self) -> list[dict[str, Any]]:
        """The report entries that become gauge series (bounded for `per:` budgets)."""
        out, per_budget = [], {}
        per = {b.name: b.per for b in self.budgets}
        for entry in self._report:
            if per.get(entry["name"]) and entry["state"] == "ok":
                continue
            n = per_budget[entry["name"]] = per_budget.get(entry["name"], 0) + 1
            if n <= MAX_KEY_SERIES:
                out.append(entry)
        return out

    def health(self) -> dict[str, Any]:
        n = self.notifier
        failing = self.last_error is not None or (n.last_failed_at is not None and time.time() - n.last_failed_at < 600)
        return {"status": "failing" if failing else "ok", "budgets": len(self.budgets), "rules": len(self.rules),
                "notifications_sent": n.sent, "notifications_failed": n.failed, "last_delivery_error": n.last_error,
                "last_error": self.last_error}


def exceeded_names(exceeded: dict[str, tuple[BudgetConfig, set[str] | None]], call: LlmCall) -> str | None:
    """The budgets (comma-separated) that `call` counts toward and that are exceeded; None if none."""
    names = []
    for name, (budget, keys) in exceeded.items():
        if budget.match and not _matches(budget.match, call):
            continue
        if keys is not None and (getattr(call, budget.per) or "") not in keys:  # type: ignore[arg-type]
            continue
        names.append(name)
    return ",".join(names) if names else None
