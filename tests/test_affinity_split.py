"""Trace affinity's byte split: each worker's share of a request, cut from the received bytes.

Requests are real OTLP encodings (the protobuf runtime's) of random shapes: several resources
and scopes, scopes and resources without spans, schema urls, and spans whose trace id is not the
first field (hand-framed). Every property is checked against the parsed request, not against
figures written here.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.otlp.wire import encode_varint
from tests.conftest import FIXTURES, read_records
from gateway.service.affinity import _COMPILED_SPLIT, _keep_only, _split_bytes, _Unreadable, owner_of, split_traces

_span = st.builds(lambda tid, sid, name: Span(trace_id=tid, span_id=sid, name=name),
                  st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8), st.text(max_size=8))
_request = st.lists(st.tuples(st.text(max_size=6), st.lists(st.tuples(st.text(max_size=6), st.lists(_span, max_size=6)),
                                                              max_size=3)), max_size=3)


def _build(shape: list) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for service, scopes in shape:
        rs = request.resource_spans.add(schema_url=f"res/{service}")
        rs.resource.attributes.add(key="service.name").value.string_value = service
        for scope_name, spans in scopes:
            ss = rs.scope_spans.add(schema_url=f"scope/{scope_name}")
            ss.scope.name = scope_name
            ss.spans.extend(spans)
    return request


def _spans(request: ExportTraceServiceRequest) -> list[bytes]:
    return [s.SerializeToString() for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


@settings(max_examples=60, deadline=None)
@given(_request, st.integers(2, 4), st.data())
def test_every_span_goes_to_its_owner_once_and_the_own_share_is_the_trimmed_request(shape, workers, data) -> None:
    request = _build(shape)
    raw = request.SerializeToString()
    me = data.draw(st.integers(0, workers - 1))
    split = split_traces(raw, me, workers)
    assert split is not None
    shares, foreign = split
    seen: list[bytes] = []
    for owner, (body, count) in shares.items():
        part = ExportTraceServiceRequest.FromString(body)
        spans = _spans(part)
        assert count == len(spans)
        seen += spans
        for rs in part.resource_spans:  # every resource and scope header came along
            assert rs.schema_url.startswith("res/") and rs.resource.attributes[0].key == "service.name"
            for ss in rs.scope_spans:
                assert ss.schema_url == f"scope/{ss.scope.name}"
                assert all(owner_of(s.trace_id, workers) == owner for s in ss.spans)
                assert ss.spans or owner == me  # a share carries no empty scope it did not get as one
    assert sorted(seen) == sorted(_spans(request))
    # The worker's own share: the parsed request less the others' spans, as the pipeline will see it.
    _keep_only(request, foreign)
    if me in shares:
        assert ExportTraceServiceRequest.FromString(shares[me][0]) == request
    else:
        assert not request.resource_spans


def test_a_trace_id_that_is_not_the_first_field_still_finds_its_owner() -> None:
    trace_id = bytes(8) + (7).to_bytes(8, "big")  # owner 7 % 2 = 1, 7 % 3 = 1
    span = Span(span_id=b"\x01" * 8, name="late id").SerializeToString() + b"\x0a\x10" + trace_id
    scope = b"\x12" + encode_varint(len(span)) + span
    resource = b"\x12" + encode_varint(len(scope)) + scope
    raw = b"\x0a" + encode_varint(len(resource)) + resource
    assert ExportTraceServiceRequest.FromString(raw).resource_spans[0].scope_spans[0].spans[0].trace_id == trace_id
    for workers in (2, 3):
        shares, foreign = split_traces(raw, 0, workers)
        assert list(shares) == [owner_of(trace_id, workers)] == [1]
        assert foreign == {(0, 0): [0]}


def test_framing_it_does_not_read_is_left_to_the_parsed_path() -> None:
    raw = _build([("svc", [("scope", [Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)])])]).SerializeToString()
    assert split_traces(raw + b"\x0b", 0, 2) is None  # a group start at the top level
    assert split_traces(raw[:-3], 0, 2) is None  # truncated


def test_a_span_too_short_for_a_trace_id_is_not_read_past_its_end() -> None:
    # An empty span, last in its scope and resource, then a resource of 16 bytes: the two bytes after
    # the span read as a trace id's field head (0a 10), and the next resource's as the trace id.
    late = ExportTraceServiceRequest()
    late.resource_spans.add(schema_url="abcdefghijklm1")  # 16 bytes encoded; its last byte is odd (owner 1 of 2)
    tail = late.SerializeToString()
    assert tail[:2] == b"\x0a\x10"
    raw = b"\x0a\x04\x12\x02\x12\x00" + tail
    parsed = ExportTraceServiceRequest.FromString(raw)
    assert parsed.resource_spans[0].scope_spans[0].spans[0].trace_id == b""
    shares, foreign = split_traces(raw, 0, 2)
    assert shares[0][1] == 1 and foreign == {}  # the span without a trace id is owner_of(b"") == 0's
    assert owner_of(b"", 2) == 0


# -- the compiled split gives exactly what the Python one gives --------------------------------

_compiled = pytest.mark.skipif(_COMPILED_SPLIT is None, reason="gateway/service/_affinity_split.c was not built "
                               "(no C compiler at `pip install`, or OTELGATE_PURE_PYTHON is set)")


def _python_split(raw: bytes, me: int, workers: int):
    try:
        return _split_bytes(raw, me, workers)
    except (_Unreadable, IndexError):
        return None


@_compiled
@settings(max_examples=300, deadline=None)
@given(_request, st.integers(1, 5), st.data())
def test_compiled_split_equals_the_python_split_on_generated_requests(shape, workers, data) -> None:
    raw = _build(shape).SerializeToString()
    me = data.draw(st.integers(0, workers - 1))
    assert _COMPILED_SPLIT(raw, me, workers) == _python_split(raw, me, workers)
    # Damaged framing: cut short, a byte changed, bytes added. Both read it alike (or both give up).
    if raw:
        cut = data.draw(st.integers(0, len(raw) - 1))
        assert _COMPILED_SPLIT(raw[:cut], me, workers) == _python_split(raw[:cut], me, workers)
        at, byte = data.draw(st.integers(0, len(raw) - 1)), data.draw(st.integers(0, 255))
        changed = raw[:at] + bytes((byte,)) + raw[at + 1:]
        assert _COMPILED_SPLIT(changed, me, workers) == _python_split(changed, me, workers)
    extra = data.draw(st.binary(max_size=12))
    assert _COMPILED_SPLIT(raw + extra, me, workers) == _python_split(raw + extra, me, workers)


@_compiled
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 4))
def test_compiled_split_equals_the_python_split_on_arbitrary_bytes(raw, workers) -> None:
    assert _COMPILED_SPLIT(raw, 0, workers) == _python_split(raw, 0, workers)


@_compiled
def test_compiled_split_equals_the_python_split_on_hand_framed_and_captured_requests() -> None:
    late = Span(span_id=b"\x01" * 8, name="late id").SerializeToString() + b"\x0a\x10" + bytes(8) + (7).to_bytes(8, "big")
    flagged = Span(span_id=b"\x01" * 8, flags=0x100).SerializeToString() + b"\x0a\x10" + bytes(16)  # a two-byte tag
    long_varint = b"\x0a\x10" + bytes(16) + b"\x30\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00"  # kind, 12-byte varint
    cases = []
    for span in (late, flagged, long_varint, b"", b"\x0a\x05abcde"):
        scope = b"\x12" + encode_varint(len(span)) + span
        resource = b"\x12" + encode_varint(len(scope)) + scope
        cases.append(b"\x0a" + encode_varint(len(resource)) + resource)
        unknown = b"\x82\x01\x00" + resource  # an empty field numbered 16 (two-byte tag) in the resource: unread
        cases.append(b"\x0a" + encode_varint(len(unknown)) + unknown)
        beyond = b"\x1a\x81" + b"\x80" * 8 + b"\x02x" + resource  # a length of 2**64 + 1: past any end
        cases.append(b"\x0a" + encode_varint(len(beyond)) + beyond)
    cases += [body for path in sorted(FIXTURES.glob("*.otlp.bin")) if ".logs." not in path.name
              for body in read_records(path)]
    assert len(cases) > 20
    for raw in cases:
        for workers in (1, 2, 3, 7):
            for me in {0, workers - 1}:
                assert _COMPILED_SPLIT(raw, me, workers) == _python_split(raw, me, workers)
    assert _python_split(cases[2], 0, 2) is None and _python_split(cases[1], 0, 2) is None  # two-byte tags: unread
