"""Logs and metrics: the real SDK log and metric exporters (gRPC and HTTP) against the real
gateway, routed to files and to an OTLP receiver (another otelgate); every metric data point
kind arriving intact; routes per signal; no route counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from gateway.otlp.signals import count_metric_points
from tests.conftest import FIXTURES, read_records
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, wait_for
from tests.test_backpressure_health_metrics import metric

PROTO = {"Content-Type": "application/x-protobuf"}


def _emit_logs(exporter: Any, service: str, messages: list[str]) -> None:
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("tests.signals")
    for message in messages:
        logger.emit(body=message, severity_number=SeverityNumber.INFO, attributes={"gen_ai.request.model": "gpt-4o-mini"})
    provider.shutdown()


def _emit_metrics(exporter: Any, service: str) -> None:
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    views = [View(instrument_name="latency.exp", aggregation=ExponentialBucketHistogramAggregation())]
    provider = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader], views=views)
    meter = provider.get_meter("tests.signals")
    meter.create_counter("requests").add(3, {"route": "/chat"})
    meter.create_up_down_counter("in_flight").add(2)
    meter.create_histogram("latency").record(0.25)
    meter.create_histogram("latency.exp").record(1.5)
    meter.create_observable_gauge("temperature", callbacks=[lambda options: [__import__(
        "opentelemetry.metrics", fromlist=["Observation"]).Observation(21.5)]])
    provider.shutdown()  # flushes once


def _log_bodies(path: Path) -> list[str]:
    return [r["body"]["stringValue"] for line in read_json_lines(path) for rl in line["resourceLogs"]
            for sl in rl["scopeLogs"] for r in sl["logRecords"]]


def _metric_names(path: Path) -> set[str]:
    return {m["name"] for line in read_json_lines(path) for rm in line["resourceMetrics"]
            for sm in rm["scopeMetrics"] for m in sm["metrics"]}


def test_sdk_logs_and_metrics_over_both_protocols_reach_files_and_an_otlp_receiver(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    b_config = gateway_config(tmp_path / "b")
    b_config["routes"] = [{"name": "all", "sinks": ["out"], "signals": ["traces", "logs", "metrics"]}]
    b = GatewayProcess(b_config, tmp_path / "b").wait_ready()
    config = gateway_config(tmp_path)
    config["sinks"]["fwd"] = {"type": "otlp", "protocol": "grpc", "endpoint": b.grpc, "batch": {"max_delay": "20ms"}}
    config["routes"] = [{"name": "all", "sinks": ["out", "fwd"], "signals": ["traces", "logs", "metrics"]}]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        _emit_logs(GrpcLogExporter(endpoint=gw.grpc, insecure=True), "chat", ["hello over grpc"])
        _emit_logs(HttpLogExporter(endpoint=f"{gw.http}/v1/logs"), "chat", ["hello over http", "again"])
        _emit_metrics(GrpcMetricExporter(endpoint=gw.grpc, insecure=True), "chat")
        _emit_metrics(HttpMetricExporter(endpoint=f"{gw.http}/v1/metrics"), "chat")
        names = {"requests", "in_flight", "latency", "latency.exp", "temperature"}
        for path in (tmp_path / "out.logs.jsonl", tmp_path / "b" / "out.logs.jsonl"):
            wait_for(lambda: sorted(_log_bodies(path)) == ["again", "hello over grpc", "hello over http"])
        for path in (tmp_path / "out.metrics.jsonl", tmp_path / "b" / "out.metrics.jsonl"):
            wait_for(lambda: _metric_names(path) == names)
        assert metric(gw.admin, "otelgate_receiver_accepted_log_records_total") == 3
        assert metric(gw.admin, "otelgate_receiver_accepted_metric_points_total") == 10
        assert metric(gw.admin, "otelgate_sink_sent_log_records_total", sink="fwd") == 3
        wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_metric_points_total", sink="fwd") == 10)
        assert not (tmp_path / "b" / "out.jsonl").exists() or not read_json_lines(tmp_path / "b" / "out.jsonl")
        assert "Traceback" not in gw.log_text() + b.log_text()
    finally:
        assert gw.stop() == 0
        assert b.stop() == 0


def _every_point_kind() -> ExportMetricsServiceRequest:
    """Sum, gauge, histogram, exponential histogram and summary points, with exemplars and flags."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "billing"
    sm = rm.scope_metrics.add()
    sm.scope.name = "tests"
    t0, t1 = 1_795_000_000_000_000_000, 1_795_000_010_000_000_000
    total = sm.metrics.add(name="tokens", unit="{token}", description="tokens used")
    total.sum.aggregation_temporality = 2
    total.sum.is_monotonic = True
    point = total.sum.data_points.add(start_time_unix_nano=t0, time_unix_nano=t1, as_int=1234)
    point.attributes.add(key="model").value.string_value = "gpt-4o"
    point.exemplars.add(time_unix_nano=t1, as_int=40, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    gauge = sm.metrics.add(name="queue.depth")
    gauge.gauge.data_points.add(time_unix_nano=t1, as_double=7.5)
    hist = sm.metrics.add(name="latency", unit="s")
    hist.histogram.aggregation_temporality = 1
    hist.histogram.data_points.add(start_time_unix_nano=t0, time_unix_nano=t1, count=4, sum=2.5, min=0.1, max=1.2,
                                   bucket_counts=[1, 2, 1], explicit_bounds=[0.5, 1.0])
    exp = sm.metrics.add(name="latency.exp")
    exp.exponential_histogram.aggregation_temporality = 2
    ep = exp.exponential_histogram.data_points.add(start_time_unix_nano=t0, time_unix_nano=t1, count=3, sum=4.0,
                                                   scale=3, zero_count=1, zero_threshold=0.001)
    ep.positive.offset = -2
    ep.positive.bucket_counts.extend([1, 1])
    ep.negative.bucket_counts.extend([0])
    summary = sm.metrics.add(name="rpc.duration")
    sp = summary.summary.data_points.add(start_time_unix_nano=t0, time_unix_nano=t1, count=10, sum=5.0, flags=1)
    sp.quantile_values.add(quantile=0.5, value=0.4)
    sp.quantile_values.add(quantile=0.99, value=1.9)
    return request


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_metric_point_kind_arrives_intact(tmp_path: Path, protocol: str) -> None:
    config = gateway_config(tmp_path, format="proto")
    config["routes"] = [{"name": "metrics", "sinks": ["out"], "signals": ["metrics"]}]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    sent = _every_point_kind()
    try:
        if protocol == "http":
            r = requests.post(f"{gw.http}/v1/metrics", data=sent.SerializeToString(), headers=PROTO, timeout=5)
            assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-protobuf"
            assert ExportMetricsServiceResponse.FromString(r.content) == ExportMetricsServiceResponse()
        else:
            import grpc
            with grpc.insecure_channel(gw.grpc) as channel:
                export = channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
                assert ExportMetricsServiceResponse.FromString(export(sent.SerializeToString(), timeout=5)) == \
                    ExportMetricsServiceResponse()
        path = tmp_path / "out.metrics.jsonl"
        wait_for(lambda: path.exists() and path.stat().st_size > 0)
        wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_metric_points_total", sink="out") == 5)
        [record] = read_records(path)
        assert ExportMetricsServiceRequest.FromString(record) == sent  # byte for byte the same message
        assert count_metric_points(sent) == 5
    finally:
        assert gw.stop() == 0


def test_routes_per_signal_and_no_route_counted(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    config["sinks"]["chat_logs"] = {"type": "file", "path": str(tmp_path / "chat.jsonl"), "batch": {"max_delay": "20ms"}}
    config["routes"] = [
        {"name": "chat-logs", "match": {"resource.service.name": "chat"}, "sinks": ["chat_logs"], "signals": ["logs"]},
        {"name": "traces", "sinks": ["out"]},  # traces only: metrics have no route
    ]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        _emit_logs(HttpLogExporter(endpoint=f"{gw.http}/v1/logs"), "chat", ["for chat"])
        _emit_logs(HttpLogExporter(endpoint=f"{gw.http}/v1/logs"), "search", ["nowhere"])
        _emit_metrics(HttpMetricExporter(endpoint=f"{gw.http}/v1/metrics"), "chat")
        wait_for(lambda: _log_bodies(tmp_path / "chat.logs.jsonl") == ["for chat"])
        wait_for(lambda: metric(gw.admin, "otelgate_router_dropped_log_records_total", reason="no_route") == 1)
        wait_for(lambda: metric(gw.admin, "otelgate_router_dropped_metric_points_total", reason="no_route") == 5)
        assert metric(gw.admin, "otelgate_receiver_accepted_metric_points_total") == 5  # accepted, then counted
    finally:
        assert gw.stop() == 0


def test_genai_log_fixture_passes_with_its_span_links(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, llm=True)
    config["routes"] = [{"name": "all", "sinks": ["out"], "signals": ["traces", "logs"]}]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        [body] = read_records(FIXTURES / "openai_v2.logs.otlp.bin")
        sent = ExportLogsServiceRequest.FromString(body)
        r = requests.post(f"{gw.http}/v1/logs", data=body, headers=PROTO, timeout=5)
        assert r.status_code == 200
        path = tmp_path / "out.logs.jsonl"
        wait_for(lambda: read_json_lines(path))
        records = [r for line in read_json_lines(path) for rl in line["resourceLogs"] for sl in rl["scopeLogs"]
                   for r in sl["logRecords"]]
        assert len(records) == 4
        ids = {(r.trace_id.hex(), r.span_id.hex()) for rl in sent.resource_logs for sl in rl.scope_logs
               for r in sl.log_records}
        assert {(r["traceId"], r["spanId"]) for r in records} == ids  # still joined to their spans
    finally:
        assert gw.stop() == 0


def test_a_log_record_with_a_malformed_trace_id_is_rejected_alone(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    config["routes"] = [{"name": "logs", "sinks": ["out"], "signals": ["logs"]}]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        request = ExportLogsServiceRequest()
        sl = request.resource_logs.add().scope_logs.add()
        sl.log_records.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8).body.string_value = "good"
        sl.log_records.add(trace_id=b"\x01" * 5).body.string_value = "bad"
        sl.log_records.add().body.string_value = "no ids is fine"
        r = requests.post(f"{gw.http}/v1/logs", data=request.SerializeToString(), headers=PROTO, timeout=5)
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
        response = ExportLogsServiceResponse.FromString(r.content)
        assert r.status_code == 200 and response.partial_success.rejected_log_records == 1
        assert "trace_id must be empty or 16 bytes" in response.partial_success.error_message
        wait_for(lambda: sorted(_log_bodies(tmp_path / "out.logs.jsonl")) == ["good", "no ids is fine"])
    finally:
        assert gw.stop() == 0


def test_redaction_reaches_log_records_attributes_and_bodies(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, llm=True)
    config.setdefault("pipeline", {})["redact"] = {"enabled": True, "content": "hash", "hash_secret": "0123456789abcdef-secret"}
    config["routes"] = [{"name": "all", "sinks": ["out"], "signals": ["traces", "logs"]}]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        [body] = read_records(FIXTURES / "openai_v2.logs.otlp.bin")
        request = ExportLogsServiceRequest.FromString(body)
        scope = request.resource_logs[0].scope_logs[0]
        prompts = {leaf for r in scope.log_records for kv in r.attributes if kv.key == "gen_ai.input.messages"
                   for leaf in _strings(kv.value) if len(leaf) > 12}  # the message texts (structured, not JSON)
        # The older event form: the message in the body, as a map; and a plain string body with a card number.
        old = scope.log_records.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, event_name="gen_ai.user.message")
        old.body.kvlist_value.values.add(key="content").value.string_value = "I am ann@example.com"
        scope.log_records.add().body.string_value = '{"note": "card 4111 1111 1111 1111"}'
        r = requests.post(f"{gw.http}/v1/logs", data=request.SerializeToString(), headers=PROTO, timeout=5)
        assert r.status_code == 200
        path = tmp_path / "out.logs.jsonl"
        wait_for(lambda: read_json_lines(path))
        text = path.read_text()
        assert prompts and not any(p in text for p in prompts)
        assert "ann@example.com" not in text and "4111 1111 1111 1111" not in text
        records = [r for line in read_json_lines(path) for rl in line["resourceLogs"] for sl in rl["scopeLogs"]
                   for r in sl["logRecords"]]
        hashed = [a["value"] for r in records for a in r.get("attributes", []) if a["key"] == "gen_ai.input.messages"]
        assert len(hashed) == 4 and all("hmac-sha256:" in json.dumps(h) for h in hashed)
        assert json.loads(records[-1]["body"]["stringValue"]) == {"note": "card [REDACTED:credit_card]"}  # still JSON
        assert metric(gw.admin, "otelgate_redactions_total", kind="credit_card") == 1
        assert metric(gw.admin, "otelgate_redactions_total", kind="content_hash") >= 5
    finally:
        assert gw.stop() == 0


def _strings(value: Any) -> list[str]:
    """Every string leaf of an AnyValue."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return [value.string_value]
    if kind == "array_value":
        return [s for v in value.array_value.values for s in _strings(v)]
    if kind == "kvlist_value":
        return [s for kv in value.kvlist_value.values for s in _strings(kv.value)]
    return []


def test_the_count_limit_holds_for_logs_and_metrics(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    config["limits"] = {"max_spans_per_request": 4}
    config["routes"] = [{"name": "all", "sinks": ["out"], "signals": ["logs", "metrics"]}]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        logs = ExportLogsServiceRequest()
        sl = logs.resource_logs.add().scope_logs.add()
        for i in range(5):
            sl.log_records.add().body.string_value = str(i)
        r = requests.post(f"{gw.http}/v1/logs", data=logs.SerializeToString(), headers=PROTO, timeout=5)
        assert r.status_code == 413 and b"5 log records in one request" in r.content
        r = requests.post(f"{gw.http}/v1/metrics", data=_every_point_kind().SerializeToString(), headers=PROTO, timeout=5)
        assert r.status_code == 413 and b"5 metric points in one request" in r.content
        del sl.log_records[4]
        assert requests.post(f"{gw.http}/v1/logs", data=logs.SerializeToString(), headers=PROTO, timeout=5).status_code == 200
        assert metric(gw.admin, "otelgate_receiver_rejected_log_records_total", reason="max_spans_per_request") == 5
        assert metric(gw.admin, "otelgate_receiver_rejected_metric_points_total", reason="max_spans_per_request") == 5
    finally:
        assert gw.stop() == 0


def test_head_sampling_drops_the_log_records_of_dropped_traces(tmp_path: Path) -> None:
    import random

    from gateway.sampling.consistent import keep, threshold
    config = gateway_config(tmp_path)
    config["sampling"] = {"head": {"percentage": 30}}
    config["routes"] = [{"name": "all", "sinks": ["out"], "signals": ["traces", "logs"]}]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        rng = random.Random(5)
        logs = ExportLogsServiceRequest()
        sl = logs.resource_logs.add().scope_logs.add()
        traces = [rng.randbytes(16) for _ in range(400)]
        for i, trace_id in enumerate(traces):
            sl.log_records.add(trace_id=trace_id, span_id=rng.randbytes(8)).body.string_value = f"r{i}"
        sl.log_records.add().body.string_value = "no trace"
        r = requests.post(f"{gw.http}/v1/logs", data=logs.SerializeToString(), headers=PROTO, timeout=5)
        assert r.status_code == 200
        expected = {f"r{i}" for i, t in enumerate(traces) if keep(t, "", threshold(0.3))} | {"no trace"}
        assert 80 < len(expected) < 160
        wait_for(lambda: set(_log_bodies(tmp_path / "out.logs.jsonl")) == expected)
        assert metric(gw.admin, "otelgate_sampled_log_records_total", decision="dropped") == 401 - len(expected)
    finally:
        assert gw.stop() == 0
