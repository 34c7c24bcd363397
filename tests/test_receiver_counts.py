"""Every request is counted once, under its own protocol and outcome, on both receivers, and each
gets the answer its outcome calls for (the receivers keep their counter children and the
all-accepted answer from one request to the next: this holds them to what `labels()` gave)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

from tests.gateway_process import GatewayProcess, gateway_config
from tests.test_backpressure_health_metrics import metric

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _request(spans: int, invalid: int = 0) -> bytes:
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for i in range(spans):
        scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"s{i}")
    for i in range(invalid):
        scope.spans.add(trace_id=b"\0" * 16, span_id=os.urandom(8), name=f"bad{i}")  # all-zero trace id: invalid
    return req.SerializeToString()


def test_outcomes_and_answers_per_protocol(tmp_path: Path) -> None:
    gw = GatewayProcess(gateway_config(tmp_path), tmp_path).wait_ready()
    try:
        url = f"{gw.http}/v1/traces"
        headers = {"Content-Type": "application/x-protobuf"}
        answers = [requests.post(url, data=_request(2), headers=headers, timeout=10) for _ in range(3)]
        partial = requests.post(url, data=_request(1, invalid=2), headers=headers, timeout=10)
        as_json = requests.post(url, data=b'{"resourceSpans": []}', headers={"Content-Type": "application/json"}, timeout=10)
        with grpc.insecure_channel(gw.grpc) as channel:
            export = channel.unary_unary(METHOD)
            grpc_answers = [export(_request(3), timeout=10) for _ in range(2)]
            grpc_partial = export(_request(2, invalid=1), timeout=10)

        assert [a.status_code for a in answers] == [200, 200, 200]
        assert all(ExportTraceServiceResponse.FromString(a.content) == ExportTraceServiceResponse() for a in answers)
        assert answers[0].headers["Content-Type"].startswith("application/x-protobuf")
        assert partial.status_code == 200
        assert ExportTraceServiceResponse.FromString(partial.content).partial_success.rejected_spans == 2
        assert as_json.status_code == 200 and as_json.json() == {}
        assert all(ExportTraceServiceResponse.FromString(a) == ExportTraceServiceResponse() for a in grpc_answers)
        assert ExportTraceServiceResponse.FromString(grpc_partial).partial_success.rejected_spans == 1

        admin = gw.admin
        assert metric(admin, "otelgate_receiver_requests_total", protocol="http", outcome="accepted") == 4  # 3 + the JSON one
        assert metric(admin, "otelgate_receiver_requests_total", protocol="http", outcome="partial") == 1
        assert metric(admin, "otelgate_receiver_requests_total", protocol="grpc", outcome="accepted") == 2
        assert metric(admin, "otelgate_receiver_requests_total", protocol="grpc", outcome="partial") == 1
        assert metric(admin, "otelgate_receiver_accepted_spans_total", protocol="http") == 3 * 2 + 1
        assert metric(admin, "otelgate_receiver_accepted_spans_total", protocol="grpc") == 2 * 3 + 2
        assert metric(admin, "otelgate_receiver_rejected_spans_total", protocol="http", reason="invalid_id") == 2
        assert metric(admin, "otelgate_receiver_rejected_spans_total", protocol="grpc", reason="invalid_id") == 1
        assert metric(admin, "otelgate_receiver_request_duration_seconds_count", protocol="http") == 5
        assert metric(admin, "otelgate_receiver_request_duration_seconds_count", protocol="grpc") == 3
    finally:
        gw.stop()
