"""deploy/grafana/otelgate-llm.json: every panel's PromQL, run by a real Prometheus (Debian's
package) that scraped a real gateway every second while it received known traffic twice, must
give the figures of that traffic (the second wave: the first only creates the series, since
Prometheus cannot tell how a counter's first sample came about).

The panels' `$__range` and `$__rate_interval` become the exact span between two scrapes, one
before and one after the second wave, and each query is evaluated at the later one: with
samples on both edges of the window, `increase()` does not extrapolate, so the figures are exact.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway_process import GatewayProcess, wait_for
from tests.prometheus_server import query, start_prometheus
from tests.test_usage import usage_config
from tests.usage_traffic import TRAFFIC, send

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "otelgate-llm.json"
TOKEN = "dash-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALL = {"$tenant": ".*", "$app": ".*", "$environment": ".*", "$provider": ".*", "$model": ".*", "$job": ".*"}


def _panels() -> dict[str, str]:
    dash = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert len(panel["targets"]) == 1, panel["title"]
        out[panel["title"]] = panel["targets"][0]["expr"]
    return out


def _expr(expr: str, window_ms: int, variables: dict[str, str] = ALL) -> str:
    expr = expr.replace("$__rate_interval", f"{window_ms}ms").replace("$__range", f"{window_ms}ms")
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    assert "$" not in expr, expr
    return expr


def _last_scrape(prom: str) -> float:
    samples = query(prom, 'up{job="otelgate"}[5s]')[0]["values"]
    return float(samples[-1][0])


def _sum(prom: str, metric: str) -> float:
    result = query(prom, f"sum({metric})")
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("grafana")
    config = usage_config(tmp)
    config["admin"]["token"] = TOKEN
    config["budgets"] = [{"name": "support-daily", "match": {"app": "support-bot"}, "limit_usd": 0.01},
                         {"name": "user-tokens", "per": "user", "limit_tokens": 4000}]
    gw = GatewayProcess(config, tmp).wait_ready()
    try:
        with start_prometheus(tmp, gw.admin.removeprefix("http://"), TOKEN) as prom:
            calls = sum(t.calls for t in TRAFFIC)
            spans = len(TRAFFIC) + calls
            wait_for(lambda: _sum(prom, "up") == 1, timeout=20)
            send(gw.http)  # wave 1: creates every series
            wait_for(lambda: _sum(prom, "otelgate_llm_requests_total") == calls
                     and _sum(prom, "otelgate_sink_sent_spans_total") == spans, timeout=20)
            time.sleep(1.5)
            before = _last_scrape(prom)
            send(gw.http)  # wave 2: what the panels must show
            wait_for(lambda: requests.get(f"{gw.admin}/api/v1/usage", headers=AUTH, timeout=5).json()["totals"]["calls"]
                     == 2 * calls, timeout=20)
            app_cost = {g["key"]["app"]: g["cost_usd"] for g in requests.get(
                f"{gw.admin}/api/v1/usage", params={"group_by": "app"}, headers=AUTH, timeout=5).json()["groups"]}

            def budgets_caught_up() -> bool:
                report = requests.get(f"{gw.admin}/api/v1/budgets", headers=AUTH, timeout=5).json()
                return any(b["name"] == "support-daily" and b["spend_usd"] == pytest.approx(app_cost["support-bot"])
                           for b in report)
            wait_for(budgets_caught_up, timeout=20)
            wait_for(lambda: _sum(prom, "otelgate_llm_requests_total") == 2 * calls
                     and _sum(prom, "otelgate_sink_sent_spans_total") == 2 * spans, timeout=20)
            time.sleep(2.5)  # scrapes after the budgets' last evaluation
            after = _last_scrape(prom)
            yield {"gw": gw, "prom": prom, "at": after, "window_ms": round((after - before) * 1000),
                   "usage": requests.get(f"{gw.admin}/api/v1/usage", params={"group_by": "app"}, headers=AUTH,
                                         timeout=5).json(),
                   "providers": requests.get(f"{gw.admin}/api/v1/usage", params={"group_by": "provider"}, headers=AUTH,
                                             timeout=5).json(),
                   "budgets": requests.get(f"{gw.admin}/api/v1/budgets", headers=AUTH, timeout=5).json()}
    finally:
        gw.stop()


def _vector(scraped: dict[str, Any], expr: str, variables: dict[str, str] = ALL) -> dict[tuple[tuple[str, str], ...], float]:
    result = query(scraped["prom"], _expr(expr, scraped["window_ms"], variables), at=scraped["at"])
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}


def _traffic() -> dict[str, Counter[Any]]:
    """The second wave's figures, summed from the traffic itself (not from the gateway)."""
    t: dict[str, Counter[Any]] = {k: Counter() for k in ("calls", "errors", "tokens", "model_tokens", "input", "n")}
    for turn in TRAFFIC:
        t["calls"][turn.app] += turn.calls
        t["errors"][(turn.app, turn.model)] += turn.calls if turn.error else 0
        t["tokens"][(turn.app, turn.model)] += turn.calls * (turn.input_tokens + turn.output_tokens)
        t["model_tokens"][turn.model] += turn.calls * (turn.input_tokens + turn.output_tokens)
        t["input"][turn.app] += turn.calls * turn.input_tokens
    return t


def _budget(b: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A budget's series labels: an empty `key` (a budget without `per:`) is no label in Prometheus."""
    return (("budget", b["name"]), ("key", b["key"])) if b["key"] else (("budget", b["name"]),)


def test_every_panel_matches_the_traffic(scraped: dict[str, Any]) -> None:
    panels = _panels()
    seconds = scraped["window_ms"] / 1000
    t = _traffic()
    calls = sum(t["calls"].values())
    spans = len(TRAFFIC) + calls
    errors = {k: v for k, v in t["errors"].items() if v}
    cost = {g["key"]["app"]: g["cost_usd"] / 2 for g in scraped["usage"]["groups"]}  # two waves in the store
    provider_cost = {g["key"]["provider"]: g["cost_usd"] / 2 for g in scraped["providers"]["groups"]}
    exposed = [b for b in scraped["budgets"] if b["key"] == "" or b["state"] != "ok"]  # per-key series only when not ok

    def one(value: float) -> dict[tuple[Any, ...], float]:
        return {(): value}

    def by(label: str, values: dict[str, float], scale: float = 1.0) -> dict[tuple[Any, ...], float]:
        return {((label, k),): v / scale for k, v in values.items()}

    def by2(a: str, b: str, values: dict[tuple[str, str], float], scale: float = 1.0) -> dict[tuple[Any, ...], float]:
        return {tuple(sorted(((a, k[0]), (b, k[1])))): v / scale for k, v in values.items()}

    expected: dict[str, Any] = {
        "LLM calls": one(calls),
        "Failed calls": one(sum(errors.values())),
        "Error rate": one(sum(errors.values()) / calls),
        "Tokens": one(sum(t["tokens"].values())),
        "Cost": one(sum(cost.values())),
        "Cost by app": by("app", cost),
        "Tokens by app and model": by2("app", "model", dict(t["tokens"])),
        "Calls by provider": by("provider", {"openai": calls}),
        "Calls per second by app": by("app", dict(t["calls"]), seconds),
        "Tokens per second by model": by("model", dict(t["model_tokens"]), seconds),
        "Cost per second by provider": by("provider", provider_cost, seconds),
        "Failed calls per second by app and model": by2("app", "model", errors, seconds),
        "Average input tokens per call by app": by("app", {a: t["input"][a] / t["calls"][a] for a in t["calls"]}),
        "Budget utilization": {_budget(b): b["utilization"] for b in exposed},
        "Budget spend": {_budget(b): b["spend_usd"] for b in exposed},
        "Gateways up": one(1),
        "Spans delivered per second by sink": by("sink", {"out": spans}, seconds),
        "Spans dropped by sink and reason": {},
        "Usage rollups lost": one(0),
    }
    checked = set()
    for title, want in expected.items():
        got = _vector(scraped, panels[title])
        assert set(got) == set(want), (title, got, want)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (title, key, got[key], value)
        checked.add(title)

    # Figures that depend on timing: their shape and bounds.
    accepted = _vector(scraped, panels["Spans accepted per second"])
    assert len(accepted) == 1 and next(iter(accepted.values())) * seconds == pytest.approx(spans)
    p95 = _vector(scraped, panels["P95 LLM latency by model"])
    assert set(p95) == {(("model", m),) for m in t["model_tokens"]}
    assert all(0 < v <= 0.1 for v in p95.values()), p95  # test spans last microseconds: the first bucket (0.1 s)
    fill = _vector(scraped, panels["Sink queue fill"])
    assert (("signal", "traces"), ("sink", "out")) in fill and all(v == 0 for v in fill.values()), fill  # all delivered
    p99 = _vector(scraped, panels["P99 export request latency"])
    assert len(p99) == 1 and all(0 < v < 5 for v in p99.values()), p99
    checked |= {"Spans accepted per second", "P95 LLM latency by model", "Sink queue fill", "P99 export request latency"}
    assert checked == set(panels), set(panels) - checked  # a new panel needs its check here


def test_dashboard_filters_and_variables(scraped: dict[str, Any]) -> None:
    panels = _panels()
    t = _traffic()
    only_search = {**ALL, "$app": "search"}
    assert _vector(scraped, panels["LLM calls"], only_search) == {(): t["calls"]["search"]}
    staging = {**ALL, "$environment": "staging"}
    assert _vector(scraped, panels["LLM calls"], staging) == {(): sum(x.calls for x in TRAFFIC if x.environment == "staging")}
    dash = json.loads(DASHBOARD.read_text())
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        metric, label = var["query"]["query"].removeprefix("label_values(").removesuffix(")").split(", ")
        values = requests.get(f"{scraped['prom']}/api/v1/label/{label}/values", params={"match[]": metric},
                              timeout=5).json()["data"]
        want = {"job": {"otelgate"}, "tenant": {"unknown"}, "app": {"support-bot", "search"},
                "environment": {"prod", "staging"}, "provider": {"openai"}, "model": {"gpt-4o", "gpt-4o-mini"}}[label]
        assert set(values) == want, (label, values)


def test_alert_rules_and_panels_name_real_metrics(scraped: dict[str, Any]) -> None:
    """Every otelgate_* metric in the alert rules and the dashboard is one the gateway exposes."""
    import re

    import yaml
    rules = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "otelgate-rules.yaml"
    exprs = [r["expr"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]] + list(_panels().values())
    text = requests.get(f"{scraped['gw'].admin}/metrics", headers=AUTH, timeout=5).text
    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|sum|count)$", "", name)
    families = {family(name) for name in re.findall(r"^# TYPE (otelgate_\w+) ", text, re.M)}
    used = {family(name) for e in exprs for name in re.findall(r"otelgate_\w+", e)}
    assert used and used <= families, used - families
