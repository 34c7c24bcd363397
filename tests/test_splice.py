"""The byte-level editor: a batch whose processors touched a few spans is written as the received
bytes with those spans re-encoded, and that must be the edited request (byte for byte whenever the
received bytes were upb's canonical encoding)."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import Batch, RequestContext, count_spans
from gateway.otlp.wire import span_ranges, splice
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records


def _where(request: ExportTraceServiceRequest) -> list[tuple[int, int, int]]:
    return [(ri, si, ki) for ri, rs in enumerate(request.resource_spans) for si, ss in enumerate(rs.scope_spans)
            for ki in range(len(ss.spans))]


def _edit(request: ExportTraceServiceRequest, where: tuple[int, int, int], size: int, kind: int) -> None:
    """One in-place span edit of the kinds processors make: add an attribute (of any size, so
    length prefixes grow by a byte or more), change one, remove them all, or set a field."""
    ri, si, ki = where
    span = request.resource_spans[ri].scope_spans[si].spans[ki]
    if kind == 0:
        span.attributes.add(key="otelgate.test").value.string_value = "v" * size
    elif kind == 1 and len(span.attributes):
        span.attributes[0].value.string_value = "w" * size
    elif kind == 2:
        del span.attributes[:]
    else:
        span.trace_state = "ot=th:" + "0" * (size % 14)


def _check(body: bytes, edits: list[tuple[tuple[int, int, int], int, int]]) -> None:
    request = ExportTraceServiceRequest.FromString(body)
    batch = Batch(request, count_spans(request), RequestContext("test"), raw=body)
    for where, size, kind in edits:
        _edit(request, where, size, kind)
        batch.touch(*where)
    assert batch.raw is None if edits else batch.raw == body  # the bytes no longer equal the request
    assert batch.received == body
    spans = {where: request.resource_spans[where[0]].scope_spans[where[1]].spans[where[2]].SerializeToString()
             for where, _, _ in edits}
    out = splice(body, spans)
    assert out is not None
    assert ExportTraceServiceRequest.FromString(out) == request
    canonical = ExportTraceServiceRequest.FromString(body).SerializeToString() == body
    if canonical:
        assert out == request.SerializeToString()
    serialized = batch.serialized()  # spliced, or (most spans touched) serialized whole
    assert ExportTraceServiceRequest.FromString(serialized) == request
    if canonical:
        assert serialized == request.SerializeToString()
    # Untouched spans keep their received bytes exactly.
    touched = {where for where, _, _ in edits}
    received = {r[:3]: body[r[3]:r[4]] for r in span_ranges(body) or []}
    for ri, si, ki, start, end in span_ranges(out) or []:
        if (ri, si, ki) not in touched:
            assert out[start:end] == received[(ri, si, ki)]


@pytest.mark.parametrize("fixture", TRACE_FIXTURES)
def test_fixture_requests(fixture: str) -> None:
    rng = random.Random(fixture)
    for body in read_records(FIXTURES / f"{fixture}.otlp.bin"):
        where = _where(ExportTraceServiceRequest.FromString(body))
        for count in (0, 1, 2, len(where) // 2, len(where)):
            chosen = rng.sample(where, min(count, len(where)))
            _check(body, [(w, rng.choice((1, 100, 200, 20_000)), rng.randrange(4)) for w in chosen])


def _request(shape: list[list[list[int]]], extras: bool) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for scopes in shape:
        rs = request.resource_spans.add(schema_url="r" if extras else "")
        if extras:
            rs.resource.attributes.add(key="service.name").value.string_value = "svc"
        for spans in scopes:
            ss = rs.scope_spans.add(schema_url="s" if extras else "")
            if extras:
                ss.scope.name = "scope"
            for size in spans:
                span = ss.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="x" * size, kind=2,
                                    start_time_unix_nano=1, end_time_unix_nano=2**62)
                span.attributes.add(key="k").value.int_value = size
    return request


_SHAPES = st.lists(st.lists(st.lists(st.integers(0, 20_000), max_size=4), max_size=3), max_size=3)


@settings(max_examples=150, deadline=None)
@given(_SHAPES, st.booleans(), st.data())
def test_generated_requests(shape: list[list[list[int]]], extras: bool, data: st.DataObject) -> None:
    """Any number of resources, scopes and spans, spans near and across the varint boundaries of
    their length prefixes (127/128, 16383/16384 bytes), any subset touched with any edit."""
    body = _request(shape, extras).SerializeToString()
    where = _where(ExportTraceServiceRequest.FromString(body))
    chosen = data.draw(st.lists(st.sampled_from(where), unique=True) if where else st.just([]))
    edits = [(w, data.draw(st.sampled_from((0, 1, 120, 127, 128, 16_300, 16_400))), data.draw(st.integers(0, 3)))
             for w in chosen]
    _check(body, edits)


@settings(max_examples=60, deadline=None)
@given(_SHAPES.filter(lambda s: any(any(sc) for sc in s)), st.data())
def test_unknown_fields_and_long_prefixes_are_kept(shape: list[list[list[int]]], data: st.DataObject) -> None:
    """Received bytes that are not upb's canonical encoding (an unknown field, a non-minimal length
    prefix on an untouched resource): the splice still parses to the edited request, and keeps the
    unknown field where it was."""
    request = _request(shape, True)
    body = request.SerializeToString()
    unknown = bytes([0x78, 0x96, 0x01])  # field 15, varint 150: unknown at the request level
    body = unknown + body
    where = _where(request)
    chosen = data.draw(st.lists(st.sampled_from(where), unique=True, min_size=1))
    _check(body, [(w, 200, 0) for w in chosen])
    out = splice(body, {w: b"" for w in chosen})
    assert out is not None and out.startswith(unknown)


def test_unusual_framing_and_missing_spans_fall_back() -> None:
    request = _request([[[5]]], False)
    body = request.SerializeToString()
    assert splice(bytes([0x7B, 0x7C]) + body, {(0, 0, 0): b""}) is None  # a group
    assert splice(body, {(0, 0, 1): b""}) is None  # no such span
    assert splice(body, {}) == body
    batch = Batch(ExportTraceServiceRequest.FromString(bytes([0x7B, 0x7C]) + body), 1, RequestContext("test"),
                  raw=bytes([0x7B, 0x7C]) + body)
    batch.request.resource_spans[0].scope_spans[0].spans[0].name = "changed"
    batch.touch(0, 0, 0)
    assert ExportTraceServiceRequest.FromString(batch.serialized()) == batch.request


def test_raw_none_wins_over_touched() -> None:
    """Clearing `raw` (an edit beyond single spans) forces the whole serialization, touched or not."""
    request = _request([[[5, 6]], [[7]]], True)
    body = request.SerializeToString()
    batch = Batch(request, 3, RequestContext("test"), raw=body)
    request.resource_spans[0].scope_spans[0].spans[0].name = "a"
    batch.touch(0, 0, 0)
    request.resource_spans[1].resource.attributes.add(key="x").value.string_value = "y"
    batch.raw = None
    batch.touch(0, 0, 1)  # after raw = None: nothing to record
    assert batch.received is None and batch.serialized() == request.SerializeToString()


def test_settle_lets_go_of_bytes_no_splice_can_use() -> None:
    """After the processors, a request whose spans were (nearly) all touched drops its received
    bytes, so they do not wait in the queues beside the parsed request; one with a small touched
    share among large spans keeps them for the splice. Either way the encoding is the request's."""
    request = _request([[[30] * 10]], False)
    dense = Batch(request, 10, RequestContext("test"), raw=request.SerializeToString())
    for k in range(10):
        request.resource_spans[0].scope_spans[0].spans[k].name = "edited"
        dense.touch(0, 0, k)
    dense.settle()
    assert dense.received is None and dense.serialized() == request.SerializeToString()

    request = _request([[[20_000] * 10]], False)
    sparse = Batch(request, 10, RequestContext("test"), raw=request.SerializeToString())
    request.resource_spans[0].scope_spans[0].spans[3].name = "edited"
    sparse.touch(0, 0, 3)
    sparse.settle()
    assert sparse.received is not None and sparse.touched == {(0, 0, 3)}
    assert sparse.serialized() == request.SerializeToString()
