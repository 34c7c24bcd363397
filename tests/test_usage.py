"""The usage store through the real gateway: rollups of known traffic read back through the
admin API (totals, groups, series, top users and sessions), kept across a restart; a broken
store never blocks ingestion; bounded pending rows; retention and compaction."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.llm.call import LlmCall
from gateway.usage.recorder import Recorder, Rollups
from gateway.usage.sqlite import SqliteStore
from gateway.usage.query import Query, answer
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric
from tests.usage_traffic import TRAFFIC, send


def usage_config(tmp_path: Path, **usage: Any) -> dict[str, Any]:
    config = gateway_config(tmp_path, llm=True)
    config["usage"] = {"path": str(tmp_path / "usage.db"), "flush_interval": "100ms", **usage}
    return config


def priced(tmp_path: Path) -> list[dict[str, Any]]:
    """The LLM call spans the gateway wrote, with their attributes as a dict."""
    out = []
    for span in spans_in(read_json_lines(tmp_path / "out.jsonl")):
        attrs = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
        if attrs.get("otelgate.llm.call"):
            out.append(attrs)
    return out


def get_usage(gw: GatewayProcess, **params: Any) -> dict[str, Any]:
    r = requests.get(f"{gw.admin}/api/v1/usage", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_calls(gw: GatewayProcess, n: int) -> dict[str, Any]:
    return wait_for(lambda: (u := get_usage(gw))["totals"]["calls"] == n and u, timeout=15)


def test_usage_of_known_traffic(tmp_path: Path) -> None:
    gw = GatewayProcess(usage_config(tmp_path), tmp_path).wait_ready()
    try:
        send(gw.http)
        n_calls = sum(t.calls for t in TRAFFIC)
        body = wait_calls(gw, n_calls)
        spans = wait_for(lambda: len(p := priced(tmp_path)) == n_calls and p)
        cost = sum(float(s["gen_ai.usage.cost"]) for s in spans)
        t = body["totals"]
        assert t["calls"] == n_calls
        assert t["errors"] == sum(x.calls for x in TRAFFIC if x.error)
        assert t["input_tokens"] == sum(x.calls * x.input_tokens for x in TRAFFIC)
        assert t["output_tokens"] == sum(x.calls * x.output_tokens for x in TRAFFIC)
        assert t["cost_usd"] == pytest.approx(cost, rel=1e-9) and cost > 0
        assert t["turns"] == len(TRAFFIC)  # one per trace with an LLM call
        assert t["sessions"] == 4 and t["active_users"] == 3

        by_app = {g["key"]["app"]: g for g in get_usage(gw, group_by="app")["groups"]}
        assert set(by_app) == {"support-bot", "search"}
        assert by_app["support-bot"]["calls"] == 5 and by_app["support-bot"]["turns"] == 4
        assert by_app["support-bot"]["active_users"] == 2 and by_app["support-bot"]["sessions"] == 3
        assert by_app["search"]["turns"] == 2 and by_app["search"]["active_users"] == 1

        by_model = {g["key"]["model"]: g for g in get_usage(gw, group_by="model", app="support-bot")["groups"]}
        assert by_model["gpt-4o-mini"]["input_tokens"] == 5000
        assert by_model["gpt-4o"]["sessions"] is None  # not derivable by model: said so, never a guess

        staging = get_usage(gw, environment="staging")["totals"]
        assert staging["calls"] == 1 and staging["active_users"] == 0

        alice = get_usage(gw, user="alice")["totals"]
        assert (alice["calls"], alice["turns"], alice["sessions"], alice["active_users"]) == (3, 2, 1, 1)

        full = get_usage(gw, group_by="user", top=2, step="1m", **{"from": int(time.time()) - 600})
        users = {g["key"]["user"]: g for g in full["groups"]}
        assert set(users) == {"alice", "bob", "carol"}
        assert users["bob"]["sessions"] == 2
        top_cost = sorted(((sum(float(s["gen_ai.usage.cost"]) for s in spans if s.get("user.id") == u), u)
                           for u in users), reverse=True)
        assert [u["user"] for u in full["top_users"]] == [u for _, u in top_cost[:2]]
        assert full["top_users"][0]["cost_usd"] == pytest.approx(top_cost[0][0])
        assert len(full["top_sessions"]) == 2 and full["top_sessions"][0]["user"] in users
        assert len(full["series"]) == 10
        assert sum(p["calls"] for p in full["series"]) == n_calls
        assert all(p["active_users"] is None for p in full["series"])  # a step under a day
        daily = get_usage(gw, step="1d", **{"from": int(time.time()) // 86400 * 86400})["series"]
        assert daily[0]["active_users"] == 3 and daily[0]["calls"] == n_calls
        by_day = get_usage(gw, group_by="day,app")["groups"]
        assert {g["key"]["day"] for g in by_day} == {time.strftime("%Y-%m-%d", time.gmtime())}

        health = requests.get(f"{gw.admin}/health", timeout=5).json()
        assert health["usage"]["status"] == "ok" and health["usage"]["store"] == "sqlite"
    finally:
        gw.stop()
    # A restart reads the same figures back (spend survives), and adds to them.
    gw = GatewayProcess(usage_config(tmp_path), tmp_path).wait_ready()
    try:
        assert get_usage(gw)["totals"]["calls"] == n_calls
        send(gw.http, TRAFFIC[:1])
        wait_calls(gw, n_calls + TRAFFIC[0].calls)
    finally:
        gw.stop()


@pytest.mark.parametrize("params, fragment", [
    ({"from": "yesterday"}, "from: expected RFC 3339"),
    ({"group_by": "colour"}, "unknown dimension 'colour'"),
    ({"step": "0"}, "step:"),
    ({"step": "1s", "from": "0"}, "at most 10000"),
    ({"user": "alice", "model": "gpt-4o"}, "cannot be combined"),
    ({"nonsense": "1"}, "unknown parameter"),
    ({"from": "2026-12-02T10:00:00Z", "to": "2026-12-01T10:00:00+01:00"}, "from must be before to"),
])
def test_bad_questions_get_400(tmp_path: Path, params: dict[str, str], fragment: str) -> None:
    config = usage_config(tmp_path)
    config["admin"]["token"] = "s3cret"
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        assert requests.get(f"{gw.admin}/api/v1/usage", timeout=5).status_code == 401
        r = requests.get(f"{gw.admin}/api/v1/usage", params=params, headers={"Authorization": "Bearer s3cret"}, timeout=5)
        assert r.status_code == 400 and fragment in r.json()["error"], r.text
    finally:
        gw.stop()


def test_a_broken_store_never_blocks_ingestion(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    config = usage_config(tmp_path, path=str(tmp_path / "not-a-dir" / "usage.db"), max_pending_rows=3)
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        send(gw.http)
        n_calls = sum(t.calls for t in TRAFFIC)
        wait_for(lambda: len(priced(tmp_path)) == n_calls)  # every span delivered all the same
        health = wait_for(lambda: (h := requests.get(f"{gw.admin}/health", timeout=5).json())["usage"]["last_error"] and h)
        assert health["usage"]["status"] == "failing" and health["status"] == "degraded"
        assert health["usage"]["pending_rows"] <= 3
        dropped = wait_for(lambda: metric(gw.admin, "otelgate_usage_dropped_total"))
        assert dropped > 0
        assert "usage rollups dropped" in gw.log_text() and "usage store failing" in gw.log_text()
        r = requests.get(f"{gw.admin}/api/v1/usage", timeout=5)
        assert r.status_code == 503 and "cannot be read" in r.json()["error"]
    finally:
        gw.stop()


def _open_in_turn(paths: list[str], barrier: Any, failures: Any) -> None:
    """One process of `test_processes_opening_one_new_store_at_once`: opens each store at the same
    moment as the other process."""
    for path in paths:
        barrier.wait()
        try:
            asyncio.run(SqliteStore(path).open())
        except Exception as exc:  # the test counts and shows them
            failures.put(repr(exc))


def test_processes_opening_one_new_store_at_once(tmp_path: Path) -> None:
    """Two workers start together on the default store: both switch the new file to WAL mode at
    once, and SQLite answered one of them "database is locked" at once (no busy wait) in 10-20%
    of such starts: that worker's usage was `failing` (and /health `degraded`) until its next
    flush. Now neither fails."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    paths = [str(tmp_path / f"usage-{i}.db") for i in range(80)]
    barrier, failures = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_open_in_turn, args=(paths, barrier, failures)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    seen = []
    while not failures.empty():
        seen.append(failures.get())
    assert seen == [], f"{len(seen)} of {2 * len(paths)} opens failed: {seen[:3]}"
    for path in paths:  # and each is a working store in WAL mode
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _call(start_s: int, user: str, cost: float, trace: bytes = b"t" * 16) -> LlmCall:
    span = Span(trace_id=trace)
    return LlmCall(span, "svc", "chat", "openai", False, "gpt-4o", None, 10, 5, None, None, None, None, None, None,
                   start_s * 10**9, start_s * 10**9 + 10**9, False, cost_usd=cost, app="a", user=user, session="s")


def test_recorder_bounds_rows_and_counts_what_it_drops() -> None:
    rec = Recorder(limit=4)
    rec.record([_call(60 * i, "u", 0.5, trace=bytes([i]) * 16) for i in range(10)])  # 10 minutes, same day
    assert rec.pending.rows() == 4
    assert rec.dropped["minute"] == 10 - 2 and rec.dropped["user"] == 1 and rec.dropped["session"] == 1
    taken = rec.take()
    assert rec.pending.rows() == 0 and taken.calls() == 2
    other = Rollups()
    lost = other.merge(taken, 3)
    assert sum(lost.values()) >= 1 and other.rows() == 3


async def test_retention_and_compaction(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "u.db"))
    await store.open()
    rec = Recorder(10_000)
    day = 86400 * 20000
    old = [_call(day - 40 * 86400 + 60 * i, f"u{i}", 0.25, bytes([i]) * 16) for i in range(3)]  # past retention
    mid = [_call(day + 60 * i, f"v{i}", 0.5, bytes([10 + i]) * 16) for i in range(120)]  # two hours of minutes
    rec.record(old + mid)
    await store.write(rec.take())
    assert (await store.fetch("SELECT COUNT(*) FROM usage_rollup"))[0][0] == 123
    await store.maintain(retain_before=day - 30 * 86400, compact_before=day + 86400)
    rows = await store.fetch("SELECT ts, res, calls, cost_usd FROM usage_rollup ORDER BY ts")
    assert rows == [(day, 3600, 60, 30.0), (day + 3600, 3600, 60, 30.0)]
    q = Query(day, day + 2 * 3600, step=3600)
    body = await answer(store, q)
    assert body["totals"]["calls"] == 120 and body["totals"]["cost_usd"] == pytest.approx(60.0)
    assert [p["calls"] for p in body["series"]] == [60, 60]
    assert body["totals"]["active_users"] == 120  # the day tables are not compacted
    assert (await store.fetch("SELECT COUNT(*) FROM usage_user_day WHERE day < ?", [day]))[0][0] == 0
    await store.close()
    assert sqlite3.connect(tmp_path / "u.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
