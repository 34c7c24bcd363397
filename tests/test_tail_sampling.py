"""Tail sampling: each policy keeps and drops what it should, late spans follow their trace's
decision, memory stays bounded (early decisions counted), and the traces written out are the
spans that came in. The buffer is driven with an explicit clock here; through the real gateway
in test_routing.py."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import Batch, RequestContext, count_spans
from gateway.config import ConfigError, parse
from gateway.sampling.consistent import keep, threshold
from gateway.sampling.tail import Policies, TailConfig, TraceBuffer
from gateway.telemetry import Metrics
from tests.test_backpressure_health_metrics import metric_value
from tests.test_router import _kv

S = 1_000_000_000  # ns


def _trace(tid: bytes, *, spans: int = 2, error: bool = False, duration_s: float = 1.0, attrs: dict | None = None,
           root: bool = True, service: str = "app") -> ExportTraceServiceRequest:
    """A trace: a root (unless `root=False`) and children; `attrs` go on the last child."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(_kv("service.name", service))
    rs.schema_url = "https://opentelemetry.io/schemas/1.26.0"
    ss = rs.scope_spans.add()
    ss.scope.name = "lib"
    ss.scope.version = "1.0"
    root_id = tid[:8]
    start = 1_700_000_000 * S
    for i in range(spans):
        span = ss.spans.add(trace_id=tid, span_id=(i + 1).to_bytes(8, "big"), name=f"s{i}",
                            start_time_unix_nano=start, end_time_unix_nano=start + int(duration_s * S))
        if i == 0 and root:
            span.span_id = root_id
        else:
            span.parent_span_id = root_id
        if error and i == spans - 1:
            span.status.code = 2  # STATUS_CODE_ERROR
        if attrs and i == spans - 1:
            for k, v in attrs.items():
                span.attributes.append(_kv(k, v))
    return req


class Harness:
    def __init__(self, policies: str, **settings: object) -> None:
        extra = "".join(f"    {k}: {v}\n" for k, v in settings.items())
        config = parse(f"sinks: {{a: {{type: file}}}}\nsampling:\n  tail:\n{extra}    policies: {policies}\n", environ={})
        assert config.sampling.tail is not None
        self.config: TailConfig = config.sampling.tail
        self.metrics = Metrics()
        self.out: list[Batch] = []
        self.buffer = TraceBuffer(self.config, self.metrics, self.out.append, Policies(self.config, self.metrics))

    def add(self, req: ExportTraceServiceRequest, tenant: str | None = None) -> None:
        self.buffer.add(Batch(req, count_spans(req), RequestContext("test", tenant=tenant)))

    def kept_traces(self) -> set[bytes]:
        return {s.trace_id for b in self.out for rs in b.request.resource_spans for ss in rs.scope_spans for s in ss.spans}

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics, name, **labels)


def _ids(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(n)]


def test_error_policy_keeps_errors_and_http_5xx_only() -> None:
    h = Harness("[{type: error}]", decision_wait="1s")
    ok, err, http500, http404 = _ids(4)
    h.add(_trace(ok))
    h.add(_trace(err, error=True))
    h.add(_trace(http500, attrs={"http.response.status_code": 503}))
    h.add(_trace(http404, attrs={"http.status_code": 404}))
    assert h.buffer.decide_due() == 0  # the wait is not over
    h.buffer.decide_due(now=10**9)
    assert h.kept_traces() == {err, http500}
    assert h.metric("otelgate_tail_policy_traces_total", policy="error", decision="kept") == 2
    assert h.metric("otelgate_tail_policy_traces_total", policy="error", decision="dropped") == 2
    assert h.metric("otelgate_sampled_spans_total", policy="tail", decision="kept") == 4
    assert h.metric("otelgate_sampled_spans_total", policy="tail", decision="dropped") == 4


def test_http_5xx_is_found_whatever_the_value_looks_like() -> None:
    """The error policy reads usual statuses off the span's bytes: it must agree with the attributes."""
    values: list[object] = [0, 1, 127, 128, 200, 255, 256, 383, 384, 499, 500, 503, 511, 16383, 16384, 10**6, -1, -503,
                            2**62, 499.0, 500.0, 502.5, "503", "200", "abc", "", True, None]
    h = Harness("[{type: error}]")
    expected = set()
    for i, (tid, value) in enumerate(zip(_ids(4 * len(values), seed=5), values * 4)):
        req = _trace(tid, spans=1)
        span = req.resource_spans[0].scope_spans[0].spans[0]
        key = ("http.response.status_code", "http.status_code")[i % 2]
        kv = span.attributes.add(key=key) if value is None else _kv(key, value)
        if value is not None:
            span.attributes.append(kv)
        if i >= 2 * len(values):  # noise around it: a 5xx on an event only, and a string holding a status's encoding
            span.events.add(name="retry").attributes.append(_kv("http.response.status_code", 503))
            span.attributes.append(_kv("note", "\x0a\x10http.status_code\x12\x02\x18\x05"))
        code = value if isinstance(value, (int, float)) and not isinstance(value, bool) else \
            int(value) if isinstance(value, str) and value.isdigit() else None
        if code is not None and code >= 500:
            expected.add(tid)
        h.add(req)
    h.buffer.decide_all("shutdown")
    assert h.kept_traces() == expected and len(expected) == 4 * 10


@pytest.mark.parametrize(("policy", "traces", "kept"), [
    ("{type: latency, threshold: 2s}", [{"duration_s": 1.0}, {"duration_s": 2.5}], [1]),
    ("{type: cost, threshold_usd: 0.05}", [{"attrs": {"gen_ai.usage.cost": 0.04}}, {"attrs": {"gen_ai.usage.cost": 0.06}},
                                           {"attrs": {"gen_ai.usage.cost": 0.9, "otelgate.llm.aggregate": True}}], [1]),
    ("{type: tokens, threshold: 1000}", [{"attrs": {"gen_ai.usage.input_tokens": 900, "gen_ai.usage.output_tokens": 50}},
                                         {"attrs": {"gen_ai.usage.input_tokens": 900, "gen_ai.usage.output_tokens": 150}}], [1]),
    ("{type: attribute, match: {span.gen_ai.request.model: {regex: '^gpt-5'}}}",
     [{"attrs": {"gen_ai.request.model": "gpt-4o"}}, {"attrs": {"gen_ai.request.model": "gpt-5-mini"}}], [1]),
    ("{type: attribute, match: {resource.service.name: vip}}", [{"service": "app"}, {"service": "vip"}], [1]),
])
def test_each_policy(policy: str, traces: list[dict], kept: list[int]) -> None:
    h = Harness(f"[{policy}]")
    ids = _ids(len(traces), seed=7)
    for tid, shape in zip(ids, traces):
        h.add(_trace(tid, **shape))
    h.buffer.decide_all("shutdown")
    assert h.kept_traces() == {ids[i] for i in kept}


def test_cost_and_tokens_from_the_normalizer_count_each_call_once() -> None:
    from gateway.pipeline import build_processors
    config = parse("sinks: {a: {type: file}}\nsampling:\n  tail:\n    policies: [{type: cost, threshold_usd: 0.002}]\n",
                   environ={})
    metrics = Metrics()
    chain = build_processors(config, metrics)
    assert config.sampling.tail is not None
    out: list[Batch] = []
    buffer = TraceBuffer(config.sampling.tail, metrics, out.append, Policies(config.sampling.tail, metrics))
    cheap, pricey = _ids(2, seed=3)
    for tid, tokens in ((cheap, 1000), (pricey, 100_000)):
        req = _trace(tid, attrs={"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
                                 "gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": tokens,
                                 "gen_ai.usage.output_tokens": 10})
        batch = Batch(req, count_spans(req), RequestContext("test"))
        for process in chain:
            batch = process(batch)
        assert batch.llm_calls  # the buffer reads the calls, not the attributes
        buffer.add(batch)
    buffer.decide_all("shutdown")
    # gpt-4o-mini: $0.15 / Mtok input -> 1000 tokens = $0.00015; 100k = $0.015
    assert {s.trace_id for b in out for rs in b.request.resource_spans for ss in rs.scope_spans for s in ss.spans} == {pricey}


def test_probabilistic_is_the_head_rule_and_rate_limit_caps() -> None:
    h = Harness("[{type: probabilistic, percentage: 30}]")
    ids = _ids(3000, seed=5)
    for tid in ids:
        h.add(_trace(tid, spans=1))
    h.buffer.decide_all("shutdown")
    assert h.kept_traces() == {t for t in ids if keep(t, "", threshold(0.3))}
    h = Harness("[{type: error}, {type: rate_limit, traces_per_second: 5}]")
    ids = _ids(50, seed=6)
    for i, tid in enumerate(ids):
        h.add(_trace(tid, spans=1, error=i < 10))
    h.buffer.decide_all("shutdown")
    kept = h.kept_traces()
    assert set(ids[:10]) <= kept  # errors always; the rate limit spends no token on them
    assert 5 <= len(kept - set(ids[:10])) <= 6  # a burst of 5 (plus what refilled meanwhile)


def test_all_combines_with_and() -> None:
    h = Harness("[{type: error}, {type: latency, threshold: 2s}]", combine="all")
    a, b, c = _ids(3)
    h.add(_trace(a, error=True, duration_s=3))
    h.add(_trace(b, error=True, duration_s=1))
    h.add(_trace(c, duration_s=3))
    h.buffer.decide_all("shutdown")
    assert h.kept_traces() == {a}


def test_spans_of_a_trace_wait_for_each_other_and_the_root_ends_the_wait_early() -> None:
    h = Harness("[{type: error}]", decision_wait="10s", idle="1s")
    [tid, open_trace] = _ids(2)
    h.add(_trace(tid, error=True, root=False))  # children first: no root yet
    h.add(_trace(open_trace, error=True, root=False))
    t0 = h.buffer._traces[tid].last
    assert h.buffer.decide_due(now=t0 + 5) == 0
    root = _trace(tid, spans=1)
    h.add(root)
    t1 = h.buffer._traces[tid].last
    assert h.buffer.decide_due(now=t1 + 0.5) == 0
    assert h.buffer.decide_due(now=t1 + 1.01) == 1  # root + idle
    assert h.kept_traces() == {tid}
    assert sum(b.items for b in h.out) == 3  # the children and the root, together
    assert h.buffer.decide_due(now=t0 + 10.01) == 1  # no root: the full wait


def test_late_spans_follow_the_decision() -> None:
    h = Harness("[{type: error}]")
    kept, dropped = _ids(2)
    h.add(_trace(kept, error=True))
    h.add(_trace(dropped))
    h.buffer.decide_all("shutdown")
    h.out.clear()
    late = ExportTraceServiceRequest()
    late.MergeFrom(_trace(kept, spans=1, root=False))
    late.MergeFrom(_trace(dropped, spans=1, root=False))
    h.add(late)
    assert h.kept_traces() == {kept} and sum(b.items for b in h.out) == 1  # at once, no waiting
    assert h.metric("otelgate_tail_late_spans_total", decision="kept") == 1
    assert h.metric("otelgate_tail_late_spans_total", decision="dropped") == 1
    assert h.buffer.traces == 0


def test_decision_cache_forgets_the_oldest_decisions_first() -> None:
    h = Harness("[{type: error}]", decision_cache=3)
    ids = _ids(5, seed=3)
    for tid in ids:
        h.add(_trace(tid, error=True))
        h.buffer.decide_all("shutdown")  # one at a time: decided in this order
    h.out.clear()
    for tid in ids:
        h.add(_trace(tid, spans=1, root=False))
    assert h.kept_traces() == set(ids[2:])  # the newest 3 remembered: late spans follow at once
    assert h.buffer.traces == 2  # the oldest 2 forgotten: buffered as new traces


def test_memory_bound_decides_the_oldest_early() -> None:
    h = Harness("[{type: error}]", max_traces=100)
    ids = _ids(150)
    for i, tid in enumerate(ids):
        h.add(_trace(tid, error=i % 2 == 0))
    assert h.buffer.traces == 100
    assert h.metric("otelgate_tail_decided_early_total", reason="max_traces") == 50
    assert h.kept_traces() == {ids[i] for i in range(0, 50, 2)}  # the oldest 50, decided by the policies
    h = Harness("[{type: error}]", max_bytes=20_000)
    for tid in _ids(500, seed=2):
        h.add(_trace(tid, spans=3))
    assert h.buffer._bytes <= 20_000
    assert h.metric("otelgate_tail_decided_early_total", reason="max_bytes") > 400


def test_written_traces_are_the_spans_received_with_resource_scope_and_tenant() -> None:
    h = Harness("[{type: error}]")
    ids = _ids(20, seed=9)
    sent: dict[str | None, set[bytes]] = {}
    for i, tid in enumerate(ids):
        req = _trace(tid, spans=3, error=True, service=f"svc{i % 3}")
        tenant = "t1" if i % 2 else None
        sent.setdefault(tenant, set()).update(s.SerializeToString() for rs in req.resource_spans
                                              for ss in rs.scope_spans for s in ss.spans)
        h.add(req, tenant=tenant)
    h.buffer.decide_all("shutdown")
    assert len(h.out) == 2  # one request per tenant
    for batch in h.out:
        assert batch.raw == batch.request.SerializeToString() or ExportTraceServiceRequest.FromString(batch.raw) == batch.request
        got = {s.SerializeToString() for rs in batch.request.resource_spans for ss in rs.scope_spans for s in ss.spans}
        assert got == sent[batch.context.tenant] and batch.items == len(got)
        for rs in batch.request.resource_spans:
            assert rs.schema_url == "https://opentelemetry.io/schemas/1.26.0"
            assert rs.resource.attributes[0].value.string_value.startswith("svc")
            assert [(ss.scope.name, ss.scope.version) for ss in rs.scope_spans] == [("lib", "1.0")]


def test_tail_mistakes_are_named() -> None:
    with pytest.raises(ConfigError) as exc:
        parse("sinks: {a: {type: file}}\nsampling:\n  tail:\n    policies:\n      - {type: latency}\n"
              "      - {type: nope}\n      - {type: cost, threshold_usd: -1}\n", environ={})
    assert exc.value.errors == [
        "sampling.tail.policies[0].threshold: required",
        "sampling.tail.policies[1].type: unknown policy type 'nope'; expected one of: error, latency, cost, tokens, "
        "attribute, probabilistic, rate_limit",
        "sampling.tail.policies[2].threshold_usd: must be greater than or equal to 0, got -1",
    ]
    with pytest.raises(ConfigError) as exc:
        parse("sinks: {a: {type: file}}\nsampling:\n  tail:\n    policies:\n"
              "      - {type: attribute, match: {span.x: {regex: '('}}}\n", environ={})
    assert exc.value.errors[0].startswith("sampling.tail.policies[0].match.span.x.regex: invalid regular expression")
