"""Tests for gateway.processors.normalize (and gateway.llm.providers).

1. Every span of the six captured fixtures: exactly the spans the ground truth names become
   `LlmCall`s, with provider, models and token counts equal to the truth as far as the library
   reports them (the omissions are listed per fixture below, from the fixtures README), and the
   canonical attributes written on each span equal its `LlmCall`.
2. Hand-written spans for each dialect of CONVENTIONS.md without a fixture.
3. Batch-wide rules: duplicates, wrappers, `keep_originals: false`, idempotence.
4. Properties (hypothesis): never raises on arbitrary attributes; a second run changes nothing.

`.venv/bin/python -m tests.test_normalize [seconds]` runs the micro-benchmark instead (normalize alone).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.batch import Batch, RequestContext
from gateway.llm import call as C
from gateway.llm.call import LlmCall
from gateway.llm.providers import (
    GENAI_PRICES_PROVIDER, canonical_provider, infer_provider, strip_provider_prefix,
)
from gateway.processors import ProcessorContext
from gateway.processors import normalize
from gateway.telemetry import Metrics
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records

# -- helpers ----------------------------------------------------------------------------------


def normalizer(keep_originals: bool = True) -> Any:
    return normalize.create(normalize.Config(keep_originals=keep_originals), ProcessorContext(Metrics()))


NORMALIZE = normalizer()
NORMALIZE_DROP = normalizer(keep_originals=False)


def run(request: ExportTraceServiceRequest, process: Any = NORMALIZE, raw: bytes | None = None) -> Batch:
    batch = Batch(request, 0, RequestContext("test"), raw=raw)
    out = process(batch)
    assert out is batch
    assert batch.llm_calls is not None
    assert process.errors == 0  # the safety net (a span left as it came when normalizing it raised) never fired
    return batch


def plain(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [plain(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def attrs(span: Span) -> dict[str, Any]:
    return {kv.key: plain(kv.value) for kv in span.attributes}


def any_value(v: Any) -> AnyValue:
    if isinstance(v, AnyValue):
        return v
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=any_value(x)) for k, x in v.items()]))
    return AnyValue(string_value=v)


def span(name: str, attributes: dict[str, Any] | list[tuple[str, Any]], *, sid: int = 1, parent: int = 0,
         trace: int = 1, error: bool = False, scope: str = "test") -> tuple[str, Span]:
    items = attributes.items() if isinstance(attributes, dict) else attributes
    s = Span(name=name, trace_id=trace.to_bytes(16, "big"), span_id=sid.to_bytes(8, "big"),
             parent_span_id=parent.to_bytes(8, "big") if parent else b"",
             start_time_unix_nano=1_000_000_000 + sid, end_time_unix_nano=2_000_000_000 + sid,
             attributes=[KeyValue(key=k, value=any_value(v)) for k, v in items])
    if error:
        s.status.code = Status.STATUS_CODE_ERROR
    return scope, s


def request(*spans: tuple[str, Span], service: str = "svc") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value=service))
    scopes: dict[str, Any] = {}
    for scope, s in spans:
        ss = scopes.get(scope)
        if ss is None:
            ss = scopes[scope] = rs.scope_spans.add()
            ss.scope.name = scope
        ss.spans.add().CopyFrom(s)
    return req


def all_spans(req: ExportTraceServiceRequest) -> list[Span]:
    return [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


def by_name(req: ExportTraceServiceRequest, name: str) -> Span:
    (found,) = [s for s in all_spans(req) if s.name == name]
    return found


def only_call(batch: Batch) -> LlmCall:
    assert len(batch.llm_calls) == 1, [c.span.name for c in batch.llm_calls]
    return batch.llm_calls[0]


def tokens(call: LlmCall) -> tuple[Any, ...]:
    return (call.input_tokens, call.output_tokens, call.cache_read_tokens, call.cache_write_tokens,
            call.reasoning_tokens)


CANONICAL = {
    C.PROVIDER: "provider", C.OPERATION: "operation", C.REQUEST_MODEL: "request_model",
    C.RESPONSE_MODEL: "response_model", C.INPUT_TOKENS: "input_tokens", C.OUTPUT_TOKENS: "output_tokens",
    C.CACHE_READ_TOKENS: "cache_read_tokens", C.CACHE_WRITE_TOKENS: "cache_write_tokens",
    C.REASONING_TOKENS: "reasoning_tokens",
}


def assert_written(call: LlmCall) -> None:
    """The canonical attributes on the span say what the LlmCall says."""
    a = attrs(call.span)
    assert a.get(C.LLM_CALL) is True
    for key, field in CANONICAL.items():
        value = getattr(call, field)
        if value is not None:
            assert a.get(key) == value, (key, a.get(key), value)
    assert (a.get(C.PROVIDER_INFERRED) is True) == call.provider_inferred
    assert C.AGGREGATE not in a and C.DUPLICATE_OF not in a


def assert_idempotent(req: ExportTraceServiceRequest, process: Any = NORMALIZE) -> None:
    before = req.SerializeToString()
    calls = [tokens(c) for c in run(req, process).llm_calls]
    batch = run(req, process, raw=before)  # the bytes path: the scan finds the same calls
    assert req.SerializeToString() == before
    assert batch.raw == before  # nothing written: the received bytes still stand
    assert [tokens(c) for c in batch.llm_calls] == calls


# -- the six fixtures ---------------------------------------------------------------------------

# What each library does not report (fixtures README, "Where the libraries themselves misreport"),
# by API: those counts must be None. Every other count must equal the ground truth. OpenAI has no
# cache writes and no library invents a 0 for them; no library reports an embedding's output.
EMBEDDING_OMITS = {"output", "cache_read", "cache_write", "reasoning"}
NOT_REPORTED: dict[str, dict[str, set[str]]] = {
    # openai-v2 2.4b0: no cached and no reasoning tokens on any call.
    "openai_v2": {"openai.chat.completions": {"cache_read", "cache_write", "reasoning"},
                  "openai.embeddings": EMBEDDING_OMITS},
    # OpenLLMetry 0.62.4: every value matches; embeddings report cache_read = 0 (as the truth).
    "openllmetry_openai": {"openai.chat.completions": {"cache_write"}, "openai.responses": {"cache_write"},
                           "openai.embeddings": {"output", "cache_write", "reasoning"}},
    "openinference_openai": {"openai.chat.completions": {"cache_write"}, "openai.responses": {"cache_write"},
                             "openai.embeddings": EMBEDDING_OMITS},
    # Langfuse 5.0.4: usage only in usage_details, in the provider's shape; embeddings `{"input": 11}`.
    "langfuse": {"openai.chat.completions": {"cache_write"}, "openai.responses": {"cache_write"},
                 "openai.embeddings": EMBEDDING_OMITS},
    # The anthropic SDK's spans: no reasoning count (the truth's 0 is not on the span).
    "anthropic_sdk_native": {"anthropic.messages": {"reasoning"}},
    # pydantic-ai 2.68.0: reasoning only under gen_ai.usage.details (read), none for Anthropic.
    "pydantic_ai": {"openai.chat.completions": {"cache_write"}, "openai.responses": {"cache_write"},
                    "anthropic.messages": {"reasoning"}, "openai.embeddings": EMBEDDING_OMITS},
}
# Per-call exceptions, by (fixture, seq).
NOT_REPORTED_CALL: dict[tuple[str, int], set[str]] = {
    ("openllmetry_openai", 2): {"cache_write", "reasoning"},  # streamed chat: no reasoning attribute
}
# Langfuse's drop-in client records only the returned model on success (the requested one on errors).
NO_REQUEST_MODEL = {"langfuse"}
# Langfuse generations declared by the application: what their usage_details mean. A declared
# `total` equal to input + output says `input` includes the cache and `output` the reasoning;
# the Anthropic-shaped one (input_tokens + cache_*_input_tokens) excludes the cache.
DECLARED = {  # name: (input, output, cache_read, cache_write, reasoning, reported cost)
    "manual-generation-openai-style": (1200, 350, 400, None, 0, 0.006),
    "manual-generation-anthropic-style": (900 + 300 + 120, 210, 300, 120, None, 0.0027 + 0.00315 + 9e-05 + 0.00045),
    "decorated_generation": (500, 900, None, None, 640, 0.00451),
    "manual-generation-error": (42, 0, None, None, None, None),
}
TRUTH_FIELDS = {"input": "input_tokens_incl_cache", "output": "output_tokens", "cache_read": "cached_tokens",
                "cache_write": "cache_creation_tokens", "reasoning": "reasoning_tokens"}


def fixture_batches(name: str, process: Any = NORMALIZE) -> tuple[list[ExportTraceServiceRequest], list[LlmCall]]:
    requests, calls = [], []
    for body in read_records(FIXTURES / f"{name}.otlp.bin"):
        req = ExportTraceServiceRequest.FromString(body)
        calls += run(req, process).llm_calls
        requests.append(req)
    return requests, calls


@pytest.mark.parametrize("name", TRACE_FIXTURES)
def test_fixture_calls_match_ground_truth(name: str) -> None:
    truth = orjson.loads((FIXTURES / f"{name}.expected.json").read_bytes())
    expected = {c["span"]["span_id"]: c for c in truth["calls"] if c.get("span")}
    requests, calls = fixture_batches(name)
    got = {c.span.span_id.hex(): c for c in calls}
    assert len(got) == len(calls)
    assert set(got) == set(expected)
    for sid, t in expected.items():
        call = got[sid]
        where = f"{name} {sid} {call.span.name}"
        assert call.provider == t["provider"], where
        assert call.error == (t["span"]["status_code"] == 2), where
        assert call.service == ("unknown_service:python" if name == "langfuse" else f"capture-{name}"), where
        assert_written(call)
        if t.get("source") == "scenario_declared":
            want = DECLARED[t["declared_name"]]
            assert tokens(call) == want[:5], where
            assert call.model == t["model_requested"], where
            assert call.provider_inferred, where  # Langfuse says no provider
            if want[5] is None:
                assert call.reported_cost is None, where
            else:
                assert call.reported_cost == pytest.approx(want[5]), where
                assert call.reported_cost_key == "langfuse.observation.cost_details", where
            continue
        omitted = NOT_REPORTED[name].get(t["api"], set()) | NOT_REPORTED_CALL.get((name, t["seq"]), set())
        if t["tokens"]:
            for field, attr in (("input", "input_tokens"), ("output", "output_tokens"),
                                ("cache_read", "cache_read_tokens"), ("cache_write", "cache_write_tokens"),
                                ("reasoning", "reasoning_tokens")):
                want = None if field in omitted else t["tokens"][TRUTH_FIELDS[field]]
                assert getattr(call, attr) == want, f"{where}: {field}"
        else:  # a failed call: no usage, still a call
            assert tokens(call) == (None,) * 5, where
        if t["model_returned"] is not None:
            assert call.response_model == t["model_returned"], where
            assert call.request_model == (None if name in NO_REQUEST_MODEL else t["model_requested"]), where
        else:
            assert call.response_model is None, where
            assert call.request_model == t["model_requested"], where
        assert call.operation == ("embeddings" if t["api"] == "openai.embeddings" else "chat"), where
        assert call.provider_inferred == (name == "langfuse"), where

    # No other span is a call; spans with usage that are not calls are marked aggregates.
    for req in requests:
        for s in all_spans(req):
            a = attrs(s)
            if s.span_id.hex() not in expected:
                assert C.LLM_CALL not in a, s.name
                assert C.INPUT_TOKENS not in a or a.get(C.AGGREGATE), s.name
                if any(k.startswith("gen_ai.aggregated_usage.") for k in a):
                    assert a.get(C.AGGREGATE) is True, s.name
            assert C.DUPLICATE_OF not in a


def test_fixture_details() -> None:
    _, calls = fixture_batches("pydantic_ai")
    assert {c.reported_cost_key for c in calls if c.reported_cost is not None} == {"operation.cost"}
    assert {c.service for c in calls} == {"capture-pydantic_ai"}
    _, calls = fixture_batches("anthropic_sdk_native")
    assert {c.service_tier for c in calls if not c.error} == {"standard"}
    _, calls = fixture_batches("openai_v2")
    assert {c.service_tier for c in calls if c.operation == "chat" and not c.error} == {"default"}
    _, calls = fixture_batches("langfuse")
    tiers = {c.span.span_id.hex(): c.service_tier for c in calls}
    assert tiers["c16254e3942a2516"] == "default"  # langfuse.observation.metadata.service_tier (JSON)
    assert tiers["4a3f854950c11f8f"] == "default"  # the requested tier, from the model parameters
    requests, _ = fixture_batches("pydantic_ai")
    agents = [s for r in requests for s in all_spans(r) if s.name.startswith("invoke_agent")]
    assert len(agents) == 8
    assert sum(1 for s in agents if attrs(s).get(C.AGGREGATE) is True) == 6  # 2 failed runs: no usage


@pytest.mark.parametrize("name", TRACE_FIXTURES)
@pytest.mark.parametrize("keep", [True, False])
def test_fixtures_idempotent(name: str, keep: bool) -> None:
    process = NORMALIZE if keep else NORMALIZE_DROP
    for body in read_records(FIXTURES / f"{name}.otlp.bin"):
        req = ExportTraceServiceRequest.FromString(body)
        batch = run(req, process, raw=body)
        assert batch.raw is None  # every fixture has calls: the spans changed
        assert_idempotent(req, process)


def test_fixtures_keep_originals_false_same_calls() -> None:
    for name in TRACE_FIXTURES:
        _, kept = fixture_batches(name)
        _, dropped = fixture_batches(name, NORMALIZE_DROP)
        assert [(c.span.span_id, tokens(c), c.provider, c.request_model, c.response_model) for c in kept] == \
               [(c.span.span_id, tokens(c), c.provider, c.request_model, c.response_model) for c in dropped]


def test_plain_spans_untouched() -> None:
    req = request(
        span("GET /x", {"http.request.method": "GET", "url.full": "https://api.openai.com/v1/models",
                        "server.address": "api.openai.com", "server.port": 443}),
        span("SELECT", {"db.system.name": "postgresql", "db.query.text": "select 1"}, sid=2),
        span("bare", {}, sid=3))
    before = req.SerializeToString()
    batch = run(req, raw=before)
    assert batch.llm_calls == [] and batch.raw == before
    assert req.SerializeToString() == before


# -- dialects without a fixture -----------------------------------------------------------------


def test_vercel_v4_parent_and_do_generate() -> None:
    usage = {"ai.usage.promptTokens": 40, "ai.usage.completionTokens": 12}
    req = request(
        span("ai.generateText", {"ai.operationId": "ai.generateText", "ai.model.id": "gpt-4o-mini",
                                 "ai.model.provider": "openai.chat", **usage}, sid=1, scope="ai"),
        span("ai.generateText.doGenerate", {
            "operation.name": "ai.generateText.doGenerate", "ai.operationId": "ai.generateText.doGenerate",
            "ai.model.id": "gpt-4o-mini", "ai.model.provider": "openai.chat",
            "ai.response.model": "gpt-4o-mini-2024-07-18", "ai.response.id": "chatcmpl-1",
            "gen_ai.system": "openai.chat", "gen_ai.request.model": "gpt-4o-mini", **usage},
            sid=2, parent=1, scope="ai"))
    call = only_call(run(req))
    assert call.span.name == "ai.generateText.doGenerate"
    assert (call.provider, call.operation, call.request_model, call.response_model) == \
           ("openai", "chat", "gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert tokens(call) == (40, 12, None, None, None)
    assert not call.provider_inferred
    assert_written(call)
    parent = attrs(by_name(req, "ai.generateText"))
    assert parent[C.AGGREGATE] is True and C.INPUT_TOKENS not in parent and C.LLM_CALL not in parent
    assert_idempotent(req)


def test_vercel_v5_anthropic_input_excludes_cache() -> None:
    metadata = json.dumps({"anthropic": {"cacheCreationInputTokens": 4, "cacheReadInputTokens": 8}})
    req = request(
        span("ai.streamText", {"ai.operationId": "ai.streamText", "ai.usage.inputTokens": 21,
                               "ai.usage.outputTokens": 30, "ai.usage.cachedInputTokens": 8}, sid=1, scope="ai"),
        span("ai.streamText.doStream", {
            "ai.operationId": "ai.streamText.doStream", "ai.model.id": "claude-sonnet-4-20250514",
            "ai.model.provider": "anthropic.messages", "ai.usage.inputTokens": 21, "ai.usage.outputTokens": 30,
            "ai.usage.totalTokens": 51, "ai.usage.cachedInputTokens": 8, "ai.response.providerMetadata": metadata,
            "gen_ai.system": "anthropic.messages", "gen_ai.usage.input_tokens": 21,
            "gen_ai.usage.output_tokens": 30}, sid=2, parent=1, scope="ai"))
    call = only_call(run(req))
    assert call.provider == "anthropic"
    assert tokens(call) == (33, 30, 8, 4, None)
    assert attrs(call.span)[C.INPUT_TOKENS] == 33  # Vercel's raw 21 rewritten with the semconv meaning
    assert_written(call)
    assert_idempotent(req)
    # After a pass that dropped the aliases, the canonical value is not converted twice.
    req2 = request(span("ai.streamText.doStream", {
        "ai.operationId": "ai.streamText.doStream", "ai.model.provider": "anthropic.messages",
        "ai.model.id": "claude-sonnet-4-20250514", "ai.usage.inputTokens": 21, "ai.usage.outputTokens": 30,
        "ai.usage.cachedInputTokens": 8}, scope="ai"))
    assert tokens(only_call(run(req2, NORMALIZE_DROP))) == (29, 30, 8, None, None)
    a = attrs(all_spans(req2)[0])
    assert "ai.usage.inputTokens" not in a and a[C.INPUT_TOKENS] == 29
    assert tokens(only_call(run(req2, NORMALIZE_DROP))) == (29, 30, 8, None, None)
    assert_idempotent(req2, NORMALIZE_DROP)


def test_vercel_openai_and_v6_details() -> None:
    # OpenAI through Vercel: inputTokens already includes the cached tokens.
    req = request(span("ai.generateText.doGenerate", {
        "ai.operationId": "ai.generateText.doGenerate", "ai.model.provider": "openai.responses",
        "ai.model.id": "gpt-4.1", "ai.usage.inputTokens": 33, "ai.usage.outputTokens": 92,
        "ai.usage.cachedInputTokens": 8, "ai.usage.reasoningTokens": 64}, scope="ai"))
    assert tokens(only_call(run(req))) == (33, 92, 8, None, 64)
    # v6: inputTokens is the total and the details split it, whatever the provider.
    req = request(span("ai.generateText.doGenerate", {
        "ai.operationId": "ai.generateText.doGenerate", "ai.model.provider": "anthropic.messages",
        "ai.model.id": "claude-sonnet-4-5", "ai.usage.inputTokens": 33, "ai.usage.outputTokens": 30,
        "ai.usage.inputTokenDetails.noCacheTokens": 21, "ai.usage.inputTokenDetails.cacheReadTokens": 8,
        "ai.usage.inputTokenDetails.cacheWriteTokens": 4, "ai.usage.outputTokenDetails.reasoningTokens": 5},
        scope="ai"))
    assert tokens(only_call(run(req))) == (33, 30, 8, 4, 5)
    # Embeddings.
    req = request(
        span("ai.embedMany", {"ai.operationId": "ai.embedMany", "ai.usage.tokens": 11}, sid=1, scope="ai"),
        span("ai.embedMany.doEmbed", {"ai.operationId": "ai.embedMany.doEmbed", "ai.model.id": "text-embedding-3-small",
                                      "ai.model.provider": "openai.embedding", "ai.usage.tokens": 11},
             sid=2, parent=1, scope="ai"))
    call = only_call(run(req))
    assert (call.operation, call.provider, call.input_tokens) == ("embeddings", "openai", 11)
    assert attrs(by_name(req, "ai.embedMany"))[C.AGGREGATE] is True


def test_litellm_prefixed_model_and_cost() -> None:
    req = request(span("litellm_request", {
        "gen_ai.system": "azure", "gen_ai.request.model": "azure/gpt-4o", "llm.request.type": "acompletion",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.prompt_tokens": 36,
        "gen_ai.usage.completion_tokens": 48, "llm.usage.total_tokens": 84, "gen_ai.cost.total_cost": 0.00057,
        "gen_ai.response.id": "chatcmpl-x"}, scope="litellm"))
    call = only_call(run(req))
    assert (call.provider, call.operation, call.request_model) == ("azure.ai.openai", "chat", "azure/gpt-4o")
    assert strip_provider_prefix(call.request_model) == "gpt-4o"
    assert tokens(call) == (36, 48, None, None, None)
    assert (call.reported_cost, call.reported_cost_key) == (0.00057, "gen_ai.cost.total_cost")
    assert_written(call)
    # No provider attribute: the `provider/` prefix says it; LiteLLM v2's cost key; `completion` is chat.
    req = request(span("litellm_request", {
        "gen_ai.request.model": "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", "llm.request.type": "completion",
        "gen_ai.usage.prompt_tokens": 10, "gen_ai.usage.completion_tokens": 5, "litellm.cost.total": "0.0001"}))
    call = only_call(run(req))
    assert (call.provider, call.provider_inferred, call.operation) == ("aws.bedrock", True, "chat")
    assert (call.reported_cost, call.reported_cost_key) == (0.0001, "litellm.cost.total")
    assert_written(call)
    assert_idempotent(req)


def test_mlflow_json_encoded_values() -> None:
    req = request(
        span("Completions", {
            "mlflow.spanType": json.dumps("CHAT_MODEL"), "mlflow.llm.model": json.dumps("gpt-4o-mini"),
            "mlflow.llm.provider": json.dumps("openai"), "mlflow.traceRequestId": json.dumps("tr-1"),
            "mlflow.chat.tokenUsage": json.dumps({"input_tokens": 20, "output_tokens": 7, "total_tokens": 27}),
            "mlflow.llm.cost": json.dumps({"input_cost": 3e-06, "output_cost": 4.2e-06, "total_cost": 7.2e-06})},
            sid=2, parent=1, scope="mlflow"),
        span("chain", {"mlflow.spanType": json.dumps("CHAIN"),
                       "mlflow.chat.tokenUsage": json.dumps({"input_tokens": 20, "output_tokens": 7})}, sid=1,
             scope="mlflow"))
    call = only_call(run(req))
    assert (call.provider, call.provider_inferred, call.request_model, call.operation) == \
           ("openai", False, "gpt-4o-mini", "chat")
    assert tokens(call) == (20, 7, None, None, None)
    assert call.reported_cost == pytest.approx(7.2e-06) and call.reported_cost_key == "mlflow.llm.cost"
    assert_written(call)
    assert attrs(by_name(req, "chain"))[C.AGGREGATE] is True
    assert_idempotent(req)
    # Anthropic's shape in the usage object: input_tokens excludes the cache.
    req = request(span("Messages", {"mlflow.spanType": '"LLM"', "mlflow.llm.model": '"claude-3-5-haiku-20241022"',
                                    "mlflow.chat.tokenUsage": json.dumps(json.dumps(
                                        {"input_tokens": 11, "output_tokens": 30, "cache_read_input_tokens": 4,
                                         "cache_creation_input_tokens": 2}))}))
    call = only_call(run(req))
    assert (call.provider, call.provider_inferred) == ("anthropic", True)
    assert tokens(call) == (17, 30, 4, 2, None)


def test_langsmith_repr_details_and_unknown_system() -> None:
    req = request(span("ChatAnthropic", {
        "langsmith.span.kind": "llm", "gen_ai.system": "langchain", "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "claude-3-7-sonnet-20250219", "gen_ai.usage.input_tokens": 1500,
        "gen_ai.usage.output_tokens": 200, "gen_ai.usage.total_tokens": 1700,
        "gen_ai.usage.input_token_details": "{'cache_read': 1000, 'cache_creation': 100}",
        "gen_ai.usage.output_token_details": "{'reasoning': 50}"}, scope="langsmith"))
    call = only_call(run(req))
    assert (call.provider, call.provider_inferred) == ("anthropic", True)  # "langchain" names no provider
    assert tokens(call) == (1500, 200, 1000, 100, 50)  # LangChain's input_tokens includes the cache
    assert_written(call)
    assert_idempotent(req)
    # A chain run with usage is an aggregate; a broken repr is ignored.
    req = request(
        span("RunnableSequence", {"langsmith.span.kind": "chain", "gen_ai.usage.input_tokens": 1500}, sid=1),
        span("ChatOpenAI", {"langsmith.span.kind": "llm", "gen_ai.request.model": "o3-mini",
                            "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 80,
                            "gen_ai.usage.output_token_details": "{'reasoning': (", }, sid=2, parent=1))
    call = only_call(run(req))
    assert (call.provider, call.reasoning_tokens) == ("openai", None)
    assert attrs(by_name(req, "RunnableSequence"))[C.AGGREGATE] is True


def test_openlit_anthropic_and_openai() -> None:
    req = request(span("chat claude-sonnet-4", {
        "gen_ai.system": "anthropic", "gen_ai.operation.name": "chat", "gen_ai.request.model": "claude-sonnet-4-0",
        "gen_ai.response.model": "claude-sonnet-4-20250514", "gen_ai.usage.input_tokens": 21,
        "gen_ai.usage.output_tokens": 30, "gen_ai.usage.cache_read_input_tokens": 8,
        "gen_ai.usage.cache_creation_input_tokens": 4, "gen_ai.usage.cost": 0.0006}, scope="openlit.otel.tracing"))
    call = only_call(run(req))
    assert tokens(call) == (33, 30, 8, 4, None)  # OpenLIT writes Anthropic's raw input_tokens
    assert (call.reported_cost, call.reported_cost_key) == (0.0006, "gen_ai.usage.cost")
    assert_written(call)
    assert_idempotent(req)
    req = request(span("chat gpt-4o", {
        "gen_ai.system": "openai", "gen_ai.operation.name": "chat", "gen_ai.request.model": "o4-mini",
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.prompt_tokens_details.cached_tokens": 40, "gen_ai.usage.reasoning_tokens": 256,
        "gen_ai.request.service_tier": "flex"}, scope="openlit.otel.tracing"))
    call = only_call(run(req))
    assert tokens(call) == (100, 300, 40, None, 256)
    assert call.service_tier == "flex"


def test_old_semconv_and_openllmetry_capitalised() -> None:
    req = request(span("openai.chat", {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-3.5-turbo",
                                       "gen_ai.usage.prompt_tokens": 12, "gen_ai.usage.completion_tokens": 3}))
    call = only_call(run(req))
    assert (call.provider, call.provider_inferred, call.operation) == ("openai", False, "chat")
    assert tokens(call) == (12, 3, None, None, None)
    a = attrs(call.span)
    assert (a[C.PROVIDER], a[C.INPUT_TOKENS], a[C.OPERATION]) == ("openai", 12, "chat")
    assert a["gen_ai.usage.prompt_tokens"] == 12  # keep_originals
    assert_idempotent(req)
    # OpenLLMetry's Anthropic spans: capitalised system, `completion` request type, input incl. cache.
    req = request(span("anthropic.chat", {
        "gen_ai.system": "Anthropic", "llm.request.type": "completion", "gen_ai.request.model": "claude-3-5-haiku",
        "gen_ai.response.model": "claude-3-5-haiku-20241022", "gen_ai.usage.input_tokens": 17,
        "gen_ai.usage.output_tokens": 30, "llm.usage.total_tokens": 47, "gen_ai.usage.cache_read_input_tokens": 4,
        "gen_ai.usage.cache_creation_input_tokens": 2}, scope="opentelemetry.instrumentation.anthropic"))
    call = only_call(run(req))
    assert (call.provider, call.operation) == ("anthropic", "chat")
    assert tokens(call) == (17, 30, 4, 2, None)
    assert_written(call)
    # A legacy completions call.
    req = request(span("openai.completion", {"gen_ai.system": "OpenAI", "llm.request.type": "completion",
                                             "gen_ai.request.model": "gpt-3.5-turbo-instruct",
                                             "gen_ai.usage.prompt_tokens": 5, "gen_ai.usage.completion_tokens": 9}))
    assert only_call(run(req)).operation == "text_completion"
    # MistralAI, AWS: capitalised values of older OpenLLMetry.
    req = request(span("mistralai.chat", {"gen_ai.system": "MistralAI", "llm.request.type": "chat",
                                          "gen_ai.request.model": "mistral-large-latest"}, sid=1),
                  span("bedrock.completion", {"gen_ai.system": "AWS", "llm.request.type": "completion",
                                              "gen_ai.request.model": "anthropic.claude-v2"}, sid=2, trace=2))
    assert [c.provider for c in run(req).llm_calls] == ["mistral_ai", "aws.bedrock"]


def test_openinference_provider_and_cost() -> None:
    req = request(
        span("ChatCompletion", {
            "openinference.span.kind": "LLM", "llm.provider": "azure", "llm.system": "openai",
            "llm.model_name": "gpt-4o-2024-08-06",
            "llm.invocation_parameters": '{"model": "gpt-4o", "service_tier": "priority"}',
            "llm.token_count.prompt": 100, "llm.token_count.completion": 20, "llm.token_count.total": 120,
            "llm.token_count.prompt_details.cache_read": 64, "llm.token_count.prompt_details.cache_write": 0,
            "llm.cost.total": 0.00041, "input.value": "hello"}, sid=2, parent=1),
        span("agent", {"openinference.span.kind": "AGENT", "llm.token_count.prompt": 100}, sid=1),
        span("embed", {"openinference.span.kind": "EMBEDDING", "embedding.model_name": "text-embedding-3-large",
                       "llm.token_count.prompt": 8, "llm.system": "openai"}, sid=3, parent=1))
    calls = run(req).llm_calls
    assert [c.operation for c in calls] == ["chat", "embeddings"]
    call = calls[0]
    assert (call.provider, call.request_model, call.response_model) == \
           ("azure.ai.openai", "gpt-4o", "gpt-4o-2024-08-06")
    assert tokens(call) == (100, 20, 64, 0, None)
    assert (call.reported_cost, call.reported_cost_key, call.service_tier) == (0.00041, "llm.cost.total", "priority")
    assert_written(call)
    assert attrs(by_name(req, "agent"))[C.AGGREGATE] is True
    assert_idempotent(req)


def test_langfuse_shapes() -> None:
    def usage(details: dict[str, Any], model: str = "gpt-4o", **extra: Any) -> tuple[Any, ...]:
        req = request(span("gen", {"langfuse.observation.type": "generation", "langfuse.observation.model.name": model,
                                   "langfuse.observation.usage_details": json.dumps(details), **extra}))
        return tokens(only_call(run(req)))

    # Langfuse's own buckets are disjoint unless a declared total says otherwise.
    assert usage({"input": 800, "output": 350, "cache_read_input_tokens": 400}) == (1200, 350, 400, None, None)
    assert usage({"input": 1200, "output": 350, "cache_read_input_tokens": 400, "total": 1550}) == \
           (1200, 350, 400, None, None)
    assert usage({"input": 1200, "output": 350, "cache_read_input_tokens": 400, "total": 1950}) == \
           (1600, 350, 400, None, None)
    assert usage({"input": 10, "output": 100, "output_reasoning_tokens": 64}) == (10, 164, None, None, 64)
    assert usage({"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 100}, "claude-3-5-haiku") == \
           (105, 7, 100, None, None)
    assert usage({"promptTokens": 3, "completionTokens": 4}) == (3, 4, None, None, None)
    # Garbage never raises: no usage.
    for bad in ("{", "[]", '{"input": "x"}', '{"input": -5}', '{"input": 1e400}', "null", "x" * 100_000):
        req = request(span("gen", {"langfuse.observation.type": "generation",
                                   "langfuse.observation.usage_details": bad,
                                   "langfuse.observation.cost_details": bad}))
        call = only_call(run(req))
        assert call.input_tokens is None and call.reported_cost is None
    # Trace-level observations are not calls.
    req = request(span("root", {"langfuse.observation.type": "span"}, sid=1),
                  span("agent", {"langfuse.observation.type": "agent",
                                 "langfuse.observation.usage_details": '{"input": 5}'}, sid=2, parent=1))
    assert run(req).llm_calls == []
    assert attrs(by_name(req, "agent"))[C.AGGREGATE] is True
    assert C.AGGREGATE not in attrs(by_name(req, "root"))


def test_anthropic_sanity_rule_and_scope_table() -> None:
    base = {"gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "claude-sonnet-4-20250514", "gen_ai.usage.output_tokens": 10}
    # An unknown emitter: semconv meaning, unless the count cannot include the cache.
    req = request(span("a", {**base, "gen_ai.usage.input_tokens": 3, "gen_ai.usage.cache_read.input_tokens": 5000,
                             "gen_ai.usage.cache_write.input_tokens": 100}, scope="someone"))
    assert tokens(only_call(run(req))) == (5103, 10, 5000, 100, None)
    req = request(span("a", {**base, "gen_ai.usage.input_tokens": 6000, "gen_ai.usage.cache_read.input_tokens": 5000},
                       scope="someone"))
    assert tokens(only_call(run(req))) == (6000, 10, 5000, None, None)
    # The anthropic SDK's own spans include it.
    req = request(span("a", {**base, "gen_ai.usage.input_tokens": 33, "gen_ai.usage.cache_read.input_tokens": 8,
                             "gen_ai.usage.cache_write.input_tokens": 4}, scope="com.anthropic.sdk.python"))
    assert tokens(only_call(run(req))) == (33, 10, 8, 4, None)
    # Claude on Bedrock through OpenLIT: the raw count.
    req = request(span("a", {"gen_ai.system": "aws.bedrock", "gen_ai.request.model": "anthropic.claude-3-haiku",
                             "gen_ai.usage.input_tokens": 21, "gen_ai.usage.output_tokens": 1,
                             "gen_ai.usage.cache_read_input_tokens": 8}, scope="openlit.otel.tracing"))
    assert tokens(only_call(run(req)))[0] == 29
    # OpenAI counts include the cache and the reasoning whatever the scope.
    req = request(span("a", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "o3",
                             "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 80,
                             "gen_ai.usage.cache_read.input_tokens": 60,
                             "gen_ai.usage.reasoning.output_tokens": 64}, scope="openlit.otel.tracing"))
    assert tokens(only_call(run(req))) == (100, 80, 60, None, 64)
    # Absurd counts: left as they are, so that a second pass reads the same.
    req = request(span("a", {**base, "gen_ai.usage.input_tokens": 2**53, "gen_ai.usage.cache_read_input_tokens": 2**53},
                       scope="openlit.otel.tracing"))
    assert tokens(only_call(run(req)))[0] == 2**53
    assert_idempotent(req)
    # An output below its reasoning cannot include it.
    req = request(span("a", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "o3",
                             "gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 16,
                             "gen_ai.usage.reasoning_tokens": 64}))
    assert tokens(only_call(run(req))) == (1, 80, None, None, 64)


def test_provider_inference_from_host() -> None:
    req = request(
        span("chat", {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
                      "server.address": "myres.openai.azure.com", "gen_ai.usage.input_tokens": 1}, sid=1),
        span("chat", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                      "url.full": "https://bedrock-runtime.us-east-1.amazonaws.com/model/x/converse"}, sid=2, trace=2),
        span("chat", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "llama3.2",
                      "server.address": "localhost", "server.port": 11434}, sid=3, trace=3),
        span("chat", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "llama3.2"}, sid=4, trace=4),
        span("chat", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                      "gen_ai.openai.api_base": "https://openrouter.ai/api/v1"}, sid=5, trace=5))
    calls = run(req).llm_calls
    assert [(c.provider, c.provider_inferred) for c in calls] == [
        ("azure.ai.openai", True), ("aws.bedrock", True), ("ollama", True), (None, False), ("openrouter", True)]
    for c in calls:
        assert_written(c)
    assert C.PROVIDER not in attrs(calls[3].span)
    assert_idempotent(req)


def test_error_call_without_usage_and_reported_by_otelgate() -> None:
    req = request(span("chat gpt-4o", {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                       "gen_ai.request.model": "gpt-4o", "error.type": "RateLimitError"}, error=True))
    call = only_call(run(req))
    assert call.error and tokens(call) == (None,) * 5
    # A span priced by an otelgate upstream keeps its figure, from gen_ai.usage.cost.
    req = request(span("chat", {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10,
                                "gen_ai.usage.output_tokens": 2, "llm.cost.total": 9.0, "gen_ai.usage.cost": 0.5,
                                "otelgate.cost.source": "computed", "otelgate.llm.call": True}))
    call = only_call(run(req))
    assert (call.reported_cost, call.reported_cost_key) == (0.5, "gen_ai.usage.cost")
    # A provider an otelgate upstream inferred stays "inferred".
    req = request(span("chat", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                                "otelgate.provider.inferred": True}))
    assert only_call(run(req)).provider_inferred and only_call(run(req)).provider_inferred


def test_safety_net_leaves_span_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    process = normalizer()
    req = request(span("boom", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}, sid=1),
                  span("fine", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}, sid=2, trace=2))
    real = normalize._classify

    def flaky(d: dict[str, Any], s: Span, mask: int) -> Any:
        if s.name == "boom":
            raise RuntimeError("bug")
        return real(d, s, mask)

    monkeypatch.setattr(normalize, "_classify", flaky)
    batch = Batch(req, 0, RequestContext("test"))
    process(batch)
    assert process.errors == 1
    assert [c.span.name for c in batch.llm_calls] == ["fine"]
    assert C.LLM_CALL not in attrs(by_name(req, "boom"))


# -- batch-wide rules -----------------------------------------------------------------------------


def test_duplicate_siblings_same_response_id() -> None:
    common = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
              "gen_ai.response.id": "chatcmpl-abc", "gen_ai.usage.input_tokens": 33, "gen_ai.usage.output_tokens": 29}
    req = request(
        span("app", {}, sid=1),
        span("chat gpt-4o-mini", {**common, "gen_ai.provider.name": "openai"}, sid=2, parent=1, scope="openai_v2"),
        span("openai.chat", {**common, "gen_ai.provider.name": "openai", "gen_ai.usage.cache_read.input_tokens": 8},
             sid=3, parent=1, scope="openllmetry"),
        # the same response id in another trace is another call
        span("openai.chat", {**common, "gen_ai.provider.name": "openai"}, sid=4, trace=2, scope="openllmetry"))
    calls = run(req).llm_calls
    assert [c.span.span_id for c in calls] == [(3).to_bytes(8, "big"), (4).to_bytes(8, "big")]
    dup = attrs(all_spans(req)[1])
    assert dup[C.DUPLICATE_OF] == (3).to_bytes(8, "big").hex()  # the more complete one is kept
    assert C.LLM_CALL not in dup
    assert_idempotent(req)


def test_wrapper_with_same_usage() -> None:
    usage = {"gen_ai.usage.input_tokens": 33, "gen_ai.usage.output_tokens": 29}
    req = request(
        span("ChatOpenAI", {"langsmith.span.kind": "llm", "gen_ai.system": "openai",
                            "gen_ai.request.model": "gpt-4o-mini", **usage}, sid=1, scope="langsmith"),
        span("RunnableLambda", {"langsmith.span.kind": "chain"}, sid=2, parent=1, scope="langsmith"),
        span("openai.chat", {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                             "gen_ai.request.model": "gpt-4o-mini", **usage}, sid=3, parent=2, scope="openllmetry"),
        # a call with different usage under a call is not the same call
        span("outer", {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                       "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 5,
                       "gen_ai.usage.output_tokens": 5}, sid=4, trace=2),
        span("inner", {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                       "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 6,
                       "gen_ai.usage.output_tokens": 5}, sid=5, parent=4, trace=2))
    calls = run(req).llm_calls
    assert [c.span.name for c in calls] == ["openai.chat", "outer", "inner"]
    wrapper = attrs(by_name(req, "ChatOpenAI"))
    assert wrapper[C.AGGREGATE] is True and C.LLM_CALL not in wrapper
    assert_idempotent(req)
    # A failed framework span around the failed SDK call: one failed call.
    req = request(
        span("ChatOpenAI", {"langsmith.span.kind": "llm", "gen_ai.request.model": "gpt-4o"}, sid=1, error=True),
        span("openai.chat", {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                             "gen_ai.request.model": "gpt-4o"}, sid=2, parent=1, error=True))
    calls = run(req).llm_calls
    assert [c.span.name for c in calls] == ["openai.chat"] and calls[0].error
    assert_idempotent(req)


def test_keep_originals_false_removes_folded_aliases_only() -> None:
    original = {
        "openinference.span.kind": "LLM", "llm.system": "openai", "llm.model_name": "gpt-4o-2024-08-06",
        "llm.invocation_parameters": '{"model": "gpt-4o"}', "llm.token_count.prompt": 100,
        "llm.token_count.completion": 20, "llm.token_count.total": 120,
        "llm.token_count.prompt_details.cache_read": 64, "llm.token_count.completion_details.reasoning": 0,
        "llm.cost.total": 0.001, "input.value": "hi", "session.id": "s", "gen_ai.usage.details.audio": 0}
    req = request(span("ChatCompletion", original))
    call = only_call(run(req, NORMALIZE_DROP))
    a = attrs(call.span)
    removed = {"llm.system", "llm.model_name", "llm.token_count.prompt", "llm.token_count.completion",
               "llm.token_count.prompt_details.cache_read", "llm.token_count.completion_details.reasoning"}
    assert set(original) - set(a) == removed
    for k in set(original) - removed:
        assert a[k] == original[k]
    assert (a[C.PROVIDER], a[C.REQUEST_MODEL], a[C.RESPONSE_MODEL], a[C.INPUT_TOKENS], a[C.OUTPUT_TOKENS],
            a[C.CACHE_READ_TOKENS], a[C.REASONING_TOKENS]) == ("openai", "gpt-4o", "gpt-4o-2024-08-06", 100, 20, 64, 0)
    assert_idempotent(req, NORMALIZE_DROP)
    # Not a call: nothing removed.
    req = request(span("agent", {"gen_ai.operation.name": "invoke_agent", "gen_ai.system": "openai",
                                 "gen_ai.usage.prompt_tokens": 5}))
    run(req, NORMALIZE_DROP)
    assert set(attrs(all_spans(req)[0])) == {"gen_ai.operation.name", "gen_ai.system", "gen_ai.usage.prompt_tokens",
                                             C.AGGREGATE}


# -- provider-native usage, hand-written llm.* spans, semconv names (issue 13) -------------------------


def timed(scope_span: tuple[str, Span], start: int, end: int) -> tuple[str, Span]:
    scope, s = scope_span
    s.start_time_unix_nano, s.end_time_unix_nano = start, end
    return scope, s


LOGFIRE = {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat", "gen_ai.request.model": "o3-mini",
           "gen_ai.response.model": "o3-mini-2025-01-31"}


def test_logfire_raw_usage_openai_chat_responses_anthropic() -> None:
    chat_raw = {"completion_tokens": 108, "prompt_tokens": 10, "total_tokens": 118,
                "completion_tokens_details": {"reasoning_tokens": 80}, "prompt_tokens_details": {"cached_tokens": 2}}
    resp_raw = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 124,
                "output_tokens_details": {"reasoning_tokens": 96}, "total_tokens": 136}
    anth_raw = {"cache_creation_input_tokens": 2, "cache_read_input_tokens": 5, "input_tokens": 15, "output_tokens": 30}
    req = request(
        span("chat", {**LOGFIRE, "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 108,
                      "gen_ai.usage.raw": json.dumps(chat_raw)}, sid=1, scope="logfire.openai"),
        span("responses", {**LOGFIRE, "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 124,
                           "gen_ai.usage.raw": resp_raw}, sid=2, trace=2, scope="logfire.openai"),  # as a map
        span("anthropic", {"gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat",
                           "gen_ai.request.model": "claude-sonnet-4-20250514", "gen_ai.usage.input_tokens": 15,
                           "gen_ai.usage.output_tokens": 30, "gen_ai.usage.raw": json.dumps(anth_raw)},
             sid=3, trace=3, scope="logfire.anthropic"))
    calls = run(req).llm_calls
    assert [tokens(c) for c in calls] == [(10, 108, 2, None, 80), (12, 124, 3, None, 96), (22, 30, 5, 2, None)]
    for c in calls:
        assert_written(c)
    assert_idempotent(req)


def test_raw_usage_precedence_and_garbage() -> None:
    # The flat attributes disagree with the provider's object: the object wins for what it carries;
    # the flat value stands for what it lacks.
    raw = {"prompt_tokens": 40, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 8}}
    req = request(span("chat", {**LOGFIRE, "gen_ai.usage.input_tokens": 33, "gen_ai.usage.output_tokens": 10,
                                "gen_ai.usage.reasoning.output_tokens": 4, "gen_ai.usage.raw": json.dumps(raw)}))
    call = only_call(run(req))
    assert tokens(call) == (40, 10, 8, None, 4)
    assert attrs(call.span)[C.INPUT_TOKENS] == 40
    assert_idempotent(req)
    # Unparseable or foreign objects change nothing.
    for bad in ("{not json", "[1, 2]", '{"foo": 1}', "x" * 70000, ""):
        req = request(span("chat", {**LOGFIRE, "gen_ai.usage.input_tokens": 33, "gen_ai.usage.output_tokens": 10,
                                    "gen_ai.usage.raw": bad}))
        assert tokens(only_call(run(req))) == (33, 10, None, None, None), bad


def test_litellm_usage_object_repr() -> None:
    base = {"gen_ai.system": "openai", "llm.request.type": "completion", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.prompt_tokens": 33, "gen_ai.usage.completion_tokens": 29}
    wrappers = ("{'completion_tokens': 29, 'prompt_tokens': 33, 'total_tokens': 62, 'completion_tokens_details': "
                "CompletionTokensDetailsWrapper(accepted_prediction_tokens=None, audio_tokens=None, "
                "reasoning_tokens=0, rejected_prediction_tokens=None, text_tokens=None), 'prompt_tokens_details': "
                "PromptTokensDetailsWrapper(audio_tokens=None, cached_tokens=8, text_tokens=None, image_tokens=None)}")
    literal = ("{'completion_tokens': 92, 'prompt_tokens': 24, 'total_tokens': 116, 'completion_tokens_details': "
               "{'reasoning_tokens': 64, 'audio_tokens': None}, 'prompt_tokens_details': {'cached_tokens': 0}}")
    anthropic = ("{'completion_tokens': 30, 'prompt_tokens': 33, 'total_tokens': 63, 'prompt_tokens_details': "
                 "PromptTokensDetailsWrapper(cached_tokens=8), 'cache_creation_input_tokens': 4, "
                 "'cache_read_input_tokens': 8}")
    req = request(
        span("litellm_request", {**base, "metadata.usage_object": wrappers}, sid=1),
        span("litellm_request", {**base, "gen_ai.usage.prompt_tokens": 24, "gen_ai.usage.completion_tokens": 92,
                                 "metadata.usage_object": literal}, sid=2, trace=2),
        span("litellm_request", {**base, "gen_ai.system": "anthropic", "gen_ai.request.model": "claude-sonnet-4",
                                 "gen_ai.usage.completion_tokens": 30, "metadata.usage_object": anthropic},
             sid=3, trace=3))
    calls = run(req).llm_calls
    assert [tokens(c) for c in calls] == [(33, 29, 8, None, 0), (24, 92, 0, None, 64), (33, 30, 8, 4, None)]
    assert_idempotent(req)


DIFY = {"llm.model": "gpt-4o-mini", "llm.provider": "openai"}


def test_dify_runtime_span_is_a_call() -> None:
    req = request(
        span("llm.invoke.gpt-4o-mini", {**DIFY, "llm.input_tokens": 33, "llm.output_tokens": 29}, sid=1,
             scope="dify.model_runtime"),
        span("llm.invoke.claude", {"llm.model": "claude-3-5-haiku", "llm.provider": "langgenius/anthropic/anthropic",
                                   "llm.input_tokens": 20, "llm.output_tokens": 5}, sid=2, trace=2,
             scope="dify.model_runtime"))
    calls = run(req).llm_calls
    assert [(c.provider, c.request_model, c.operation, c.input_tokens, c.output_tokens, c.error) for c in calls] == [
        ("openai", "gpt-4o-mini", "chat", 33, 29, False), ("anthropic", "claude-3-5-haiku", "chat", 20, 5, False)]
    for c in calls:
        assert_written(c)
    assert_idempotent(req)
    # A failure: record_exception, no tokens (status not always set): one failed call, nothing to price.
    scope, s = span("llm.invoke.gpt-4o-mini", DIFY, sid=3, scope="dify.model_runtime")
    s.events.add(name="exception", time_unix_nano=1_500_000_000)
    call = only_call(run(request((scope, s))))
    assert call.error and call.input_tokens is None and call.output_tokens is None


def test_hand_written_llm_spans_without_marker() -> None:
    req = request(
        span("generate_answer", {"llm.model": "gpt-4o", "llm.prompt_tokens": 100, "llm.completion_tokens": 20}, sid=1),
        # Not calls: a model alone is configuration, tokens alone a tokenizer's count, a token span
        # names both, a tool span says what it is, and garbage counts are no counts.
        span("load_config", {"llm.model": "gpt-4o", "llm.provider": "openai"}, sid=2, trace=2),
        span("budget", {"llm.input_tokens": 1200}, sid=3, trace=3),
        span("llm.tokenize", {"llm.model": "gpt-4o", "llm.input_tokens": 1200}, sid=4, trace=4),
        span("count_tokens", {"llm.model": "gpt-4o", "llm.output_tokens": 3}, sid=5, trace=5),
        span("tool", {"gen_ai.operation.name": "execute_tool", "llm.model": "gpt-4o", "llm.input_tokens": 5,
                      "llm.output_tokens": 5}, sid=6, trace=6),
        span("cfg", {"llm.model": "gpt-4o", "llm.input_tokens": "lots"}, sid=7, trace=7))
    calls = run(req).llm_calls
    assert [(c.span.name, c.request_model, c.input_tokens, c.output_tokens) for c in calls] == [
        ("generate_answer", "gpt-4o", 100, 20)]
    for s in all_spans(req)[1:]:
        a = attrs(s)
        assert C.LLM_CALL not in a and C.AGGREGATE not in a and C.INPUT_TOKENS not in a, s.name
    # A hand-written span around an instrumented call with the same usage is an aggregate.
    req = request(
        span("llm.invoke.gpt-4o-mini", {**DIFY, "llm.input_tokens": 33, "llm.output_tokens": 29}, sid=1,
             scope="dify.model_runtime"),
        span("openai.chat", {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                             "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 33,
                             "gen_ai.usage.output_tokens": 29}, sid=2, parent=1, scope="openllmetry"))
    assert [c.span.name for c in run(req).llm_calls] == ["openai.chat"]
    assert attrs(by_name(req, "llm.invoke.gpt-4o-mini"))[C.AGGREGATE] is True


RESP = {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4.1",
        "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 28}


def test_sibling_duplicates_without_response_id() -> None:
    # LangChain under OpenLLMetry on the Responses API: ChatOpenAI.chat beside openai.response.
    req = request(
        span("app", {}, sid=1, scope="app"),
        timed(span("ChatOpenAI.chat", {**RESP, "gen_ai.response.model": "gpt-4.1"}, sid=2, parent=1,
                   scope="opentelemetry.instrumentation.langchain"), 100, 400),
        timed(span("openai.response", {**RESP, "gen_ai.response.model": "gpt-4.1-2025-04-14",
                                       "gen_ai.response.id": "resp_1", "gen_ai.usage.reasoning_tokens": 0},
                   sid=3, parent=1, scope="opentelemetry.instrumentation.openai.v1"), 110, 390))
    calls = run(req).llm_calls
    assert [c.span.name for c in calls] == ["openai.response"]
    assert attrs(by_name(req, "ChatOpenAI.chat"))[C.DUPLICATE_OF] == (3).to_bytes(8, "big").hex()
    assert_idempotent(req)
    assert [c.span.name for c in run(req).llm_calls] == ["openai.response"]


def test_sibling_duplicates_never_merge_separate_calls() -> None:
    lc, oa = "opentelemetry.instrumentation.langchain", "opentelemetry.instrumentation.openai.v1"
    cases = {
        # one library's two identical calls in parallel (asyncio.gather): two calls
        "same scope": [timed(span("a", RESP, sid=2, parent=1, scope=oa), 100, 400),
                       timed(span("b", RESP, sid=3, parent=1, scope=oa), 100, 400)],
        # sequential identical calls from two libraries: they do not overlap
        "sequential": [timed(span("a", RESP, sid=2, parent=1, scope=lc), 100, 200),
                       timed(span("b", RESP, sid=3, parent=1, scope=oa), 300, 400)],
        "other usage": [timed(span("a", RESP, sid=2, parent=1, scope=lc), 100, 400),
                        timed(span("b", {**RESP, "gen_ai.usage.output_tokens": 27}, sid=3, parent=1, scope=oa),
                              100, 400)],
        "other model": [timed(span("a", RESP, sid=2, parent=1, scope=lc), 100, 400),
                        timed(span("b", {**RESP, "gen_ai.request.model": "gpt-4o"}, sid=3, parent=1, scope=oa),
                              100, 400)],
        "other parent": [timed(span("a", RESP, sid=2, parent=1, scope=lc), 100, 400),
                         timed(span("b", RESP, sid=3, parent=9, scope=oa), 100, 400)],
    }
    for what, spans in cases.items():
        req = request(span("app", {}, sid=1, scope="app"), *spans)
        assert len(run(req).llm_calls) == 2, what
    # Siblings that each wrap their own instrumented call: two calls below two aggregates.
    req = request(
        span("app", {}, sid=1, scope="app"),
        timed(span("ChatOpenAI.chat", RESP, sid=2, parent=1, scope=lc), 100, 400),
        timed(span("AzureChat.chat", RESP, sid=3, parent=1, scope="other.langchain"), 100, 400),
        timed(span("openai.chat", RESP, sid=4, parent=2, scope=oa), 110, 390),
        timed(span("openai.chat", RESP, sid=5, parent=3, scope=oa), 110, 390))
    calls = run(req).llm_calls
    assert [c.span.span_id for c in calls] == [(4).to_bytes(8, "big"), (5).to_bytes(8, "big")]


def test_logfire_stream_halves() -> None:
    req_attrs = {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                 "gen_ai.response.model": "gpt-4o-mini"}
    usage = {**req_attrs, "gen_ai.response.model": "gpt-4o-mini-2024-07-18", "gen_ai.usage.input_tokens": 17,
             "gen_ai.usage.output_tokens": 29}
    lf = "logfire.openai"
    req = request(
        span("app", {}, sid=1, scope="app"),
        timed(span("Chat Completion", req_attrs, sid=2, parent=1, scope=lf), 100, 200),
        timed(span("streaming response", usage, sid=3, parent=1, scope=lf), 300, 300),
        timed(span("Chat Completion", req_attrs, sid=4, parent=1, scope=lf), 400, 500),
        timed(span("streaming response", usage, sid=5, parent=1, scope=lf), 600, 600),
        # a streamed call whose stream was never consumed: one call, no usage
        timed(span("Chat Completion", req_attrs, sid=6, parent=1, scope=lf), 700, 800))
    calls = run(req).llm_calls
    assert [c.span.span_id for c in calls] == [(i).to_bytes(8, "big") for i in (3, 5, 6)]
    assert_idempotent(req)


@pytest.mark.parametrize("semconv", ["current", "next", "both"])
def test_semconv_cache_write_names(semconv: str) -> None:
    process = normalize.create(normalize.Config(semconv=semconv), ProcessorContext(Metrics()))
    drop = normalize.create(normalize.Config(semconv=semconv, keep_originals=False), ProcessorContext(Metrics()))
    written = normalize.SEMCONV_CACHE_WRITE[semconv]
    for source_key in ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_write.input_tokens",
                       "gen_ai.usage.cache_creation_input_tokens"):
        for proc in (process, drop):
            req = request(span("anthropic.chat", {"gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat",
                                                  "gen_ai.request.model": "claude-sonnet-4",
                                                  "gen_ai.usage.input_tokens": 33, "gen_ai.usage.output_tokens": 30,
                                                  "gen_ai.usage.cache_read.input_tokens": 8, source_key: 4},
                               scope="com.anthropic.sdk.python"))
            call = only_call(run(req, proc))
            assert call.cache_write_tokens == 4
            a = attrs(call.span)
            for key in written:
                assert a[key] == 4, (semconv, source_key, key)
            if proc is drop:
                assert {k for k in a if "cache_creation" in k or "cache_write" in k} == set(written)
            assert_idempotent(req, proc)


# -- providers ----------------------------------------------------------------------------------


def test_canonical_provider() -> None:
    cases = {
        "openai.chat": "openai", "openai.responses": "openai", "anthropic.messages": "anthropic",
        "google.vertex.chat": "gcp.vertex_ai", "google.vertex.anthropic.messages": "gcp.vertex_ai",
        "amazon-bedrock": "aws.bedrock", "azure.chat": "azure.ai.openai", "Anthropic": "anthropic",
        "MistralAI": "mistral_ai", "AWS": "aws.bedrock", "Azure": "azure.ai.openai", "Google": "gcp.gen_ai",
        "Cohere": "cohere", "Groq": "groq", "langchain": None, "": None, None: None, "  ": None,
        "az.ai.openai": "azure.ai.openai", "azure_ai": "azure.ai.inference", "vertex_ai": "gcp.vertex_ai",
        "gemini": "gcp.gemini", "google.generative-ai": "gcp.gemini", "google-gla": "gcp.gemini",
        "bedrock_converse": "aws.bedrock", "text-completion-openai": "openai", "cohere_chat": "cohere",
        "xai": "x_ai", "moonshot": "moonshot_ai", "together": "together_ai", "fireworks_ai": "fireworks_ai",
        "OpenRouter": "openrouter", "ollama": "ollama", "hosted_vllm": "hosted_vllm", "aws.bedrock": "aws.bedrock",
        "gcp.vertex_ai": "gcp.vertex_ai", "x_ai": "x_ai", "huggingface": "hugging_face", "Not A Provider!": None,
    }
    for raw, want in cases.items():
        assert canonical_provider(raw) == want, raw


def test_infer_provider() -> None:
    models = {
        "gpt-4o": "openai", "o1": "openai", "o3-mini": "openai", "o4-mini-2025-04-16": "openai",
        "chatgpt-4o-latest": "openai", "text-embedding-3-small": "openai", "davinci-002": "openai",
        "claude-3-5-haiku-20241022": "anthropic", "gemini-2.0-flash": "gcp.gemini",
        "models/gemini-2.0-flash": "gcp.gemini", "mistral-large-latest": "mistral_ai", "mixtral-8x7b": "mistral_ai",
        "codestral-latest": "mistral_ai", "ministral-8b": "mistral_ai", "command-r-plus": "cohere",
        "grok-3": "x_ai", "deepseek-chat": "deepseek", "openai/gpt-4o": "openai",
        "anthropic.claude-3-5-sonnet-20240620-v1:0": "aws.bedrock", "us.anthropic.claude-3-7-sonnet": "aws.bedrock",
        "claude-sonnet-4@20250514": "gcp.vertex_ai", "llama3": None, "omni-moderation-latest": "openai",
        "ollama-thing": None, "": None,
    }
    for model, want in models.items():
        assert infer_provider(model, None, None) == want, model
    hosts = {
        "api.openai.com": "openai", "api.anthropic.com": "anthropic", "x.openai.azure.com": "azure.ai.openai",
        "x.services.ai.azure.com": "azure.ai.inference", "x.inference.ai.azure.com": "azure.ai.inference",
        "bedrock-runtime.eu-west-1.amazonaws.com": "aws.bedrock", "generativelanguage.googleapis.com": "gcp.gemini",
        "us-central1-aiplatform.googleapis.com": "gcp.vertex_ai", "api.mistral.ai": "mistral_ai",
        "api.groq.com": "groq", "api.deepseek.com": "deepseek", "api.x.ai": "x_ai", "openrouter.ai": "openrouter",
        "api.together.xyz": "together_ai", "api.fireworks.ai": "fireworks_ai", "api.cohere.com": "cohere",
        "api.cohere.ai": "cohere", "api.perplexity.ai": "perplexity", "127.0.0.1": None,
    }
    for host, want in hosts.items():
        assert infer_provider("gpt-4o" if want is None else None, host, None) == ("openai" if want is None else want)
        assert infer_provider(None, None, f"https://{host}/v1/chat") == want, host
    assert infer_provider("gpt-4o", "res.openai.azure.com", None) == "azure.ai.openai"  # host beats model
    assert infer_provider("llama3", None, "http://localhost:11434/api/chat") == "ollama"
    assert infer_provider("llama3", "localhost:11434", None) == "ollama"
    assert infer_provider(None, "[::1]", "not a url://x:y") is None


def test_strip_provider_prefix_and_price_ids() -> None:
    assert strip_provider_prefix("openai/gpt-4o") == "gpt-4o"
    assert strip_provider_prefix("models/gemini-2.0-flash") == "gemini-2.0-flash"
    assert strip_provider_prefix("openrouter/anthropic/claude-3.5-sonnet") == "claude-3.5-sonnet"
    for keep in ("anthropic.claude-3-5-sonnet-20240620-v1:0", "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
                 "claude-sonnet-4@20250514", "meta-llama/Llama-3.1-8B", "gpt-4o", ""):
        assert strip_provider_prefix(keep) == keep
    assert GENAI_PRICES_PROVIDER["azure.ai.openai"] == "azure"
    assert GENAI_PRICES_PROVIDER["x_ai"] == "x-ai"
    assert GENAI_PRICES_PROVIDER["moonshot_ai"] == "moonshotai"
    assert GENAI_PRICES_PROVIDER["aws.bedrock"] == "aws"
    assert {GENAI_PRICES_PROVIDER[p] for p in ("gcp.vertex_ai", "gcp.gemini", "gcp.gen_ai")} == {"google"}
    assert (GENAI_PRICES_PROVIDER["mistral_ai"], GENAI_PRICES_PROVIDER["together_ai"],
            GENAI_PRICES_PROVIDER["fireworks_ai"]) == ("mistral", "together", "fireworks")


# -- properties ----------------------------------------------------------------------------------

ALIAS_KEYS = sorted(normalize._KEYS | {"gen_ai.usage.details.audio", "llm.token_count.prompt_details.audio",
                                       "http.request.method", "operation.name"})
TRICKY_STRINGS = [
    "", " ", "0", "-1", "33", "1e400", "NaN", "Infinity", "9" * 40, '"', '""', '"LLM"', '"\\"LLM\\""', "{", "[",
    "{}", "[]", "null", "true", '{"input": 1, "output": 2, "total": 3}', '{"input": "x", "total": -1}',
    '{"prompt_tokens": 1e300, "completion_tokens": null}', '{"input_tokens": 5, "cache_read_input_tokens": 9}',
    "{'cache_read': 10}", "{'reasoning': (", "{'a': " * 50, "[" * 5000, '{"model": "gpt-4o"}', "openai.chat",
    "anthropic", "langchain", "chat", "invoke_agent", "LLM", "EMBEDDING", "generation", "ai.generateText",
    "ai.generateText.doGenerate", "claude-3-5-haiku", "gpt-4o", "https://api.openai.com/v1", "x.openai.azure.com",
    "ERROR", "completion", "llm", '{"total": 0.5}', '{"anthropic": {"cacheCreationInputTokens": 3}}', "\u2603",
    '{"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}', "PromptTokensDetailsWrapper(cached_tokens=3)",
    "{'prompt_tokens': 4, 'x': Wrapper(reasoning_tokens=7)}",
]
# Keys and values that make calls, aggregates, duplicates and wrappers likely.
HOT_KEYS = [C.INPUT_TOKENS, C.OUTPUT_TOKENS, C.CACHE_READ_TOKENS, C.CACHE_WRITE_TOKENS, C.REASONING_TOKENS,
            "gen_ai.usage.cache_write.input_tokens", "gen_ai.usage.prompt_tokens", "ai.usage.inputTokens",
            "ai.usage.cachedInputTokens", C.RESPONSE_ID, C.OPERATION, C.PROVIDER, C.REQUEST_MODEL, "ai.operationId",
            "langfuse.observation.usage_details", "gen_ai.aggregated_usage.input_tokens", C.LLM_CALL, C.AGGREGATE,
            C.DUPLICATE_OF, C.PROVIDER_INFERRED, "server.address", "gen_ai.usage.raw", "metadata.usage_object",
            "llm.model", "llm.input_tokens", "llm.output_tokens", "gen_ai.usage.cost.amount"]
SCALARS = st.one_of(
    st.integers(0, 5000), st.sampled_from(["r1", "r2", "chat", "openai", "anthropic", "claude-3", "gpt-4o"]),
    st.sampled_from(TRICKY_STRINGS), st.text(max_size=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from([0, 1, 2**53, 2**53 + 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.binary(max_size=8),
).map(any_value)
VALUES = st.one_of(
    SCALARS, st.just(AnyValue()),
    st.lists(SCALARS, max_size=3).map(lambda xs: AnyValue(array_value=ArrayValue(values=xs))),
    st.lists(st.tuples(st.sampled_from(ALIAS_KEYS), SCALARS), max_size=3).map(
        lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs]))),
)
ATTRIBUTES = st.lists(st.tuples(st.one_of(st.sampled_from(HOT_KEYS), st.sampled_from(ALIAS_KEYS), st.text(max_size=20)),
                                VALUES), max_size=14)
SPANS = st.lists(
    st.tuples(ATTRIBUTES, st.integers(0, 3), st.booleans(), st.sampled_from(["test", "ai", "com.anthropic.sdk.python",
                                                                          "openlit.otel.tracing", ""]),
              st.sampled_from(["chat", "anthropic.chat", "litellm_request", "", "llm.invoke.gpt-4o"])),
    min_size=1, max_size=4)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _random_request(spans: list[Any]) -> ExportTraceServiceRequest:
    built = []
    for i, (attributes, parent, error, scope, name) in enumerate(spans, start=1):
        built.append(span(name, attributes, sid=i, parent=parent if parent < i else 0, error=error, scope=scope))
    return request(*built)


@PROPERTY
@given(SPANS, st.booleans())
def test_property_never_raises_and_idempotent(spans: list[Any], keep: bool) -> None:
    process = NORMALIZE if keep else NORMALIZE_DROP
    req = _random_request(spans)
    first = run(req, process)
    for call in first.llm_calls:
        assert attrs(call.span).get(C.LLM_CALL) is True
        for n in tokens(call):
            assert n is None or 0 <= n <= 2**53 + 2**54
    once = req.SerializeToString()
    second = run(req, process)
    assert req.SerializeToString() == once
    def facts(calls: list[LlmCall]) -> list[tuple[Any, ...]]:
        return [(c.span.span_id, c.operation, c.provider, c.provider_inferred, c.request_model, c.response_model,
                 tokens(c), c.error) for c in calls]

    assert facts(second.llm_calls) == facts(first.llm_calls)


@PROPERTY
@given(st.one_of(st.none(), st.text(max_size=40), st.sampled_from(TRICKY_STRINGS)),
       st.one_of(st.none(), st.text(max_size=40)), st.one_of(st.none(), st.text(max_size=60)),
       st.one_of(st.none(), st.integers(-5, 70000)))
def test_property_providers_never_raise(raw: Any, address: Any, url: Any, port: Any) -> None:
    result = canonical_provider(raw)
    assert result is None or (result == result.lower() and result and canonical_provider(result) == result)
    infer_provider(raw, address, url, port)
    strip_provider_prefix(raw or "")


# -- micro-benchmark (not a test) ---------------------------------------------------------------


def benchmark(seconds: float = 3.0) -> None:
    """Spans/s of normalize alone on pre-parsed requests (a fresh parse per round, outside the timer)."""
    from tests.bench.bench_gateway import build_pool, plain_spans

    def plain_pool(count: int, size: int) -> list[bytes]:
        spans, out = plain_spans(size, 3), []
        for _ in range(count):
            req = ExportTraceServiceRequest()
            rs = req.resource_spans.add()
            rs.resource.CopyFrom(spans[0][1].resource)
            ss = rs.scope_spans.add()
            ss.scope.CopyFrom(spans[0][3].scope)
            for item in spans:
                ss.spans.add().CopyFrom(item[4])
            out.append(req.SerializeToString())
        return out

    def measure(label: str, pool: list[bytes], process: Any) -> None:
        spans = calls = rounds = 0
        elapsed = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            req = ExportTraceServiceRequest.FromString(pool[rounds % len(pool)])
            rounds += 1
            batch = Batch(req, 0, RequestContext("bench"))
            t0 = time.perf_counter()
            process(batch)
            elapsed += time.perf_counter() - t0
            spans += sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
            calls += len(batch.llm_calls or ())
        print(f"{label:34s} {spans / elapsed:>10,.0f} spans/s   ({spans} spans, {calls} calls)")

    measure("non-LLM spans only", plain_pool(20, 100), NORMALIZE)
    measure("fixture LLM spans only", build_pool(20, 100, 1, 1.0), NORMALIZE)
    measure("50/50 mix", build_pool(20, 100, 2, 0.5), NORMALIZE)
    measure("50/50 mix, keep_originals=false", build_pool(20, 100, 2, 0.5), NORMALIZE_DROP)


if __name__ == "__main__":
    benchmark(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)
