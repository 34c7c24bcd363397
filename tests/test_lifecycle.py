"""Start, stop and the promises around them: SIGTERM under load loses nothing acknowledged."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import grpc
import orjson
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for

PROTO = {"Content-Type": "application/x-protobuf"}


def _request(tag: str, n: int) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for i in range(n):
        scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"{tag}/{i}")
    return req.SerializeToString()


def test_sigterm_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    # A slow-ish sink (small batches) keeps data queued when SIGTERM arrives.
    config = gateway_config(tmp_path, batch={"max_spans": 100, "max_delay": "50ms"})
    gw = GatewayProcess(config, tmp_path).wait_ready()
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def http_sender(worker: int) -> None:
        session = requests.Session()
        for k in range(10_000):
            if stop.is_set():
                return
            tag = f"h{worker}-{k}"
            try:
                r = session.post(f"{gw.http}/v1/traces", data=_request(tag, 50), headers=PROTO, timeout=5)
            except requests.RequestException:
                return
            if r.status_code == 200:
                with lock:
                    acked.extend(f"{tag}/{i}" for i in range(50))

    def grpc_sender() -> None:
        with grpc.insecure_channel(gw.grpc) as channel:
            call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                       request_serializer=lambda b: b, response_deserializer=lambda b: b)
            for k in range(10_000):
                if stop.is_set():
                    return
                tag = f"g-{k}"
                try:
                    call(_request(tag, 50), timeout=5)
                except grpc.RpcError:
                    return
                with lock:
                    acked.extend(f"{tag}/{i}" for i in range(50))

    threads = [threading.Thread(target=http_sender, args=(w,)) for w in range(3)] + [threading.Thread(target=grpc_sender)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) > 5_000, timeout=30)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    stop.set()
    for t in threads:
        t.join(10)
    written = {s["name"] for s in spans_in(read_json_lines(tmp_path / "out.jsonl"))}
    missing = set(acked) - written
    assert not missing, f"{len(missing)} acknowledged spans lost, e.g. {sorted(missing)[:3]}"
    assert len(acked) > 5_000
    assert "shutting down" in gw.log_text() and "stopped" in gw.log_text()


def test_default_config_runs_with_no_file(tmp_path: Path) -> None:
    """`otelgate run` with no config: 4317, 4318, admin 13133, ./otelgate-traces.jsonl."""
    for port in (4317, 4318, 13133):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} is taken on this machine; the embedded default cannot be tested")
    gw = GatewayProcess(None, tmp_path).wait_ready()
    try:
        assert gw.endpoints == {"admin": "127.0.0.1:13133", "OTLP/gRPC": "0.0.0.0:4317", "OTLP/HTTP": "0.0.0.0:4318"}
        r = requests.post("http://127.0.0.1:4318/v1/traces", data=_request("default", 3), headers=PROTO, timeout=5)
        assert r.status_code == 200
        assert requests.get("http://127.0.0.1:13133/health", timeout=5).json()["sinks"]["local_file"]["status"] == "ok"
    finally:
        assert gw.stop() == 0
    names = [s["name"] for s in spans_in(read_json_lines(tmp_path / "otelgate-traces.jsonl"))]
    assert names == ["default/0", "default/1", "default/2"]


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    gw = GatewayProcess(gateway_config(tmp_path), tmp_path, args=("--log-format", "json")).wait_ready()
    assert gw.stop() == 0
    events = [orjson.loads(line) for line in gw.lines if line.strip()]
    by_event = {e["event"]: e for e in events}
    assert {"starting", "admin listening", "OTLP/gRPC listening", "OTLP/HTTP listening", "ready", "stopped"} <= set(by_event)
    host, port = by_event["OTLP/HTTP listening"]["endpoint"].split(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert all({"ts", "level", "logger", "event"} <= set(e) for e in events)


def test_port_in_use_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        config = gateway_config(tmp_path)
        config["receivers"]["http"]["endpoint"] = f"127.0.0.1:{port}"
        gw = GatewayProcess(config, tmp_path)
        assert gw.proc.wait(20) == 1
        wait_for(lambda: "cannot start" in gw.log_text())
        assert "another process holds the port" in gw.log_text()
