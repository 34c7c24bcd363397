"""Bad input gets the OTLP spec's answer, with a message naming the problem, and never hurts the gateway."""

from __future__ import annotations

import gzip
import os
import zlib

import grpc
import orjson
import pytest
import requests
import zstandard
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.conftest import FIXTURES, read_records
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for, GatewayProcess as _GP

PROTO = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


def _post(gateway: GatewayProcess, data: bytes, headers: dict[str, str], path: str = "/v1/traces") -> requests.Response:
    return requests.post(f"{gateway.http}{path}", data=data, headers=headers, timeout=10)


def _status(r: requests.Response) -> status_pb2.Status:
    if r.headers["Content-Type"].startswith("application/json"):
        doc = r.json()
        return status_pb2.Status(code=doc.get("code", 0), message=doc.get("message", ""))
    return status_pb2.Status.FromString(r.content)


def _request_with_ids(ids: list[tuple[bytes, bytes]]) -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for n, (trace_id, span_id) in enumerate(ids):
        scope.spans.add(trace_id=trace_id, span_id=span_id, name=f"span-{n}", start_time_unix_nano=1, end_time_unix_nano=2)
    return req


def _still_serves(gateway: GatewayProcess) -> None:
    body = read_records(FIXTURES / "openai_v2.otlp.bin")[0]
    assert _post(gateway, body, PROTO).status_code == 200


def test_malformed_protobuf_is_400_with_status(gateway: GatewayProcess) -> None:
    r = _post(gateway, b"\xff\xff\xff\xff not protobuf", PROTO)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/x-protobuf"
    status = _status(r)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "invalid protobuf" in status.message
    _still_serves(gateway)


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "invalid OTLP/JSON"),
    (b'{"resourceSpans": "nope"}', "resourceSpans"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', "traceId"),
])
def test_malformed_json_is_400_naming_the_problem(gateway: GatewayProcess, body: bytes, fragment: str) -> None:
    r = _post(gateway, body, JSON)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    doc = r.json()
    assert doc["code"] == code_pb2.INVALID_ARGUMENT
    assert fragment in doc["message"]
    _still_serves(gateway)


def test_wrong_content_type_is_415(gateway: GatewayProcess) -> None:
    r = _post(gateway, b"hello", {"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert "text/plain" in r.json()["message"]


def test_unknown_content_encoding_is_415(gateway: GatewayProcess) -> None:
    r = _post(gateway, b"x", {**PROTO, "Content-Encoding": "br"})
    assert r.status_code == 415
    assert "br" in _status(r).message


def test_corrupt_gzip_is_400(gateway: GatewayProcess) -> None:
    r = _post(gateway, b"\x1f\x8b\x08\x00garbage", {**PROTO, "Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert "gzip" in _status(r).message


@pytest.mark.parametrize("encoding, compress", [
    ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
    ("deflate", zlib.compress),
])
def test_other_encodings_accepted(gateway: GatewayProcess, encoding: str, compress) -> None:
    body = read_records(FIXTURES / "openai_v2.otlp.bin")[0]
    r = _post(gateway, compress(body), {**PROTO, "Content-Encoding": encoding})
    assert r.status_code == 200
    n = len(trace_service_pb2.ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)
    wait_for(lambda: len(spans_in(read_json_lines(gateway.workdir / "out.jsonl"))) >= n)


def test_wrong_path_and_method(gateway: GatewayProcess) -> None:
    assert _post(gateway, b"", PROTO, path="/v1/trace").status_code == 404
    assert requests.get(f"{gateway.http}/v1/traces", timeout=5).status_code == 405
    assert requests.put(f"{gateway.http}/v1/traces", data=b"", headers=PROTO, timeout=5).status_code == 405


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_oversized_and_bomb_bodies_are_413_and_memory_stays_flat(tmp_path) -> None:
    config = gateway_config(tmp_path)
    config["receivers"]["http"]["max_body_bytes"] = "1MiB"
    gw = _GP(config, tmp_path).wait_ready()
    try:
        r = _post(gw, os.urandom(2 * 1024 * 1024), PROTO)
        assert r.status_code == 413
        assert "max_body_bytes" in _status(r).message
        rss_before = _rss_kib(gw.pid)
        bomb = gzip.compress(b"\0" * (512 * 1024 * 1024), compresslevel=9)  # ~500 KiB that inflate to 512 MiB
        assert len(bomb) < 1024 * 1024
        for _ in range(3):
            r = _post(gw, bomb, {**PROTO, "Content-Encoding": "gzip"})
            assert r.status_code == 413
            assert "decompressed" in _status(r).message
        assert _rss_kib(gw.pid) - rss_before < 32 * 1024, "memory grew while refusing a gzip bomb"
        _still_serves(gw)
    finally:
        gw.stop()


def test_invalid_ids_rejected_one_by_one_http(gateway: GatewayProcess) -> None:
    good = (os.urandom(16), os.urandom(8))
    req = _request_with_ids([good, (b"\x01" * 3, os.urandom(8)), (os.urandom(16), bytes(8)), (os.urandom(16), os.urandom(8))])
    r = _post(gateway, req.SerializeToString(), PROTO)
    assert r.status_code == 200
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_spans == 2
    assert "trace_id must be 16 bytes" in resp.partial_success.error_message
    assert "span_id must be 8 bytes" in resp.partial_success.error_message
    spans = wait_for(lambda: len(spans_in(read_json_lines(gateway.workdir / "out.jsonl"))) >= 2
                     and spans_in(read_json_lines(gateway.workdir / "out.jsonl")))
    assert sorted(s["name"] for s in spans) == ["span-0", "span-3"]
    assert spans[0]["traceId"] == good[0].hex()


def test_invalid_ids_partial_success_json(gateway: GatewayProcess) -> None:
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "ok"},
        {"traceId": "ab" * 15, "spanId": "cd" * 8, "name": "short"},
    ]}]}]}
    r = _post(gateway, orjson.dumps(body), JSON)
    assert r.status_code == 200
    doc = r.json()
    assert doc["partialSuccess"]["rejectedSpans"] == "1"
    assert "trace_id" in doc["partialSuccess"]["errorMessage"]


def _grpc_export(gateway: GatewayProcess, body: bytes, **kwargs):
    with grpc.insecure_channel(gateway.grpc) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                   request_serializer=lambda b: b,
                                   response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        return call(body, timeout=10, **kwargs)


def test_grpc_malformed_is_invalid_argument(gateway: GatewayProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _grpc_export(gateway, b"\xff\xff\xff\xff not protobuf")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid protobuf" in err.value.details()


def test_grpc_oversized_is_resource_exhausted(tmp_path) -> None:
    config = gateway_config(tmp_path)
    config["receivers"]["grpc"]["max_message_bytes"] = 64 * 1024
    gw = _GP(config, tmp_path).wait_ready()
    try:
        big = _request_with_ids([(os.urandom(16), os.urandom(8))])
        big.resource_spans[0].scope_spans[0].spans[0].name = "x" * (128 * 1024)
        with pytest.raises(grpc.RpcError) as err:
            _grpc_export(gw, big.SerializeToString())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ok = _request_with_ids([(os.urandom(16), os.urandom(8))])
        assert _grpc_export(gw, ok.SerializeToString()).partial_success.rejected_spans == 0
    finally:
        gw.stop()


def test_grpc_invalid_ids_partial_success(gateway: GatewayProcess) -> None:
    req = _request_with_ids([(os.urandom(16), os.urandom(8)), (bytes(16), os.urandom(8))])
    resp = _grpc_export(gateway, req.SerializeToString(), compression=grpc.Compression.Gzip)
    assert resp.partial_success.rejected_spans == 1
    assert "trace_id" in resp.partial_success.error_message
    spans = wait_for(lambda: spans_in(read_json_lines(gateway.workdir / "out.jsonl")))
    assert [s["name"] for s in spans] == ["span-0"]


@pytest.mark.parametrize("method", [
    "/opentelemetry.proto.collector.trace.v1.TraceService/Nope",
    "/some.Other/Export",
])
def test_grpc_unknown_method_is_unimplemented(gateway: GatewayProcess, method: str) -> None:
    with grpc.insecure_channel(gateway.grpc) as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            call(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
