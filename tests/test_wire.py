"""Span sizes and places from the protobuf framing agree with what upb parses and encodes."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.otlp.wire import span_ranges, span_sizes
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records


def _sizes(request: ExportTraceServiceRequest) -> list[int]:
    return [span.ByteSize() for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def _check_ranges(body: bytes) -> None:
    """Each range holds the encoding of the span at its (resource, scope, span) index, and every span has one."""
    request = ExportTraceServiceRequest.FromString(body)
    ranges = span_ranges(body)
    assert ranges is not None
    where = [(ri, si, ki) for ri, rs in enumerate(request.resource_spans) for si, ss in enumerate(rs.scope_spans)
             for ki in range(len(ss.spans))]
    assert [r[:3] for r in ranges] == where
    for ri, si, ki, start, end in ranges:
        assert Span.FromString(body[start:end]) == request.resource_spans[ri].scope_spans[si].spans[ki]


@pytest.mark.parametrize("fixture", TRACE_FIXTURES)
def test_fixture_requests(fixture: str) -> None:
    for body in read_records(FIXTURES / f"{fixture}.otlp.bin"):
        assert span_sizes(body) == _sizes(ExportTraceServiceRequest.FromString(body))
        _check_ranges(body)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.lists(st.integers(0, 40_000), max_size=5), max_size=3), max_size=3), st.booleans())
def test_generated_requests(shape: list[list[list[int]]], with_extras: bool) -> None:
    """Any number of resources, scopes and spans, spans of any size (multi-byte length prefixes),
    with the other fields of each level present or not."""
    request = ExportTraceServiceRequest()
    for scopes in shape:
        rs = request.resource_spans.add(schema_url="r" if with_extras else "")
        if with_extras:
            rs.resource.attributes.add(key="service.name").value.string_value = "svc"
        for spans in scopes:
            ss = rs.scope_spans.add(schema_url="s" if with_extras else "")
            if with_extras:
                ss.scope.name = "scope"
            for size in spans:
                ss.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="x" * size, kind=2,
                             start_time_unix_nano=1, end_time_unix_nano=2**62)
    body = request.SerializeToString()
    assert span_sizes(body) == _sizes(ExportTraceServiceRequest.FromString(body))
    _check_ranges(body)


def test_unknown_fields_are_skipped_and_groups_give_up() -> None:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(name="a")
    body = request.SerializeToString()
    unknown = bytes([0x78, 0x96, 0x01, 0x81, 0x01]) + bytes(8) + bytes([0x7D]) + bytes(4)  # varint 15, fixed64 16, fixed32 15
    assert span_sizes(unknown + body) == [len(request.resource_spans[0].scope_spans[0].spans[0].SerializeToString())]
    _check_ranges(unknown + body)
    assert span_sizes(bytes([0x7B, 0x7C]) + body) is None
    assert span_ranges(bytes([0x7B, 0x7C]) + body) is None  # an empty group, field 15: upb accepts it; we measure otherwise
    ExportTraceServiceRequest.FromString(bytes([0x7B, 0x7C]) + body)
