"""`Batch.add_attribute`: attributes added to untouched spans are kept as bytes, appended to the
spans' received bytes by `serialized()`, and put into the message when it is read. Whatever path
a batch takes, what comes out must be what adding the attributes to the message gives."""

from __future__ import annotations

import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.batch import Batch, RequestContext, count_spans
from gateway.otlp.attributes import add_to_message, encoded
from gateway.otlp.wire import span_ranges
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records

_BODIES = [body for name in TRACE_FIXTURES for body in read_records(FIXTURES / f"{name}.otlp.bin")]

_VALUES = st.one_of(st.text(max_size=80), st.booleans(), st.integers(-2**63, 2**63 - 1),
                    st.floats(allow_nan=False), st.text(min_size=70, max_size=300))
_KEYS = st.one_of(st.sampled_from(["otelgate.cost.total_usd", "gen_ai.usage.input_tokens", "user.id"]),
                  st.text(max_size=140))


@given(_KEYS, _VALUES)
def test_encoded_is_upb_encoding_of_the_added_attribute(key: str, value: Any) -> None:
    span = Span()
    add_to_message(span, key, value)
    assert encoded(key, value) == span.SerializeToString()


def test_subclasses_of_scalars_are_written_as_their_kind() -> None:
    import enum

    class Level(enum.IntEnum):
        HIGH = 3

    span = Span()
    add_to_message(span, "k", Level.HIGH)
    assert span.attributes[0].value.int_value == 3
    assert encoded("k", Level.HIGH) == span.SerializeToString()


def _where(request: ExportTraceServiceRequest) -> list[tuple[int, int, int]]:
    return [(ri, si, ki) for ri, rs in enumerate(request.resource_spans) for si, ss in enumerate(rs.scope_spans)
            for ki in range(len(ss.spans))]


def _span(request: ExportTraceServiceRequest, where: tuple[int, int, int]) -> Span:
    ri, si, ki = where
    return request.resource_spans[ri].scope_spans[si].spans[ki]


def _edit(batch: Batch, request: ExportTraceServiceRequest, plan: list[tuple[int, str, Any, bool]],
          via_batch: bool) -> None:
    """Apply `plan` (span number, key, value, edit in place too) through the batch, or to the message."""
    where = _where(request)
    for n, key, value, in_place in plan:
        w = where[n % len(where)]
        span = _span(request, w)
        if via_batch:
            batch.add_attribute(w, span, key, value)
        else:
            add_to_message(span, key, value)
        if in_place:
            span.name = span.name + "!"  # an edit of a field the span has: announced with touch
            if via_batch:
                batch.touch(*w)


_PLANS = st.lists(st.tuples(st.integers(0, 500), _KEYS, _VALUES, st.just(False)),
                  max_size=12)
_PLANS_WITH_TOUCHES = st.lists(st.tuples(st.integers(0, 500), _KEYS, _VALUES, st.booleans()), max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(range(len(_BODIES))), _PLANS_WITH_TOUCHES, st.booleans())
def test_serialized_parses_as_the_message_edited_directly(i: int, plan: list[Any], read_first: bool) -> None:
    body = _BODIES[i]
    request = ExportTraceServiceRequest.FromString(body)
    expected = ExportTraceServiceRequest.FromString(body)
    batch = Batch(request, count_spans(request), RequestContext("test"), raw=body)
    _edit(batch, request, plan, via_batch=True)
    _edit(Batch(expected, 0, RequestContext("test")), expected, plan, via_batch=False)
    if plan:
        assert batch.raw is None  # the received bytes no longer equal the request
    if read_first:
        assert batch.request == expected  # read before any serialization: every attribute in the message
    out = batch.serialized()
    assert ExportTraceServiceRequest.FromString(out) == expected
    assert batch.serialized() == out and batch.raw == out  # kept: a sink may ask twice
    assert batch.request == expected  # read after: the message gets what the bytes already hold
    assert ExportTraceServiceRequest.FromString(batch.serialized()) == expected


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(range(len(_BODIES))), _PLANS)
def test_untouched_spans_keep_their_bytes_and_added_ones_only_grow(i: int, plan: list[Any]) -> None:
    body = _BODIES[i]
    request = ExportTraceServiceRequest.FromString(body)
    batch = Batch(request, count_spans(request), RequestContext("test"), raw=body)
    _edit(batch, request, plan, via_batch=True)
    added = set(batch._appends or ())
    out = batch.serialized()
    if not added:
        assert out == body
        return
    assert batch._owed  # spliced, not serialized whole: the message never paid for the attributes
    for (*w, start, end), (_, _, _, start2, end2) in zip(span_ranges(body), span_ranges(out), strict=True):
        if tuple(w) in added:
            assert out[start2:end2].startswith(body[start:end])
        else:
            assert out[start2:end2] == body[start:end]


def test_touch_after_added_attributes_keeps_their_order() -> None:
    body = _BODIES[0]
    request = ExportTraceServiceRequest.FromString(body)
    batch = Batch(request, count_spans(request), RequestContext("test"), raw=body)
    w = _where(request)[0]
    span = _span(request, w)
    before = len(span.attributes)
    batch.add_attribute(w, span, "first", 1)
    assert len(span.attributes) == before  # not in the message yet
    batch.touch(*w)  # an in-place edit follows: the message gets the pending attribute now
    assert [kv.key for kv in span.attributes][before:] == ["first"]
    batch.add_attribute(w, span, "second", 2)  # the span is touched: straight into the message
    assert [kv.key for kv in span.attributes][before:] == ["first", "second"]
    assert batch.touched == {w}
    assert ExportTraceServiceRequest.FromString(batch.serialized()) == request


def test_without_received_bytes_attributes_go_straight_into_the_message() -> None:
    request = ExportTraceServiceRequest.FromString(_BODIES[0])
    batch = Batch(request, count_spans(request), RequestContext("test"))  # e.g. OTLP/JSON
    w = _where(request)[0]
    batch.add_attribute(w, _span(request, w), "k", "v")
    assert _span(request, w).attributes[-1].key == "k"
    assert batch._appends is None
    unknown = Batch(request, 1, RequestContext("test"), raw=_BODIES[0])
    unknown.add_attribute(None, _span(request, w), "k2", "v")  # a call without the normalizer's index
    assert unknown.raw is None and unknown.received is None  # the whole request is serialized
    assert _span(request, w).attributes[-1].key == "k2"


def test_reads_from_sink_threads_add_each_attribute_once() -> None:
    """Sinks read and serialize a shared batch from their threads at once."""
    for _ in range(30):
        body = _BODIES[1]
        request = ExportTraceServiceRequest.FromString(body)
        batch = Batch(request, count_spans(request), RequestContext("test"), raw=body)
        where = _where(request)
        for n, w in enumerate(where):
            batch.add_attribute(w, _span(request, w), "otelgate.n", n)
        start = threading.Barrier(4)
        outs: list[bytes] = []

        def serialize() -> None:
            start.wait()
            outs.append(batch.serialized())

        def read() -> None:
            start.wait()
            sum(len(ss.spans) for rs in batch.request.resource_spans for ss in rs.scope_spans)

        threads = [threading.Thread(target=f) for f in (serialize, read, serialize, read)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for n, w in enumerate(where):
            values = [kv.value.int_value for kv in _span(request, w).attributes if kv.key == "otelgate.n"]
            assert values == [n]
        assert len(set(outs)) == 1 or all(ExportTraceServiceRequest.FromString(o) == request for o in outs)
        assert ExportTraceServiceRequest.FromString(outs[0]) == request
