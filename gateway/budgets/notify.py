"""Notifications: one `Alert` (firing or resolved) formatted for each receiver type and posted.

* `webhook`: the alert as JSON (for a budget: `budget`, `key`, `threshold`, `utilization`,
  `spend_usd`, `limit_usd`, `spend_tokens`, `limit_tokens`, `period_start`, `status`);
* `slack`: a Slack-compatible incoming webhook body (`{"text": ...}`);
* `alertmanager`: `POST <url>/api/v2/alerts` with one alert; a firing budget alert ends with
  its period (`endsAt`), a resolved one ends now, as Prometheus sends them.

Each delivery is retried with exponential backoff (0.5 s doubling, at most 30 s apart); an
attempt that still fails is counted and shown on /health.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from prometheus_client import Counter

from gateway import __version__
from gateway.budgets.config import ReceiverConfig
from gateway.logs import get_logger
from gateway.usage.query import rfc3339

_log = get_logger("alerts")
_BACKOFF_S, _BACKOFF_MAX_S = 0.5, 30.0


@dataclass(slots=True)
class Alert:
    kind: str  # budget | rule
    name: str
    key: str
    status: str  # firing | resolved
    threshold: float
    value: float  # utilization for budgets; the rule's measured value
    starts_at: float
    ends_at: float | None = None  # when a firing alert is over by itself (a budget's period end)
    details: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        if self.kind == "budget":
            return {"budget": self.name, "key": self.key, "threshold": self.threshold, "utilization": self.value,
                    "status": self.status, **self.details}
        return {"rule": self.name, "key": self.key, "threshold": self.threshold, "value": self.value,
                "status": self.status, **self.details}

    def text(self) -> str:
        key = f" [{self.key}]" if self.key else ""
        if self.kind == "budget":
            d = self.details
            spend = f"${d.get('spend_usd', 0):.4f}" + (f" of ${d['limit_usd']:.2f}" if d.get("limit_usd") else "")
            if self.status == "resolved":
                return f"RESOLVED budget {self.name}{key}: the period starting {d.get('period_start')} is over ({spend})"
            return (f"FIRING budget {self.name}{key}: {self.value:.0%} used (threshold {self.threshold:.0%}), "
                    f"{spend}, period from {d.get('period_start')}")
        state = "RESOLVED" if self.status == "resolved" else "FIRING"
        return f"{state} rule {self.name}{key}: {self.value:.4g} (threshold {self.threshold:g})"


def alertmanager_body(alert: Alert) -> list[dict[str, Any]]:
    labels = {"alertname": "OtelgateBudget" if alert.kind == "budget" else "OtelgateRule",
              alert.kind: alert.name, "threshold": f"{alert.threshold:g}", "source": "otelgate"}
    if alert.key:
        labels["key"] = alert.key
    if alert.kind == "budget":
        labels["severity"] = "critical" if alert.threshold >= 1.0 else "warning"
    annotations = {"summary": alert.text(), "value": f"{alert.value:.6g}"}
    annotations.update({k: str(v) for k, v in alert.details.items() if v is not None})
    ends = time.time() if alert.status == "resolved" else alert.ends_at
    entry: dict[str, Any] = {"labels": labels, "annotations": annotations, "startsAt": rfc3339(int(alert.starts_at))}
    if ends is not None:
        entry["endsAt"] = rfc3339(int(max(ends, alert.starts_at + 1)))
    return [entry]


class Notifier:
    """Sends alerts to receivers in background tasks; never raises into the evaluator."""

    def __init__(self, receivers: list[ReceiverConfig], retries: int, registry: Any) -> None:
        self.receivers = {r.name: r for r in receivers}
        self.retries = retries
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed = 0
        self.sent = 0
        self.last_error: str | None = None
        self.last_failed_at: float | None = None
        self.m_sent = Counter("otelgate_alert_notifications", "Alert notifications by receiver and outcome "
                              "(failed: every retry failed)", ["receiver", "outcome"], registry=registry)

    def send(self, alert: Alert, names: list[str] | None) -> None:
        for name in (names if names is not None else list(self.receivers)):
            receiver = self.receivers.get(name)
            if receiver is None:
                continue
            task = asyncio.create_task(self._deliver(receiver, alert), name=f"notify-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, receiver: ReceiverConfig, alert: Alert) -> None:
        if receiver.type == "alertmanager":
            url, body = receiver.url.rstrip("/") + "/api/v2/alerts", alertmanager_body(alert)
        elif receiver.type == "slack":
            url, body = receiver.url, {"text": alert.text()}
        else:
            url, body = receiver.url, alert.body()
        headers = {"Content-Type": "application/json", "User-Agent": f"otelgate/{__version__}"}
        headers.update({k: v.get_secret_value() for k, v in receiver.headers.items()})
        data = orjson.dumps(body)
        delay, error = _BACKOFF_S, ""
        for attempt in range(self.retries + 1):
            try:
                if self._session is None:
                    self._session = aiohttp.ClientSession()
                async with self._session.post(url, data=data, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=receiver.timeout)) as response:
                    if response.status < 300:
                        self.sent += 1
                        self.m_sent.labels(receiver.name, "sent").inc()
                        _log.info("alert sent", receiver=receiver.name, alert=alert.name, key=alert.key,
                                  status=alert.status, threshold=alert.threshold)
                        return
                    error = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        break  # the receiver refuses this body: retrying sends the same
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
        self.failed += 1
        self.last_error, self.last_failed_at = f"{receiver.name}: {error}", time.time()
        self.m_sent.labels(receiver.name, "failed").inc()
        _log.error("alert not delivered", receiver=receiver.name, alert=alert.name, key=alert.key, status=alert.status,
                   attempts=self.retries + 1, error=error)

    async def close(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
            for task in list(self._tasks):
                task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
