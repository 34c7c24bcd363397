"""`service.workers`: several real gateway processes on one port, one supervisor, one admin endpoint."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from gateway.config import ConfigError, parse
from gateway.sinks.wal import WriteAheadLog
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric, metric_in
from tests.test_disk_queue import PROTO, _forwarder, _request

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="SO_REUSEPORT workers need Linux")


def _workers_config(workdir: Path, n: int = 2, **sink: Any) -> dict[str, Any]:
    config = gateway_config(workdir, **sink)
    config["service"]["workers"] = n
    return config


def _worker_files(workdir: Path, stem: str = "out") -> dict[str, list[str]]:
    files = (p for p in sorted(workdir.glob(f"{stem}.worker-*.jsonl")) if p.name[len(stem) + 8:-6].isdigit())
    return {p.name: [s["name"] for s in spans_in(read_json_lines(p))] for p in files}


def _post(gw: GatewayProcess, tag: str, n: int = 20) -> int:
    # A new connection each time (no session): the kernel spreads connections over the workers.
    return requests.post(f"{gw.http}/v1/traces", data=_request(tag, n), headers=PROTO, timeout=10).status_code


def test_two_workers_share_the_port_and_the_admin_endpoint_sums_them(tmp_path: Path) -> None:
    """Also: worker 0 delivers the disk queue of a worker that no longer exists, and SIGHUP reaches every worker."""
    config = _workers_config(tmp_path, queue={"type": "disk", "dir": str(tmp_path / "queue")})
    orphan = WriteAheadLog(tmp_path / "queue" / "worker-5" / "out", max_bytes=1 << 30)
    orphan.open()
    for k in range(3):
        orphan.append(_request(f"orphan{k}"), 20)
    orphan.close()
    gw = GatewayProcess(config, tmp_path).wait_ready(60)
    try:
        wait_for(lambda: len(_worker_files(tmp_path).get("out.worker-0.jsonl", [])) == 60, timeout=20)
        assert sorted(_worker_files(tmp_path)["out.worker-0.jsonl"]) == sorted(f"orphan{k}/{i}" for k in range(3) for i in range(20))
        assert not (tmp_path / "queue" / "worker-5").exists()
        assert "adopted the disk queue of a worker that no longer runs" in gw.log_text()
        sent_names = lambda: {w: [n for n in names if n.startswith("r")] for w, names in _worker_files(tmp_path).items()}  # noqa: E731
        health = requests.get(f"{gw.admin}/health", timeout=5).json()
        assert health["status"] == "ok", health
        assert [(w["id"], w["status"]) for w in health["workers"]] == [(0, "running"), (1, "running")]
        pids = {w["pid"] for w in health["workers"]}
        assert len(pids) == 2 and gw.pid not in pids
        for k in range(60):
            assert _post(gw, f"r{k}") == 200
        wait_for(lambda: sum(map(len, sent_names().values())) == 1200, timeout=20)
        files = sent_names()
        assert sorted(files) == ["out.worker-0.jsonl", "out.worker-1.jsonl"]
        assert all(files.values()), f"one worker took every connection: {[len(v) for v in files.values()]}"
        assert sorted(n for names in files.values() for n in names) == sorted(f"r{k}/{i}" for k in range(60) for i in range(20))
        # /metrics: one total, the sum of the workers' own counters (read from their files here).
        text = requests.get(f"{gw.admin}/metrics", timeout=5).text
        assert metric_in(text, "otelgate_receiver_accepted_spans_total") == 1200
        assert metric_in(text, "otelgate_sink_sent_spans_total", sink="out") == 1200 + 60  # and the orphan's
        assert metric_in(text, "otelgate_receiver_request_duration_seconds_count", protocol="http") == 60
        assert metric_in(text, "otelgate_workers", status="running") == 2
        assert text.count("# TYPE otelgate_receiver_accepted_spans_total counter") == 1
        # gRPC shares its port too: a channel per request, so connections spread as well.
        import grpc

        for k in range(10):
            with grpc.insecure_channel(gw.grpc) as channel:
                export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
                export(_request(f"g{k}"), timeout=10)
        wait_for(lambda: metric(gw.admin, "otelgate_receiver_accepted_spans_total", protocol="grpc") == 200, timeout=20)
        # SIGHUP to the supervisor reloads every worker.
        config["service"]["log_level"] = "warning"
        config["service"]["config_watch_interval"] = 0  # only the signal reloads
        assert gw.config_path is not None
        gw.config_path.write_text(yaml.safe_dump(config))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(gw.admin, "otelgate_config_reloads_total", outcome="applied") == 2, timeout=20)
    finally:
        assert gw.stop() == 0
    assert "worker=0" in gw.log_text() and "worker=1" in gw.log_text()


def test_kill_9_of_a_worker_under_load_restarts_it_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    receiver = GatewayProcess(gateway_config(b_dir), b_dir).wait_ready()
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    config = _forwarder(a_dir, receiver.http, {}, batch={"max_delay": "1s"})
    config["service"]["workers"] = 2
    a = GatewayProcess(config, a_dir).wait_ready(60)
    try:
        acked: list[str] = []
        stop = threading.Event()

        def sender(client: int) -> None:
            for k in range(100_000):
                if stop.is_set():
                    return
                tag = f"c{client}-{k}"
                try:
                    if _post(a, tag) == 200:
                        acked.extend(f"{tag}/{i}" for i in range(20))
                except requests.RequestException:
                    pass  # the killed worker's connection: not acknowledged

        threads = [threading.Thread(target=sender, args=(c,)) for c in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) > 2_000, timeout=30)
        victim = requests.get(f"{a.admin}/health", timeout=5).json()["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: (w := requests.get(f"{a.admin}/health", timeout=5).json()["workers"][0])["pid"] != victim
                 and w["status"] == "running", timeout=30, interval=0.2)
        wait_for(lambda: len(acked) > 4_000, timeout=30)  # the load goes on through both workers
        stop.set()
        for t in threads:
            t.join(15)
        names = lambda: {s["name"] for s in spans_in(read_json_lines(b_dir / "out.jsonl"))}  # noqa: E731
        wait_for(lambda: set(acked) <= names(), timeout=30, interval=0.2)
        assert metric(a.admin, "otelgate_worker_restarts_total", worker="0") == 1
        log = a.log_text()
        assert "worker died; restarting it" in log and "killed by SIGKILL" in log
        assert "delivering what the disk queue kept" in log or not (a_dir / "queue" / "worker-0").exists()
    finally:
        assert a.stop() == 0
        receiver.stop()


def test_a_port_held_by_another_program_fails_the_start(tmp_path: Path) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        config = _workers_config(tmp_path)
        config["receivers"]["http"]["endpoint"] = f"127.0.0.1:{holder.getsockname()[1]}"
        gw = GatewayProcess(config, tmp_path)
        assert gw.proc.wait(30) == 1
        assert "cannot bind" in gw.log_text()
    finally:
        holder.close()


def _trace_request(spans: list[tuple[bytes, str, bool]]) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for trace_id, name, error in spans:
        span = scope.spans.add(trace_id=trace_id, span_id=os.urandom(8), name=name)
        if error:
            span.status.code = 2  # STATUS_CODE_ERROR
    return req.SerializeToString()


def test_tail_sampling_with_workers_decides_whole_traces_at_their_owner(tmp_path: Path) -> None:
    from gateway.service.affinity import owner_of

    config = _workers_config(tmp_path)
    config["sampling"] = {"tail": {"decision_wait": "3s", "idle": "3s", "policies": [{"type": "error"}]}}
    gw = GatewayProcess(config, tmp_path).wait_ready(60)
    try:
        import random

        rng = random.Random(3)
        traces = [rng.randbytes(16) for _ in range(60)]
        errors = set(traces[::3])
        # Each trace in three requests (new connections: they land on either worker); the error,
        # if any, in the last one, so a worker seeing only part of the trace would decide wrong.
        for part in range(3):
            chunk = [(t, f"{t.hex()}/{part}", part == 2 and t in errors) for t in traces]
            for k in range(0, len(chunk), 10):
                assert requests.post(f"{gw.http}/v1/traces", data=_trace_request(chunk[k:k + 10]), headers=PROTO,
                                     timeout=10).status_code == 200
        wait_for(lambda: sum(map(len, _worker_files(tmp_path).values())) >= 3 * len(errors), timeout=30, interval=0.2)
        wait_for(lambda: metric(gw.admin, "otelgate_tail_traces") == 0, timeout=30, interval=0.2)
        files = _worker_files(tmp_path)
        kept: dict[bytes, list[str]] = {}
        for name, spans in files.items():
            worker = int(name.split(".")[1].split("-")[1])
            for span in spans:
                tid = bytes.fromhex(span.split("/")[0])
                assert owner_of(tid, 2) == worker, "a trace was decided away from its owner"
                kept.setdefault(tid, []).append(span)
        assert set(kept) == errors  # the same decisions as one process
        assert all(len(set(names)) == 3 for names in kept.values())
        assert metric(gw.admin, "otelgate_sampled_spans_total", policy="tail", decision="dropped") == 3 * (60 - len(errors))
        assert metric(gw.admin, "otelgate_affinity_forwarded_spans_total") > 0
        from gateway.service.affinity import _COMPILED_SPLIT
        split = "compiled" if _COMPILED_SPLIT is not None else "python"  # the workers import what the tests do
        assert gw.log_text().count("trace affinity on: spans go to the worker owning their trace") == 2
        assert gw.log_text().count(f"split={split}") == 2
    finally:
        assert gw.stop() == 0


def test_workers_auto_is_one_per_core() -> None:
    config = parse(yaml.safe_dump({"sinks": {"out": {"type": "file"}}, "service": {"workers": "auto"}}))
    assert config.service.worker_count() == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError):
        parse(yaml.safe_dump({"sinks": {"out": {"type": "file"}}, "service": {"workers": 0}}))


def test_merged_metrics_are_the_sums_and_a_dead_workers_counters_stay_in_them() -> None:
    """The supervisor's line-by-line merge, on prometheus-client's own exposition of two workers'
    registries (counters with labels, a histogram, gauges, a label value with a space and a quote)."""
    import asyncio
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from gateway.service.workers import Supervisor

    def exposition(sent: dict[str, float], seconds: list[float], depth: float) -> bytes:
        registry = CollectorRegistry()
        counter = Counter("otelgate_t_sent_spans", "Spans sent", ["sink"], registry=registry)
        for sink, n in sent.items():
            counter.labels(sink).inc(n)
        histogram = Histogram("otelgate_t_seconds", "How long", registry=registry)
        for s in seconds:
            histogram.observe(s)
        Gauge("otelgate_t_depth", "Queue depth", registry=registry).set(depth)
        Gauge("otelgate_budget_spend_usd", "Read from the store all workers share", registry=registry).set(7.5)
        return generate_latest(registry)

    def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text.decode()) for s in f.samples}

    async def scenario() -> None:
        supervisor = Supervisor(parse(yaml.safe_dump({"service": {"workers": 2},
                                                      "sinks": {"out": {"type": "file", "path": "/dev/null"}}})),
                                "unused.yaml", "json")
        try:
            w0, w1 = supervisor.workers
            text0 = exposition({"out": 3, 'a "b" c': 1}, [0.01, 2.0], 4)
            text1 = exposition({"out": 5}, [0.2], 6)
            merged = samples(supervisor.merged_metrics([(w0, text0), (w1, text1)]))
            for key, value in samples(text0).items():
                if key[0] != "otelgate_budget_spend_usd":
                    assert merged[key] == value + samples(text1).get(key, 0.0), key
            assert merged[("otelgate_t_depth", ())] == 10
            assert merged[("otelgate_t_seconds_count", ())] == 3
            assert merged[("otelgate_budget_spend_usd", ())] == 7.5  # one store: its value, not the sum
            # Worker 1 dies (a real process that exited) and comes back with fresh counters.
            w1.proc = subprocess.Popen([sys.executable, "-c", "pass"])
            w1.proc.wait()
            w1.status = "running"
            supervisor._supervise()
            assert w1.status == "restarting"
            text1_again = exposition({"out": 2}, [], 1)
            merged = samples(supervisor.merged_metrics([(w0, text0), (w1, text1_again)]))
            assert merged[("otelgate_t_sent_spans_total", (("sink", "out"),))] == 3 + 5 + 2
            assert merged[("otelgate_t_seconds_count", ())] == 3  # 2 + the dead worker's 1
            assert merged[("otelgate_t_depth", ())] == 4 + 1  # a gauge is not carried over
        finally:
            supervisor._cleanup()

    asyncio.run(scenario())


def test_usage_api_page_budgets_and_admin_token_with_workers(tmp_path: Path) -> None:
    """With workers and `admin.token`, the one admin endpoint still reads every worker (their private
    sockets need no token), serves the usage API and page from the shared store, and reports a budget
    gauge once (every worker reads the same store: a sum would double it)."""
    from tests.test_usage import usage_config
    from tests.usage_traffic import Turn, send

    config = usage_config(tmp_path)
    config["service"]["workers"] = 2
    config["admin"]["token"] = "s3cret"
    config["alerts"] = {"interval": "200ms"}
    config["budgets"] = [{"name": "daily", "limit_usd": 1000}]
    gw = GatewayProcess(config, tmp_path).wait_ready(60)
    auth = {"Authorization": "Bearer s3cret"}
    try:
        for k in range(8):  # an exporter (a connection) each: the kernel spreads them over the workers
            send(gw.http, [Turn("bot", f"user{k}", f"s{k}")])

        def usage() -> dict[str, Any]:
            r = requests.get(f"{gw.admin}/api/v1/usage", params={"group_by": "user"}, headers=auth, timeout=10)
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

        body = wait_for(lambda: (u := usage())["totals"]["calls"] == 8 and u, timeout=20)
        assert body["totals"]["active_users"] == 8 and len(body["groups"]) == 8
        assert requests.get(f"{gw.admin}/api/v1/usage", timeout=5).status_code == 401
        text = requests.get(f"{gw.admin}/metrics", headers=auth, timeout=5).text
        assert metric_in(text, "otelgate_llm_requests_total") == 8  # summed over both workers
        assert metric_in(text, "otelgate_workers", status="running") == 2
        assert metric_in(text, "otelgate_budget_limit_usd", budget="daily") == 1000  # once, not once per worker
        cost = body["totals"]["cost_usd"]
        budgets = wait_for(lambda: (b := requests.get(f"{gw.admin}/api/v1/budgets", headers=auth, timeout=5).json())
                           and b[0]["spend_usd"] == pytest.approx(cost) and b, timeout=10)  # each worker reads the store
        assert budgets[0]["name"] == "daily" and cost > 0
        page = requests.get(f"{gw.admin}/usage", headers=auth, timeout=5)
        assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
        assert requests.get(f"{gw.admin}/api/v1/openapi.json", headers=auth, timeout=5).json()["openapi"]
        health = requests.get(f"{gw.admin}/health", timeout=5).json()
        assert health["status"] == "ok" and "usage" in health and "alerts" in health
    finally:
        gw.stop()
