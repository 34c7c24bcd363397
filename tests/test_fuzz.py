"""Fuzzing (issue 6): random and mutated OTLP payloads never hurt the gateway.

One real gateway (LLM processors on, one file sink) serves the whole module; each test throws
one family of generated payloads at it over plain synchronous clients:

* structured: `ExportTraceServiceRequest`s built from strategies (ids of any length, random
  attribute maps with nested arrays/kvlists, bytes, huge ints, NaN/inf doubles, the LLM keys the
  normalizer reads with junk values), over gRPC and over HTTP as protobuf or OTLP/JSON;
* byte-level mutations of the recorded fixtures (flip, set, insert, delete, truncate, splice),
  over gRPC and HTTP;
* OTLP/JSON mutations of the fixtures' JSON form (keys, values and types; lone surrogates, NaN
  tokens, deep nesting), over HTTP;
* compressed bodies (gzip, deflate, zstd, bombs) mutated, truncated and sent with a lying or
  unknown `Content-Encoding`.

Per request the property is exact, not just "no 500": the answer is the one the README's table
gives for what the payload is (decided in-process by an oracle: media type, size, the body
decompressed and decoded), i.e. 200 with a parseable `ExportTraceServiceResponse` whose
`partial_success` counts exactly the spans with invalid ids, or 400/413/415 with a
`google.rpc.Status` body in the request's encoding (gRPC: OK, INVALID_ARGUMENT or
RESOURCE_EXHAUSTED); 503 under backpressure is also a valid answer. No request may take longer
than the request timeout. After each test the gateway must still be alive, take a known-good
request over both protocols and write it to the file sink, have delivered every span it
acknowledged (metrics), and have logged no error or traceback.

The LLM processors are also fuzzed as units on decoded requests: they must never raise (nor
swallow an internal error), keep the span count, leave a request that still encodes, and change
nothing when run a second time (spans may pass through several otelgates).

Budgets: a modest, derandomized one in the normal run (under a minute here); the `slow`-marked
variants run `OTELGATE_FUZZ_EXAMPLES` (default 3000) random examples per family.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import requests
import zstandard
from aiohttp.helpers import parse_content_type
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from prometheus_client.parser import text_string_to_metric_families

from gateway.batch import Batch, RequestContext, count_spans
from gateway.config import parse
from gateway.otlp import compression
from gateway.otlp.json_codec import OtlpJsonError, decode_traces, encode_traces
from gateway.otlp.signals import LOGS, METRICS, Signal
from gateway.pipeline import build_processors
from gateway.processors import normalize
from gateway.telemetry import Metrics
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records
from tests.gateway_process import GatewayProcess, gateway_config, wait_for

QUICK = 120  # examples per family in the normal run (some families take a multiple)
LONG = int(os.environ.get("OTELGATE_FUZZ_EXAMPLES", "3000"))  # ... in the slow run
BUDGETS = [pytest.param(QUICK, id="quick"), pytest.param(LONG, id="long", marks=pytest.mark.slow)]

TIMEOUT = 10.0  # seconds: a request not answered by then is a hang
LIMIT = 256 * 1024  # receivers.http.max_body_bytes and receivers.grpc.max_message_bytes here
PROTOBUF, JSON = "application/x-protobuf", "application/json"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_HTTP_STATUS_CODE = {400: code_pb2.INVALID_ARGUMENT, 413: code_pb2.RESOURCE_EXHAUSTED, 415: code_pb2.INVALID_ARGUMENT}


def _settings(examples: int, scale: float = 1.0) -> settings:
    """`examples * scale` examples; reproducible in the normal run (derandomized, no example
    database), fresh random cases in the long one."""
    return settings(max_examples=max(10, int(examples * scale)), deadline=None, database=None,
                    derandomize=examples == QUICK,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much], print_blob=True)


# ---------------------------------------------------------------------------------------------
# Seeds: the recorded fixtures, as protobuf bodies, decoded requests and OTLP/JSON.

PROTO_SEEDS = [body for name in TRACE_FIXTURES for body in read_records(FIXTURES / f"{name}.otlp.bin")]
JSON_SEEDS = [encode_traces([ExportTraceServiceRequest.FromString(body)]) for body in PROTO_SEEDS]
BOMBS = {  # small bodies that inflate far past LIMIT (a gateway must stop at the limit)
    "gzip": gzip.compress(b"\0" * (8 * LIMIT), compresslevel=9),
    "deflate": zlib.compress(b"\0" * (8 * LIMIT), 9),
    "zstd": zstandard.ZstdCompressor().compress(b"\0" * (8 * LIMIT)),
}

# ---------------------------------------------------------------------------------------------
# Strategies: attribute values, with the LLM keys the normalizer and the pricer read.

_INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 5),
                   st.sampled_from([2**53, 2**53 + 1, 2**62, 2**63 - 1, -(2**63), 2**31, -(2**31)]))
_UINT64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1, 1_700_000_000_000_000_000]))
_DOUBLE = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 1e9, 1e9 + 1]))
_TEXT = st.text(max_size=24)
# Keys that the LLM processors read (every alias of the normalizer's table) or that carry content.
LLM_KEYS = sorted(normalize._KEYS | {
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt",
    "gen_ai.completion", "input.value", "output.value", "langfuse.observation.input", "service.name",
    "langfuse.observation.metadata.service_tier", "llm.invocation_parameters", "session.id", "user.id",
})
_USAGE_WORDS = ["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "total_tokens", "input",
                "output", "total", "cache_read_input_tokens", "cache_creation_input_tokens", "prompt_tokens_details",
                "completion_tokens_details", "input_tokens_details", "output_tokens_details", "cached_tokens",
                "reasoning_tokens", "inputTokens", "outputTokens", "promptTokens", "completionTokens",
                "cachedInputTokens", "reasoningTokens", "cache_read", "cache_write", "cache_creation", "model",
                "model_name", "service_tier", "anthropic", "bedrock", "vertex", "usage", "cacheReadInputTokens",
                "cacheCreationInputTokens", "total_cost", "totalCost"]
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["NaN", "-1", "1e400", "12"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_USAGE_WORDS) | _TEXT, inner, max_size=5),
    max_leaves=16)
_JUNK_STRINGS = st.one_of(
    st.sampled_from(["", "NaN", "nan", "Infinity", "-Infinity", "inf", "-1", "0", "1e400", "-0", "1.5", "9" * 25,
                     "0x10", " 12 ", '"12"', '""', "null", "true", "[]", "{}", '"\\"LLM\\""', '"LLM"', "LLM", "llm",
                     "EMBEDDING", "generation", "embedding", "chat", "completion", "rerank", "ERROR", "ai.generateText",
                     "ai.generateText.doGenerate", "ai.embed.doEmbed", "gpt-4o", "gpt-4o-2024-08-06", "o3-mini",
                     "claude-3-5-sonnet-20241022", "claude-sonnet-4@20250514", "openai/gpt-4o-mini", "gemini-1.5-pro",
                     "text-embedding-3-small", "anthropic", "Anthropic", "openai", "azure", "aws", "bedrock", "google",
                     "mistral", "xai", "langchain", "priority", "flex", "https://x.openai.azure.com/v1",
                     "[" * 200, "{" * 200, "{'cache_read': -1}", "{'reasoning': 10**100}"]),
    _JSONISH.map(lambda v: json.dumps(v)),  # NaN/Infinity tokens included: not valid JSON
    _JSONISH.map(repr),  # LangSmith-style Python literals
    _JSONISH.map(lambda v: json.dumps(json.dumps(v))),  # MLflow: encoded twice
    _TEXT,
)


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


_SCALAR = st.one_of(
    st.builds(lambda s: AnyValue(string_value=s), _TEXT | _JUNK_STRINGS),
    st.builds(lambda n: AnyValue(int_value=n), _INT64),
    st.builds(lambda d: AnyValue(double_value=d), _DOUBLE),
    st.builds(lambda b: AnyValue(bool_value=b), st.booleans()),
    st.builds(lambda b: AnyValue(bytes_value=b), st.binary(max_size=24)),
    st.just(AnyValue()),  # no value set
)
ANY_VALUE = st.recursive(_SCALAR, lambda inner: st.one_of(
    st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=4)),
    st.builds(lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[_kv(k, v) for k, v in kvs])),
              st.lists(st.tuples(st.sampled_from(LLM_KEYS) | _TEXT, inner), max_size=4)),
), max_leaves=12)
_KEY = st.one_of(st.sampled_from(LLM_KEYS), _TEXT)
ATTRIBUTES = st.lists(st.builds(_kv, _KEY, ANY_VALUE), max_size=14)  # duplicate keys allowed, as on the wire


def _id(size: int) -> st.SearchStrategy[bytes]:
    """Mostly the right length (listed twice), sometimes all zero or any length."""
    return st.one_of(st.binary(min_size=size, max_size=size), st.binary(min_size=size, max_size=size),
                     st.just(bytes(size)), st.binary(max_size=size + 4))


@st.composite
def _span(draw: st.DrawFn) -> Span:
    span = Span(
        trace_id=draw(_id(16)), span_id=draw(_id(8)), parent_span_id=draw(st.just(b"") | _id(8)),
        name=draw(_TEXT | st.sampled_from(["chat gpt-4o", "anthropic.chat", "litellm_request", "embeddings"])),
        kind=draw(st.integers(0, 6) | st.integers(-(2**31), 2**31 - 1)),
        start_time_unix_nano=draw(_UINT64), end_time_unix_nano=draw(_UINT64),
        attributes=draw(ATTRIBUTES), dropped_attributes_count=draw(st.integers(0, 2**32 - 1)),
        trace_state=draw(st.just("") | _TEXT | st.just("ot=th:8;rv:0123456789abcd")),
        flags=draw(st.integers(0, 2**32 - 1)),
    )
    if draw(st.booleans()):
        span.status.CopyFrom(Status(code=draw(st.integers(0, 2) | st.integers(-(2**31), 2**31 - 1)), message=draw(_TEXT)))
    for _ in range(draw(st.integers(0, 2))):
        span.events.add(name=draw(st.sampled_from(["gen_ai.content.prompt", "gen_ai.content.completion"]) | _TEXT),
                        time_unix_nano=draw(_UINT64), attributes=draw(ATTRIBUTES))
    for _ in range(draw(st.integers(0, 1))):
        span.links.add(trace_id=draw(_id(16)), span_id=draw(_id(8)), attributes=draw(ATTRIBUTES))
    return span


_SCOPES = st.sampled_from(["ai", "pydantic-ai", "openlit.otel", "com.anthropic.sdk.python",
                           "opentelemetry.instrumentation.anthropic", "langfuse-sdk", ""]) | _TEXT


@st.composite
def structured_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    """A decodable request with junk everywhere the protobuf schema lets junk in."""
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rs: ResourceSpans = request.resource_spans.add(schema_url=draw(_TEXT))
        if draw(st.booleans()):
            attrs = draw(ATTRIBUTES)
            if draw(st.booleans()):
                attrs.append(_kv("service.name", draw(ANY_VALUE)))
            rs.resource.CopyFrom(Resource(attributes=attrs))
        for _ in range(draw(st.integers(0, 3))):
            ss: ScopeSpans = rs.scope_spans.add()
            if draw(st.booleans()):
                ss.scope.CopyFrom(InstrumentationScope(name=draw(_SCOPES), version=draw(_TEXT)))
            ss.spans.extend(draw(st.lists(_span(), max_size=5)))
    return request


@st.composite
def junked_fixtures(draw: st.DrawFn) -> ExportTraceServiceRequest:
    """A real LLM request whose LLM attributes got junk values (wrong types, absurd counts, bad JSON)."""
    request = ExportTraceServiceRequest.FromString(draw(st.sampled_from(PROTO_SEEDS)))
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    for _ in range(draw(st.integers(1, 12))):
        span = spans[draw(st.integers(0, len(spans) - 1))]
        attrs = span.attributes
        action = draw(st.sampled_from(["replace", "replace", "add", "delete"]))
        if action == "add" or not attrs:
            attrs.append(_kv(draw(st.sampled_from(LLM_KEYS)), draw(_SCALAR | ANY_VALUE)))
        elif action == "replace":
            attrs[draw(st.integers(0, len(attrs) - 1))].value.CopyFrom(draw(_SCALAR | ANY_VALUE))
        else:
            del attrs[draw(st.integers(0, len(attrs) - 1))]
    return request


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (tag < 16), by hand: the client library refuses deep messages."""
    size, length = len(payload), b""
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            return bytes([tag << 3 | 2]) + length + payload


@st.composite
def deep_requests(draw: st.DrawFn) -> bytes:
    """A span attribute nested arrays/kvlists deep, around upb's limit of 100 nested messages."""
    value = _field(1, b"leaf")  # AnyValue{string_value}
    for kind in draw(st.lists(st.booleans(), min_size=20, max_size=70)):
        if kind:  # AnyValue{array_value: ArrayValue{values: [value]}}
            value = _field(5, _field(1, value))
        else:  # AnyValue{kvlist_value: KeyValueList{values: [KeyValue{key, value}]}}
            value = _field(6, _field(1, _field(1, b"k") + _field(2, value)))
    span = _field(1, os.urandom(16)) + _field(2, os.urandom(8)) + _field(5, b"deep") + _field(9, _field(1, b"k") + _field(2, value))
    return _field(1, _field(2, _field(2, span)))  # ExportTraceServiceRequest{ResourceSpans{ScopeSpans{span}}}


_INTERESTING_BYTES = st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x1A, 0x22, 0x08, 0x7B, 0x22, 0x5C])


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, max_ops: int = 6) -> bytes:
    """`seed` after a few byte-level mutations."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate", "splice"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < len(data):
            data[pos] = draw(_INTERESTING_BYTES | st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
        elif op == "splice":
            other = draw(st.sampled_from(PROTO_SEEDS))
            start = draw(st.integers(0, len(other)))
            data[pos:] = other[start:start + draw(st.integers(0, 256))]
    return bytes(data)


mutated_protobuf = st.sampled_from(PROTO_SEEDS).flatmap(mutated)

# OTLP/JSON: the fixtures' JSON form, mutated as a document and sometimes as text.
_JSON_KEYS = ["resourceSpans", "resource_spans", "scopeSpans", "spans", "traceId", "spanId", "parentSpanId",
              "attributes", "key", "value", "stringValue", "intValue", "doubleValue", "boolValue", "bytesValue",
              "arrayValue", "kvlistValue", "values", "startTimeUnixNano", "endTimeUnixNano", "kind", "status",
              "code", "events", "links", "flags", "droppedAttributesCount", "name", "scope", "resource"]
_JSON_VALUES = st.one_of(
    _JSONISH,
    st.sampled_from(["", "zz", "0" * 31, "0" * 32, "ab" * 8, "AB" * 16, "NaN", "Infinity", "-Infinity", "1e400",
                     "99999999999999999999999", "-9223372036854775809", "18446744073709551616", "0x1F", "1.0",
                     "SPAN_KIND_SERVER", "STATUS_CODE_ERROR", "not base64!", "\ud800", "\udfff", "\ud83d\ude00"]),
    st.integers(-(2**70), 2**70), st.floats(),
    st.text(max_size=12),
)  # the lone surrogates above become a \ud800 escape or invalid UTF-8 in the JSON text


def _deep_json(depth: int, array: bool) -> dict:
    value: dict = {"stringValue": "leaf"}
    for _ in range(depth):
        value = {"arrayValue": {"values": [value]}} if array else \
            {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    return value


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    doc = orjson.loads(draw(st.sampled_from(JSON_SEEDS)))
    for _ in range(draw(st.integers(1, 5))):
        parent: Any = None
        key: Any = None
        node: Any = doc
        for _ in range(draw(st.integers(0, 14))):  # walk down to a random node
            if isinstance(node, dict) and node:
                parent, key = node, draw(st.sampled_from(sorted(node)))
            elif isinstance(node, list) and node:
                parent, key = node, draw(st.integers(0, len(node) - 1))
            else:
                break
            node = parent[key]
        if parent is None:
            continue
        op = draw(st.sampled_from(["value", "value", "delete", "rename", "null", "wrap", "deep", "add"]))
        if op == "value":
            parent[key] = draw(_JSON_VALUES)
        elif op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(_JSON_KEYS) | st.text(max_size=6))] = parent.pop(key)
        elif op == "null":
            parent[key] = None
        elif op == "wrap":
            parent[key] = draw(st.sampled_from([[node], {"value": node}, {"stringValue": node}]))
        elif op == "deep":
            parent[key] = _deep_json(draw(st.integers(25, 140)), draw(st.booleans()))
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(_JSON_KEYS))] = draw(_JSON_VALUES)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))  # NaN/Infinity written as bare tokens
    body = text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8
    return draw(mutated(body, max_ops=3)) if draw(st.integers(0, 3)) == 0 else body


# Content-Type / Content-Encoding menus: the gateway's answer to each is fixed by the README's table.
_CONTENT_TYPES = [PROTOBUF, JSON, "application/json; charset=utf-8", "APPLICATION/X-PROTOBUF", "application/x-protobuf;",
                  "application/protobuf", "text/plain", "application/octet-stream", "application/grpc", "",
                  "application/json, text/plain"]
_ENCODINGS = ["gzip", "x-gzip", "deflate", "zstd", "identity", None, "", "GZIP ", "Zstd", "br", "compress",
              "gzip, deflate", "identity;q=1"]  # (requests refuses to send leading whitespace)


@st.composite
def compressed_bodies(draw: st.DrawFn) -> tuple[bytes, str, str | None]:
    """(body, Content-Type, Content-Encoding): a payload compressed one way, maybe mutated, maybe lied about."""
    as_json = draw(st.booleans())
    plain = draw(st.sampled_from(JSON_SEEDS if as_json else PROTO_SEEDS))
    codec = draw(st.sampled_from(["gzip", "gzip2", "zlib", "raw", "zstd", "zstd2", "none", "bomb"]))
    if codec == "gzip":
        body = gzip.compress(plain, compresslevel=draw(st.integers(0, 9)))
    elif codec == "gzip2":  # two members back to back (valid gzip)
        cut = draw(st.integers(0, len(plain)))
        body = gzip.compress(plain[:cut]) + gzip.compress(plain[cut:])
    elif codec == "zlib":
        body = zlib.compress(plain)
    elif codec == "raw":
        c = zlib.compressobj(wbits=-15)
        body = c.compress(plain) + c.flush()
    elif codec == "zstd":
        body = zstandard.ZstdCompressor(write_content_size=draw(st.booleans())).compress(plain)
    elif codec == "zstd2":
        cut = draw(st.integers(0, len(plain)))
        body = zstandard.ZstdCompressor().compress(plain[:cut]) + zstandard.ZstdCompressor().compress(plain[cut:])
    elif codec == "bomb":
        codec = draw(st.sampled_from(sorted(BOMBS)))
        body = BOMBS[codec]
    else:
        body = plain
    if draw(st.integers(0, 2)):
        body = draw(mutated(body, max_ops=4))
    honest = {"gzip": "gzip", "gzip2": "gzip", "zlib": "deflate", "raw": "deflate", "zstd": "zstd", "zstd2": "zstd",
              "deflate": "deflate", "none": None}[codec]
    encoding = draw(st.just(honest) | st.sampled_from(_ENCODINGS))
    content_type = draw(st.just(JSON if as_json else PROTOBUF) | st.sampled_from(_CONTENT_TYPES))
    return body, content_type, encoding


# ---------------------------------------------------------------------------------------------
# The oracle: what the gateway must answer, decided in-process from the payload.


def _rejected(request: ExportTraceServiceRequest) -> int:
    """Spans the README says are rejected one by one (ids of the wrong length or all zero)."""
    n = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                n += (len(s.trace_id) != 16 or s.trace_id == bytes(16) or len(s.span_id) != 8
                      or s.span_id == bytes(8) or (s.parent_span_id != b"" and len(s.parent_span_id) != 8))
    return n


@dataclass
class Expected:
    status: int  # the HTTP status (200 for gRPC OK), with 503 always allowed
    as_json: bool = False  # the answer's encoding (HTTP)
    request: ExportTraceServiceRequest | None = None  # decoded, when it must be accepted


def _decode_proto(body: bytes) -> ExportTraceServiceRequest | None:
    try:
        return ExportTraceServiceRequest.FromString(body)
    except DecodeError:
        return None


def _decodable(body: bytes, as_json: bool) -> ExportTraceServiceRequest | None:
    """What a receiver decodes `body` to (None: not a request)."""
    if as_json:
        try:
            return decode_traces(body)
        except OtlpJsonError:
            return None
    return _decode_proto(body)


def _stdlib_inflate(body: bytes, encoding: str) -> bytes | None:
    """An independent decoder, to check the gateway's bounded one against (None: cannot)."""
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        if encoding == "zstd":  # frame after frame, as RFC 8878 allows
            out = b""
            while body:
                d = zstandard.ZstdDecompressor().decompressobj()
                out += d.decompress(body)
                if not d.eof:
                    return None
                body = d.unused_data
            return out
    except (OSError, EOFError, zlib.error, zstandard.ZstdError):
        return None
    return None


def expect_http(body: bytes, content_type: str | None, encoding: str | None) -> Expected:
    media = parse_content_type(content_type)[0] if content_type is not None else "application/octet-stream"
    if media not in (PROTOBUF, JSON):
        return Expected(415, as_json=True)  # no encoding asked for: JSON, which people can read
    as_json = media == JSON
    coding = (encoding if encoding is not None else "identity").strip().lower() or "identity"
    if coding not in compression.SUPPORTED:
        return Expected(415, as_json)
    if len(body) > LIMIT:
        return Expected(413, as_json)
    try:
        plain = compression.decompress(body, coding, LIMIT)
    except compression.TooLarge:
        return Expected(413, as_json)
    except compression.CorruptBody:
        plain = None
    reference = _stdlib_inflate(body, coding)
    if reference is not None and len(reference) <= LIMIT:
        assert plain == reference, f"the gateway's {coding} decoder disagrees with the standard library's"
    if plain is None:
        return Expected(400, as_json)
    request = _decodable(plain, as_json)
    return Expected(400, as_json) if request is None else Expected(200, as_json, request)


def expect_grpc(body: bytes) -> Expected:
    if len(body) > LIMIT:
        return Expected(413)
    request = _decode_proto(body)
    return Expected(400) if request is None else Expected(200, request=request)


# ---------------------------------------------------------------------------------------------
# The gateway under test, and the checks on each answer.


@dataclass
class Target:
    gw: GatewayProcess
    session: requests.Session = field(default_factory=requests.Session)
    channel: grpc.Channel | None = None
    accepted: int = 0  # spans the gateway acknowledged (accepted minus rejected)
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    log_checked: int = 0  # log lines already checked

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.gw.grpc, options=[("grpc.max_send_message_length", 4 * LIMIT)])
        self.export = self.channel.unary_unary(EXPORT)  # no serializers: bytes in, bytes out

    def post(self, body: bytes, content_type: str | None, encoding: str | None) -> None:
        """POST /v1/traces and check the answer against the oracle."""
        expected = expect_http(body, content_type, encoding)
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        r = self.session.post(f"{self.gw.http}/v1/traces", data=body, headers=headers, timeout=TIMEOUT)
        self.outcomes[f"http {r.status_code}"] += 1
        if r.status_code == 503:
            assert r.headers.get("Retry-After"), "503 without Retry-After"
            return
        assert r.status_code == expected.status, (r.status_code, r.content[:300], expected.status)
        as_json = expected.as_json
        assert r.headers.get("Content-Type") == (JSON if as_json else PROTOBUF), r.headers.get("Content-Type")
        if expected.status == 200:
            response = json_format.Parse(r.content, ExportTraceServiceResponse()) if as_json \
                else ExportTraceServiceResponse.FromString(r.content)
            self._check_accepted(expected.request, response)
        else:
            status = json_format.Parse(r.content, status_pb2.Status()) if as_json else status_pb2.Status.FromString(r.content)
            assert status.code == _HTTP_STATUS_CODE[expected.status] and status.message, status

    def grpc_export(self, body: bytes, gzip_: bool = False) -> None:
        """Export over gRPC and check the answer against the oracle."""
        expected = expect_grpc(body)
        try:
            answer = self.export(body, timeout=TIMEOUT, compression=grpc.Compression.Gzip if gzip_ else None)
        except grpc.RpcError as exc:
            code = exc.code()
            self.outcomes[f"grpc {code.name}"] += 1
            if code == grpc.StatusCode.UNAVAILABLE and expected.status == 200:
                return  # backpressure
            want = {400: grpc.StatusCode.INVALID_ARGUMENT, 413: grpc.StatusCode.RESOURCE_EXHAUSTED}.get(expected.status)
            assert code == want, (code, exc.details(), expected.status)
            return
        self.outcomes["grpc OK"] += 1
        assert expected.status == 200, f"gRPC OK for a payload that should get {expected.status}"
        self._check_accepted(expected.request, ExportTraceServiceResponse.FromString(answer))

    def _check_accepted(self, request: ExportTraceServiceRequest | None, response: ExportTraceServiceResponse) -> None:
        assert request is not None
        rejected = _rejected(request)
        partial = response.partial_success
        assert partial.rejected_spans == rejected, (partial, rejected)
        assert bool(partial.error_message) == bool(rejected), partial
        self.accepted += count_spans(request) - rejected

    def metric(self, name: str, **labels: str) -> float:
        text = self.session.get(f"{self.gw.admin}/metrics", timeout=TIMEOUT).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def assert_healthy(self) -> None:
        """Alive, still serving both protocols, everything acknowledged delivered, nothing logged as an error."""
        assert self.gw.proc.poll() is None, "the gateway died:\n" + self.gw.log_text()[-5000:]
        out = self.gw.workdir / "out.jsonl"
        offset = out.stat().st_size if out.exists() else 0
        canaries = []
        for protocol in ("http", "grpc"):
            trace_id = os.urandom(16)
            canaries.append(trace_id.hex())
            request = ExportTraceServiceRequest()
            request.resource_spans.add().scope_spans.add().spans.add(
                trace_id=trace_id, span_id=os.urandom(8), name=f"fuzz-canary-{protocol}", start_time_unix_nano=1,
                end_time_unix_nano=2)
            if protocol == "http":
                self.post(request.SerializeToString(), PROTOBUF, None)
            else:
                self.grpc_export(request.SerializeToString())
        wait_for(lambda: all(c.encode() in _read_from(out, offset) for c in canaries), timeout=TIMEOUT)
        assert self.metric("otelgate_receiver_accepted_spans_total") == self.accepted
        wait_for(lambda: self.metric("otelgate_sink_sent_spans_total", sink="out") == self.accepted, timeout=TIMEOUT)
        assert self.metric("otelgate_sink_dropped_spans_total") == 0
        lines = self.gw.lines[self.log_checked:]
        self.log_checked += len(lines)
        bad = [line for line in lines if "Traceback" in line or " ERROR " in line or "Error handling request" in line]
        assert not bad, "\n".join(lines)[-5000:]


def _read_from(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("fuzz")
    config = gateway_config(workdir, llm=True, rotate_bytes=0)
    config["receivers"]["http"]["max_body_bytes"] = LIMIT
    config["receivers"]["grpc"]["max_message_bytes"] = LIMIT
    gw = GatewayProcess(config, workdir).wait_ready()
    t = Target(gw)
    try:
        yield t
    finally:
        t.channel.close()
        code = gw.stop()
        print(f"\nfuzz outcomes: {dict(sorted(t.outcomes.items()))}; spans acknowledged: {t.accepted}")
        assert code == 0, gw.log_text()[-5000:]


# ---------------------------------------------------------------------------------------------
# The tests: one family of payloads each, then the health check.


@pytest.mark.parametrize("examples", BUDGETS)
def test_structured_requests_over_both_protocols(target: Target, examples: int) -> None:
    @_settings(examples)
    @given(request=structured_requests(), as_json=st.booleans(), encoding=st.sampled_from([None, "gzip", "zstd"]),
           gzip_grpc=st.booleans())
    def run(request: ExportTraceServiceRequest, as_json: bool, encoding: str | None, gzip_grpc: bool) -> None:
        body = request.SerializeToString()
        target.grpc_export(body, gzip_grpc)
        payload = encode_traces([request]) if as_json else body
        if encoding == "gzip":
            payload = gzip.compress(payload, compresslevel=1)
        elif encoding == "zstd":
            payload = zstandard.ZstdCompressor().compress(payload)
        target.post(payload, JSON if as_json else PROTOBUF, encoding)

    run()
    target.assert_healthy()


@pytest.mark.parametrize("examples", BUDGETS)
def test_deeply_nested_values_over_both_protocols(target: Target, examples: int) -> None:
    @_settings(examples, 0.2)
    @given(body=deep_requests(), as_json=st.booleans())
    def run(body: bytes, as_json: bool) -> None:
        target.grpc_export(body)
        request = _decode_proto(body)
        if as_json and request is not None:
            target.post(encode_traces([request]), JSON, None)
        else:
            target.post(body, PROTOBUF, None)

    run()
    target.assert_healthy()


@pytest.mark.parametrize("examples", BUDGETS)
def test_mutated_protobuf_over_both_protocols(target: Target, examples: int) -> None:
    @_settings(examples, 2.5)
    @given(body=mutated_protobuf, gzip_grpc=st.booleans())
    def run(body: bytes, gzip_grpc: bool) -> None:
        target.grpc_export(body, gzip_grpc)
        target.post(body, PROTOBUF, None)

    run()
    target.assert_healthy()


def _logs_and_metrics_seeds() -> list[tuple[Signal, bytes]]:
    from tests.test_signals import _every_point_kind
    [logs] = read_records(FIXTURES / "openai_v2.logs.otlp.bin")
    return [(LOGS, logs), (METRICS, _every_point_kind().SerializeToString())]


@pytest.mark.parametrize("examples", BUDGETS)
def test_mutated_logs_and_metrics_over_both_protocols(target: Target, examples: int) -> None:
    """The other two signals: mutated protobuf of the GenAI log fixture and of a metrics export
    with every point kind; 200 with the exact partial success when it still decodes, else 400 /
    INVALID_ARGUMENT; never anything else."""
    session, channel = target.session, target.channel
    assert channel is not None
    accepted = {LOGS.name: 0, METRICS.name: 0}

    @_settings(examples, 2.5)
    @given(case=st.sampled_from(_logs_and_metrics_seeds()).flatmap(
        lambda seed: mutated(seed[1]).map(lambda body: (seed[0], body))))
    def run(case: tuple[Signal, bytes]) -> None:
        signal, body = case
        try:
            request = signal.request.FromString(body)
        except DecodeError:
            request = None
        if request is not None:
            kept, rejected, _ = signal.remove_invalid(signal.request.FromString(body))
        r = session.post(f"{target.gw.http}{signal.http_path}", data=body, headers={"Content-Type": PROTOBUF}, timeout=TIMEOUT)
        target.outcomes[f"http {signal.name} {r.status_code}"] += 1
        if request is None:
            assert r.status_code == 400 and status_pb2.Status.FromString(r.content).message
        else:
            assert r.status_code == 200, (r.status_code, r.content[:200])
            partial = signal.response.FromString(r.content).partial_success
            assert getattr(partial, signal.rejected_field) == rejected
            accepted[signal.name] += kept
        try:
            answer = channel.unary_unary(signal.grpc_method)(body, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            target.outcomes[f"grpc {signal.name} {exc.code().name}"] += 1
            assert request is None and exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
            return
        target.outcomes[f"grpc {signal.name} OK"] += 1
        assert request is not None
        assert getattr(signal.response.FromString(answer).partial_success, signal.rejected_field) == rejected
        accepted[signal.name] += kept

    run()
    target.assert_healthy()
    assert target.metric("otelgate_receiver_accepted_log_records_total") == accepted["logs"]
    assert target.metric("otelgate_receiver_accepted_metric_points_total") == accepted["metrics"]


@pytest.mark.parametrize("examples", BUDGETS)
def test_mutated_json_over_http(target: Target, examples: int) -> None:
    @_settings(examples, 2.5)
    @given(body=mutated_json(), content_type=st.sampled_from([JSON, "application/json; charset=utf-8"]))
    def run(body: bytes, content_type: str) -> None:
        target.post(body, content_type, None)

    run()
    target.assert_healthy()


@pytest.mark.parametrize("examples", BUDGETS)
def test_compressed_bodies_mutated_and_mislabelled(target: Target, examples: int) -> None:
    @_settings(examples, 2.5)
    @given(case=compressed_bodies())
    def run(case: tuple[bytes, str, str | None]) -> None:
        target.post(*case)

    run()
    target.assert_healthy()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", None])
def test_empty_body_is_an_empty_request_whatever_its_encoding(target: Target, encoding: str | None) -> None:
    """Found by fuzzing: gzip and deflate answered 400 "truncated" where zstd (and none) answered 200."""
    for content_type in (PROTOBUF, JSON):
        r = target.session.post(f"{target.gw.http}/v1/traces", data=b"", timeout=TIMEOUT,
                                headers={"Content-Type": content_type, **({"Content-Encoding": encoding} if encoding else {})})
        assert r.status_code == (200 if content_type == PROTOBUF else 400), r.content  # "" is not JSON
        target.outcomes[f"http {r.status_code}"] += 1
    target.assert_healthy()


# ---------------------------------------------------------------------------------------------
# The processors as units: never raise on anything a receiver can decode.


DECODED_REQUESTS = st.one_of(
    structured_requests(),
    junked_fixtures(),
    mutated_protobuf.map(lambda b: _decodable(b, False)).filter(lambda r: r is not None),
    mutated_json().map(lambda b: _decodable(b, True)).filter(lambda r: r is not None),
)


@pytest.mark.parametrize("examples", BUDGETS)
def test_processors_never_raise_on_decodable_requests(examples: int) -> None:
    config = parse("sinks: {a: {type: file}}", environ={})  # normalize, price, llm_metrics: the defaults
    chain = build_processors(config, Metrics())
    normalizer = chain[0]
    assert isinstance(normalizer, normalize.Normalizer)

    @_settings(examples, 2)
    @given(request=DECODED_REQUESTS)
    def run(request: ExportTraceServiceRequest) -> None:
        spans = count_spans(request)
        batch = Batch(request, spans, RequestContext("fuzz"), raw=request.SerializeToString())
        for process in chain:
            batch = process(batch)
        assert normalizer.errors == 0, "the normalizer caught an internal error (see the log)"
        assert count_spans(batch.request) == spans
        once = batch.serialized()
        ExportTraceServiceRequest.FromString(once)  # still a valid request for every sink
        encode_traces([batch.request])
        again = Batch(ExportTraceServiceRequest.FromString(once), spans, RequestContext("fuzz"))
        for process in chain[:2]:  # normalize, price: a second otelgate on the way changes nothing
            again = process(again)
        assert again.request.SerializeToString() == once, "normalizing and pricing twice changed the spans"

    try:
        run()
    finally:
        for process in chain:
            close = getattr(process, "close", None)
            if close is not None:
                close()
