"""The PostgreSQL usage store against a real server: two gateways sharing it agree on spend;
the store's own operations (additive upserts, compaction under an advisory lock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.usage.postgres import PostgresStore
from gateway.usage.query import Query, answer
from gateway.usage.recorder import Recorder
from tests.gateway_process import GatewayProcess, gateway_config, wait_for
from tests.pg_server import postgres_dsn  # noqa: F401 - the fixture
from tests.test_usage import _call, priced
from tests.usage_traffic import TRAFFIC, Turn, send


async def _reset(dsn: str) -> None:
    store = PostgresStore(dsn)
    await store.open()
    for table in ("usage_rollup", "usage_user_day", "usage_session_day", "usage_alert_state"):
        await store.execute(f"DELETE FROM {table}")
    await store.close()


async def test_store_adds_up_and_compacts(postgres_dsn: str) -> None:
    await _reset(postgres_dsn)
    a, b = PostgresStore(postgres_dsn), PostgresStore(postgres_dsn)
    await a.open()
    await b.open()
    day = 86400 * 20000
    for store in (a, b):  # two replicas writing the same keys
        rec = Recorder(1000)
        rec.record([_call(day + 60 * i, f"u{i % 3}", 0.5, bytes([i]) * 16) for i in range(90)])
        await store.write(rec.take())
    body = await answer(a, Query(day, day + 86400, group_by=("user",)))
    assert body["totals"]["calls"] == 180 and body["totals"]["cost_usd"] == pytest.approx(90.0)
    assert body["totals"]["active_users"] == 3
    assert {g["key"]["user"]: g["calls"] for g in body["groups"]} == {"u0": 60, "u1": 60, "u2": 60}
    await a.maintain(retain_before=day - 86400, compact_before=day + 86400)
    rows = await a.fetch("SELECT ts, res, calls FROM usage_rollup ORDER BY ts")
    assert rows == [(day, 3600, 120), (day + 3600, 3600, 60)]
    assert (await answer(b, Query(day, day + 86400)))["totals"]["calls"] == 180
    await a.close()
    await b.close()


def _replicas(tmp_path: Path, dsn: str, workers: int = 1) -> list[tuple[Path, GatewayProcess]]:
    """Two gateways (of `workers` workers each) sharing the PostgreSQL usage store at `dsn`, emptied first."""
    import asyncio
    asyncio.run(_reset(dsn))
    gateways = []
    for i in range(2):
        work = tmp_path / f"gw{i}"
        work.mkdir()
        config = gateway_config(work, llm=True)
        config["service"]["workers"] = workers
        config["usage"] = {"store": "postgres", "dsn": dsn, "flush_interval": "100ms"}
        gateways.append((work, GatewayProcess(config, work).wait_ready(60)))
    return gateways


def test_two_gateways_sharing_postgres_agree_on_spend(tmp_path: Path, postgres_dsn: str) -> None:
    gateways = _replicas(tmp_path, postgres_dsn)
    try:
        first, second = TRAFFIC[:3], TRAFFIC[3:] + [Turn("search", "alice", "s-9", calls=2)]
        send(gateways[0][1].http, first)
        send(gateways[1][1].http, second)
        n_calls = sum(t.calls for t in first + second)
        wait_for(lambda: sum(len(priced(w)) for w, _ in gateways) == n_calls)
        spans = [s for w, _ in gateways for s in priced(w)]
        cost = sum(float(s["gen_ai.usage.cost"]) for s in spans)

        def usage(gw: GatewayProcess, **params: Any) -> dict[str, Any]:
            r = requests.get(f"{gw.admin}/api/v1/usage", params=params, timeout=10)
            assert r.status_code == 200, r.text
            return r.json()

        for _, gw in gateways:
            totals = wait_for(lambda g=gw: (t := usage(g)["totals"])["calls"] == n_calls and t)
            assert totals["cost_usd"] == pytest.approx(cost, rel=1e-9)
            alice = usage(gw, user="alice")["totals"]  # alice used both replicas
            assert alice["calls"] == 5 and alice["sessions"] == 2
        health = requests.get(f"{gateways[0][1].admin}/health", timeout=5).json()
        assert health["usage"]["store"] == "postgres" and health["usage"]["status"] == "ok"
        assert "postgresql://" not in str(health)  # the DSN (and its password) is never shown
    finally:
        for _, gw in gateways:
            gw.stop()


def test_replicas_notify_a_budget_crossing_once(tmp_path: Path, postgres_dsn: str) -> None:
    """Two gateways sharing PostgreSQL: spend from both crosses the budget; one notification."""
    import asyncio
    from tests.webhook_server import WebhookServer
    asyncio.run(_reset(postgres_dsn))
    hook = WebhookServer()
    gateways = []
    try:
        for i in range(2):
            work = tmp_path / f"gw{i}"
            work.mkdir()
            config = gateway_config(work, llm=True)
            config["usage"] = {"store": "postgres", "dsn": postgres_dsn, "flush_interval": "100ms"}
            config["alerts"] = {"interval": "100ms",
                                "receivers": [{"name": "hook", "type": "webhook", "url": hook.url + "/hook"}]}
            config["budgets"] = [{"name": "shared", "limit_usd": 0.01, "warn_at": [1.0]}]
            gateways.append(GatewayProcess(config, work).wait_ready())
        send(gateways[0].http, [Turn("bot", "alice", "s1", calls=2)])  # 70% on one replica
        send(gateways[1].http, [Turn("bot", "bob", "s2", calls=2)])  # 140% together
        got = wait_for(lambda: hook.bodies("/hook"), timeout=15)
        for gw in gateways:  # both see the same spend
            wait_for(lambda g=gw: requests.get(f"{g.admin}/api/v1/budgets", timeout=5).json()[0]["state"] == "exceeded")
        import time
        time.sleep(1.0)  # both replicas evaluated it many times by now
        assert len(hook.bodies("/hook")) == 1 and got[0]["budget"] == "shared"
        spends = {round(requests.get(f"{g.admin}/api/v1/budgets", timeout=5).json()[0]["spend_usd"], 12) for g in gateways}
        assert len(spends) == 1
    finally:
        for gw in gateways:
            gw.stop()
        hook.close()


def test_replicas_with_workers_sharing_postgres_count_every_call_once(tmp_path: Path, postgres_dsn: str) -> None:
    """Two gateways of 2 workers each on one PostgreSQL: four flush writers, each adding only what
    its worker priced, so the store's totals are the calls sent, not a multiple of them, and every
    replica answers the same."""
    from tests.gateway_process import read_json_lines, spans_in
    from tests.test_backpressure_health_metrics import metric_in
    gateways = _replicas(tmp_path, postgres_dsn, workers=2)
    try:
        sent = 0
        for k in range(12):  # an exporter (a connection) each: the kernel spreads them over the workers
            work, gw = gateways[k % 2]
            send(gw.http, [Turn("bot", f"user{k % 5}", f"s{k}", calls=1 + k % 3)])
            sent += 1 + k % 3

        def costs() -> list[float]:
            return [float(attrs["gen_ai.usage.cost"]) for work, _ in gateways for path in work.glob("out.worker-*.jsonl")
                    for span in spans_in(read_json_lines(path))
                    if (attrs := {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])})
                    .get("otelgate.llm.call")]

        wait_for(lambda: len(costs()) == sent, timeout=20)
        for work, gw in gateways:
            totals = wait_for(lambda g=gw: (t := requests.get(f"{g.admin}/api/v1/usage", timeout=10).json()["totals"])
                              ["calls"] == sent and t, timeout=20)
            assert totals["cost_usd"] == pytest.approx(sum(costs()), rel=1e-9) and totals["active_users"] == 5
        llm_requests = [metric_in(requests.get(f"{gw.admin}/metrics", timeout=5).text, "otelgate_llm_requests_total")
                        for _, gw in gateways]
        assert sum(llm_requests) == sent  # each replica's /metrics: the sum of its workers
        import time
        time.sleep(0.5)  # several more flushes of every worker: nothing is written twice
        assert requests.get(f"{gateways[0][1].admin}/api/v1/usage", timeout=10).json()["totals"]["calls"] == sent
    finally:
        for _, gw in gateways:
            gw.stop()
