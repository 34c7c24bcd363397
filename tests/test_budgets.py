"""Budgets and alerts end to end: a real gateway, a real Alertmanager and a local webhook server.
Each threshold crossing is notified exactly once (also across a restart); spend comes from the
store; the exceeded budget is on call spans; per-user token budgets; period roll-over resolves;
alert rules fire and clear; failed deliveries are retried, counted and on /health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.budgets.alerter import Alerter, period_bounds, quantile
from gateway.budgets.config import AlertsConfig, BudgetConfig
from gateway.config import ConfigError, parse
from gateway.telemetry import Metrics
from gateway.usage.config import UsageConfig
from gateway.usage.service import UsageService
from tests.alertmanager_server import start_alertmanager
from tests.gateway_process import GatewayProcess, wait_for
from tests.test_backpressure_health_metrics import metric
from tests.test_usage import _call, priced, usage_config
from tests.usage_traffic import Turn, send
from tests.webhook_server import WebhookServer


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: WebhookServer) -> Iterator[str]:
    yield from start_alertmanager(tmp_path, webhook.url + "/am")


def _budget_config(tmp_path: Path, webhook: WebhookServer, am: str) -> dict[str, Any]:
    config = usage_config(tmp_path)
    config["alerts"] = {"interval": "200ms", "receivers": [
        {"name": "hook", "type": "webhook", "url": webhook.url + "/hook", "headers": {"X-Token": "t0k"}},
        {"name": "chat", "type": "slack", "url": webhook.url + "/slack"},
        {"name": "am", "type": "alertmanager", "url": am}]}
    config["budgets"] = [
        {"name": "daily", "limit_usd": 0.01, "warn_at": [0.5, 1.0]},
        {"name": "user-tokens", "per": "user", "limit_tokens": 3000, "receivers": ["hook"]},
    ]
    return config


def test_budget_crossings_reach_webhook_slack_and_alertmanager_once(tmp_path: Path, webhook: WebhookServer,
                                                                    alertmanager: str) -> None:
    config = _budget_config(tmp_path, webhook, alertmanager)
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        send(gw.http, [Turn("bot", "alice", "s1", calls=2)])  # 2 x (1000 in, 100 out) of gpt-4o: 70% of $0.01
        first = wait_for(lambda: [b for b in webhook.bodies("/hook") if b["budget"] == "daily"])
        assert [(b["threshold"], b["status"]) for b in first] == [(0.5, "firing")]
        send(gw.http, [Turn("bot", "bob", "s2", calls=2)])  # now 140%
        daily = wait_for(lambda: len(b := [b for b in webhook.bodies("/hook") if b["budget"] == "daily"]) == 2 and b)
        cost = sum(float(s["gen_ai.usage.cost"]) for s in priced(tmp_path))
        assert daily[1]["threshold"] == 1.0 and daily[1]["status"] == "firing"
        assert daily[1]["spend_usd"] == pytest.approx(cost) and daily[1]["limit_usd"] == 0.01
        assert daily[1]["utilization"] == pytest.approx(cost / 0.01)
        assert daily[1]["period_start"] == time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime())
        assert all(h.get("X-Token") == "t0k" for p, h, _ in webhook.received if p == "/hook")
        per_user = wait_for(lambda: len(u := [b for b in webhook.bodies("/hook") if b["budget"] == "user-tokens"]) == 2
                            and u)  # notifications are sent concurrently: this one may come last
        assert sorted((b["key"], b["threshold"]) for b in per_user) == [("alice", 0.5), ("bob", 0.5)]
        slack = wait_for(lambda: len(s := webhook.bodies("/slack")) == 2 and s)
        assert "budget daily" in slack[1]["text"] and "140%" in slack[1]["text"]
        assert all("user-tokens" not in s["text"] for s in slack)  # that budget names its receivers

        # Alertmanager has it, and routed it to its own receiver.
        alerts = wait_for(lambda: [a for a in requests.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
                                   if a["labels"].get("budget") == "daily"])
        assert {a["labels"]["threshold"] for a in alerts} == {"0.5", "1"}
        assert all(a["status"]["state"] == "active" for a in alerts)
        wait_for(lambda: any(alert["labels"].get("budget") == "daily" for b in webhook.bodies("/am")
                             for alert in b["alerts"]))

        budgets = requests.get(f"{gw.admin}/api/v1/budgets", timeout=5).json()
        by = {(b["name"], b["key"]): b for b in budgets}
        assert by[("daily", "")]["state"] == "exceeded" and by[("daily", "")]["spend_usd"] == pytest.approx(cost)
        assert by[("user-tokens", "alice")]["spend_tokens"] == 2200 and by[("user-tokens", "alice")]["state"] == "warning"
        assert metric(gw.admin, "otelgate_budget_utilization_ratio", budget="daily") == pytest.approx(cost / 0.01)
        assert metric(gw.admin, "otelgate_budget_limit_usd", budget="daily") == 0.01

        send(gw.http, [Turn("bot", "carol", "s3")])  # while exceeded: the span says so
        marked = wait_for(lambda: [s for s in priced(tmp_path) if s.get("user.id") == "carol"])
        assert marked[0]["otelgate.budget.exceeded"] == "daily"
    finally:
        gw.stop()
    sent = len(webhook.received)
    gw = GatewayProcess(config, tmp_path).wait_ready()  # a restart: spend from the store, nothing sent again
    try:
        wait_for(lambda: requests.get(f"{gw.admin}/health", timeout=5).json().get("alerts", {}).get("budgets"))
        time.sleep(1.0)  # several evaluations
        assert requests.get(f"{gw.admin}/api/v1/budgets", timeout=5).json()[0]["state"] == "exceeded"
        new = [b for p, _, b in webhook.received[sent:] if p != "/am"]
        assert new == []
    finally:
        gw.stop()


def test_delivery_failures_are_retried_counted_and_on_health(tmp_path: Path, webhook: WebhookServer) -> None:
    config = usage_config(tmp_path)
    config["alerts"] = {"interval": "200ms", "retries": 2, "receivers": [
        {"name": "flaky", "type": "webhook", "url": webhook.url + "/flaky"},
        {"name": "dead", "type": "webhook", "url": "http://127.0.0.1:9/nothing", "timeout": "1s"}]}
    config["budgets"] = [{"name": "tiny", "limit_usd": 0.001}]
    webhook.fail = 2  # the first two attempts fail, the third gets through
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        send(gw.http, [Turn("bot", "alice", "s1")])
        got = wait_for(lambda: webhook.bodies("/flaky"), timeout=20)
        assert [b["threshold"] for b in got] == [1.0]  # crossed all three at once: the highest sent
        health = wait_for(lambda: (h := requests.get(f"{gw.admin}/health", timeout=5).json())["alerts"]
                          ["notifications_failed"] and h, timeout=20)
        assert health["alerts"]["status"] == "failing" and health["status"] == "degraded"
        assert "dead" in health["alerts"]["last_delivery_error"]
        assert metric(gw.admin, "otelgate_alert_notifications_total", receiver="dead", outcome="failed") == 1
        assert metric(gw.admin, "otelgate_alert_notifications_total", receiver="flaky", outcome="sent") == 1
    finally:
        gw.stop()


async def test_period_rollover_resolves_and_rules_fire_and_clear(tmp_path: Path, webhook: WebhookServer) -> None:
    usage = UsageService(UsageConfig(path=str(tmp_path / "u.db")), Metrics())
    await usage.store.open()
    alerts = AlertsConfig(interval=1, retries=0, receivers=[{"name": "hook", "type": "webhook", "url": webhook.url + "/h"}],
                          rules=[{"name": "errors", "type": "error_rate", "threshold": 0.2, "by": "app", "min_calls": 4},
                                 {"name": "big-prompts", "type": "avg_input_tokens", "threshold": 500, "min_calls": 1},
                                 {"name": "slow", "type": "latency_p95", "threshold": 0.5, "min_calls": 1}])
    budgets = [BudgetConfig(name="b", limit_usd=1.0, per="app", warn_at=[1.0])]
    alerter = Alerter(budgets, alerts, usage, Metrics())
    day = (int(time.time()) // 86400 - 3) * 86400
    now = day + 3600.0
    calls = [_call(int(now) - 30, "u", 0.6, bytes([i]) * 16) for i in range(4)]
    calls[0].error = calls[1].error = True
    for c in calls:
        c.input_tokens = 10
    usage.recorder.record(calls)
    assert await usage.flush()
    await alerter.evaluate(now)
    await alerter.evaluate(now + 5)  # nothing new
    await asyncio.sleep(0.3)
    fired = webhook.bodies("/h")
    assert sorted((b.get("budget") or b.get("rule"), b["key"], b["status"]) for b in fired) == [
        ("b", "a", "firing"), ("errors", "a", "firing"), ("slow", "", "firing")]
    assert [b["value"] for b in fired if b.get("rule") == "errors"] == [0.5]
    assert alerter.usage.recorder.exceeded["b"][1] == {"a"}
    # The next day: the budget resolves; the rule window holds no calls any more: the rules clear.
    await alerter.evaluate(now + 86400)
    await asyncio.sleep(0.3)
    resolved = [b for b in webhook.bodies("/h") if b["status"] == "resolved"]
    assert sorted((b.get("budget") or b.get("rule"), b["key"]) for b in resolved) == [("b", "a"), ("errors", "a"),
                                                                                      ("slow", "")]
    assert alerter.usage.recorder.exceeded == {}
    await alerter.evaluate(now + 86400 + 5)
    await asyncio.sleep(0.2)
    assert len(webhook.bodies("/h")) == 6
    await alerter.stop()
    await usage.stop()


def test_period_bounds_in_a_time_zone() -> None:
    b = BudgetConfig(name="m", limit_usd=1, period="month", timezone="Europe/Paris")
    t = 1_764_680_400  # 2025-12-02T13:00:00Z
    assert period_bounds(b, t) == (1_764_543_600, 1_767_222_000)  # 2025-11-30T23:00Z .. 2025-12-31T23:00Z
    w = BudgetConfig(name="w", limit_usd=1, period="week")
    assert period_bounds(w, t) == (1_764_547_200, 1_764_547_200 + 7 * 86400)  # Monday 2025-12-01
    assert quantile(0.95, [0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0]) == pytest.approx(0.975)


@pytest.mark.parametrize("text, fragment", [
    ("budgets: [{name: a}]", "give limit_usd, limit_tokens or both"),
    ("budgets: [{name: a, limit_usd: 1, per: user, match: {model: x}}]", "cannot also match provider or model"),
    ("budgets: [{name: a, limit_usd: 1, per: user, timezone: Europe/Paris}]", "use timezone: UTC"),
    ("budgets: [{name: a, limit_usd: 1, timezone: Mars/Olympus}]", "unknown time zone"),
    ("budgets: [{name: a, limit_usd: 1, receivers: [nope]}]", "no receiver named 'nope'"),
    ("budgets: [{name: a, limit_usd: 1}, {name: a, limit_usd: 2}]", "duplicate budget name"),
    ("usage: {enabled: false}\nbudgets: [{name: a, limit_usd: 1}]", "enable usage"),
    ("alerts: {receivers: [{name: r, type: pager, url: 'http://x'}]}", "alerts.receivers[0].type"),
])
def test_budget_config_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse("sinks: {a: {type: file}}\n" + text, environ={})
    assert any(fragment in e for e in err.value.errors), err.value.errors
