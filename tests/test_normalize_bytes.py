"""The normalizer decides from the received bytes which spans to examine: that must give exactly what
the attribute loop over every span gives (same request out, same calls), on every fixture and on
generated requests that mix LLM spans, plain spans, and LLM keys in places that do not count
(values, events, resources)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.batch import Batch, RequestContext, count_spans
from gateway.otlp.wire import span_ranges
from gateway.processors import normalize
from gateway.usage.attribution import AttributionConfig, span_keys
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records

PLAIN = normalize.Normalizer(normalize.Config())
DROP = normalize.Normalizer(normalize.Config(keep_originals=False))
ATTRIBUTED = normalize.Normalizer(normalize.Config(), span_keys(AttributionConfig.model_validate(
    {"app": ["app.name"], "user": ["enduser.id"]})))

_FIXTURE_BODIES = [body for name in TRACE_FIXTURES for body in read_records(FIXTURES / f"{name}.otlp.bin")]
_FIXTURE_SPANS: list[tuple[str, Span]] = [
    (ss.scope.name, span) for body in _FIXTURE_BODIES for rs in ExportTraceServiceRequest.FromString(body).resource_spans
    for ss in rs.scope_spans for span in ss.spans]
_LLM_KEYS = sorted(k for k, bits in normalize._KEY_BITS.items() if bits & normalize._B_LLM)
_OTHER_KEYS = ["http.request.method", "url.full", "server.address", "db.query.text", "app.name", "enduser.id"]


def _both(process: Any, body: bytes) -> None:
    """Normalize `body` with the bytes path and with the loop over every span; compare."""
    by_bytes = ExportTraceServiceRequest.FromString(body)
    by_loop = ExportTraceServiceRequest.FromString(body)
    process._dense = 0.0  # scan the bytes (dense traffic would switch this normalizer to the loop)
    a = process(Batch(by_bytes, count_spans(by_bytes), RequestContext("test"), raw=body))
    b = process(Batch(by_loop, count_spans(by_loop), RequestContext("test")))  # no bytes: every span
    assert by_bytes == by_loop
    assert by_bytes.SerializeToString() == by_loop.SerializeToString()
    assert a.llm_calls == b.llm_calls  # dataclass equality: every field, the spans by value
    assert [c.where for c in a.llm_calls] == [c.where for c in b.llm_calls]
    for c in a.llm_calls:
        ri, si, ki = c.where
        assert by_bytes.resource_spans[ri].scope_spans[si].spans[ki] is not None
        assert c.span == by_bytes.resource_spans[ri].scope_spans[si].spans[ki]
    serialized = a.serialized()  # the received bytes with the touched spans spliced in
    assert serialized == by_bytes.SerializeToString()  # the fixtures and generated requests are canonical
    assert a.touched <= {w for w in _all_where(by_bytes)}


def _all_where(request: ExportTraceServiceRequest) -> list[tuple[int, int, int]]:
    return [(ri, si, ki) for ri, rs in enumerate(request.resource_spans) for si, ss in enumerate(rs.scope_spans)
            for ki in range(len(ss.spans))]


@pytest.mark.parametrize("process", [PLAIN, DROP, ATTRIBUTED], ids=["keep", "drop", "attribution"])
def test_every_fixture(process: Any) -> None:
    for body in _FIXTURE_BODIES:
        _both(process, body)
        again = ExportTraceServiceRequest.FromString(body)
        process(Batch(again, count_spans(again), RequestContext("test")))
        _both(process, again.SerializeToString())  # an already normalized request: nothing written


_VALUES = st.one_of(st.integers(-5, 10**6), st.sampled_from(["openai", "gpt-4o", "anthropic", "chat", "LLM", ""]),
                    st.sampled_from(_LLM_KEYS), st.text(max_size=12))


@st.composite
def _attributes(draw: Any, keys: list[str]) -> list[tuple[str, Any]]:
    return draw(st.lists(st.tuples(st.sampled_from(keys), _VALUES), max_size=6))


def _put(attributes: Any, pairs: list[tuple[str, Any]]) -> None:
    for key, value in pairs:
        kv = attributes.add(key=key)
        if isinstance(value, int):
            kv.value.int_value = value
        else:
            kv.value.string_value = value


@st.composite
def _requests(draw: Any) -> bytes:
    request = ExportTraceServiceRequest()
    trace = os.urandom(16)
    for _ in range(draw(st.integers(1, 3))):
        rs = request.resource_spans.add()
        _put(rs.resource.attributes, draw(_attributes(_LLM_KEYS[:20] + ["service.name"])))  # never make a span LLM
        for _ in range(draw(st.integers(1, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(st.sampled_from(["", "openai", "ai", "logfire.openai", "x"]))
            for _ in range(draw(st.integers(0, 5))):
                kind = draw(st.integers(0, 3))
                if kind == 0:  # a real LLM span
                    scope, fixture = draw(st.sampled_from(_FIXTURE_SPANS))
                    span = ss.spans.add()
                    span.CopyFrom(fixture)
                    if draw(st.booleans()):
                        span.trace_id = trace  # several calls of one trace: wrappers, duplicates
                    continue
                span = ss.spans.add(trace_id=trace, span_id=os.urandom(8), name=draw(st.sampled_from(_LLM_KEYS)),
                                    start_time_unix_nano=1, end_time_unix_nano=draw(st.sampled_from([1, 5])))
                if kind == 1:  # a plain span whose values (and name) hold LLM keys
                    _put(span.attributes, [(k, draw(st.sampled_from(_LLM_KEYS))) for k in _OTHER_KEYS[:3]])
                    _put(span.events.add(name="e").attributes, draw(_attributes(_LLM_KEYS)))
                else:  # LLM keys as attributes, any values
                    _put(span.attributes, draw(_attributes(_LLM_KEYS + _OTHER_KEYS)))
    return request.SerializeToString()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_requests(), st.sampled_from([PLAIN, DROP, ATTRIBUTED]))
def test_generated_requests(body: bytes, process: Any) -> None:
    _both(process, body)


def test_a_request_without_keys_costs_one_scan() -> None:
    """No key anywhere: nothing examined, nothing written, the received bytes go out as they came."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(name="GET /", span_id=b"1" * 8)
    span.attributes.add(key="http.request.method").value.string_value = "GET"
    body = request.SerializeToString()
    batch = PLAIN(Batch(request, 1, RequestContext("test"), raw=body))
    assert batch.llm_calls == [] and batch.raw == body and batch.serialized() is body


def _llm_spans(process: Any, request: ExportTraceServiceRequest) -> set[tuple[int, int, int]]:
    """The spans the loop over every span examines: those with an attribute key that makes a span LLM-ish."""
    bits = process._key_bits
    return {w for w in _all_where(request) if any(
        bits.get(kv.key, 0) & normalize._B_LLM
        for kv in request.resource_spans[w[0]].scope_spans[w[1]].spans[w[2]].attributes)}


def _candidates(process: Any, body: bytes) -> set[tuple[int, int, int]]:
    request = ExportTraceServiceRequest.FromString(body)
    batch = Batch(request, count_spans(request), RequestContext("test"), raw=body)
    first = process._gate(normalize._UNANCHORED, body, 0, len(body))[0][0]
    ranges = span_ranges(body)
    assert ranges is not None
    return set(process._candidates(batch, body, ranges, first))


@pytest.mark.parametrize("key", sorted(k for k, bits in ATTRIBUTED._key_bits.items() if bits & normalize._B_LLM))
def test_each_key_alone_is_found(key: str) -> None:
    """A span whose only LLM key is `key` (among plain spans, after a resource that holds it too) is examined."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key=key).value.string_value = "x"
    spans = rs.scope_spans.add().spans
    spans.add(name="a").attributes.add(key="url.full").value.string_value = "y"
    spans.add(name="b").attributes.add(key=key).value.int_value = 1
    spans.add(name="c")
    body = request.SerializeToString()
    assert _candidates(ATTRIBUTED, body) >= {(0, 0, 1)}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_requests())
def test_generated_candidates_cover_the_llm_spans(body: bytes) -> None:
    request = ExportTraceServiceRequest.FromString(body)
    assert _candidates(ATTRIBUTED, body) >= _llm_spans(ATTRIBUTED, request)


def test_dense_traffic_switches_to_the_loop_and_back() -> None:
    """Requests of mostly LLM spans make the scan a cost: the normalizer then loops over every span,
    probing one request in eight with the scan, and goes back to scanning when plain traffic comes."""
    process = normalize.Normalizer(normalize.Config())
    llm = max(_FIXTURE_BODIES, key=len)
    for _ in range(8):
        request = ExportTraceServiceRequest.FromString(llm)
        process(Batch(request, count_spans(request), RequestContext("test"), raw=llm))
    assert process._dense > normalize._DENSE
    plain = ExportTraceServiceRequest()
    plain.resource_spans.add().scope_spans.add().spans.add(name="GET /")
    body = plain.SerializeToString()
    for _ in range(40):
        process(Batch(ExportTraceServiceRequest.FromString(body), 1, RequestContext("test"), raw=body))
    assert process._dense < normalize._DENSE
