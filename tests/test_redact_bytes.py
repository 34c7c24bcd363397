"""Redaction decided from the bytes (`gateway.redaction.locate`) against redaction span by span.

With `raw`, the redactor scans the whole serialized request once and reads only the attributes
its candidates start in; without it, it walks every span as a message. The two must give the same
request, the same answer (changed or not) and the same counts per kind, on generated requests
(several resources, scopes and spans; attributes, names, events, status messages, resource and
scope attributes, every content mode, a user regex) and on every captured fixture. The reference
here is the message walk with its gates removed: every value scanned on its own.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from gateway.processors.redact import Config, Redactor
from gateway.redaction.locate import candidate_attributes
from gateway.otlp.wire import span_ranges
from gateway.telemetry import Metrics
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records
from tests.test_redact import SECRET, _any, _keys, _texts, _values

_SETTINGS = [dict(), dict(content="drop"), dict(content="hash", hash_secret=SECRET),
             dict(content="truncate", truncate_bytes=7), dict(custom=[{"name": "word", "regex": "[a-z]{3}"}]),
             dict(allow_keys=["client.*"]), dict(detectors=["ipv4", "email"])]
_PLAIN_KEYS = st.sampled_from(["client.address", "network.peer.address", "url.full", "server.address", "db.query.text",
                               "user_agent.original", "http.route"])


def _pair(which: int) -> tuple[tuple[Redactor, Metrics], tuple[Redactor, Metrics]]:
    gated, ungated = Metrics(), Metrics()
    reference = Redactor(Config(enabled=True, **_SETTINGS[which]), ungated)
    reference._pattern_gate = reference._content_gate = None  # every value on its own
    return (Redactor(Config(enabled=True, **_SETTINGS[which]), gated), gated), (reference, ungated)


_PAIRS = [_pair(i) for i in range(len(_SETTINGS))]


def _counts(metrics: Metrics) -> dict[str, float]:
    return {s.labels["kind"]: s.value for f in metrics.registry.collect() if f.name == "otelgate_redactions"
            for s in f.samples if s.name.endswith("_total")}


def _check(body: bytes, which: int) -> None:
    """The bytes path on `body` gives what the ungated message walk gives: request, answer, counts."""
    (redactor, metrics), (reference, reference_metrics) = _PAIRS[which]
    before, reference_before = _counts(metrics), _counts(reference_metrics)
    request = ExportTraceServiceRequest.FromString(body)
    expected = ExportTraceServiceRequest.FromString(body)
    changed = redactor.redact_traces_request(request, body)
    expected_changed = reference.redact_traces_request(expected)
    assert request.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    assert changed == expected_changed
    gained = {k: v - before.get(k, 0) for k, v in _counts(metrics).items() if v != before.get(k, 0)}
    expected_gained = {k: v - reference_before.get(k, 0) for k, v in _counts(reference_metrics).items()
                       if v != reference_before.get(k, 0)}
    assert gained == expected_gained
    again = ExportTraceServiceRequest.FromString(request.SerializeToString())  # twice is once
    assert not redactor.redact_traces_request(again, request.SerializeToString())


_attributes = st.dictionaries(st.one_of(_keys, _PLAIN_KEYS), _values, max_size=6)
_span = st.fixed_dictionaries({
    "attributes": _attributes, "name": _texts, "status": st.one_of(st.none(), _texts),
    "events": st.lists(_attributes, max_size=2), "trace_state": st.one_of(st.just(""), _texts)})
_scope = st.fixed_dictionaries({"attributes": st.dictionaries(_keys, _values, max_size=2),
                                "spans": st.lists(_span, min_size=1, max_size=4)})
_resource = st.fixed_dictionaries({"attributes": st.dictionaries(st.one_of(_keys, _PLAIN_KEYS), _values, max_size=3),
                                   "scopes": st.lists(_scope, min_size=1, max_size=2)})


def _add(attributes: Any, values: dict[str, AnyValue]) -> None:
    for key, value in values.items():
        attributes.add(key=key).value.CopyFrom(_any(value))


def _request(resources: list[dict[str, Any]]) -> bytes:
    request = ExportTraceServiceRequest()
    n = 0
    for r in resources:
        rs = request.resource_spans.add()
        _add(rs.resource.attributes, r["attributes"])
        for s in r["scopes"]:
            ss = rs.scope_spans.add()
            ss.scope.name = "lib"
            _add(ss.scope.attributes, s["attributes"])
            for spec in s["spans"]:
                n += 1
                span = ss.spans.add(trace_id=n.to_bytes(16, "big"), span_id=n.to_bytes(8, "big"), name=spec["name"],
                                    trace_state=spec["trace_state"], start_time_unix_nano=1_700_000_000_000_000_000 + n)
                _add(span.attributes, spec["attributes"])
                for i, event in enumerate(spec["events"]):
                    _add(span.events.add(name="gen_ai.content.prompt" if i == 0 else "log").attributes, event)
                if spec["status"] is not None:
                    span.status.message = spec["status"]
    return request.SerializeToString()


@settings(max_examples=int(os.environ.get("REDACT_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_resource, min_size=1, max_size=2), st.sampled_from(range(len(_SETTINGS))))
def test_from_the_bytes_equals_span_by_span_on_generated_requests(resources: list[dict[str, Any]], which: int) -> None:
    _check(_request(resources), which)


def test_from_the_bytes_equals_span_by_span_on_every_fixture() -> None:
    bodies = [b for name in TRACE_FIXTURES for b in read_records(FIXTURES / f"{name}.otlp.bin")]
    assert bodies
    for which in range(len(_SETTINGS)):
        for body in bodies:
            _check(body, which)


def test_plain_spans_are_edited_where_the_candidates_are() -> None:
    """The bench's plain spans: an address in `client.address` is redacted and counted (every time,
    also when its decision was remembered from an earlier span), the allowed
    `server.address` and a version that looks like an address in `service.version` are not; the
    scan points at exactly the attribute holding the address."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    _add(rs.resource.attributes, {"service.name": "checkout", "service.version": "1.4.2.1"})
    ss = rs.scope_spans.add()
    for i in range(3):
        span = ss.spans.add(trace_id=bytes([i + 1]) * 16, span_id=bytes([i + 1]) * 8, name="GET")
        _add(span.attributes, {"http.route": "/a", "server.address": "10.9.9.9", "client.address": f"10.1.2.{i % 2}",
                               "http.response.status_code": 200})
    body = request.SerializeToString()
    ranges = span_ranges(body)
    assert ranges is not None
    metrics = Metrics()
    redactor = Redactor(Config(enabled=True), metrics)
    by_span, outside = candidate_attributes(body, ranges, redactor._pattern_find, [r[3] for r in ranges])
    assert sorted(by_span) == [0, 1, 2] and outside  # `1.4.2.1` in the resource is a candidate too
    assert all([t[0] for t in targets] == [1, 2] for targets in by_span.values())  # type: ignore[union-attr]
    assert redactor.redact_traces_request(request, body)
    for span in request.resource_spans[0].scope_spans[0].spans:
        values = {kv.key: kv.value for kv in span.attributes}
        assert values["client.address"].string_value == "[REDACTED:ipv4]"
        assert values["server.address"].string_value == "10.9.9.9"
    assert request.resource_spans[0].resource.attributes[1].value.string_value == "1.4.2.1"
    assert _counts(metrics) == {"ipv4": 3}  # a value seen before (a remembered decision) counts again


def test_unusual_encodings_go_span_by_span() -> None:
    """An attribute whose key comes twice, a string value split over two AnyValue fields, a span
    name holding an address: each is read as a message, with the same result."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8,
                                                                     name="call 10.0.0.1")
    _add(span.attributes, {"a": "mail bob@example.com"})
    body = request.SerializeToString()
    # The same attribute encoded by hand with its key twice (the last one counts).
    key_value = b"\x0a\x01x\x0a\x01b\x12\x0c\x0a\x0aip 1.2.3.4"
    span_bytes = span.SerializeToString() + b"\x4a" + bytes([len(key_value)]) + key_value
    scope = b"\x12" + bytes([len(span_bytes)]) + span_bytes
    resource = b"\x12" + bytes([len(scope)]) + scope
    odd = b"\x0a" + bytes([len(resource)]) + resource
    for which in range(len(_SETTINGS)):
        _check(body, which)
        _check(odd, which)


def test_after_the_normalizer_touched_spans_the_rest_still_goes_from_the_bytes() -> None:
    """In the pipeline the normalizer and the pricer touch the LLM call spans first: their
    received bytes are stale, so the redactor reads them as messages and decides every other span
    from the received bytes, then touches what it edited. The result equals the message walk, and
    the batch's spliced bytes are the edited request."""
    from gateway.batch import Batch, RequestContext
    from gateway.llm.pricing import PriceTable
    from gateway.processors import normalize, price

    chain = [normalize.Normalizer(normalize.Config()), price.PriceProcessor(PriceTable([]))]
    touched_any = False
    for which in (0, 1, 5):
        (redactor, _), (reference, _) = _PAIRS[which]
        for fixture in TRACE_FIXTURES:
            for body in read_records(FIXTURES / f"{fixture}.otlp.bin"):
                batch = Batch(ExportTraceServiceRequest.FromString(body), 1, RequestContext("http"), body)
                for process in chain:
                    batch = process(batch)
                touched_any |= bool(batch.touched)
                expected = ExportTraceServiceRequest()
                expected.CopyFrom(batch.request)
                reference.redact_traces_request(expected)
                redactor(batch)
                assert batch.request.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
                assert ExportTraceServiceRequest.FromString(batch.serialized()) == expected
    assert touched_any  # the case this test is about happened
