"""Captured exports of real LLM instrumentations, replayed over HTTP (protobuf and JSON) and gRPC.

The file sink must write exactly the OTLP/JSON of what was received: the fixtures' `.json`
files are that encoding, generated independently from the same bytes.
"""

from __future__ import annotations

import gzip

import grpc
import orjson
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records
from tests.gateway_process import GatewayProcess, read_json_lines, wait_for


def _expected(name: str) -> list[dict]:
    doc = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    return [rs for req in doc["requests"] for rs in req["body"]["resourceSpans"]]


def _written(gateway: GatewayProcess, count: int) -> list[dict]:
    path = gateway.workdir / "out.jsonl"
    lines = wait_for(lambda: (ls := read_json_lines(path)) and
                     sum(len(ss["spans"]) for line in ls for rs in line["resourceSpans"] for ss in rs["scopeSpans"]) >= count and ls)
    return [rs for line in lines for rs in line["resourceSpans"]]


def _span_count(resource_spans: list[dict]) -> int:
    return sum(len(ss["spans"]) for rs in resource_spans for ss in rs["scopeSpans"])


@pytest.mark.parametrize("name", TRACE_FIXTURES)
def test_replay_protobuf_over_http(gateway: GatewayProcess, name: str) -> None:
    for body in read_records(FIXTURES / f"{name}.otlp.bin"):
        r = requests.post(f"{gateway.http}/v1/traces", data=gzip.compress(body),
                          headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/x-protobuf"
        assert trace_service_pb2.ExportTraceServiceResponse.FromString(r.content) == trace_service_pb2.ExportTraceServiceResponse()
    expected = _expected(name)
    assert _written(gateway, _span_count(expected)) == expected


@pytest.mark.parametrize("name", TRACE_FIXTURES)
def test_replay_json_over_http(gateway: GatewayProcess, name: str) -> None:
    doc = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    for req in doc["requests"]:
        r = requests.post(f"{gateway.http}/v1/traces", data=orjson.dumps(req["body"]),
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/json"
        assert r.json() == {}
    expected = _expected(name)
    assert _written(gateway, _span_count(expected)) == expected


def test_replay_all_fixtures_over_grpc(gateway: GatewayProcess) -> None:
    channel = grpc.insecure_channel(gateway.grpc)
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                 request_serializer=lambda b: b,
                                 response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
    expected = []
    for name in TRACE_FIXTURES:
        for body in read_records(FIXTURES / f"{name}.otlp.bin"):
            assert export(body, timeout=10) == trace_service_pb2.ExportTraceServiceResponse()
        expected += _expected(name)
    channel.close()
    assert _written(gateway, _span_count(expected)) == expected
