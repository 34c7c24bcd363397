"""The three OTLP signals, described once: what each request and response is, where it is
served, how its items are counted and checked.

Receivers, the pipeline and sinks take a `Signal` instead of knowing any of this, so traces,
logs and metrics travel the same code (as in the Collector, where each pipeline has a type).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

from gateway.otlp.json_codec import decode_logs, decode_metrics, decode_traces, encode_logs, encode_metrics, encode_traces
from gateway.otlp.validate import remove_invalid_log_records, remove_invalid_spans


@dataclass(frozen=True)
class Signal:
    name: str  # traces | logs | metrics: the word users write in `signals:`
    items: str  # spans | log_records | metric_points: in metric names, as the Collector's
    request: type[Message]
    response: type[Message]
    http_path: str
    grpc_method: str
    rejected_field: str  # the partial_success field counting rejected items
    resources_field: str  # resource_spans | resource_logs | resource_metrics
    scopes_field: str  # scope_spans | scope_logs | scope_metrics
    items_field: str  # spans | log_records | metrics
    decode_json: Callable[[bytes], Any]
    encode_json: Callable[[Any], bytes]  # an iterable of requests -> one OTLP/JSON object
    count: Callable[[Any], int]
    count_scope: Callable[[Any], int]  # items in one ScopeSpans / ScopeLogs / ScopeMetrics
    remove_invalid: Callable[[Any], tuple[int, int, str]]  # in place: (kept, rejected, message)

    def response_for(self, rejected: int, message: str) -> Message:
        response = self.response()
        if rejected:
            setattr(response.partial_success, self.rejected_field, rejected)  # type: ignore[attr-defined]
            response.partial_success.error_message = message  # type: ignore[attr-defined]
        return response


def count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def count_log_records(request: ExportLogsServiceRequest) -> int:
    return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)


def count_metric_points(request: ExportMetricsServiceRequest) -> int:
    """Data points, as the Collector counts metric throughput (a metric with no points counts 0)."""
    return sum(metric_points_in(sm) for rm in request.resource_metrics for sm in rm.scope_metrics)


def metric_points_in(scope: Any) -> int:
    return sum(len(getattr(m, kind).data_points) for m in scope.metrics if (kind := m.WhichOneof("data")))


def _all_valid_metrics(request: ExportMetricsServiceRequest) -> tuple[int, int, str]:
    return count_metric_points(request), 0, ""


TRACES = Signal(
    "traces", "spans", ExportTraceServiceRequest, ExportTraceServiceResponse, "/v1/traces",
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export", "rejected_spans",
    "resource_spans", "scope_spans", "spans",
    decode_traces, encode_traces, count_spans, lambda ss: len(ss.spans), remove_invalid_spans)
LOGS = Signal(
    "logs", "log_records", ExportLogsServiceRequest, ExportLogsServiceResponse, "/v1/logs",
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export", "rejected_log_records",
    "resource_logs", "scope_logs", "log_records",
    decode_logs, encode_logs, count_log_records, lambda sl: len(sl.log_records), remove_invalid_log_records)
METRICS = Signal(
    "metrics", "metric_points", ExportMetricsServiceRequest, ExportMetricsServiceResponse, "/v1/metrics",
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", "rejected_data_points",
    "resource_metrics", "scope_metrics", "metrics",
    decode_metrics, encode_metrics, count_metric_points, metric_points_in, _all_valid_metrics)

SIGNALS: dict[str, Signal] = {s.name: s for s in (TRACES, LOGS, METRICS)}
