"""Tests for gateway.otlp.json_codec.

The oracle is ``json_format.MessageToDict`` (proto3 JSON, enums as integers) with the
trace/span ids turned from base64 into hex, which is exactly OTLP/JSON; the codec's
output, parsed back, must equal it for the recorded fixtures and for generated messages.
"""

from __future__ import annotations

import base64
import glob
import json
import math
import os
import struct

import orjson
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    EntityRef,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1 import metrics_pb2 as mpb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from gateway.otlp.json_codec import (
    MAX_ANYVALUE_DEPTH,
    OtlpJsonError,
    decode_logs,
    decode_message,
    decode_metrics,
    decode_traces,
    encode_logs,
    encode_message,
    encode_metrics,
    encode_traces,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Modest by default so the file runs in seconds; raise it for a longer hunt.
PROPERTY = settings(
    max_examples=int(os.environ.get("JSON_CODEC_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def read_records(path: str) -> list[bytes]:
    data, pos, out = open(path, "rb").read(), 0, []
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out


def trace_fixtures() -> list[str]:
    return sorted(p for p in glob.glob(f"{FIXTURES}/*.otlp.bin") if not p.endswith(".logs.otlp.bin"))


def log_fixtures() -> list[str]:
    return sorted(glob.glob(f"{FIXTURES}/*.logs.otlp.bin"))


def _hexify(x):
    if isinstance(x, dict):
        return {
            k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else _hexify(v)
            for k, v in x.items()
        }
    if isinstance(x, list):
        return [_hexify(v) for v in x]
    return x


def oracle(msg) -> dict:
    return _hexify(json_format.MessageToDict(msg, use_integers_for_enums=True))


def merged_oracle(requests, field: str) -> dict:
    items = [x for r in requests for x in oracle(r).get(field, [])]
    return {field: items} if items else {}


def wire(msg) -> bytes:
    return msg.SerializeToString(deterministic=True)


# ---------------------------------------------------------------------------
# fixtures: recorded exports of real LLM instrumentations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", trace_fixtures(), ids=os.path.basename)
def test_trace_fixtures_match_oracle_and_round_trip(path):
    reqs = [ExportTraceServiceRequest.FromString(b) for b in read_records(path)]
    for req in reqs:
        body = encode_traces([req])
        assert orjson.loads(body) == oracle(req)
        assert wire(decode_traces(body)) == wire(req)
    merged = encode_traces(reqs)
    assert orjson.loads(merged) == merged_oracle(reqs, "resourceSpans")
    assert not merged.endswith(b"\n")


@pytest.mark.parametrize("path", log_fixtures(), ids=os.path.basename)
def test_log_fixtures_match_oracle_and_round_trip(path):
    reqs = [ExportLogsServiceRequest.FromString(b) for b in read_records(path)]
    for req in reqs:
        body = encode_logs([req])
        assert orjson.loads(body) == oracle(req)
        assert wire(decode_logs(body)) == wire(req)


def otlp_json_fixtures() -> list[str]:
    return sorted(p for p in glob.glob(f"{FIXTURES}/*.json") if not p.endswith(".expected.json"))


@pytest.mark.parametrize("path", otlp_json_fixtures(), ids=os.path.basename)
def test_fixture_json_bodies_decode_to_the_recorded_protobuf(path):
    logs = path.endswith(".logs.json")
    records = read_records(path[: -len(".json")] + ".otlp.bin")
    with open(path, "rb") as f:
        requests = orjson.loads(f.read())["requests"]
    assert len(requests) == len(records)
    for item, record in zip(requests, records):
        body = orjson.dumps(item["body"])
        if logs:
            assert wire(decode_logs(body)) == wire(ExportLogsServiceRequest.FromString(record))
            assert orjson.loads(encode_logs([decode_logs(body)])) == item["body"]
        else:
            assert wire(decode_traces(body)) == wire(ExportTraceServiceRequest.FromString(record))
            assert orjson.loads(encode_traces([decode_traces(body)])) == item["body"]


# ---------------------------------------------------------------------------
# encoding details
# ---------------------------------------------------------------------------


def test_encode_empty_and_batches():
    assert encode_traces([]) == b"{}"
    assert encode_traces([ExportTraceServiceRequest()]) == b"{}"
    assert encode_logs([]) == b"{}"
    assert encode_metrics(iter([])) == b"{}"
    a = ExportTraceServiceRequest(resource_spans=[ResourceSpans(schema_url="a")])
    b = ExportTraceServiceRequest(resource_spans=[ResourceSpans(schema_url="b"), ResourceSpans()])
    gen = (r for r in [a, ExportTraceServiceRequest(), b])
    assert orjson.loads(encode_traces(gen)) == {
        "resourceSpans": [{"schemaUrl": "a"}, {"schemaUrl": "b"}, {}]
    }


def test_encode_responses():
    resp = ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=2, error_message="bad ids")
    )
    assert encode_message(resp) == b'{"partialSuccess":{"rejectedSpans":"2","errorMessage":"bad ids"}}'
    assert encode_message(ExportTraceServiceResponse()) == b"{}"
    assert encode_message(ExportLogsServiceResponse()) == b"{}"
    assert encode_message(ExportMetricsServiceResponse()) == b"{}"
    assert decode_message(encode_message(resp), ExportTraceServiceResponse) == resp
    # the OTLP/HTTP error body (google.rpc.Status; its `details` Anys get no special mapping)
    status = status_pb2.Status(code=3, message="invalid OTLP/JSON")
    assert encode_message(status) == b'{"code":3,"message":"invalid OTLP/JSON"}'
    assert orjson.loads(encode_message(status)) == json_format.MessageToDict(status)


def test_encode_span_shapes():
    span = Span(
        trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"),
        span_id=bytes.fromhex("eee19b7ec3c1b174"),
        parent_span_id=b"",
        name="chat gpt-4o",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=1544712660000000000,
        flags=0x301,
        attributes=[
            KeyValue(key="s", value=AnyValue(string_value="")),
            KeyValue(key="i", value=AnyValue(int_value=-(2**63))),
            KeyValue(key="d", value=AnyValue(double_value=float("-inf"))),
            KeyValue(key="b", value=AnyValue(bool_value=False)),
            KeyValue(key="y", value=AnyValue(bytes_value=b"\xff\xfe")),
            KeyValue(key="a", value=AnyValue(array_value=ArrayValue())),
            KeyValue(key="e", value=AnyValue()),
            KeyValue(key="u"),
        ],
        status=Status(),
    )
    req = ExportTraceServiceRequest(resource_spans=[{"scope_spans": [{"spans": [span]}]}])
    s = orjson.loads(encode_traces([req]))["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert s == {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "chat gpt-4o",
        "kind": 3,
        "flags": 0x301,
        "startTimeUnixNano": "1544712660000000000",
        "attributes": [
            {"key": "s", "value": {"stringValue": ""}},
            {"key": "i", "value": {"intValue": "-9223372036854775808"}},
            {"key": "d", "value": {"doubleValue": "-Infinity"}},
            {"key": "b", "value": {"boolValue": False}},
            {"key": "y", "value": {"bytesValue": "//4="}},
            {"key": "a", "value": {"arrayValue": {}}},
            {"key": "e", "value": {}},
            {"key": "u"},
        ],
        "status": {},
    }


def test_encode_histogram_optional_zero_fields_are_emitted():
    dp = mpb.HistogramDataPoint(count=0, sum=0.0, min=0.0, max=-0.0, explicit_bounds=[float("nan")])
    got = orjson.loads(encode_message(dp))
    assert got == {"sum": 0.0, "min": 0.0, "max": 0.0, "explicitBounds": ["NaN"]}
    assert got == oracle(dp)
    assert orjson.loads(encode_message(mpb.HistogramDataPoint())) == {}


def test_encode_too_deep_message_is_an_error():
    def nest(leaf: AnyValue) -> None:
        # built in place: protobuf will not copy, parse or serialise past 100 levels
        for _ in range(120):
            leaf = leaf.array_value.values.add()
        leaf.int_value = 1

    req = ExportTraceServiceRequest()
    nest(req.resource_spans.add().scope_spans.add().spans.add().attributes.add(key="k").value)
    with pytest.raises(OtlpJsonError, match="too deeply nested"):
        encode_traces([req])
    logs = ExportLogsServiceRequest()
    nest(logs.resource_logs.add().scope_logs.add().log_records.add().body)
    with pytest.raises(OtlpJsonError, match="too deeply nested"):
        encode_logs([logs])
    with pytest.raises(OtlpJsonError, match="too deeply nested"):
        encode_message(logs)


# The messages json_codec encodes by hand, field by field, for speed.
HAND_WRITTEN = {
    ResourceSpans: {"resource", "scope_spans", "schema_url"},
    ScopeSpans: {"scope", "spans", "schema_url"},
    Span: {
        "trace_id", "span_id", "trace_state", "parent_span_id", "flags", "name", "kind",
        "start_time_unix_nano", "end_time_unix_nano", "attributes", "dropped_attributes_count",
        "events", "dropped_events_count", "links", "dropped_links_count", "status",
    },
    Span.Event: {"time_unix_nano", "name", "attributes", "dropped_attributes_count"},
    Status: {"message", "code"},
    KeyValue: {"key", "value", "key_strindex"},
    AnyValue: {
        "string_value", "bool_value", "int_value", "double_value", "array_value",
        "kvlist_value", "bytes_value", "string_value_strindex",
    },
}  # fmt: skip


@pytest.mark.parametrize("cls", list(HAND_WRITTEN), ids=lambda c: c.DESCRIPTOR.name)
def test_hand_written_encoders_know_every_field(cls):
    # Fails when opentelemetry-proto gains a field: teach json_codec's span encoder about it.
    assert {fd.name for fd in cls.DESCRIPTOR.fields} == HAND_WRITTEN[cls]


# ---------------------------------------------------------------------------
# decoding details
# ---------------------------------------------------------------------------


def _one_span(span_json: dict) -> bytes:
    return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span_json]}]}]})


def _metrics_body(*metrics: dict) -> bytes:
    return orjson.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": list(metrics)}]}]})


def _logs_body(*records: dict) -> bytes:
    return orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": list(records)}]}]})


def _span_of(req: ExportTraceServiceRequest) -> Span:
    return req.resource_spans[0].scope_spans[0].spans[0]


def test_decode_accepts_snake_case_names_enum_names_numbers_and_nulls():
    body = orjson.dumps(
        {
            "resource_spans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"string_value": "svc"}}]},
                    "scope_spans": [
                        {
                            "scope": {"name": "lib", "version": None},
                            "spans": [
                                {
                                    "trace_id": "5B8EFFF798038103D269B633813FC60C",
                                    "span_id": "eee19b7ec3c1b174",
                                    "parent_span_id": "",
                                    "name": "n",
                                    "kind": "SPAN_KIND_SERVER",
                                    "start_time_unix_nano": 1544712660000000000,
                                    "endTimeUnixNano": "1544712661000000000",
                                    "dropped_attributes_count": "3",
                                    "flags": 257,
                                    "attributes": [
                                        {"key": "i", "value": {"int_value": 7}},
                                        {"key": "d", "value": {"doubleValue": "NaN"}},
                                        {"key": "d2", "value": {"double_value": 2}},
                                        {"key": "y", "value": {"bytesValue": "-_4"}},
                                        {"key": "n", "value": None},
                                        {"key": "two", "value": {"stringValue": "x", "intValue": "5"}},
                                    ],
                                    "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
                                    "links": None,
                                    "someFutureField": {"whatever": [1, 2]},
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    )
    req = decode_traces(body)
    rs = req.resource_spans[0]
    assert rs.resource.attributes[0].value.string_value == "svc"
    assert not rs.scope_spans[0].scope.version
    s = rs.scope_spans[0].spans[0]
    assert s.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert s.parent_span_id == b""
    assert s.kind == Span.SPAN_KIND_SERVER
    assert (s.start_time_unix_nano, s.end_time_unix_nano) == (1544712660000000000, 1544712661000000000)
    assert s.dropped_attributes_count == 3 and s.flags == 257
    attrs = {kv.key: kv for kv in s.attributes}
    assert attrs["i"].value.int_value == 7
    assert math.isnan(attrs["d"].value.double_value)
    assert attrs["d2"].value.WhichOneof("value") == "double_value"
    assert attrs["y"].value.bytes_value == b"\xfb\xfe"
    assert not attrs["n"].HasField("value")
    assert attrs["two"].value.int_value == 5  # last key of the oneof wins, as in the Collector
    assert (s.status.code, s.status.message) == (Status.STATUS_CODE_ERROR, "boom")


def test_decode_number_spellings():
    s = _span_of(
        decode_traces(
            _one_span(
                {
                    "startTimeUnixNano": 1e3,
                    "endTimeUnixNano": "18446744073709551615",
                    "attributes": [
                        {"key": "a", "value": {"doubleValue": "1.5"}},
                        {"key": "b", "value": {"doubleValue": "-Infinity"}},
                        {"key": "c", "value": {"intValue": "-42"}},
                        {"key": "d", "value": {"intValue": -(2**63)}},
                        {"key": "e", "value": {"arrayValue": {"values": None}}},
                        {"key": "f", "value": {"kvlistValue": {}}},
                        {"key": "g", "value": {"bytesValue": "AQ"}},
                    ],
                }
            )
        )
    )
    assert (s.start_time_unix_nano, s.end_time_unix_nano) == (1000, 2**64 - 1)
    values = [kv.value for kv in s.attributes]
    assert values[0].double_value == 1.5 and values[1].double_value == float("-inf")
    assert values[2].int_value == -42 and values[3].int_value == -(2**63)
    assert values[4].WhichOneof("value") == "array_value" and not values[4].array_value.values
    assert values[5].WhichOneof("value") == "kvlist_value"
    assert values[6].bytes_value == b"\x01"


def test_decode_null_envelope_lists_mean_empty():
    req = decode_traces(b'{"resourceSpans": [{"scopeSpans": null}, {"scope_spans": [{"spans": null}]}]}')
    assert req == ExportTraceServiceRequest(resource_spans=[ResourceSpans(), ResourceSpans(scope_spans=[ScopeSpans()])])
    # both spellings: the later one wins, as for any other field
    req = decode_traces(b'{"resourceSpans": [{"scopeSpans": [{}, {}], "scope_spans": [{"schemaUrl": "x"}]}]}')
    assert req == ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(schema_url="x")])])


def test_decode_ids_of_any_length_are_kept():
    s = _span_of(decode_traces(_one_span({"traceId": "abcd", "spanId": "00" * 9})))
    assert (s.trace_id, s.span_id) == (b"\xab\xcd", b"\x00" * 9)


def test_decode_error_names_the_path():
    body = orjson.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {"spans": [{}]},
                        {"spans": [{}, {}, {}, {"traceId": "xyz0"}]},
                    ]
                }
            ]
        }
    )
    with pytest.raises(OtlpJsonError) as err:
        decode_traces(body)
    assert str(err.value) == "resourceSpans[0].scopeSpans[1].spans[3].traceId: not a hex string"


@pytest.mark.parametrize(
    "span_json, message",
    [
        ({"traceId": "abc"}, "spans[0].traceId: not a hex string"),
        ({"traceId": "ab cd"}, "spans[0].traceId: not a hex string"),
        ({"spanId": 12}, "spans[0].spanId: expected a hex string, got a number"),
        ({"name": 5}, "spans[0].name: expected a string, got a number"),
        ({"kind": "SERVER"}, "spans[0].kind: unknown SpanKind value 'SERVER'"),
        ({"kind": 2**31}, "spans[0].kind: an enum number out of range"),
        ({"kind": True}, "spans[0].kind: expected an enum number, got a boolean"),
        ({"startTimeUnixNano": "-1"}, "spans[0].startTimeUnixNano: a uint64 out of range"),
        ({"startTimeUnixNano": "12a"}, "spans[0].startTimeUnixNano: not a uint64"),
        ({"startTimeUnixNano": "1_000"}, "spans[0].startTimeUnixNano: not a uint64"),
        ({"startTimeUnixNano": 1.5}, "spans[0].startTimeUnixNano: expected a uint64, got a number"),
        ({"startTimeUnixNano": str(2**64)}, "spans[0].startTimeUnixNano: a uint64 out of range"),
        ({"droppedAttributesCount": -1}, "spans[0].droppedAttributesCount: a uint32 out of range"),
        ({"attributes": {}}, "spans[0].attributes: expected an array, got an object"),
        ({"attributes": [None]}, "spans[0].attributes[0]: expected an object, got null"),
        ({"attributes": [{"key": 1}]}, "spans[0].attributes[0].key: expected a string, got a number"),
        ({"attributes": [{"key": "k", "value": "v"}]}, "spans[0].attributes[0].value: expected an object, got a string"),
        (
            {"attributes": [{"key": "k", "value": {"intValue": "9223372036854775808"}}]},
            "spans[0].attributes[0].value.intValue: an int64 out of range",
        ),
        (
            {"attributes": [{"key": "k", "value": {"doubleValue": "inf"}}]},
            "spans[0].attributes[0].value.doubleValue: not a number",
        ),
        (
            {"attributes": [{"key": "k", "value": {"boolValue": "true"}}]},
            "spans[0].attributes[0].value.boolValue: expected true or false, got a string",
        ),
        (
            {"attributes": [{"key": "k", "value": {"bytesValue": "a"}}]},
            "spans[0].attributes[0].value.bytesValue: not a base64 string",
        ),
        (
            {"attributes": [{"key": "k", "value": {"arrayValue": {"values": [{"intValue": []}]}}}]},
            "spans[0].attributes[0].value.arrayValue.values[0].intValue: expected an int64, got an array",
        ),
        (
            {"attributes": [{"key": "k", "value": {"kvlistValue": {"values": [{"key": "a", "value": 3}]}}}]},
            "spans[0].attributes[0].value.kvlistValue.values[0].value: expected an object, got a number",
        ),
        ({"events": [{"timeUnixNano": {}}]}, "spans[0].events[0].timeUnixNano: expected a uint64, got an object"),
        ({"status": []}, "spans[0].status: expected an object, got an array"),
        ({"events": 5}, "spans[0].events: expected an array, got a number"),
        ({"events": [{}, None]}, "spans[0].events[1]: null is not allowed in an array"),
        ({"endTimeUnixNano": "1" * 30}, "spans[0].endTimeUnixNano: a uint64 out of range"),
        ({"endTimeUnixNano": 1e300}, "spans[0].endTimeUnixNano: a uint64 out of range"),
        (
            {"attributes": [{"key": "k", "value": {"doubleValue": []}}]},
            "spans[0].attributes[0].value.doubleValue: expected a number, got an array",
        ),
        (
            {"attributes": [{"key": "k", "value": {"doubleValue": "1e999"}}]},
            "spans[0].attributes[0].value.doubleValue: not a number",
        ),
        (
            {"attributes": [{"key": "k", "value": {"bytesValue": 1}}]},
            "spans[0].attributes[0].value.bytesValue: expected a base64 string, got a number",
        ),
        (
            {"attributes": [{"key": "k", "value": {"arrayValue": []}}]},
            "spans[0].attributes[0].value.arrayValue: expected an object, got an array",
        ),
        (
            {"attributes": [{"key": "k", "value": {"arrayValue": {"values": {}}}}]},
            "spans[0].attributes[0].value.arrayValue.values: expected an array, got an object",
        ),
        (
            {"attributes": [{"key": "k", "value": {"kvlistValue": "x"}}]},
            "spans[0].attributes[0].value.kvlistValue: expected an object, got a string",
        ),
        (
            {"attributes": [{"key": "k", "value": {"kvlistValue": {"values": [[]]}}}]},
            "spans[0].attributes[0].value.kvlistValue.values[0]: expected an object, got an array",
        ),
    ],
)
def test_decode_errors(span_json, message):
    with pytest.raises(OtlpJsonError) as err:
        decode_traces(_one_span(span_json))
    assert str(err.value).startswith("resourceSpans[0].scopeSpans[0]." + message)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "invalid JSON"),
        (b"{", "invalid JSON"),
        (b'{"resourceSpans": [1,]}', "invalid JSON"),
        (b"\xff", "invalid JSON"),
        (b'"\\ud800"', "invalid JSON"),
        (b"[" * 2000 + b"]" * 2000, "invalid JSON"),
        (b"[]", "expected an object, got an array"),
        (b"null", "expected an object, got null"),
        (b'{"resourceSpans": {}}', "resourceSpans: expected an array, got an object"),
        (b'{"resourceSpans": [null]}', "resourceSpans[0]: null is not allowed in an array"),
    ],
)
def test_decode_errors_top_level(body, message):
    with pytest.raises(OtlpJsonError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        decode_traces(body)


def _nested(levels: int, kind: str) -> dict:
    v: dict = {"intValue": "1"}
    for _ in range(levels):
        if kind == "array":
            v = {"arrayValue": {"values": [v]}}
        else:
            v = {"kvlistValue": {"values": [{"key": "k", "value": v}]}}
    return v


@pytest.mark.parametrize("kind", ["array", "kvlist"])
def test_anyvalue_depth_is_bounded_and_what_is_accepted_stays_serialisable(kind):
    ok = _one_span({"attributes": [{"key": "k", "value": _nested(MAX_ANYVALUE_DEPTH, kind)}]})
    req = decode_traces(ok)
    assert decode_traces(encode_traces([req])) == req
    assert ExportTraceServiceRequest.FromString(req.SerializeToString()) == req
    # the deepest place for attributes: metric exemplars
    exemplar = {"filteredAttributes": [{"key": "k", "value": _nested(MAX_ANYVALUE_DEPTH, kind)}]}
    mreq = decode_metrics(_metrics_body({"sum": {"dataPoints": [{"exemplars": [exemplar]}]}}))
    assert ExportMetricsServiceRequest.FromString(mreq.SerializeToString()) == mreq
    assert decode_metrics(encode_metrics([mreq])) == mreq

    too_deep = _one_span({"attributes": [{"key": "k", "value": _nested(MAX_ANYVALUE_DEPTH + 1, kind)}]})
    with pytest.raises(OtlpJsonError, match="too deeply nested"):
        decode_traces(too_deep)
    # far deeper, written by hand (orjson will not write it); still under orjson's 1024-level read limit
    if kind == "array":
        opening, closing = '{"arrayValue":{"values":[', "]}}"
    else:
        opening, closing = '{"kvlistValue":{"values":[{"key":"k","value":', "}]}}"
    value = opening * 200 + '{"intValue":"1"}' + closing * 200
    body = _one_span({"attributes": [{"key": "k", "value": "VALUE"}]}).replace(b'"VALUE"', value.encode())
    with pytest.raises(OtlpJsonError, match="too deeply nested"):
        decode_traces(body)


def test_decode_logs_and_metrics_basics():
    body = {"kvlistValue": {"values": [{"key": "a", "value": {"stringValue": "b"}}]}}
    logs = decode_logs(
        _logs_body(
            {
                "timeUnixNano": "1",
                "severityNumber": "SEVERITY_NUMBER_WARN",
                "body": body,
                "traceId": "0102",
                "event_name": "e",
            }
        )
    )
    rec = logs.resource_logs[0].scope_logs[0].log_records[0]
    assert (rec.severity_number, rec.trace_id, rec.event_name) == (13, b"\x01\x02", "e")
    assert rec.body.kvlist_value.values[0].value.string_value == "b"

    metrics = decode_metrics(
        _metrics_body(
            {"name": "m", "gauge": {"dataPoints": [{"asInt": "-3"}, {"as_double": "Infinity"}]}},
            {"name": "h", "histogram": {"dataPoints": [{"sum": 0, "bucketCounts": ["1", 2]}]}},
        )
    )
    gauge, hist = metrics.resource_metrics[0].scope_metrics[0].metrics
    assert gauge.gauge.data_points[0].as_int == -3
    assert gauge.gauge.data_points[1].as_double == float("inf")
    assert hist.histogram.data_points[0].HasField("sum")
    assert list(hist.histogram.data_points[0].bucket_counts) == [1, 2]


def test_decode_later_oneof_member_replaces_earlier():
    m = decode_message(b'{"gauge": {}, "sum": {"isMonotonic": true}}', mpb.Metric)
    assert m.WhichOneof("data") == "sum"
    dp = decode_message(b'{"asDouble": 1.5, "asInt": "2"}', mpb.NumberDataPoint)
    assert dp.WhichOneof("value") == "as_int"


# ---------------------------------------------------------------------------
# generated messages: oracle equality and round trip
# ---------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
ids = st.binary(max_size=17)
u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
u64 = st.integers(0, 2**64 - 1)
# JSON cannot keep a NaN's sign or payload; generate the one NaN that survives a round trip.
doubles = st.floats().map(lambda d: math.nan if d != d else d)
enum_ints = st.integers(0, 3) | st.integers(-(2**31), 2**31 - 1)

scalar_values = st.one_of(
    texts.map(lambda s: AnyValue(string_value=s)),
    i64.map(lambda i: AnyValue(int_value=i)),
    doubles.map(lambda d: AnyValue(double_value=d)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.binary(max_size=12).map(lambda b: AnyValue(bytes_value=b)),
    st.integers(0, 100).map(lambda i: AnyValue(string_value_strindex=i)),
    st.just(AnyValue()),
)
any_values = st.recursive(
    scalar_values,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda vs: AnyValue(array_value=ArrayValue(values=vs))),
        st.lists(st.tuples(texts, children), max_size=3).map(
            lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs]))
        ),
    ),
    max_leaves=8,
)


@st.composite
def key_values(draw) -> KeyValue:
    key = draw(texts)
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return KeyValue(key=key)  # value unset
    if shape == 1:  # the Profiling form: key_strindex instead of key
        return KeyValue(key_strindex=draw(st.integers(1, 50)), value=draw(any_values))
    return KeyValue(key=key, value=draw(any_values))


attributes = st.lists(key_values(), max_size=4)


def _maybe(draw, strategy, default):
    return draw(st.one_of(st.just(default), strategy))


@st.composite
def resources(draw):
    r = Resource(attributes=draw(attributes), dropped_attributes_count=_maybe(draw, u32, 0))
    if draw(st.booleans()):
        r.entity_refs.add(type=draw(texts), id_keys=draw(st.lists(texts, max_size=2)))
    return r


scopes = st.builds(
    InstrumentationScope, name=texts, version=texts, attributes=attributes, dropped_attributes_count=u32
)


@st.composite
def spans(draw) -> Span:
    s = Span(
        trace_id=draw(ids),
        span_id=draw(ids),
        parent_span_id=draw(ids),
        trace_state=draw(texts),
        flags=_maybe(draw, u32, 0),
        name=draw(texts),
        kind=draw(enum_ints),
        start_time_unix_nano=_maybe(draw, u64, 0),
        end_time_unix_nano=_maybe(draw, u64, 0),
        attributes=draw(attributes),
        dropped_attributes_count=_maybe(draw, u32, 0),
        dropped_events_count=_maybe(draw, u32, 0),
        dropped_links_count=_maybe(draw, u32, 0),
    )
    for _ in range(draw(st.integers(0, 2))):
        s.events.add(
            time_unix_nano=draw(u64), name=draw(texts), attributes=draw(attributes),
            dropped_attributes_count=_maybe(draw, u32, 0),
        )
    for _ in range(draw(st.integers(0, 2))):
        s.links.add(
            trace_id=draw(ids), span_id=draw(ids), trace_state=draw(texts), attributes=draw(attributes),
            dropped_attributes_count=_maybe(draw, u32, 0), flags=_maybe(draw, u32, 0),
        )
    if draw(st.booleans()):
        s.status.SetInParent()
        s.status.message = draw(texts)
        s.status.code = draw(enum_ints)
    return s


@st.composite
def trace_requests(draw) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rs = req.resource_spans.add(schema_url=draw(texts))
        if draw(st.booleans()):
            rs.resource.CopyFrom(draw(resources()))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add(schema_url=draw(texts), spans=draw(st.lists(spans(), max_size=3)))
            if draw(st.booleans()):
                ss.scope.CopyFrom(draw(scopes))
    return req


@st.composite
def log_requests(draw) -> ExportLogsServiceRequest:
    records = []
    for _ in range(draw(st.integers(0, 3))):
        rec = LogRecord(
            time_unix_nano=_maybe(draw, u64, 0),
            observed_time_unix_nano=_maybe(draw, u64, 0),
            severity_number=draw(enum_ints),
            severity_text=draw(texts),
            attributes=draw(attributes),
            dropped_attributes_count=_maybe(draw, u32, 0),
            flags=_maybe(draw, u32, 0),
            trace_id=draw(ids),
            span_id=draw(ids),
            event_name=draw(texts),
        )
        if draw(st.booleans()):
            rec.body.CopyFrom(draw(any_values))
        records.append(rec)
    scope = draw(st.one_of(st.none(), scopes))
    sl = ScopeLogs(log_records=records, schema_url=draw(texts))
    if scope is not None:
        sl.scope.CopyFrom(scope)
    rl = ResourceLogs(scope_logs=[sl])
    if draw(st.booleans()):
        rl.resource.CopyFrom(draw(resources()))
    return ExportLogsServiceRequest(resource_logs=[rl] * draw(st.integers(0, 2)))


@st.composite
def exemplars(draw) -> mpb.Exemplar:
    e = mpb.Exemplar(
        filtered_attributes=draw(attributes),
        time_unix_nano=_maybe(draw, u64, 0),
        span_id=draw(ids),
        trace_id=draw(ids),
    )
    which = draw(st.integers(0, 2))
    if which == 1:
        e.as_double = draw(doubles)
    elif which == 2:
        e.as_int = draw(i64)
    return e


@st.composite
def point_common(draw) -> dict:
    return dict(
        attributes=draw(attributes),
        start_time_unix_nano=_maybe(draw, u64, 0),
        time_unix_nano=_maybe(draw, u64, 0),
        flags=_maybe(draw, u32, 0),
    )


@st.composite
def number_points(draw) -> mpb.NumberDataPoint:
    p = mpb.NumberDataPoint(exemplars=draw(st.lists(exemplars(), max_size=2)), **draw(point_common()))
    which = draw(st.integers(0, 2))
    if which == 1:
        p.as_double = draw(doubles)
    elif which == 2:
        p.as_int = draw(i64)
    return p


def _optional_min_max_sum(draw, p) -> None:
    for name in ("sum", "min", "max"):
        if draw(st.booleans()):
            setattr(p, name, draw(st.just(0.0) | doubles))


@st.composite
def histogram_points(draw) -> mpb.HistogramDataPoint:
    p = mpb.HistogramDataPoint(
        count=_maybe(draw, u64, 0),
        bucket_counts=draw(st.lists(u64, max_size=3)),
        explicit_bounds=draw(st.lists(doubles, max_size=3)),
        exemplars=draw(st.lists(exemplars(), max_size=2)),
        **draw(point_common()),
    )
    _optional_min_max_sum(draw, p)
    return p


@st.composite
def exp_histogram_points(draw) -> mpb.ExponentialHistogramDataPoint:
    p = mpb.ExponentialHistogramDataPoint(
        count=_maybe(draw, u64, 0),
        scale=draw(st.integers(-(2**31), 2**31 - 1)),
        zero_count=_maybe(draw, u64, 0),
        zero_threshold=_maybe(draw, doubles, 0.0),
        exemplars=draw(st.lists(exemplars(), max_size=2)),
        **draw(point_common()),
    )
    for side in ("positive", "negative"):
        if draw(st.booleans()):
            getattr(p, side).SetInParent()
            getattr(p, side).offset = draw(st.integers(-(2**31), 2**31 - 1))
            getattr(p, side).bucket_counts.extend(draw(st.lists(u64, max_size=3)))
    _optional_min_max_sum(draw, p)
    return p


@st.composite
def summary_points(draw) -> mpb.SummaryDataPoint:
    return mpb.SummaryDataPoint(
        count=_maybe(draw, u64, 0),
        sum=_maybe(draw, doubles, 0.0),
        quantile_values=[
            mpb.SummaryDataPoint.ValueAtQuantile(quantile=q, value=v)
            for q, v in draw(st.lists(st.tuples(doubles, doubles), max_size=2))
        ],
        **draw(point_common()),
    )


@st.composite
def metrics(draw) -> mpb.Metric:
    m = mpb.Metric(name=draw(texts), description=draw(texts), unit=draw(texts), metadata=draw(attributes))
    kind = draw(st.sampled_from(["gauge", "sum", "histogram", "exponential_histogram", "summary", None]))
    temporality = draw(enum_ints)
    if kind == "gauge":
        m.gauge.data_points.extend(draw(st.lists(number_points(), max_size=2)))
    elif kind == "sum":
        m.sum.SetInParent()
        m.sum.data_points.extend(draw(st.lists(number_points(), max_size=2)))
        m.sum.aggregation_temporality = temporality
        m.sum.is_monotonic = draw(st.booleans())
    elif kind == "histogram":
        m.histogram.data_points.extend(draw(st.lists(histogram_points(), max_size=2)))
        m.histogram.aggregation_temporality = temporality
    elif kind == "exponential_histogram":
        m.exponential_histogram.data_points.extend(draw(st.lists(exp_histogram_points(), max_size=2)))
        m.exponential_histogram.aggregation_temporality = temporality
    elif kind == "summary":
        m.summary.data_points.extend(draw(st.lists(summary_points(), max_size=2)))
    if kind is not None:
        getattr(m, kind).SetInParent()
    return m


@st.composite
def metric_requests(draw) -> ExportMetricsServiceRequest:
    rm = mpb.ResourceMetrics(schema_url=draw(texts))
    if draw(st.booleans()):
        rm.resource.CopyFrom(draw(resources()))
    sm = rm.scope_metrics.add(metrics=draw(st.lists(metrics(), max_size=3)))
    if draw(st.booleans()):
        sm.scope.CopyFrom(draw(scopes))
    return ExportMetricsServiceRequest(resource_metrics=[rm])


@PROPERTY
@given(st.lists(trace_requests(), max_size=2))
def test_generated_traces_match_oracle_and_round_trip(reqs):
    body = encode_traces(reqs)
    assert orjson.loads(body) == merged_oracle(reqs, "resourceSpans")
    merged = ExportTraceServiceRequest(resource_spans=[rs for r in reqs for rs in r.resource_spans])
    assert wire(decode_traces(body)) == wire(merged)


@PROPERTY
@given(log_requests())
def test_generated_logs_match_oracle_and_round_trip(req):
    body = encode_logs([req])
    assert orjson.loads(body) == oracle(req)
    assert wire(decode_logs(body)) == wire(req)


@PROPERTY
@given(metric_requests())
def test_generated_metrics_match_oracle_and_round_trip(req):
    body = encode_metrics([req])
    assert orjson.loads(body) == oracle(req)
    assert wire(decode_metrics(body)) == wire(req)


@PROPERTY
@given(any_values)
def test_generated_anyvalues_match_oracle_and_round_trip(v):
    assert orjson.loads(encode_message(v)) == oracle(v)
    assert wire(decode_message(encode_message(v), AnyValue)) == wire(v)


# ---------------------------------------------------------------------------
# hostile input: only OtlpJsonError, never anything else
# ---------------------------------------------------------------------------

_OTLP_KEYS = sorted(
    {
        name
        for desc in (
            ResourceSpans.DESCRIPTOR, ScopeSpans.DESCRIPTOR, Span.DESCRIPTOR, Span.Event.DESCRIPTOR,
            Span.Link.DESCRIPTOR, Status.DESCRIPTOR, Resource.DESCRIPTOR, EntityRef.DESCRIPTOR,
            InstrumentationScope.DESCRIPTOR, KeyValue.DESCRIPTOR, AnyValue.DESCRIPTOR,
            ArrayValue.DESCRIPTOR, ResourceLogs.DESCRIPTOR, ScopeLogs.DESCRIPTOR, LogRecord.DESCRIPTOR,
            mpb.ResourceMetrics.DESCRIPTOR, mpb.ScopeMetrics.DESCRIPTOR, mpb.Metric.DESCRIPTOR,
            mpb.Sum.DESCRIPTOR, mpb.HistogramDataPoint.DESCRIPTOR,
            mpb.ExponentialHistogramDataPoint.DESCRIPTOR, mpb.NumberDataPoint.DESCRIPTOR,
            mpb.Exemplar.DESCRIPTOR, mpb.SummaryDataPoint.DESCRIPTOR,
        )
        for fd in desc.fields
        for name in (fd.name, fd.json_name)
    }
    | {"resourceSpans", "resourceLogs", "resourceMetrics"}
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "00", "abcd", "AQ==", "-1", "18446744073709551616", "SPAN_KIND_CLIENT", "1e3"]
    ),
)
def _json_containers(children):
    # object keys are mostly real OTLP field names, so that random values reach deep paths
    keys = st.sampled_from(_OTLP_KEYS) | st.text(max_size=4)
    return st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)


json_values = st.recursive(json_scalars, _json_containers, max_leaves=20)


def _dump(value) -> bytes:
    # stdlib json: it can write big integers, NaN and lone surrogates, all of which must be refused cleanly
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


_DECODERS = [decode_traces, decode_logs, decode_metrics]


def _only_clean_errors(body: bytes) -> None:
    for decode in _DECODERS:
        try:
            decode(body)
        except OtlpJsonError:
            pass


@PROPERTY
@given(json_values)
def test_random_json_only_raises_otlp_json_error(value):
    _only_clean_errors(_dump(value))
    _only_clean_errors(_dump({"resourceSpans": [value], "resourceLogs": [value], "resourceMetrics": [value]}))


def _fixture_bodies() -> list:
    bodies = []
    for path in otlp_json_fixtures():
        with open(path, "rb") as f:
            bodies.extend(r["body"] for r in orjson.loads(f.read())["requests"])
    return bodies


FIXTURE_BODIES = _fixture_bodies()
# One metric of each kind, so that mutations reach every metric message too.
GENERATED_BODIES = [
    orjson.loads(
        _metrics_body(
            {"name": "g", "gauge": {"dataPoints": [{"asInt": "1", "exemplars": [{"asDouble": 1.0, "traceId": "01"}]}]}},
            {"name": "h", "histogram": {"dataPoints": [{"sum": 1.0, "bucketCounts": ["1"], "explicitBounds": [0.5]}]}},
            {"name": "e", "exponentialHistogram": {"dataPoints": [{"positive": {"offset": 1, "bucketCounts": ["2"]}}]}},
            {"name": "s", "summary": {"dataPoints": [{"quantileValues": [{"quantile": 0.5, "value": 2.0}]}]}},
        )
    )
]


@st.composite
def mutated_payloads(draw):
    """A valid OTLP/JSON body with one node replaced, deleted or retyped."""
    doc = json.loads(json.dumps(draw(st.sampled_from(FIXTURE_BODIES + GENERATED_BODIES))))
    node, steps = doc, draw(st.integers(1, 14))
    for _ in range(steps):
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        children = [(k, v) for k, v in children if isinstance(v, (dict, list)) and v]
        if not children:
            break
        _, node = draw(st.sampled_from(children))
    keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
    if not keys:
        return doc
    key = draw(st.sampled_from(keys))
    action = draw(st.integers(0, 2))
    if action == 0:
        node[key] = draw(json_values)
    elif action == 1 and isinstance(node, dict):
        del node[key]
    else:
        node[key] = [node[key]] if draw(st.booleans()) else {"x": node[key]}
    return doc


@PROPERTY
@given(mutated_payloads())
def test_mutated_payloads_only_raise_otlp_json_error(doc):
    _only_clean_errors(_dump(doc))
