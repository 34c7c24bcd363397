"""Backpressure when a sink cannot keep up, and what /health and /metrics say about it.

The stuck sink is real: a file sink writing into a FIFO whose reader stops reading, so the
sink's writes block exactly as on a hung disk, and its queue fills.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from gateway.batch import count_spans
from gateway.telemetry import Metrics
from tests.conftest import FIXTURES, read_records
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for

PROTO = {"Content-Type": "application/x-protobuf"}


def _request(n: int, tag: str) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for i in range(n):
        scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"{tag}-{i}",
                        attributes=[{"key": "pad", "value": {"string_value": "x" * 4096}}])
    return req.SerializeToString()


def metric(admin: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with these labels, scraped from a gateway's /metrics."""
    return metric_in(requests.get(f"{admin}/metrics", timeout=5).text, name, **labels)


def metric_value(metrics: Metrics, name: str, **labels: str) -> float:
    """The same, read from a `Metrics` registry in this process."""
    return metric_in(metrics.render().decode(), name, **labels)


def metric_in(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


class StuckFifo:
    """A FIFO with a reader that reads only when told to.

    Reader threads are joined before the descriptor is closed: a thread still reading a closed
    descriptor number would steal bytes from whatever file reuses it next.
    """

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def read_for(self, seconds: float) -> None:
        """Read in the background for `seconds` (or until closed)."""
        thread = threading.Thread(target=self._drain, args=(seconds,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                chunk = os.read(self.fd, 1 << 20)
                if chunk:
                    self.data += chunk
                    continue
            except BlockingIOError:
                pass
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        os.close(self.fd)


@pytest.fixture
def stuck(tmp_path: Path):
    fifo = StuckFifo(tmp_path / "out.jsonl")
    config = gateway_config(tmp_path, queue={"max_spans": 200}, batch={"max_spans": 50, "max_delay": "0s"})
    gw = GatewayProcess(config, tmp_path).wait_ready()
    yield gw, fifo
    fifo.read_for(30)
    gw.stop()
    fifo.close()


def _fill(gw: GatewayProcess) -> int:
    """Send until refused; return spans accepted."""
    accepted = 0
    for i in range(200):
        r = requests.post(f"{gw.http}/v1/traces", data=_request(25, f"fill{i}"), headers=PROTO, timeout=10)
        if r.status_code != 200:
            assert r.status_code == 503
            return accepted
        accepted += 25
    raise AssertionError("never refused")


def test_http_backpressure_503_with_retry_after(stuck) -> None:
    gw, fifo = stuck
    accepted = _fill(gw)
    r = requests.post(f"{gw.http}/v1/traces", data=_request(5, "late"), headers=PROTO, timeout=10)
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1
    status = status_pb2.Status.FromString(r.content)
    assert status.code == code_pb2.UNAVAILABLE and "queue full" in status.message
    health = requests.get(f"{gw.admin}/health", timeout=5).json()
    assert health["sinks"]["out"]["queue_depth"] >= 200 - 25
    assert health["sinks"]["out"]["queue_capacity"] == 200
    assert metric(gw.admin, "otelgate_receiver_refused_spans_total", protocol="http", reason="backpressure") >= 5
    assert metric(gw.admin, "otelgate_sink_queue_capacity", sink="out", signal="traces") == 200
    # The reader comes back: everything accepted arrives, and the gateway takes data again.
    fifo.read_for(30)
    wait_for(lambda: requests.post(f"{gw.http}/v1/traces", data=_request(5, "after"), headers=PROTO, timeout=10).status_code == 200)
    wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total", sink="out") >= accepted + 5)


def test_grpc_backpressure_unavailable_with_retry_info(stuck) -> None:
    gw, _ = stuck
    _fill(gw)
    with grpc.insecure_channel(gw.grpc) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            call(_request(5, "late"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    details = dict(err.value.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    assert status.code == code_pb2.UNAVAILABLE
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds >= 1


def test_health_is_503_while_draining(stuck) -> None:
    gw, fifo = stuck
    _fill(gw)
    assert requests.get(f"{gw.admin}/health", timeout=5).status_code == 200
    gw.proc.send_signal(signal.SIGTERM)
    # The stuck sink holds the drain for up to the grace period; health says so meanwhile.
    def draining():
        try:
            r = requests.get(f"{gw.admin}/health", timeout=1)
        except requests.ConnectionError:
            return False
        return r.status_code == 503 and r.json()["status"] == "unavailable"
    wait_for(draining, timeout=5)
    fifo.read_for(30)
    assert gw.proc.wait(20) == 0


def test_health_and_metrics_after_traffic(gateway: GatewayProcess) -> None:
    body = read_records(FIXTURES / "openllmetry_openai.otlp.bin")[0]
    n = count_spans(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
    assert requests.post(f"{gateway.http}/v1/traces", data=body, headers=PROTO, timeout=5).status_code == 200
    with grpc.insecure_channel(gateway.grpc) as channel:
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                            request_serializer=lambda b: b, response_deserializer=lambda b: b)(body, timeout=5)
    bad = trace_service_pb2.ExportTraceServiceRequest()
    bad.resource_spans.add().scope_spans.add().spans.add(trace_id=b"x", span_id=os.urandom(8))
    requests.post(f"{gateway.http}/v1/traces", data=bad.SerializeToString(), headers=PROTO, timeout=5)
    requests.post(f"{gateway.http}/v1/traces", data=b"junk", headers=PROTO, timeout=5)

    wait_for(lambda: metric(gateway.admin, "otelgate_sink_sent_spans_total", sink="out") == 2 * n)
    assert metric(gateway.admin, "otelgate_receiver_accepted_spans_total", protocol="http") == n
    assert metric(gateway.admin, "otelgate_receiver_accepted_spans_total", protocol="grpc") == n
    assert metric(gateway.admin, "otelgate_receiver_rejected_spans_total", protocol="http", reason="invalid_id") == 1
    assert metric(gateway.admin, "otelgate_receiver_requests_total", protocol="http", outcome="accepted") == 1
    assert metric(gateway.admin, "otelgate_receiver_requests_total", protocol="http", outcome="malformed") == 1
    assert metric(gateway.admin, "otelgate_receiver_requests_total", protocol="http", outcome="partial") == 1
    assert metric(gateway.admin, "otelgate_receiver_request_duration_seconds_count", protocol="grpc") == 1
    assert metric(gateway.admin, "otelgate_sink_queue_size", sink="out") == 0
    assert metric(gateway.admin, "otelgate_sink_dropped_spans_total") == 0

    r = requests.get(f"{gateway.admin}/health", timeout=5)
    assert r.status_code == 200
    health = r.json()
    from gateway import __version__
    assert health["status"] == "ok" and health["version"] == __version__
    assert health["uptime_s"] > 0
    assert health["sinks"]["out"] == {"status": "ok", "queue_depth": 0, "queue_capacity": 100000, "last_error": None}
    assert set(health["sinks"]) == {"out", "out/logs", "out/metrics"}  # routes omitted: every signal to every sink


def test_full_queues_refuse_before_the_body_is_read(stuck) -> None:
    """Under backpressure a request is refused from its headers: its body is not waited for (nor
    decoded), on HTTP as on gRPC, so refusing costs the gateway almost nothing under overload."""
    import socket

    gw, _ = stuck
    _fill(gw)
    refused_before = metric(gw.admin, "otelgate_receiver_requests_total", protocol="http", outcome="refused")
    body = _request(5, "unsent")
    host, port = gw.endpoints["OTLP/HTTP"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:100])
        answer = s.recv(65536)  # the rest of the body is never sent
    assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer, answer[:200]
    assert metric(gw.admin, "otelgate_receiver_requests_total", protocol="http", outcome="refused") == refused_before + 1

    release = threading.Event()

    def message():
        release.wait(10)
        yield _request(5, "unsent")

    try:
        with grpc.insecure_channel(gw.grpc) as channel:
            with pytest.raises(grpc.RpcError) as err:  # the RPC has arrived; its message never comes
                channel.stream_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(message(), timeout=5)
    finally:
        release.set()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    status = status_pb2.Status.FromString(dict(err.value.trailing_metadata())["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.retry_delay.seconds == 1
    assert "queue full" in status.message
