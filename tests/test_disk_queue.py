"""Disk queues through the real gateway: kill -9, restarts, the disk budget and torn writes."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric

PROTO = {"Content-Type": "application/x-protobuf"}


def _request(tag: str, n: int = 20) -> bytes:
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for i in range(n):
        scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"{tag}/{i}",
                        attributes=[{"key": "pad", "value": {"string_value": "x" * 200}}])
    return req.SerializeToString()


_DEAD: list[socket.socket] = []


def _dead_endpoint() -> str:
    """A loopback URL that refuses connections: the port stays bound (never listening) for the
    whole run, so no gateway started later can be given it (a freed port can be reused at once,
    and a sink pointed at its own receiver would deliver to itself)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _DEAD.append(s)
    return f"http://127.0.0.1:{s.getsockname()[1]}"


def _forwarder(workdir: Path, target: str, queue: dict[str, Any], **sink: Any) -> dict[str, Any]:
    """A gateway whose only sink is a disk-queued OTLP/HTTP sink to `target`."""
    config = gateway_config(workdir)
    config["sinks"] = {"fwd": {
        "type": "otlp", "protocol": "http", "endpoint": target, "compression": "none",
        "queue": {"type": "disk", "dir": str(workdir / "queue"), **queue},
        "batch": {"max_delay": "50ms"}, "retry": {"initial": "100ms", "max": "300ms", "max_elapsed": "60s"}, **sink}}
    return config


def _receiver(workdir: Path) -> GatewayProcess:
    workdir.mkdir(exist_ok=True)
    return GatewayProcess(gateway_config(workdir), workdir).wait_ready()


def _names(path: Path) -> list[str]:
    return [s["name"] for s in spans_in(read_json_lines(path))]


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path / "b")
    try:
        a_dir = tmp_path / "a"
        a_dir.mkdir()
        config = _forwarder(a_dir, receiver.http, {}, batch={"max_delay": "1s"})
        a = GatewayProcess(config, a_dir).wait_ready()
        acked: list[str] = []
        stop = threading.Event()

        def sender(worker: int) -> None:
            session = requests.Session()
            for k in range(100_000):
                if stop.is_set():
                    return
                tag = f"w{worker}-{k}"
                try:
                    r = session.post(f"{a.http}/v1/traces", data=_request(tag), headers=PROTO, timeout=5)
                except requests.RequestException:
                    return
                if r.status_code == 200:
                    acked.extend(f"{tag}/{i}" for i in range(20))

        threads = [threading.Thread(target=sender, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) > 3_000, timeout=30)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
        delivered_before = set(_names(tmp_path / "b" / "out.jsonl"))
        assert set(acked) - delivered_before, "the kill should leave acknowledged spans undelivered"
        a2 = GatewayProcess(config, a_dir).wait_ready()
        try:
            wait_for(lambda: set(acked) <= set(_names(tmp_path / "b" / "out.jsonl")), timeout=30)
            assert "delivering what the disk queue kept" in a2.log_text()
        finally:
            assert a2.stop() == 0
    finally:
        receiver.stop()


def _queue_while_down(a_dir: Path, requests_: int) -> tuple[dict[str, Any], GatewayProcess]:
    """Run a forwarder whose receiver is down, send `requests_` requests (r0, r1...), stop it."""
    a_dir.mkdir()
    config = _forwarder(a_dir, _dead_endpoint(), {})
    config["service"]["shutdown_grace"] = "500ms"
    a = GatewayProcess(config, a_dir).wait_ready()
    for k in range(requests_):
        assert requests.post(f"{a.http}/v1/traces", data=_request(f"r{k}"), headers=PROTO, timeout=5).status_code == 200
    assert a.stop() == 0
    return config, a


def test_shutdown_keeps_the_disk_queue_for_the_next_start(tmp_path: Path) -> None:
    a_dir = tmp_path / "a"
    config, a = _queue_while_down(a_dir, 5)
    assert "undelivered spans kept in the disk queue" in a.log_text()
    receiver = _receiver(tmp_path / "b")
    try:
        config["sinks"]["fwd"]["endpoint"] = receiver.http  # the queue belongs to the sink name, not its endpoint
        a2 = GatewayProcess(config, a_dir).wait_ready()
        try:
            wait_for(lambda: len(_names(tmp_path / "b" / "out.jsonl")) >= 100, timeout=20)
            assert sorted(_names(tmp_path / "b" / "out.jsonl")) == sorted(f"r{k}/{i}" for k in range(5) for i in range(20))
            wait_for(lambda: not list((a_dir / "queue" / "fwd").glob("segment-*.wal"))
                     or metric(a2.admin, "otelgate_sink_queue_size", sink="fwd") == 0)
        finally:
            assert a2.stop() == 0
    finally:
        receiver.stop()


def _fill_budget(workdir: Path, when_full: str) -> tuple[GatewayProcess, list[int]]:
    """A forwarder to a dead receiver with a 64 KiB disk queue, sent 40 requests; their status codes."""
    config = _forwarder(workdir, _dead_endpoint(), {"max_bytes": "64KiB", "when_full": when_full})
    config["service"]["shutdown_grace"] = "500ms"
    a = GatewayProcess(config, workdir).wait_ready()
    codes = [requests.post(f"{a.http}/v1/traces", data=_request(f"r{k}"), headers=PROTO, timeout=5).status_code
             for k in range(40)]
    return a, codes


def test_disk_budget_refuses_with_backpressure(tmp_path: Path) -> None:
    a, codes = _fill_budget(tmp_path, "refuse")
    try:
        assert 200 in codes and 503 in codes
        accepted = codes.count(200) * 20
        assert accepted * 250 < 2 * 64 * 1024  # bounded by the budget, give or take one record
        assert metric(a.admin, "otelgate_receiver_refused_spans_total", reason="backpressure") >= 20
        size = sum(p.stat().st_size for p in (tmp_path / "queue" / "fwd").glob("segment-*.wal"))
        assert size <= 64 * 1024 + 8 * 1024
    finally:
        a.stop()


def test_torn_tail_is_skipped_and_the_rest_delivered(tmp_path: Path) -> None:
    a_dir = tmp_path / "a"
    config, _ = _queue_while_down(a_dir, 4)
    segments = sorted((a_dir / "queue" / "fwd").glob("segment-*.wal"))
    assert segments
    last = segments[-1]
    data = last.read_bytes()
    last.write_bytes(data[:-100])  # a torn write: the last record is cut short
    receiver = _receiver(tmp_path / "b")
    try:
        config["sinks"]["fwd"]["endpoint"] = receiver.http
        a2 = GatewayProcess(config, a_dir).wait_ready()
        try:
            wait_for(lambda: len(_names(tmp_path / "b" / "out.jsonl")) >= 60, timeout=20)
            names = set(_names(tmp_path / "b" / "out.jsonl"))
            assert names == {f"r{k}/{i}" for k in range(3) for i in range(20)}
            assert "torn" in a2.log_text().lower() or "corrupt" in a2.log_text().lower()
        finally:
            a2.stop()
    finally:
        receiver.stop()


def test_disk_budget_drop_oldest_keeps_the_newest(tmp_path: Path) -> None:
    a, codes = _fill_budget(tmp_path, "drop_oldest")
    try:
        assert set(codes) == {200}
        # One scrape, so both figures are of the same moment (the worker keeps dropping what did not fit).
        sink_lines = [line for line in requests.get(f"{a.admin}/metrics", timeout=5).text.splitlines()
                      if 'sink="fwd"' in line and "log_records" not in line and "metric_points" not in line
                      and 'signal="logs"' not in line and 'signal="metrics"' not in line]
        value = {line.split("{")[0] + ("" if "reason" not in line else line.split('reason="')[1].split('"')[0]):
                 float(line.rsplit(" ", 1)[1]) for line in sink_lines}
        dropped = sum(v for k, v in value.items() if k.startswith("otelgate_sink_dropped_spans_total"))
        queued = value["otelgate_sink_queue_size"]
        assert value.get("otelgate_sink_dropped_spans_totalqueue_full", 0) == dropped > 0, sink_lines
        assert dropped + queued == 40 * 20, sink_lines
        size = sum(p.stat().st_size for p in (tmp_path / "queue" / "fwd").glob("segment-*.wal"))
        assert size <= 64 * 1024 + 8 * 1024  # segments are an eighth of the budget: dropping frees them
    finally:
        a.stop()
