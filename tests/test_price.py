"""The pricer: `gateway.llm.pricing` (price engine) and `pipeline.price` (processor).

Expected prices are written here from the providers' published price pages (USD per million
tokens), not read from genai-prices; the property tests then hold the fast path to
`genai_prices.calc_price` itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from genai_prices import types as gp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import ValidationError

from gateway.batch import Batch, RequestContext
from gateway.llm.call import COST, COST_INPUT, COST_OUTPUT, COST_SOURCE, PRICE_MODEL, LlmCall
from gateway.llm.pricing import Override, PriceTable, RefreshConfig, parse_price_data
from gateway.llm.providers import GENAI_PRICES_PROVIDER, strip_provider_prefix
from gateway.processors import ProcessorContext
from gateway.processors.price import Config, PriceProcessor, create
from gateway.telemetry import Metrics

LOGGER = "otelgate.processor.price"
SEP_2025 = datetime(2025, 9, 1, 12, tzinfo=UTC)
NOV_2026 = datetime(2026, 11, 2, 12, tzinfo=UTC)


def ns(dt: datetime) -> int:
    return int((dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)) * 1000


# --------------------------------------------------------------------------------------------
# helpers


def make_batch(n: int = 1) -> tuple[Batch, list[Span]]:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    spans = [scope.spans.add(name="chat", span_id=bytes([i + 1]) * 8, trace_id=b"\x01" * 16) for i in range(n)]
    return Batch(request, n, RequestContext("http"), raw=b"received bytes"), spans


def make_call(span: Span | None = None, **kw: Any) -> LlmCall:
    fields: dict[str, Any] = {
        "span": span if span is not None else Span(name="chat"),
        "service": "svc", "operation": "chat", "provider": "openai", "provider_inferred": False,
        "request_model": None, "response_model": None, "input_tokens": None, "output_tokens": None,
        "cache_read_tokens": None, "cache_write_tokens": None, "reasoning_tokens": None, "service_tier": None,
        "reported_cost": None, "reported_cost_key": None, "start_time_unix_nano": ns(SEP_2025),
        "end_time_unix_nano": ns(SEP_2025) + 1_000_000_000, "error": False,
    }
    fields.update(kw)
    span = fields["span"]
    span.start_time_unix_nano = fields["start_time_unix_nano"]
    span.end_time_unix_nano = fields["end_time_unix_nano"]
    return LlmCall(**fields)


def attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        assert kv.key not in out, f"duplicate attribute {kv.key}"
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def run(processor: PriceProcessor, *calls: LlmCall) -> Batch:
    batch, _ = make_batch(0)
    batch.llm_calls = list(calls)
    return processor(batch)


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable()


@pytest.fixture
def pricer() -> Iterator[PriceProcessor]:
    processor = create(Config(), ProcessorContext(Metrics()))
    assert isinstance(processor, PriceProcessor)
    yield processor
    processor.close()


@pytest.fixture
def price_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Records of the processor's logger, even if `gateway.logs.configure` stopped propagation."""
    logger = logging.getLogger(LOGGER)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def expected_usd(inp: int, out: int, cr: int, cw: int, p_in: float, p_out: float, p_cr: float | None = None,
                 p_cw: float | None = None) -> tuple[float, float]:
    p_cr = p_in if p_cr is None else p_cr
    p_cw = p_in if p_cw is None else p_cw
    return ((inp - cr - cw) * p_in + cr * p_cr + cw * p_cw) / 1e6, out * p_out / 1e6


# --------------------------------------------------------------------------------------------
# computed prices against the published price pages

# model, provider, input, cached input (read), cache write (Anthropic 5-minute), output: USD / MTok
PUBLISHED = [
    ("gpt-4o-mini-2024-07-18", "openai", 0.15, 0.075, None, 0.60, "openai/gpt-4o-mini"),
    ("gpt-4.1-2025-04-14", "openai", 2.00, 0.50, None, 8.00, "openai/gpt-4.1"),
    ("o3-mini-2025-01-31", "openai", 1.10, 0.55, None, 4.40, "openai/o3-mini"),
    ("o4-mini-2025-04-16", "openai", 1.10, 0.275, None, 4.40, "openai/o4-mini"),
    ("text-embedding-3-small", "openai", 0.02, None, None, 0.0, "openai/text-embedding-3-small"),
    ("claude-sonnet-4-20250514", "anthropic", 3.00, 0.30, 3.75, 15.00, "anthropic/claude-sonnet-4-0"),
    ("claude-3-5-haiku-20241022", "anthropic", 0.80, 0.08, 1.00, 4.00, "anthropic/claude-3-5-haiku-latest"),
]


@pytest.mark.parametrize(("model", "provider", "p_in", "p_cr", "p_cw", "p_out", "matched"), PUBLISHED,
                         ids=[p[0] for p in PUBLISHED])
def test_computed_price_matches_published_prices(pricer: PriceProcessor, model: str, provider: str, p_in: float,
                                                 p_cr: float | None, p_cw: float | None, p_out: float,
                                                 matched: str) -> None:
    embedding = model.startswith("text-embedding")
    inp, cr = 12_000, (0 if embedding else 4_000)
    cw = 1_500 if provider == "anthropic" else 0
    out = 0 if embedding else 700
    call = make_call(provider=provider, request_model=model.split("-20")[0], response_model=model,
                     input_tokens=inp, output_tokens=None if embedding else out,
                     cache_read_tokens=cr or None, cache_write_tokens=cw or None)
    batch = run(pricer, call)
    want_in, want_out = expected_usd(inp, out, cr, cw, p_in, p_out, p_cr, p_cw)
    got = attrs(call.span)
    assert got[COST_SOURCE] == "computed"
    assert got[PRICE_MODEL] == matched
    assert got[COST_INPUT] == pytest.approx(want_in, rel=1e-9)
    assert got[COST_OUTPUT] == pytest.approx(want_out, rel=1e-9, abs=1e-15)
    assert got[COST] == pytest.approx(want_in + want_out, rel=1e-9)
    assert (call.cost_usd, call.cost_input_usd, call.cost_output_usd) == (got[COST], got[COST_INPUT], got[COST_OUTPUT])
    assert (call.cost_source, call.price_model) == ("computed", matched)
    assert batch.raw is None  # the request changed: no sink may write the received bytes


def test_provider_prefix_and_inferred_provider(table: PriceTable) -> None:
    a = table.quote("openai/gpt-4o-mini", "openai", input_tokens=1_000_000, output_tokens=1_000_000, at=SEP_2025)
    b = table.quote("gpt-4o-mini", None, input_tokens=1_000_000, output_tokens=1_000_000, at=SEP_2025)
    assert a is not None and b is not None
    assert a.total_usd == b.total_usd == pytest.approx(0.15 + 0.60)
    # Azure OpenAI, Bedrock and Vertex names of published models
    azure = table.quote("gpt-4o", "azure.ai.openai", input_tokens=1_000_000, at=SEP_2025)
    bedrock = table.quote("us.anthropic.claude-sonnet-4-20250514-v1:0", "aws.bedrock", input_tokens=1_000_000,
                          output_tokens=1_000_000, at=SEP_2025)
    vertex = table.quote("claude-sonnet-4@20250514", "gcp.vertex_ai", input_tokens=1_000_000,
                         output_tokens=1_000_000, at=SEP_2025)
    assert azure is not None and azure.total_usd == pytest.approx(2.50)
    assert bedrock is not None and bedrock.total_usd == pytest.approx(3 + 15)
    assert vertex is not None and vertex.total_usd == pytest.approx(3 + 15)
    # a provider genai-prices does not know (self-hosted) is never priced from the model name alone
    assert table.quote("gpt-4o-mini", "ollama", input_tokens=1000) is None
    assert table.quote("", "openai", input_tokens=1000) is None


def test_tiered_long_context_prices(table: PriceTable) -> None:
    # Gemini 2.5 Pro: $1.25 in / $10 out up to 200k prompt tokens, $2.50 / $15 above (all tokens)
    small = table.quote("gemini-2.5-pro", "gcp.gemini", input_tokens=200_000, output_tokens=1000, at=SEP_2025)
    large = table.quote("gemini-2.5-pro", "gcp.gemini", input_tokens=200_001, output_tokens=1000, at=SEP_2025)
    assert small is not None and large is not None
    assert small.total_usd == pytest.approx((200_000 * 1.25 + 1000 * 10) / 1e6)
    assert large.total_usd == pytest.approx((200_001 * 2.50 + 1000 * 15) / 1e6)
    assert (large.input_per_mtok, large.output_per_mtok) == (2.5, 15.0)
    # Claude Sonnet 4.5 1M context: $3 / $15, above 200k input $6 / $22.50
    long = table.quote("claude-sonnet-4-5-20250929", "anthropic", input_tokens=300_000, output_tokens=2000,
                       at=SEP_2025)
    assert long is not None and long.total_usd == pytest.approx((300_000 * 6 + 2000 * 22.5) / 1e6)


def test_historic_price_by_span_start_time(pricer: PriceProcessor) -> None:
    # OpenAI cut o3 from $10 / $40 to $2 / $8 on 2025-06-10.
    before = make_call(response_model="o3-2025-04-16", input_tokens=100_000, output_tokens=10_000,
                       start_time_unix_nano=ns(datetime(2025, 6, 9, 23, 59, tzinfo=UTC)))
    after = make_call(response_model="o3-2025-04-16", input_tokens=100_000, output_tokens=10_000,
                      start_time_unix_nano=ns(datetime(2025, 6, 10, 0, 1, tzinfo=UTC)))
    run(pricer, before, after)
    assert before.cost_usd == pytest.approx((100_000 * 10 + 10_000 * 40) / 1e6)
    assert after.cost_usd == pytest.approx((100_000 * 2 + 10_000 * 8) / 1e6)


def test_service_tier(pricer: PriceProcessor) -> None:
    # o4-mini: standard $1.10 / $4.40, flex $0.55 / $2.20, priority $2 / $8
    def priced(tier: str | None) -> float | None:
        call = make_call(response_model="o4-mini-2025-04-16", input_tokens=1_000_000, output_tokens=1_000_000,
                         service_tier=tier, start_time_unix_nano=ns(NOV_2026))
        run(pricer, call)
        return call.cost_usd

    assert priced(None) == pytest.approx(1.10 + 4.40)
    assert priced("default") == pytest.approx(1.10 + 4.40)
    assert priced("flex") == pytest.approx(0.55 + 2.20)
    assert priced("priority") == pytest.approx(2.00 + 8.00)
    assert priced("no-such-tier") == pytest.approx(1.10 + 4.40)


def test_response_model_unknown_falls_back_to_request_model(pricer: PriceProcessor) -> None:
    call = make_call(request_model="gpt-4o-mini", response_model="gpt-4o-mini-snapshot-from-the-future-x",
                     input_tokens=1_000_000, output_tokens=0)
    run(pricer, call)
    assert call.cost_source == "computed" and call.price_model == "openai/gpt-4o-mini"
    assert call.cost_usd == pytest.approx(0.15)


def test_cache_tokens_not_included_in_input_are_counted_in(table: PriceTable) -> None:
    # inconsistent usage (cache reads > input): priced as if input included them, never negative
    q = table.quote("gpt-4o-mini", "openai", input_tokens=10, cache_read_tokens=1_000_000, at=SEP_2025)
    assert q is not None and q.input_usd == pytest.approx(0.075)


# --------------------------------------------------------------------------------------------
# overrides


def test_overrides_exact_regex_provider_scoped_and_precedence() -> None:
    table = PriceTable([
        Override(name="negotiated-mini", model="gpt-4o-mini", provider="openai", input_per_mtok=0.1,
                 output_per_mtok=0.4, cache_read_per_mtok=0.01),
        Override(model_regex=r"ft:gpt-4o-mini:acme:.*", input_per_mtok=0.3, output_per_mtok=1.2),
        Override(model="llama3.1:8b", provider="ollama", input_per_mtok=0.0, output_per_mtok=0.0),
        Override(name="gpu-box", model_regex=r"llama3.*", input_per_mtok=0.05, output_per_mtok=0.05,
                 cache_write_per_mtok=0.5),
    ])
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000, "cache_read_tokens": 200_000, "at": SEP_2025}

    q = table.quote("gpt-4o-mini-2024-07-18", "openai", **usage)  # not the exact name: genai-prices
    assert q is not None and q.source == "computed"
    q = table.quote("gpt-4o-mini", "openai", **usage)  # exact, wins over genai-prices
    assert q is not None and (q.source, q.matched) == ("override", "negotiated-mini")
    assert q.input_usd == pytest.approx(0.8 * 0.1 + 0.2 * 0.01) and q.output_usd == pytest.approx(0.4)
    q = table.quote("openai/GPT-4o-mini", "openai", **usage)  # prefix stripped, case-insensitive
    assert q is not None and q.matched == "negotiated-mini"
    q = table.quote("gpt-4o-mini", "azure.ai.openai", **usage)  # scoped to openai: not azure
    assert q is not None and q.source == "computed"

    q = table.quote("ft:gpt-4o-mini:acme:support:abc123", "openai", **usage)  # regex; cache read = input price
    assert q is not None and (q.source, q.matched) == ("override", r"ft:gpt-4o-mini:acme:.*")
    assert q.total_usd == pytest.approx(0.3 + 1.2)
    assert table.quote("xft:gpt-4o-mini:acme:x", "openai", **usage) is None  # regex must match the whole name

    q = table.quote("llama3.1:8b", "ollama", **usage)
    assert q is not None and q.matched == "llama3.1:8b" and q.total_usd == 0.0
    q = table.quote("llama3.1:8b", "vllm", input_tokens=1_000_000, cache_write_tokens=100_000)  # not ollama
    assert q is not None and q.matched == "gpu-box"
    assert q.input_usd == pytest.approx(0.9 * 0.05 + 0.1 * 0.5)


def test_override_through_processor() -> None:
    processor = create(Config(overrides=[Override(model="my-finetune", input_per_mtok=2, output_per_mtok=6)]),
                       ProcessorContext(Metrics()))
    call = make_call(provider=None, request_model="my-finetune", input_tokens=500_000, output_tokens=100_000)
    run(processor, call)
    got = attrs(call.span)
    assert got[COST_SOURCE] == "override" and got[PRICE_MODEL] == "my-finetune"
    assert got[COST] == pytest.approx(1.0 + 0.6) and got[COST_INPUT] == pytest.approx(1.0)


def test_config_rejects_bad_overrides_and_refresh() -> None:
    with pytest.raises(ValidationError, match="exactly one of `model`"):
        Override(model="a", model_regex="b", input_per_mtok=1, output_per_mtok=1)
    with pytest.raises(ValidationError, match="exactly one of `model`"):
        Override(input_per_mtok=1, output_per_mtok=1)
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        Override(model_regex="gpt-(", input_per_mtok=1, output_per_mtok=1)
    with pytest.raises(ValidationError):
        Override(model="a", input_per_mtok=-1, output_per_mtok=1)
    with pytest.raises(ValidationError, match="exactly one of `url` or `file`"):
        RefreshConfig(url="https://example.com/data.json", file="/tmp/x.json")
    with pytest.raises(ValidationError):
        Config.model_validate({"overrides": [{"model": "a", "input_per_mtok": 1, "output_per_mtok": 1, "typo": 1}]})
    cfg = Config.model_validate({"refresh": {"file": "/tmp/prices.json", "interval": "10m"}})
    assert cfg.refresh is not None and cfg.refresh.interval == 600.0


# --------------------------------------------------------------------------------------------
# unknown, reported, idempotent, nothing to price


def test_unknown_model_is_marked_and_logged_once(pricer: PriceProcessor, price_log: pytest.LogCaptureFixture) -> None:
    for _ in range(3):
        calls = [make_call(provider="openai", response_model="gpt-unheard-of-9", input_tokens=10, output_tokens=5)
                 for _ in range(20)]
        batch = run(pricer, *calls)
        assert batch.raw is None
        for call in calls:
            assert attrs(call.span) == {COST_SOURCE: "unknown"}
            assert call.cost_source == "unknown" and call.cost_usd is None
    other = make_call(provider=None, response_model="mystery-model", input_tokens=10)
    run(pricer, other, make_call(provider=None, response_model="mystery-model", input_tokens=1))
    lines = [r for r in price_log.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(lines) == 2
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["model"] == "gpt-unheard-of-9" and fields["provider"] == "openai"
    assert fields["fix"] == ("add to pipeline.price.overrides: {model: gpt-unheard-of-9, provider: openai, "
                            "input_per_mtok: <USD>, output_per_mtok: <USD>}")


def test_reported_cost_is_kept(pricer: PriceProcessor) -> None:
    span = Span(name="chat")
    span.attributes.append(KeyValue(key="llm.cost.total", value={"double_value": 0.0123}))
    call = make_call(span, response_model="gpt-4o-mini", input_tokens=1000, output_tokens=100,
                     reported_cost=0.0123, reported_cost_key="llm.cost.total")
    run(pricer, call)
    got = attrs(span)
    assert got[COST] == 0.0123 and got[COST_SOURCE] == "reported"
    assert COST_INPUT not in got and COST_OUTPUT not in got and PRICE_MODEL not in got
    assert (call.cost_usd, call.cost_source, call.cost_input_usd) == (0.0123, "reported", None)

    # already under gen_ai.usage.cost (OpenLIT): not written twice; an emitter's split is kept
    span = Span(name="chat")
    span.attributes.append(KeyValue(key=COST, value={"double_value": 0.5}))
    span.attributes.append(KeyValue(key="llm.cost.prompt", value={"double_value": 0.2}))
    span.attributes.append(KeyValue(key="llm.cost.completion", value={"double_value": 0.3}))
    call = make_call(span, response_model="gpt-4o-mini", input_tokens=1000, reported_cost=0.5,
                     reported_cost_key=COST)
    run(pricer, call)
    got = attrs(span)  # asserts no duplicate keys
    assert got[COST] == 0.5 and got[COST_SOURCE] == "reported"
    assert (got[COST_INPUT], got[COST_OUTPUT]) == (0.2, 0.3)
    assert (call.cost_input_usd, call.cost_output_usd) == (0.2, 0.3)


def test_second_pass_changes_nothing(pricer: PriceProcessor) -> None:
    for kw in ({"response_model": "gpt-4o-mini", "input_tokens": 1000, "output_tokens": 10},
               {"response_model": "no-such-model-x", "input_tokens": 1000}):
        first = make_call(**kw)
        run(pricer, first)
        before = first.span.SerializeToString()
        # a second otelgate: the normalizer may even have read the cost as "reported"
        again = make_call(first.span, **kw, reported_cost=first.cost_usd,
                          reported_cost_key=COST if first.cost_usd is not None else None)
        batch = run(pricer, again)
        assert first.span.SerializeToString() == before
        assert batch.raw == b"received bytes"
        assert (again.cost_usd, again.cost_input_usd, again.cost_output_usd, again.cost_source, again.price_model) == (
            first.cost_usd, first.cost_input_usd, first.cost_output_usd, first.cost_source, first.price_model)


def test_call_without_tokens_is_not_priced(pricer: PriceProcessor) -> None:
    call = make_call(response_model="gpt-4o-mini", error=True)
    batch = run(pricer, call)
    assert attrs(call.span) == {} and call.cost_source is None and call.cost_usd is None
    assert batch.raw == b"received bytes"
    # a failed call whose emitter reported a zero cost (Langfuse): still nothing to say
    zero = make_call(response_model="gpt-4o-mini", error=True, reported_cost=0.0,
                     reported_cost_key="langfuse.observation.cost_details")
    run(pricer, zero)
    assert attrs(zero.span) == {} and zero.cost_source is None
    # ... but a non-zero figure the emitter reported without usage is kept
    fee = make_call(response_model="sonar", provider="perplexity", reported_cost=0.005, reported_cost_key="llm.cost.total")
    run(pricer, fee)
    assert attrs(fee.span) == {COST: 0.005, COST_SOURCE: "reported", "gen_ai.usage.cost.amount": 0.005,
                               "gen_ai.usage.cost.currency": "USD", "gen_ai.usage.cost.source": "reported"}
    assert fee.cost_source == "reported"
    empty, _ = make_batch(1)
    assert pricer(empty) is empty and empty.raw == b"received bytes"  # llm_calls None: normalizer did not run


def test_zero_start_time_prices_as_of_now(pricer: PriceProcessor) -> None:
    call = make_call(response_model="gpt-4o-mini", input_tokens=1_000_000, start_time_unix_nano=0)
    run(pricer, call)
    assert call.cost_usd == pytest.approx(0.15)


# --------------------------------------------------------------------------------------------
# caches, speed


def test_caches_are_bounded() -> None:
    table = PriceTable(cache_size=100)
    for i in range(1000):
        assert table.quote(f"random-model-{i}", "openai", input_tokens=1) is None
        assert table.quote(f"random-model-{i}", None, input_tokens=1) is None
    assert len(table._data.entries) <= 100
    assert table.quote("gpt-4o-mini", "openai", input_tokens=1_000_000, at=SEP_2025) is not None


def test_warm_quote_takes_microseconds(table: PriceTable) -> None:
    cases = [("gpt-4o-mini-2024-07-18", "openai", None), ("o3", "openai", None), ("gemini-2.5-pro", "gcp.gemini", None),
             ("o4-mini", "openai", "flex"), ("deepseek-chat", "deepseek", None)]
    at = ns(NOV_2026)
    for model, provider, tier in cases:
        table.quote(model, provider, input_tokens=300_000, output_tokens=100, at=at, service_tier=tier)
    n = 20_000
    start = time.perf_counter()
    for i in range(n):
        model, provider, tier = cases[i % len(cases)]
        table.quote(model, provider, input_tokens=300_000 + i, output_tokens=100, cache_read_tokens=1000, at=at,
                    service_tier=tier)
    per_quote_us = (time.perf_counter() - start) / n * 1e6
    print(f"warm quote: {per_quote_us:.2f} us")
    assert per_quote_us < 50  # ~1.5 us here; genai-prices itself takes 50-200 us


# --------------------------------------------------------------------------------------------
# property tests: the fast path is genai-prices; prices are monotone


MODELS = [  # (model as a span reports it, canonical provider or None)
    ("gpt-4o-mini-2024-07-18", "openai"),
    ("gpt-4o-2024-08-06", "openai"),
    ("openai/gpt-4o-mini", "openai"),
    ("gpt-4o", None),
    ("gpt-4o", "azure.ai.openai"),  # Azure, priced through its fallback to OpenAI's entry
    ("o3", "openai"),  # price change 2025-06-10
    ("o4-mini-2025-04-16", "openai"),  # service tiers from 2026-10-12
    ("gpt-5.6-luna", "openai"),  # tiers + a price change + tiered service tiers
    ("gpt-5.4-pro", "openai"),
    ("text-embedding-3-small", "openai"),
    ("claude-sonnet-4-20250514", "anthropic"),
    ("claude-sonnet-4-5-20250929", "anthropic"),  # tiered long context
    ("claude-sonnet-4-6", "anthropic"),  # tiered until 2026-03-13, flat after
    ("claude-3-5-haiku-20241022", None),
    ("claude-sonnet-4@20250514", "gcp.vertex_ai"),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", "aws.bedrock"),
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", "aws.bedrock"),
    ("gemini-2.5-pro", "gcp.gemini"),
    ("gemini-1.5-pro", "gcp.vertex_ai"),
    ("gemini-3-pro-preview", "gcp.gen_ai"),
    ("gemini-2.5-flash", "gcp.gemini"),
    ("deepseek-chat", "deepseek"),  # off-peak hours
    ("deepseek-v4-flash", "deepseek"),  # start dates and off-peak hours
    ("sonar", "perplexity"),  # a per-request fee
    ("grok-3", "x_ai"),
    ("mistral-large-latest", "mistral_ai"),
]
TIERS = [None, "default", "flex", "priority", "fast"]
CHANGES = [date(2025, 6, 10), date(2026, 1, 5), date(2026, 3, 13), date(2026, 7, 30), date(2026, 8, 17),
           date(2026, 9, 10), date(2026, 10, 12), date(2026, 10, 14), date(2027, 1, 1)]
T0, T1 = ns(datetime(2024, 6, 1, tzinfo=UTC)), ns(datetime(2027, 6, 1, tzinfo=UTC))

counts = st.one_of(st.integers(0, 2_000), st.integers(0, 400_000), st.sampled_from([0, 1, 127_999, 128_000, 200_000]))
# every tier threshold in genai-prices' data, and the token after it (tiers apply above the start)
THRESHOLDS = [32_000, 100_000, 128_000, 199_999, 200_000, 256_000, 272_000, 512_000, 524_288]
input_counts = st.one_of(st.integers(0, 2_000), st.integers(0, 600_000),
                         st.sampled_from([0, 1, *THRESHOLDS, *(t + 1 for t in THRESHOLDS)]))


@st.composite
def usages(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(input, output, cache read, cache write), input including the cache tokens."""
    inp = draw(input_counts)
    cr = draw(st.one_of(st.just(0), st.integers(0, inp)))
    cw = draw(st.one_of(st.just(0), st.integers(0, inp - cr)))
    return inp, draw(counts), cr, cw

instants = st.one_of(
    st.integers(T0, T1),
    st.builds(lambda d, off: ns(datetime(d.year, d.month, d.day, tzinfo=UTC)) + off,
              st.sampled_from(CHANGES), st.integers(-3_600_000_000_000, 3_600_000_000_000)),
    # around deepseek's off-peak boundaries (00:30, 01:00, 04:00, 06:00, 10:00, 16:30 UTC)
    st.builds(lambda d, t, off: ns(datetime.combine(d, t, UTC)) + off,
              st.dates(date(2025, 1, 1), date(2027, 1, 1)),
              st.sampled_from([dtime(0, 30), dtime(1), dtime(4), dtime(6), dtime(10), dtime(16, 30)]),
              st.integers(-2_000_000, 2_000_000)),
)


def genai_reference(model: str, provider: str | None, inp: int, out: int, cr: int, cw: int, at_ns: int,
                    tier: str | None) -> gp.PriceCalculation | None:
    provider_id = GENAI_PRICES_PROVIDER[provider] if provider else None
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at_ns // 1000)
    usage = Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cr, cache_write_tokens=cw)
    context = {"service_tier": tier} if tier else None
    for name in dict.fromkeys((model, strip_provider_prefix(model))):
        try:
            return calc_price(usage, name, provider_id=provider_id, genai_request_timestamp=when, price_context=context)
        except LookupError:
            continue
    return None


def close(a: float, b: Decimal) -> bool:
    return abs(a - float(b)) <= 1e-9 * abs(float(b)) + 1e-15


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MODELS), usages(), instants, st.sampled_from(TIERS))
def test_fast_path_equals_genai_prices(table: PriceTable, ref: tuple[str, str | None],
                                       usage: tuple[int, int, int, int], at_ns: int, tier: str | None) -> None:
    model, provider = ref
    inp, out, cr, cw = usage
    want = genai_reference(model, provider, inp, out, cr, cw, at_ns, tier)
    got = table.quote(model, provider, input_tokens=inp, output_tokens=out, cache_read_tokens=cr,
                      cache_write_tokens=cw, at=at_ns, service_tier=tier)
    assert want is not None, f"{model} should be known to genai-prices"
    assert got is not None
    assert close(got.total_usd, want.total_price), (got, want)
    assert close(got.input_usd, want.input_price), (got, want)
    assert close(got.output_usd, want.output_price), (got, want)
    assert got.matched == f"{want.provider.id}/{want.model.id}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(MODELS), counts, counts, counts, counts, instants, st.sampled_from(TIERS),
       st.sampled_from(["uncached", "cache_read", "cache_write", "output"]), st.integers(1, 300_000))
def test_price_is_monotone_in_each_token_count(table: PriceTable, ref: tuple[str, str | None], unc: int, cr: int,
                                               cw: int, out: int, at_ns: int, tier: str | None, which: str,
                                               more: int) -> None:
    # input includes cache tokens: one more cache token is also one more input token
    def total(unc: int, cr: int, cw: int, out: int) -> float:
        q = table.quote(ref[0], ref[1], input_tokens=unc + cr + cw, output_tokens=out, cache_read_tokens=cr,
                        cache_write_tokens=cw, at=at_ns, service_tier=tier)
        assert q is not None
        return q.total_usd

    base = total(unc, cr, cw, out)
    bigger = {"uncached": (unc + more, cr, cw, out), "cache_read": (unc, cr + more, cw, out),
              "cache_write": (unc, cr, cw + more, out), "output": (unc, cr, cw, out + more)}[which]
    assert total(*bigger) >= base - 1e-12


def test_fast_path_equals_genai_prices_at_every_boundary(table: PriceTable) -> None:
    """Exhaustively where a price flips: each change date (and off-peak hour) +-1 us, each tier threshold."""
    midnights = [ns(datetime(d.year, d.month, d.day, tzinfo=UTC)) for d in CHANGES]
    hours = [ns(datetime.combine(date(2026, 11, 2), t, UTC))
             for t in (dtime(0, 30), dtime(1), dtime(4), dtime(6), dtime(10), dtime(16, 30))]
    checked = 0
    for model, provider in MODELS:
        for tier in TIERS:
            cases = [(at + off, 1000, 50, 100, 10) for at in midnights + hours for off in (-1000, 0, 1000)]
            cases += [(ns(NOV_2026), t + d, 50, 1000, 500) for t in THRESHOLDS for d in (0, 1)]
            for at, inp, out, cr, cw in cases:
                want = genai_reference(model, provider, inp, out, cr, cw, at, tier)
                got = table.quote(model, provider, input_tokens=inp, output_tokens=out, cache_read_tokens=cr,
                                  cache_write_tokens=cw, at=at, service_tier=tier)
                assert want is not None and got is not None
                assert close(got.total_usd, want.total_price), (model, provider, tier, at, inp, got, want)
                assert close(got.input_usd, want.input_price) and close(got.output_usd, want.output_price)
                checked += 1
    assert checked > 5000


def test_unknown_names_agree_with_genai_prices(table: PriceTable) -> None:
    for model, provider in [("gpt-unknown-1", "openai"), ("claude-nothing", "anthropic"), ("zzz", None)]:
        assert genai_reference(model, provider, 10, 10, 0, 0, ns(SEP_2025), None) is None
        assert table.quote(model, provider, input_tokens=10, at=SEP_2025) is None


# --------------------------------------------------------------------------------------------
# refresh from a local file (no network in tests)


def to_raw(obj: Any) -> Any:
    """genai-prices objects back to the JSON data format its `UpdatePrices` fetches."""
    if isinstance(obj, list):
        return [to_raw(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_raw(v) for k, v in obj.items()}
    if isinstance(obj, Decimal):
        return float(obj)
    if isinstance(obj, (date, dtime)):
        return obj.isoformat()
    if isinstance(obj, gp.ModelPrice):
        return {k: to_raw(v) for k, v in obj.__dict__.items() if v is not None and not k.startswith("_")}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name.rstrip("_"): to_raw(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.init and not f.name.startswith("_") and getattr(obj, f.name) is not None}
    return obj


@pytest.fixture(scope="module")
def price_data() -> list[dict[str, Any]]:
    from genai_prices.data_snapshot import _bundled_snapshot

    return to_raw(_bundled_snapshot().providers)


def _with_gpt4o_mini_input_price(data: list[dict[str, Any]], price: float) -> list[dict[str, Any]]:
    data = json.loads(json.dumps(data))
    openai = next(p for p in data if p["id"] == "openai")
    model = next(m for m in openai["models"] if m["id"] == "gpt-4o-mini")
    assert isinstance(model["prices"], dict)
    model["prices"]["input_mtok"] = price
    return data


def test_refresh_from_file_swaps_prices(tmp_path: Path, price_data: list[dict[str, Any]],
                                        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "prices.json"
    table = PriceTable(refresh=RefreshConfig(file=str(path)))

    def price() -> float | None:
        q = table.quote("gpt-4o-mini", "openai", input_tokens=1_000_000, at=SEP_2025)
        return None if q is None else q.total_usd

    assert price() == pytest.approx(0.15) and table.data_source == "bundled"

    logger = logging.getLogger("otelgate.pricing")
    logger.addHandler(caplog.handler)
    old_propagate, logger.propagate = logger.propagate, False
    try:
        assert table.refresh_now() is False  # missing file: old data kept, one warning
        assert table.refresh_now() is False
        path.write_text("{not json")
        assert table.refresh_now() is False  # another kind of failure: one more warning
        path.write_text("[]")
        assert table.refresh_now() is False
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate = old_propagate
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.fields["stage"] for r in warnings] == ["read", "parse", "parse"]  # type: ignore[attr-defined]
    assert price() == pytest.approx(0.15)

    path.write_text(json.dumps(_with_gpt4o_mini_input_price(price_data, 0.5)))
    assert table.refresh_now() is True
    assert table.data_source == str(path)
    assert price() == pytest.approx(0.5)  # the cached entry was dropped with the old data
    q = table.quote("claude-sonnet-4-20250514", "anthropic", input_tokens=1_000_000, at=SEP_2025)
    assert q is not None and q.total_usd == pytest.approx(3.0)  # the rest of the data still prices
    assert table.refresh_now() is False  # unchanged file: nothing reparsed


def test_refresh_thread_loads_in_background(tmp_path: Path, price_data: list[dict[str, Any]]) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(_with_gpt4o_mini_input_price(price_data, 0.25)))
    processor = create(Config(refresh=RefreshConfig(file=str(path), interval=0.05)), ProcessorContext(Metrics()))
    assert isinstance(processor, PriceProcessor)
    try:
        deadline = time.monotonic() + 10
        while processor.table.data_source == "bundled" and time.monotonic() < deadline:
            time.sleep(0.01)
        call = make_call(response_model="gpt-4o-mini", input_tokens=1_000_000)
        run(processor, call)
        assert call.cost_usd == pytest.approx(0.25)
        path.write_text(json.dumps(_with_gpt4o_mini_input_price(price_data, 0.35)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            q = processor.table.quote("gpt-4o-mini", "openai", input_tokens=1_000_000)
            if q is not None and q.total_usd == pytest.approx(0.35):
                break
            time.sleep(0.01)
        else:
            pytest.fail("the refresh thread did not pick up the changed file")
    finally:
        processor.close()
    assert not any(t.name == "otelgate-price-refresh" for t in threading.enumerate())


def test_refresh_from_url_uses_the_same_path(monkeypatch: pytest.MonkeyPatch,
                                             price_data: list[dict[str, Any]]) -> None:
    """The URL branch, with the HTTP GET replaced (tests never fetch a URL)."""
    fetched: list[tuple[str, float]] = []
    body = json.dumps(_with_gpt4o_mini_input_price(price_data, 0.45)).encode()
    replies: list[Any] = [OSError("connection refused"), body]

    def fake_fetch(url: str, timeout: float) -> bytes:
        fetched.append((url, timeout))
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    monkeypatch.setattr(PriceTable, "_fetch", staticmethod(fake_fetch))
    table = PriceTable(refresh=RefreshConfig(url="https://prices.example/data.json", timeout="3s"))
    assert table.refresh_now() is False
    assert table.quote("gpt-4o-mini", "openai", input_tokens=1_000_000, at=SEP_2025).total_usd == pytest.approx(0.15)
    assert table.refresh_now() is True
    assert table.quote("gpt-4o-mini", "openai", input_tokens=1_000_000, at=SEP_2025).total_usd == pytest.approx(0.45)
    assert fetched == [("https://prices.example/data.json", 3.0)] * 2


def test_parse_price_data_matches_bundled(price_data: list[dict[str, Any]]) -> None:
    providers = parse_price_data(json.dumps(price_data).encode())
    table = PriceTable(providers=providers)
    bundled = PriceTable()
    for model, provider in MODELS:
        a = table.quote(model, provider, input_tokens=300_000, output_tokens=10, cache_read_tokens=5, at=NOV_2026)
        b = bundled.quote(model, provider, input_tokens=300_000, output_tokens=10, cache_read_tokens=5, at=NOV_2026)
        assert a == b
    with pytest.raises(ValueError):
        parse_price_data(b'{"providers": []}')

