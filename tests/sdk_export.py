"""One export through the real OpenTelemetry SDK exporters, returning what the exporter reports.

The spans are made by a real TracerProvider; the export is called directly (not through a
span processor) so a test sees the exporter's own verdict: SUCCESS, or FAILURE after the SDK's
retries within `timeout`.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def finished_spans(name: str, **resource: Any) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-test", **resource}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("tests.security").start_as_current_span(name):
        pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def export(protocol: str, endpoint: str, name: str, headers: dict[str, str] | None = None,
           timeout: float = 5.0, resource: dict[str, Any] | None = None, **exporter_args: Any) -> bool:
    """Export one span named `name`; True if the exporter reported success.

    `endpoint`: host:port for gRPC (plain text unless `credentials=` is given), a base URL for HTTP.
    """
    spans = finished_spans(name, **(resource or {}))
    if protocol == "grpc":
        if "credentials" not in exporter_args:
            exporter_args["insecure"] = True
        headers = {k.lower(): v for k, v in (headers or {}).items()}  # gRPC metadata keys are lower case
        exporter: Any = GrpcExporter(endpoint=endpoint, headers=headers, timeout=timeout, **exporter_args)
    else:
        exporter = HttpExporter(endpoint=f"{endpoint}/v1/traces", headers=headers or {}, timeout=timeout, **exporter_args)
    try:
        return exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
