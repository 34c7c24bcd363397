"""The Langfuse sink's mapping (`prepare`), its splitting (`split`), and the strict Langfuse test server.

The six fixtures go through the real LLM processors in process, then `prepare`; each LLM call of
the ground truth (`<fixture>.expected.json`, calls with a span) must carry the Langfuse attributes
with the canonical values. Usage is in Langfuse's disjoint buckets (see gateway.sinks.langfuse.encode):
`input + input_cached_tokens + input_cache_creation` is the canonical input,
`output + output_reasoning_tokens` the canonical output.
"""

from __future__ import annotations

import base64
import gzip
import math
from collections import Counter
from typing import Any

import aiohttp
import orjson
import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.batch import Batch, RequestContext, count_spans
from gateway.config import parse
from gateway.pipeline import build_processors
from gateway.sinks.langfuse.encode import prepare, split
from gateway.telemetry import Metrics
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records
from tests.langfuse_server import CLOUD_MAX_BODY_BYTES, PATH, LangfuseServer
from tests.test_llm_fixtures import _expected_calls

USER = "user-7f3a9c"  # fixtures README, "User and session"
SESSION = "sess-20250601-0001"


def _plain(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _attrs(span: Span) -> dict[str, Any]:
    return {kv.key: _plain(kv.value) for kv in span.attributes}


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _processed(name: str) -> list[ExportTraceServiceRequest]:
    """The fixture's requests after the default LLM processors (normalize, price, metrics)."""
    chain = build_processors(parse("sinks: {a: {type: file}}", environ={}), Metrics())
    out = []
    for body in read_records(FIXTURES / f"{name}.otlp.bin"):
        request = ExportTraceServiceRequest.FromString(body)
        batch = Batch(request, count_spans(request), RequestContext("test"), raw=body)
        for process in chain:
            batch = process(batch)
        out.append(batch.request)
    return out


@pytest.fixture(scope="module")
def processed() -> dict[str, list[ExportTraceServiceRequest]]:
    return {name: _processed(name) for name in TRACE_FIXTURES}


# ---------------------------------------------------------------------------------------------
# prepare


@pytest.mark.parametrize("name", TRACE_FIXTURES)
def test_every_llm_call_gets_langfuse_attributes(processed, name: str) -> None:
    originals = processed[name]
    before = [r.SerializeToString() for r in originals]
    out = prepare(originals, environment=None, release=None)
    assert [r.SerializeToString() for r in originals] == before, "prepare changed the shared requests"
    assert len(_spans(out)) == sum(len(_spans(r)) for r in originals)

    by_id = {s.span_id.hex(): s for s in _spans(out)}
    truth = {c["span"]["span_id"]: c for c in orjson.loads((FIXTURES / f"{name}.expected.json").read_bytes())["calls"]
             if c.get("span")}
    expected = _expected_calls(name)
    assert expected
    for exp in expected:
        span = by_id[exp["span_id"]]
        a = _attrs(span)
        where = f"{name} {span.name} {exp['span_id']}"
        api = truth[exp["span_id"]]["api"]
        assert a["langfuse.observation.type"] == ("embedding" if api == "openai.embeddings" else "generation"), where
        assert a["langfuse.observation.model.name"] in exp["models"], where

        tokens = exp["tokens"]
        if tokens.get("input") is None and tokens.get("output") is None:
            # A failed call: nothing to report; what the SDK said (if anything) stays as it was.
            orig = _attrs(next(s for r in originals for s in _spans(r) if s.span_id == span.span_id))
            assert a.get("langfuse.observation.usage_details") == orig.get("langfuse.observation.usage_details"), where
        else:
            usage = orjson.loads(a["langfuse.observation.usage_details"])
            assert all(isinstance(v, int) and v >= 0 for v in usage.values()), where
            assert set(usage) <= {"input", "output", "total", "input_cached_tokens", "input_cache_creation",
                                  "output_reasoning_tokens"}, where
            inp = usage["input"] + usage.get("input_cached_tokens", 0) + usage.get("input_cache_creation", 0)
            assert inp == (tokens.get("input") or 0), where
            assert usage.get("input_cached_tokens", 0) == (tokens.get("cache_read") or 0), where
            assert usage.get("input_cache_creation", 0) == (tokens.get("cache_write") or 0), where
            out_tokens = usage.get("output", 0) + usage.get("output_reasoning_tokens", 0)
            assert out_tokens == (tokens.get("output") or 0), where
            assert usage.get("output_reasoning_tokens", 0) == (tokens.get("reasoning") or 0), where
            assert usage["total"] == (tokens.get("input") or 0) + (tokens.get("output") or 0), where

        if exp.get("cost") is None:
            assert "gen_ai.usage.cost" not in a, where
        else:
            cost = orjson.loads(a["langfuse.observation.cost_details"])
            assert math.isclose(cost["total"], exp["cost"], rel_tol=1e-6, abs_tol=1e-12), where
            assert math.isclose(cost["total"], a["gen_ai.usage.cost"], rel_tol=1e-12), where
            if "input" in cost:
                assert math.isclose(cost["input"] + cost["output"], cost["total"], rel_tol=1e-9), where

        # Every call of these fixtures runs inside a trace whose user and session are known.
        assert a["langfuse.user.id"] == USER, where
        assert a["langfuse.session.id"] == SESSION, where
        assert a["langfuse.environment"] == "capture", where


@pytest.mark.parametrize("name", TRACE_FIXTURES)
def test_user_session_environment_release_on_every_span(processed, name: str) -> None:
    out = prepare(processed[name], environment=None, release=None)
    release = "capture-0.1.0" if name == "langfuse" else "0.1.0"  # langfuse.release, else service.version
    for span in _spans(out):
        a = _attrs(span)
        assert (a["langfuse.user.id"], a["langfuse.session.id"]) == (USER, SESSION), span.name
        assert a["langfuse.environment"] == "capture" and a["langfuse.release"] == release, span.name
        assert not span.attributes or len({kv.key for kv in span.attributes}) == len(span.attributes), \
            f"{span.name}: a key written twice"


def test_config_environment_and_release_do_not_override_the_app(processed) -> None:
    lf = prepare(processed["langfuse"], environment="prod", release="v9")
    assert {(_attrs(s)["langfuse.environment"], _attrs(s)["langfuse.release"]) for s in _spans(lf)} == \
        {("capture", "capture-0.1.0")}  # the Langfuse SDK said so
    other = prepare(processed["openllmetry_openai"], environment="prod", release="v9")
    assert {(_attrs(s)["langfuse.environment"], _attrs(s)["langfuse.release"]) for s in _spans(other)} == \
        {("prod", "v9")}


def test_sdk_attributes_are_kept_but_usage_and_cost_are_canonical(processed) -> None:
    originals = {s.span_id.hex(): _attrs(s) for r in processed["langfuse"] for s in _spans(r)}
    out = prepare(processed["langfuse"], environment=None, release=None)
    call = next(s for s in _spans(out) if s.span_id.hex() == "4a3f854950c11f8f")  # gpt-4o-mini, OpenAI shape
    a, orig = _attrs(call), originals["4a3f854950c11f8f"]
    assert "prompt_tokens" in orig["langfuse.observation.usage_details"]
    assert orjson.loads(a["langfuse.observation.usage_details"]) == {
        "input": 25, "input_cached_tokens": 8, "output": 29, "total": 62}
    for key in ("langfuse.observation.type", "langfuse.observation.model.name", "user.id", "session.id",
                "langfuse.observation.input", "langfuse.observation.model.parameters"):
        assert a[key] == orig[key], key


def test_odd_attribute_values_never_raise() -> None:
    def kv(key: str, **value: Any) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(**value))

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([kv("service.version", int_value=3), kv("deployment.environment.name",
                                                                          string_value="Not Valid!")])
    span = rs.scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="odd")
    span.attributes.extend([
        kv("otelgate.llm.call", bool_value=True), kv("gen_ai.operation.name", int_value=5),
        kv("gen_ai.usage.input_tokens", string_value="12"), kv("gen_ai.usage.output_tokens", double_value=float("nan")),
        kv("gen_ai.usage.cache_read.input_tokens", string_value="many"), kv("gen_ai.usage.cost", string_value="x"),
        kv("gen_ai.response.model", bool_value=True), kv("user.id", double_value=1.5),
        kv("session.id", int_value=42), kv("langfuse.observation.usage_details", int_value=1),
    ])
    span2 = rs.scope_spans[0].spans.add(trace_id=b"", span_id=b"", name="no ids")
    span2.attributes.append(kv("otelgate.llm.call", string_value="true"))  # not a bool: not a call
    out = prepare([request], environment=None, release=None)
    a = _attrs(out.resource_spans[0].scope_spans[0].spans[0])
    assert a["langfuse.observation.type"] == "generation"
    assert orjson.loads(a["langfuse.observation.usage_details"]) == {"input": 12, "total": 12}
    assert "langfuse.observation.cost_details" not in a and "langfuse.observation.model.name" not in a
    assert a["langfuse.session.id"] == "42" and "langfuse.user.id" not in a
    assert a["langfuse.release"] == "3" and "langfuse.environment" not in a  # invalid for Langfuse: not sent
    assert "langfuse.observation.type" not in _attrs(out.resource_spans[0].scope_spans[0].spans[1])


# ---------------------------------------------------------------------------------------------
# split


def _check_pieces(request: ExportTraceServiceRequest, pieces: list[bytes], max_bytes: int) -> None:
    expected = Counter((s.trace_id, s.span_id, s.SerializeToString()) for s in _spans(request))
    got: Counter = Counter()
    trace_piece: dict[bytes, int] = {}
    for i, body in enumerate(pieces):
        piece = ExportTraceServiceRequest.FromString(body)
        assert piece.SerializeToString() == body  # canonical encoding
        traces = {s.trace_id for s in _spans(piece)}
        assert len(body) <= max_bytes or len(traces) == 1, f"piece {i}: {len(body)} > {max_bytes}"
        for t in traces:
            assert trace_piece.setdefault(t, i) == i, "a trace split over two pieces"
        for rs in piece.resource_spans:
            assert rs.scope_spans and all(ss.spans for ss in rs.scope_spans)
            assert any(rs.resource == orig.resource for orig in request.resource_spans)
        got.update((s.trace_id, s.span_id, s.SerializeToString()) for s in _spans(piece))
    assert got == expected, "every span exactly once, unchanged"


def _many_traces(n_traces: int = 60, spans_per_trace: int = 6) -> ExportTraceServiceRequest:
    """Traces spread over two resources and two scopes each, spans interleaved."""
    request = ExportTraceServiceRequest()
    for r in range(2):
        rs = request.resource_spans.add(schema_url=f"https://schema/{r}")
        rs.resource.attributes.add(key="service.name", value=AnyValue(string_value=f"svc-{r}"))
        for sc in range(2):
            ss = rs.scope_spans.add(schema_url="https://scope")
            ss.scope.name = f"scope-{sc}"
    for t in range(n_traces):
        trace_id = t.to_bytes(16, "big")
        for i in range(spans_per_trace):
            ss = request.resource_spans[i % 2].scope_spans[(i // 2) % 2]
            span = ss.spans.add(trace_id=trace_id, span_id=(t * 100 + i + 1).to_bytes(8, "big"), name=f"s{i}",
                                parent_span_id=b"" if i == 0 else (t * 100 + 1).to_bytes(8, "big"))
            span.attributes.add(key="payload", value=AnyValue(string_value="x" * (50 + 7 * i)))
    return request


@pytest.mark.parametrize("max_bytes", [600, 1500, 4000, 20000, 10**9])
def test_split_many_traces(max_bytes: int) -> None:
    request = _many_traces()
    pieces = split(request, max_bytes)
    _check_pieces(request, pieces, max_bytes)
    if max_bytes >= request.ByteSize():
        assert pieces == [request.SerializeToString()]
    elif max_bytes >= 4000:
        assert len(pieces) > 1 and all(len(p) <= max_bytes for p in pieces)
        # packed reasonably: not one trace per piece when several fit
        assert len(pieces) < 60


def test_split_all_fixtures_together(processed) -> None:
    request = prepare([r for name in TRACE_FIXTURES for r in processed[name]], environment=None, release=None)
    sizes = sorted(len(b) for b in split(request, 10**9))
    assert len(sizes) == 1
    for max_bytes in (1000, 30000, 60000, request.ByteSize() - 1):
        pieces = split(request, max_bytes)
        _check_pieces(request, pieces, max_bytes)
    # A trace over the limit goes alone, whole, with its root.
    pieces = split(request, 1000)
    assert len(pieces) == len({s.trace_id for s in _spans(request)})
    for body in pieces:
        spans = _spans(ExportTraceServiceRequest.FromString(body))
        assert sum(1 for s in spans if not s.parent_span_id) >= 1


# ---------------------------------------------------------------------------------------------
# the test server itself


def _body(name: str = "openllmetry_openai") -> bytes:
    return read_records(FIXTURES / f"{name}.otlp.bin")[0]


async def _post(lf: LangfuseServer, body: bytes, *, path: str = PATH, method: str = "POST",
                headers: dict[str, str] | None = None, auth: bool = True) -> tuple[int, Any, Any]:
    h = {"Content-Type": "application/x-protobuf"}
    if auth:
        h["Authorization"] = lf.auth_header()
    h.update(headers or {})
    async with aiohttp.ClientSession() as session:
        async with session.request(method, lf.base_url + path, data=body, headers=h) as r:
            text = await r.read()
            return r.status, (orjson.loads(text) if text else None), r.headers


async def test_server_accepts_protobuf_gzip_and_json() -> None:
    async with LangfuseServer() as lf:
        status, body, _ = await _post(lf, gzip.compress(_body()), headers={"Content-Encoding": "gzip"})
        assert status == 200 and body == {}
        status, _, _ = await _post(lf, _body(), headers={"Content-Type": "application/x-protobuf; charset=utf-8"})
        assert status == 200
        json_body = orjson.dumps(orjson.loads((FIXTURES / "openllmetry_openai.json").read_bytes())["requests"][0]["body"])
        status, _, _ = await _post(lf, json_body, headers={"Content-Type": "application/json"})
        assert status == 200
        assert len(lf.received) == 3
        ids = [sorted(s.span_id for s in r.spans()) for r in lf.received]
        assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 9
        assert lf.received[0].headers["content-encoding"] == "gzip"
        assert lf.received[0].body_bytes < len(_body())


async def test_server_auth() -> None:
    async with LangfuseServer(keys={"pk-lf-a": "sk-lf-a"}) as lf:
        for headers, auth in (({}, False),
                              ({"Authorization": "Bearer sk-lf-a"}, False),
                              ({"Authorization": "Basic !!notbase64"}, False),
                              ({"Authorization": lf.auth_header("pk-lf-a", "sk-lf-wrong")}, False),
                              ({"Authorization": lf.auth_header("pk-lf-other", "sk-lf-a")}, False),
                              ({"Authorization": "Basic " + base64.b64encode(b"pk-lf-a").decode()}, False)):
            status, body, _ = await _post(lf, _body(), headers=headers, auth=auth)
            assert status == 401 and body["message"], headers
        assert (await _post(lf, _body()))[0] == 200
        assert len(lf.received) == 1


async def test_server_path_method_content_type_and_parse_errors() -> None:
    async with LangfuseServer() as lf:
        assert (await _post(lf, _body(), path="/v1/traces"))[0] == 404
        assert (await _post(lf, _body(), path="/api/public/otel/v1/logs"))[0] == 404
        assert (await _post(lf, b"", method="GET"))[0] == 405
        status, body, _ = await _post(lf, _body(), headers={"Content-Type": "application/octet-stream"})
        assert (status, body) == (400, {"error": "Invalid content type"})
        assert (await _post(lf, _body(), headers={"Content-Encoding": "gzip"}))[0] == 400  # not gzip
        assert (await _post(lf, b"\xff\xff\xff"))[0] == 400
        assert (await _post(lf, _body(), headers={"x-langfuse-ingestion-version": "5"}))[0] == 400
        assert (await _post(lf, _body(), headers={"x-langfuse-ingestion-version": "4"}))[0] == 200
        assert len(lf.received) == 1


@pytest.mark.parametrize("trace_id, span_id", [(b"", b"\x01" * 8), (b"\x01" * 16, b""), (b"\x01", b"\x01" * 8),
                                                (b"\x01" * 16, b"\x01" * 16)])
async def test_server_rejects_the_whole_export_on_one_bad_id(trace_id: bytes, span_id: bytes) -> None:
    request = ExportTraceServiceRequest.FromString(_body())
    request.resource_spans[0].scope_spans[0].spans.add(trace_id=trace_id, span_id=span_id, name="bad")
    async with LangfuseServer() as lf:
        status, body, _ = await _post(lf, request.SerializeToString())
        assert status == 400 and "entire export was rejected" in body["error"]
        assert lf.received == []


async def test_server_body_limit() -> None:
    assert CLOUD_MAX_BODY_BYTES == 5 * 1024 * 1024
    body = _body()
    async with LangfuseServer(max_body_bytes=len(body) - 1) as lf:
        assert (await _post(lf, body))[0] == 413
        assert (await _post(lf, gzip.compress(body), headers={"Content-Encoding": "gzip"}))[0] == 200
        assert lf.received and lf.rejected[0][0] == 413


async def test_server_scripted_429_and_503() -> None:
    async with LangfuseServer() as lf:
        lf.fail_next(2, status=429, retry_after=3)
        for _ in range(2):
            status, body, headers = await _post(lf, _body())
            assert status == 429 and headers["Retry-After"] == "3" and body["message"]
        assert (await _post(lf, _body(), auth=False))[0] == 401  # auth first, as Langfuse does
        assert (await _post(lf, _body()))[0] == 200
        lf.fail_next(1, status=503, retry_after=None)
        status, _, headers = await _post(lf, _body())
        assert status == 503 and "Retry-After" not in headers
        assert (await _post(lf, _body()))[0] == 200
        assert len(lf.received) == 2


def test_server_in_a_thread_from_sync_code() -> None:
    with LangfuseServer().run_in_thread() as lf:
        r = requests.post(lf.url, data=_body(), timeout=5,
                          headers={"Content-Type": "application/x-protobuf", "Authorization": lf.auth_header()})
        assert r.status_code == 200 and r.json() == {}
        assert len(lf.spans()) == 9


async def test_prepared_and_split_exports_are_accepted(processed) -> None:
    """prepare -> split -> gzip POST: Langfuse gets every span once, with its attributes."""
    request = prepare([r for name in TRACE_FIXTURES for r in processed[name]], environment=None, release=None)
    async with LangfuseServer(max_body_bytes=60000) as lf:
        for body in split(request, 60000):
            status, _, _ = await _post(lf, gzip.compress(body), headers={"Content-Encoding": "gzip"})
            assert status == 200
        assert sorted(s.span_id for s in lf.spans()) == sorted(s.span_id for s in _spans(request))
        calls = [s for s in lf.spans() if _attrs(s).get("otelgate.llm.call")]
        assert calls and all("langfuse.observation.type" in _attrs(s) for s in calls)
