"""The real OpenTelemetry SDK exporters, over gRPC and HTTP, into the real gateway's file sink."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from grpc import Compression as GrpcCompression

from tests.gateway_process import GatewayProcess, read_json_lines, spans_in, wait_for


def _emit(exporter: object, service: str) -> list:
    """Emit a parent and a child LLM-like span through `exporter`; return the finished spans."""
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment.name": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.sdk", "1.2.3")
    with tracer.start_as_current_span("app", kind=SpanKind.SERVER, attributes={"user.id": "u-1"}) as parent:
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as child:
            child.set_attribute("gen_ai.request.model", "gpt-4o-mini")
            child.set_attribute("gen_ai.usage.input_tokens", 33)
            child.set_attribute("gen_ai.request.temperature", 0.25)
            child.set_attribute("gen_ai.stream", True)
            child.set_attribute("tags", ["a", "b"])
            child.add_event("gen_ai.content.prompt", {"gen_ai.prompt": "hi"})
            child.set_status(Status(StatusCode.ERROR, "rate limited"))
    provider.shutdown()
    return [child, parent]


def _assert_delivered(path: Path, sent: list, service: str) -> None:
    child, parent = sent
    got = wait_for(lambda: len(spans_in(read_json_lines(path))) >= 2 and read_json_lines(path))
    spans = {s["name"]: s for s in spans_in(got)}
    assert set(spans) == {"app", "chat gpt-4o-mini"}
    c = spans["chat gpt-4o-mini"]
    assert c["traceId"] == f"{child.context.trace_id:032x}"
    assert c["spanId"] == f"{child.context.span_id:016x}"
    assert c["parentSpanId"] == f"{parent.context.span_id:016x}"
    assert c["kind"] == 3  # SPAN_KIND_CLIENT, an integer as OTLP/JSON requires
    assert c["startTimeUnixNano"] == str(child.start_time)
    assert c["endTimeUnixNano"] == str(child.end_time)
    assert c["status"] == {"code": 2, "message": "rate limited"}
    attrs = {a["key"]: a["value"] for a in c["attributes"]}
    assert attrs == {
        "gen_ai.request.model": {"stringValue": "gpt-4o-mini"},
        "gen_ai.usage.input_tokens": {"intValue": "33"},
        "gen_ai.request.temperature": {"doubleValue": 0.25},
        "gen_ai.stream": {"boolValue": True},
        "tags": {"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}},
    }
    assert c["events"][0]["name"] == "gen_ai.content.prompt"
    assert c["events"][0]["attributes"] == [{"key": "gen_ai.prompt", "value": {"stringValue": "hi"}}]
    p = spans["app"]
    assert "parentSpanId" not in p and p["kind"] == 2
    resource = got[0]["resourceSpans"][0]["resource"]
    assert {"key": "service.name", "value": {"stringValue": service}} in resource["attributes"]
    scope = got[0]["resourceSpans"][0]["scopeSpans"][0]["scope"]
    assert scope == {"name": "tests.sdk", "version": "1.2.3"}


@pytest.mark.parametrize("compression", [GrpcCompression.NoCompression, GrpcCompression.Gzip])
def test_grpc_exporter(gateway: GatewayProcess, compression: GrpcCompression) -> None:
    exporter = GrpcExporter(endpoint=gateway.grpc, insecure=True, compression=compression)
    sent = _emit(exporter, "svc-grpc")
    _assert_delivered(gateway.workdir / "out.jsonl", sent, "svc-grpc")


@pytest.mark.parametrize("compression", [HttpCompression.NoCompression, HttpCompression.Gzip, HttpCompression.Deflate])
def test_http_exporter(gateway: GatewayProcess, compression: HttpCompression) -> None:
    exporter = HttpExporter(endpoint=f"{gateway.http}/v1/traces", compression=compression)
    sent = _emit(exporter, "svc-http")
    _assert_delivered(gateway.workdir / "out.jsonl", sent, "svc-http")
