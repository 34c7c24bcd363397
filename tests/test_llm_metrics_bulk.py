"""The plain (lock-free) metric families and the LLM metrics' row cache, held to prometheus-client.

`PlainCounter` / `PlainHistogram` must expose exactly what prometheus-client's `Counter` /
`Histogram` expose for the same operations, and `LlmMetrics` (one cached row per label set)
exactly what the straightforward per-call recording into prometheus-client families gives,
capping included, so dashboards, alert rules and the workers' /metrics merge see no change.
"""

from __future__ import annotations

import math

from hypothesis import given, settings, strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.llm.call import LlmCall
from gateway.processors import llm_metrics
from gateway.processors.llm_metrics import Config, LlmMetrics, _Capped
from gateway.telemetry import Metrics, PlainCounter, PlainHistogram

_LABEL = st.sampled_from(["a", "b", "c", "", "x y", 'q"uote', "back\\slash", "new\nline"])


def _lines(registry: CollectorRegistry, prefix: str = "") -> list[str]:
    return sorted(line for line in generate_latest(registry).decode().splitlines()
                  if prefix in line and "_feedback" not in line)  # the LLM call families, not feedback


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_LABEL, _LABEL, st.one_of(st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False))),
                max_size=40))
def test_plain_counter_exposes_what_prometheus_client_counter_does(ops: list[tuple[str, str, float]]) -> None:
    plain_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    plain = PlainCounter("test_things", "Things, by a and b", ["a", "b"], plain_registry)
    reference = Counter("test_things", "Things, by a and b", ["a", "b"], registry=reference_registry)
    for a, b, amount in ops:
        plain.labels(a, b).inc(amount)
        reference.labels(a, b).inc(amount)
    assert _lines(plain_registry) == _lines(reference_registry)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_LABEL, st.one_of(st.floats(-10, 1e7, allow_nan=False), st.integers(0, 2 * 10**6),
                                            st.sampled_from([0.1, 0.25, 1.0, 5000, 1e6, math.inf]))),
                max_size=40),
       st.sampled_from([(0.1, 0.25, 0.5, 1.0, 2.0), (100, 1000, 1e6), (-1.0, 0.0, 1.0)]))
def test_plain_histogram_exposes_what_prometheus_client_histogram_does(ops: list[tuple[str, float]],
                                                                       buckets: tuple[float, ...]) -> None:
    plain_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    plain = PlainHistogram("test_sizes", "Sizes", ["a"], plain_registry, buckets)
    reference = Histogram("test_sizes", "Sizes", ["a"], buckets=buckets, registry=reference_registry)
    for a, amount in ops:
        plain.labels(a).observe(amount)
        reference.labels(a).observe(amount)
    assert _lines(plain_registry) == _lines(reference_registry)


def test_plain_family_labels_are_checked_and_stringified() -> None:
    family = PlainCounter("test_n", "N", ["a", "b"], CollectorRegistry())
    try:
        family.labels("only-one")
    except ValueError:
        pass
    else:
        raise AssertionError("a wrong number of label values must fail, as in prometheus-client")
    family.labels("1", "2").inc()
    family.labels(1, 2).inc()  # type: ignore[arg-type]  # the same series, as prometheus-client's str()
    assert [s.value for m in family.collect() for s in m.samples] == [2.0]


class _Reference:
    """The LLM metrics recorded the plain way: per call, every capped label computed, one
    prometheus-client child per series (what `LlmMetrics` did before its row cache)."""

    def __init__(self, config: Config, m: Metrics) -> None:
        self.registry = CollectorRegistry()

        def counter(family: PlainCounter) -> Counter:
            return Counter(family._name, family._documentation, family._labelnames, registry=self.registry)

        def histogram(family: PlainHistogram) -> Histogram:
            return Histogram(family._name, family._documentation, family._labelnames, buckets=family._bounds,
                             registry=self.registry)

        self.requests, self.tokens = counter(m.llm_requests), counter(m.llm_tokens)
        self.cost, self.unpriced = counter(m.llm_cost), counter(m.llm_unpriced)
        self.duration, self.input_tokens = histogram(m.llm_duration), histogram(m.llm_input_tokens_per_call)
        self.model, self.response_model = _Capped(config.max_models), _Capped(config.max_models)
        self.service, self.tenant = _Capped(config.max_services), _Capped(config.max_tenants)
        self.app, self.environment = _Capped(config.max_apps), _Capped(config.max_environments)

    def record(self, call: LlmCall) -> None:
        model = self.model(call.request_model or call.response_model)
        service, provider = self.service(call.service), call.provider or "unknown"
        answered = self.response_model(call.response_model) if call.response_model else ""
        app = self.app(call.app)
        owner = (self.tenant(call.tenant), app, self.environment(call.environment))
        self.requests.labels(service, provider, model, answered, call.operation or "unknown",
                             "error" if call.error else "ok", *owner).inc()
        for kind, count in (("input", call.input_tokens), ("output", call.output_tokens),
                            ("cache_read", call.cache_read_tokens), ("cache_write", call.cache_write_tokens),
                            ("reasoning", call.reasoning_tokens)):
            if count:
                self.tokens.labels(service, provider, model, kind, *owner).inc(count)
        if call.input_tokens is not None:
            self.input_tokens.labels(app, model).observe(call.input_tokens)
        if call.cost_usd is not None and call.cost_source:
            self.cost.labels(service, provider, model, call.cost_source, *owner).inc(call.cost_usd)
        elif call.cost_source == "unknown":
            self.unpriced.labels(provider, model).inc()
        duration = (call.end_time_unix_nano - call.start_time_unix_nano) / 1e9
        if duration >= 0 and call.end_time_unix_nano:
            self.duration.labels(service, provider, model, *owner).observe(duration)


_NAME = st.one_of(st.none(), st.sampled_from(["", "m1", "m2", "m3", "m4", "m5"]))
_TOKENS = st.one_of(st.none(), st.integers(0, 300_000))


@st.composite
def _calls(draw: st.DrawFn) -> LlmCall:
    start = draw(st.integers(0, 10**18))
    return LlmCall(
        span=Span(), service=draw(st.sampled_from(["", "svc-a", "svc-b", "svc-c"])),
        operation=draw(st.sampled_from(["", "chat", "embeddings"])), provider=draw(st.sampled_from([None, "openai", "x"])),
        provider_inferred=False, request_model=draw(_NAME), response_model=draw(_NAME),
        input_tokens=draw(_TOKENS), output_tokens=draw(_TOKENS), cache_read_tokens=draw(_TOKENS),
        cache_write_tokens=draw(_TOKENS), reasoning_tokens=draw(_TOKENS), service_tier=None, reported_cost=None,
        reported_cost_key=None, start_time_unix_nano=start,
        end_time_unix_nano=draw(st.sampled_from([0, start, start + 1_500_000_000, max(0, start - 1)])),
        error=draw(st.booleans()), cost_usd=draw(st.one_of(st.none(), st.floats(0, 10), st.just(0.0))),
        cost_source=draw(st.sampled_from([None, "", "computed", "reported", "unknown"])),
        tenant=draw(st.sampled_from([None, "t1", "t2", "t3"])), app=draw(st.sampled_from([None, "a1", "a2", "a3"])),
        environment=draw(st.sampled_from([None, "prod", "dev"])))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(_calls(), max_size=12), max_size=6), st.booleans(), st.integers(1, 4))
def test_llm_metrics_expose_what_per_call_recording_does(batches: list[list[LlmCall]], tight: bool,
                                                        max_rows: int) -> None:
    config = Config(max_models=2, max_services=2, max_tenants=1, max_apps=2, max_environments=1) if tight else Config()
    metrics = Metrics()
    reference = _Reference(config, metrics)
    process = LlmMetrics(config, metrics)
    saved = llm_metrics._MAX_ROWS
    llm_metrics._MAX_ROWS = max_rows  # the row cache starting afresh must change nothing
    try:
        for calls in batches:
            class _Batch:
                llm_calls = calls
            process(_Batch)  # type: ignore[arg-type]
            for call in calls:
                reference.record(call)
    finally:
        llm_metrics._MAX_ROWS = saved
    assert _lines(metrics.registry, "otelgate_llm_") == _lines(reference.registry, "otelgate_llm_")
    assert len(process._rows) <= max(max_rows, 1)
