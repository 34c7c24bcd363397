"""`limits:` through the real gateway: truncation (with the SDK exporters), refusal, nesting depth."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

from gateway.config import ConfigError, parse
from tests.gateway_process import GatewayProcess, gateway_config, read_proto_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTO = {"Content-Type": "application/x-protobuf"}
LIMITS = {"max_spans_per_request": 50, "max_attributes_per_span": 8, "max_events_per_span": 3,
          "max_attribute_value_bytes": 1001, "max_anyvalue_depth": 5}
LONG = "é" * 3000  # 6000 bytes; 1001 bytes would split a character: the cut keeps 500 of them


def _start(tmp_path: Path, **limits: Any) -> GatewayProcess:
    """A gateway writing protobuf: the received bytes unless the request was edited (so a cut
    that forgot to drop them would show)."""
    config = gateway_config(tmp_path, format="proto", path=str(tmp_path / "out.pb"))
    if limits:
        config["limits"] = limits
    return GatewayProcess(config, tmp_path).wait_ready()


@pytest.fixture(scope="module")
def truncating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = _start(tmp_path_factory.mktemp("truncate"), **LIMITS)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def rejecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = _start(tmp_path_factory.mktemp("reject"), **LIMITS, action="reject")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def unlimited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = _start(tmp_path_factory.mktemp("unlimited"))
    yield gw
    gw.stop()


def _sdk_export(protocol: str, gw: GatewayProcess, name: str) -> bool:
    """A span over every truncating limit, through the real SDK exporter."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "limits"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("tests.limits").start_as_current_span(name) as span:
        span.set_attribute("a00", LONG)  # the first attributes, so they survive the count limit
        span.set_attribute("a01", ["short", LONG])
        for i in range(2, 20):
            span.set_attribute(f"a{i:02d}", i)
        for i in range(10):
            span.add_event(f"e{i}", {f"k{j}": j for j in range(12)})
    provider.shutdown()
    if protocol == "grpc":
        exporter: Any = GrpcExporter(endpoint=gw.grpc, insecure=True, timeout=5)
    else:
        exporter = HttpExporter(endpoint=f"{gw.http}/v1/traces", timeout=5)
    try:
        return exporter.export(memory.get_finished_spans()) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()


def _delivered(gw: GatewayProcess, name: str) -> dict[str, Any]:
    return wait_for(lambda: next((s for s in spans_in(read_proto_lines(gw.workdir / "out.pb")) if s["name"] == name), None))


def _names(gw: GatewayProcess) -> set[str]:
    return {s["name"] for s in spans_in(read_proto_lines(gw.workdir / "out.pb"))}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_truncate_cuts_to_every_limit_and_marks_the_span(truncating: GatewayProcess, protocol: str) -> None:
    before = {limit: metric(truncating.admin, "otelgate_receiver_truncated_spans_total", protocol=protocol, limit=limit)
              for limit in ("max_attributes_per_span", "max_events_per_span", "max_attribute_value_bytes")}
    name = f"big-{uuid.uuid4().hex}"
    assert _sdk_export(protocol, truncating, name)
    span = _delivered(truncating, name)
    attrs = {a["key"]: a["value"] for a in span["attributes"]}
    assert list(attrs) == [f"a{i:02d}" for i in range(8)] + ["otelgate.truncated"]
    assert attrs["otelgate.truncated"] == {"boolValue": True}
    assert span["droppedAttributesCount"] == 12
    assert attrs["a00"] == {"stringValue": "é" * 500}  # 1000 bytes: never half a character
    assert attrs["a01"]["arrayValue"]["values"] == [{"stringValue": "short"}, {"stringValue": "é" * 500}]
    assert [e["name"] for e in span["events"]] == ["e0", "e1", "e2"]
    assert span["droppedEventsCount"] == 7
    assert all(len(e["attributes"]) == 8 and e["droppedAttributesCount"] == 4 for e in span["events"])
    for limit, count in before.items():
        assert metric(truncating.admin, "otelgate_receiver_truncated_spans_total", protocol=protocol, limit=limit) == count + 1


def test_truncate_over_otlp_json(truncating: GatewayProcess) -> None:
    """JSON has no received protobuf to read span sizes from: the same cut, measured another way."""
    name = f"json-{uuid.uuid4().hex}"
    span = {"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": name,
            "attributes": [{"key": "long", "value": {"stringValue": LONG}}, {"key": "short", "value": {"stringValue": "s"}}]}
    r = requests.post(f"{truncating.http}/v1/traces", json={"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}, timeout=10)
    assert r.status_code == 200
    attrs = {a["key"]: a["value"] for a in _delivered(truncating, name)["attributes"]}
    assert attrs == {"long": {"stringValue": "é" * 500}, "short": {"stringValue": "s"}, "otelgate.truncated": {"boolValue": True}}


def _request(name: str, spans: int = 1, attributes: int = 2, value: AnyValue | None = None) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for n in range(spans):
        span = scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"{name}-{n}" if spans > 1 else name,
                               start_time_unix_nano=1, end_time_unix_nano=2)
        for i in range(attributes):
            span.attributes.add(key=f"a{i}").value.int_value = i
        if value is not None:
            span.attributes.add(key="nested").value.CopyFrom(value)
    return req.SerializeToString()


def _nested(depth: int, kind: str = "kvlist") -> AnyValue:
    """`depth` arrays or kvlists in one another around a string."""
    value = AnyValue(string_value="bottom")
    for _ in range(depth):
        outer = AnyValue()
        if kind == "kvlist":
            outer.kvlist_value.values.add(key="k").value.CopyFrom(value)
        else:
            outer.array_value.values.add().CopyFrom(value)
        value = outer
    return value


def _refusal(gw: GatewayProcess, protocol: str, body: bytes) -> tuple[int | grpc.StatusCode, str]:
    """Send `body`; the HTTP status or gRPC code of a refusal, and its message."""
    if protocol == "http":
        r = requests.post(f"{gw.http}/v1/traces", data=body, headers=PROTO, timeout=10)
        return r.status_code, status_pb2.Status.FromString(r.content).message if r.status_code != 200 else ""
    with grpc.insecure_channel(gw.grpc) as channel:
        try:
            channel.unary_unary(EXPORT_METHOD)(body, timeout=10)
        except grpc.RpcError as err:
            return err.code(), err.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("case, limit, message", [
    ("attributes", "max_attributes_per_span", "has 9 attributes, more than limits.max_attributes_per_span (8)"),
    ("value", "max_attribute_value_bytes", "attribute 'nested' has a value longer than limits.max_attribute_value_bytes (1001 bytes)"),
    ("depth", "max_anyvalue_depth", "attribute 'nested' nests arrays/kvlists deeper than limits.max_anyvalue_depth (5)"),
])
def test_reject_refuses_the_whole_request_naming_the_limit(rejecting: GatewayProcess, protocol: str, case: str,
                                                           limit: str, message: str) -> None:
    name = f"{case}-{uuid.uuid4().hex}"
    body = {"attributes": lambda: _request(name, attributes=9),
            "value": lambda: _request(name, value=AnyValue(string_value="x" * 1002)),
            "depth": lambda: _request(name, value=_nested(6, "array"))}[case]()
    before = metric(rejecting.admin, "otelgate_receiver_rejected_spans_total", protocol=protocol, reason=limit)
    code, text = _refusal(rejecting, protocol, body)
    assert code == (400 if protocol == "http" else grpc.StatusCode.INVALID_ARGUMENT)
    assert message in text and repr(name) in text
    assert metric(rejecting.admin, "otelgate_receiver_rejected_spans_total", protocol=protocol, reason=limit) == before + 1
    ok = f"ok-{uuid.uuid4().hex}"  # at the limits exactly: accepted, untouched
    assert _refusal(rejecting, protocol, _request(ok, attributes=7, value=_nested(5)))[0] in (200, grpc.StatusCode.OK)
    assert "otelgate.truncated" not in {a["key"] for a in _delivered(rejecting, ok)["attributes"]}
    assert name not in _names(rejecting)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("gateway_name", ["truncating", "rejecting"])
def test_too_many_spans_is_refused_whatever_the_action(request: pytest.FixtureRequest, protocol: str, gateway_name: str) -> None:
    gw = request.getfixturevalue(gateway_name)
    code, text = _refusal(gw, protocol, _request("many", spans=51))
    assert code == (413 if protocol == "http" else grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "51 spans in one request, more than limits.max_spans_per_request (50)" in text


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_depth_is_refused_even_when_truncating(truncating: GatewayProcess, protocol: str) -> None:
    code, text = _refusal(truncating, protocol, _request("deep", value=_nested(6)))
    assert code == (400 if protocol == "http" else grpc.StatusCode.INVALID_ARGUMENT)
    assert "max_anyvalue_depth (5)" in text


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("kind", ["kvlist", "array"])
def test_without_limits_nesting_beyond_the_parser_is_a_clean_400(unlimited: GatewayProcess, protocol: str, kind: str) -> None:
    """200 levels: upb refuses to parse it; the answer says why, and the gateway keeps serving."""
    code, text = _refusal(unlimited, protocol, _request("deep", value=_nested(200, kind)))
    assert code == (400 if protocol == "http" else grpc.StatusCode.INVALID_ARGUMENT)
    assert "nests deeper than the parser allows" in text
    ok = f"ok-{uuid.uuid4().hex}"
    assert _refusal(unlimited, protocol, _request(ok, value=_nested(20, kind)))[0] in (200, grpc.StatusCode.OK)
    _delivered(unlimited, ok)


def test_without_limits_deep_json_is_a_clean_400(unlimited: GatewayProcess) -> None:
    value: dict[str, Any] = {"stringValue": "bottom"}
    for _ in range(200):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "1" * 32, "spanId": "2" * 16, "name": "deep",
                                                           "attributes": [{"key": "nested", "value": value}]}]}]}]}
    r = requests.post(f"{unlimited.http}/v1/traces", json=body, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == code_pb2.INVALID_ARGUMENT
    assert "too deeply nested" in r.json()["message"]


def test_limit_config_errors() -> None:
    def errors(limits: str) -> list[str]:
        with pytest.raises(ConfigError) as err:
            parse(f"sinks: {{out: {{type: file, path: /tmp/x}}}}\nlimits: {limits}\n")
        return err.value.errors

    assert errors("{max_anyvalue_depth: 31}") == ["limits.max_anyvalue_depth: must be less than or equal to 30, got 31"]
    assert errors("{action: drop}") == ["limits.action: expected 'truncate' or 'reject', got 'drop'"]
    assert errors("{max_attribute_value_bytes: 0}") == ["limits.max_attribute_value_bytes: must be greater than 0, got 0"]
    assert errors("{max_span: 3}") == ["limits.max_span: unknown key"]
    assert parse("sinks: {out: {type: file, path: /tmp/x}}\nlimits: {max_attribute_value_bytes: 64KiB}\n"
                 ).limits.max_attribute_value_bytes == 65536
