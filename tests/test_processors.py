"""What every processor owes the pipeline, and the LLM metrics' label cap."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.batch import Batch, RequestContext, count_spans
from gateway.config import ConfigError, parse
from gateway.llm.call import LlmCall
from gateway.otlp.wire import splice
from gateway.pipeline import build_processors
from gateway.processors import ProcessorContext
from gateway.processors.llm_metrics import Config as MetricsConfig, LlmMetrics
from gateway.registry import PROCESSORS
from gateway.telemetry import Metrics
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records


def _batches() -> list[tuple[bytes, Batch]]:
    out = []
    for name in TRACE_FIXTURES:
        for body in read_records(FIXTURES / f"{name}.otlp.bin"):
            request = ExportTraceServiceRequest.FromString(body)
            out.append((body, Batch(request, count_spans(request), RequestContext("test"), raw=body)))
    return out


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_a_processor_that_edits_says_what_it_edited(name: str) -> None:
    """A sink writes the received bytes (with the touched spans spliced in) instead of serializing
    the request: an edit not announced (`batch.touch` for an edited span, `batch.raw = None` for
    anything else) would be lost."""
    config = parse("sinks: {a: {type: file}}\n"  # every processor on, redaction editing every LLM span
                   "pipeline: {redact: {enabled: true, content: hash, hash_secret: 0123456789abcdef}}", environ={})
    chain = build_processors(config, Metrics())
    names = [n for n, m in PROCESSORS.items() if getattr(config.pipeline, n).enabled]
    assert names == list(PROCESSORS)
    upto = names.index(name) + 1
    for body, batch in _batches():
        for process in chain[:upto - 1]:
            batch = process(batch)
        before = batch.request.SerializeToString()
        batch.raw = before
        batch = chain[upto - 1](batch)
        after = batch.request.SerializeToString()
        if after != before:
            assert batch.raw is None, f"{name} edited the request but left batch.raw"
        if batch.received is not None and batch.touched:  # below the threshold too (most fixture spans are calls)
            rss = batch.request.resource_spans
            spliced = splice(batch.received, {(ri, si, ki): rss[ri].scope_spans[si].spans[ki].SerializeToString()
                                              for ri, si, ki in batch.touched})
            assert spliced == after, f"{name} edited spans it did not touch"
        assert batch.serialized() == after


def test_default_chain_order() -> None:
    config = parse("sinks: {a: {type: file}}", environ={})
    assert list(PROCESSORS) == ["normalize", "price", "account", "llm_metrics", "feedback", "redact"]
    assert len(build_processors(config, Metrics())) == 5  # redact is off by default
    off = parse("sinks: {a: {type: file}}\npipeline: {normalize: {enabled: false}, price: {enabled: false}}", environ={})
    assert len(build_processors(off, Metrics())) == 3


@pytest.mark.parametrize("text, fragment", [
    ("pipeline: {normalise: {}}", "pipeline.normalise: unknown key"),
    ("pipeline: {normalize: {enabled: false}}", "pipeline.price: pricing reads what pipeline.normalize finds"),
    ("pipeline: {llm_metrics: {max_models: 0}}", "pipeline.llm_metrics.max_models"),
])
def test_pipeline_config_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse("sinks: {a: {type: file}}\n" + text, environ={})
    assert any(fragment in e for e in err.value.errors), err.value.errors


def _call(model: str, service: str = "svc", **kw: object) -> LlmCall:
    base = dict(span=Span(), service=service, operation="chat", provider="openai", provider_inferred=False,
                request_model=model, response_model=None, input_tokens=10, output_tokens=5, cache_read_tokens=None,
                cache_write_tokens=None, reasoning_tokens=None, service_tier=None, reported_cost=None,
                reported_cost_key=None, start_time_unix_nano=1_000_000_000, end_time_unix_nano=3_500_000_000, error=False,
                cost_usd=0.001, cost_source="computed")
    base.update(kw)
    return LlmCall(**base)  # type: ignore[arg-type]


def test_llm_metric_labels_are_capped() -> None:
    metrics = Metrics()
    record = LlmMetrics(MetricsConfig(max_models=3, max_services=2), metrics)
    calls = [_call(f"model-{i}", service=f"svc-{i % 4}") for i in range(10)]
    record(Batch(ExportTraceServiceRequest(), 10, RequestContext("test"), llm_calls=calls))
    get = metrics.registry.get_sample_value
    models = {s.labels["model"] for m in metrics.registry.collect() if m.name == "otelgate_llm_requests"
              for s in m.samples}
    services = {s.labels["service"] for m in metrics.registry.collect() if m.name == "otelgate_llm_requests"
                for s in m.samples}
    assert models == {"model-0", "model-1", "model-2", "__other__"}
    assert services == {"svc-0", "svc-1", "__other__"}
    total = sum(s.value for m in metrics.registry.collect() if m.name == "otelgate_llm_requests" for s in m.samples
                if s.name.endswith("_total"))
    assert total == 10
    assert get("otelgate_llm_tokens_total", {"service": "svc-0", "provider": "openai", "model": "model-0", "type": "input",
                                             **_NO_OWNER}) == 10
    assert get("otelgate_llm_request_duration_seconds_sum",
               {"service": "svc-0", "provider": "openai", "model": "model-0", **_NO_OWNER}) == pytest.approx(2.5)


def test_llm_metrics_count_unpriced_and_errors() -> None:
    metrics = Metrics()
    record = LlmMetrics(MetricsConfig(), metrics)
    calls = [_call("mystery", cost_usd=None, cost_source="unknown"), _call("gpt-4o", error=True, input_tokens=None,
                                                                          output_tokens=None, cost_usd=None, cost_source=None)]
    record(Batch(ExportTraceServiceRequest(), 2, RequestContext("test"), llm_calls=calls))
    get = metrics.registry.get_sample_value
    assert get("otelgate_llm_unpriced_spans_total", {"provider": "openai", "model": "mystery"}) == 1
    assert get("otelgate_llm_requests_total", {"service": "svc", "provider": "openai", "model": "gpt-4o",
                                               "response_model": "", "operation": "chat", "status": "error", **_NO_OWNER}) == 1
    assert get("otelgate_llm_cost_usd_total", {"service": "svc", "provider": "openai", "model": "gpt-4o", "source": "computed",
                                               **_NO_OWNER}) is None
    assert get("otelgate_llm_input_tokens_per_call_count", {"app": "unknown", "model": "gpt-4o"}) is None


_NO_OWNER = {"tenant": "unknown", "app": "unknown", "environment": "unknown"}


def test_llm_metrics_label_tenant_app_environment_capped() -> None:
    """The owner labels come from attribution, each capped on its own; users never become labels."""
    metrics = Metrics()
    record = LlmMetrics(MetricsConfig(max_tenants=2, max_apps=2, max_environments=1), metrics)
    calls = [_call("gpt-4o", tenant=f"t{i}", app=f"app{i}", environment=f"env{i}", user=f"user{i}", input_tokens=1000 * (i + 1))
             for i in range(4)]
    record(Batch(ExportTraceServiceRequest(), 4, RequestContext("test"), llm_calls=calls))
    get = metrics.registry.get_sample_value
    base = {"service": "svc", "provider": "openai", "model": "gpt-4o", "response_model": "", "operation": "chat", "status": "ok"}
    assert get("otelgate_llm_requests_total", {**base, "tenant": "t0", "app": "app0", "environment": "env0"}) == 1
    assert get("otelgate_llm_requests_total", {**base, "tenant": "t1", "app": "app1", "environment": "__other__"}) == 1
    assert get("otelgate_llm_requests_total", {**base, "tenant": "__other__", "app": "__other__",
                                               "environment": "__other__"}) == 2
    labels = {k for m in metrics.registry.collect() if m.name.startswith("otelgate_llm") for s in m.samples for k in s.labels}
    assert "user" not in labels and "session" not in labels
    # input tokens per call: 1000, 2000 for app0/app1; 3000 + 4000 under __other__
    assert get("otelgate_llm_input_tokens_per_call_sum", {"app": "__other__", "model": "gpt-4o"}) == 7000
    assert get("otelgate_llm_input_tokens_per_call_count", {"app": "app0", "model": "gpt-4o"}) == 1
    assert get("otelgate_llm_input_tokens_per_call_bucket", {"app": "app1", "model": "gpt-4o", "le": "1000.0"}) == 0
    assert get("otelgate_llm_input_tokens_per_call_bucket", {"app": "app1", "model": "gpt-4o", "le": "2000.0"}) == 1


def test_pricing_is_the_same_whatever_keep_originals() -> None:
    """The pricer writes through the normalizer's attribute index; removing aliases must not break it."""
    costs = {}
    for keep in (True, False):
        config = parse(f"sinks: {{a: {{type: file}}}}\npipeline: {{normalize: {{keep_originals: {str(keep).lower()}}}}}",
                       environ={})
        chain = build_processors(config, Metrics())
        got = {}
        for _, batch in _batches():
            for process in chain:
                batch = process(batch)
            for span in (s for rs in batch.request.resource_spans for ss in rs.scope_spans for s in ss.spans):
                attrs = {kv.key: kv.value for kv in span.attributes}
                if "gen_ai.usage.cost" in attrs:
                    got[span.span_id] = (attrs["gen_ai.usage.cost"].double_value, attrs["otelgate.cost.source"].string_value)
        costs[keep] = got
    assert costs[True] == costs[False]
    assert len(costs[True]) >= 30
