"""Every LLM call of the captured fixtures, through the real gateway: canonical attributes and cost.

Expected values come from each fixture's ground truth (`<fixture>.expected.json`), limited to
what the emitting library actually reports (the fixtures README lists where each library
leaves a count out: the gateway must then leave it out too, never guess). Costs are recomputed
here from the providers' published per-million-token prices, not through the gateway's code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for

# USD per million tokens, from the providers' price pages (OpenAI, Anthropic), Nov 2026:
# (input, cache read, cache write, output).
PUBLISHED = {
    "gpt-4o-mini": (0.15, 0.075, 0.15, 0.60),
    "gpt-4o": (2.50, 1.25, 2.50, 10.00),
    "gpt-4.1": (2.00, 0.50, 2.00, 8.00),
    "o3-mini": (1.10, 0.55, 1.10, 4.40),
    "o4-mini": (1.10, 0.275, 1.10, 4.40),
    "text-embedding-3-small": (0.02, 0.02, 0.02, 0.0),
    "claude-sonnet-4": (3.00, 0.30, 3.75, 15.00),
    "claude-3-5-haiku": (0.80, 0.08, 1.00, 4.00),
    "gemini-2.0-flash": (0.10, 0.025, 0.10, 0.40),  # Google AI Studio (Gemini API) pricing page
}

# Which canonical counts each library reports on a successful call (fixtures README,
# "Where the libraries themselves misreport"). A count not listed must be absent (or 0).
REPORTED: dict[str, set[str]] = {
    "openai_v2": {"input", "output"},
    "openllmetry_openai": {"input", "output", "cache_read", "reasoning"},
    "openinference_openai": {"input", "output", "cache_read", "reasoning"},
    "langfuse": {"input", "output", "cache_read", "reasoning"},
    "anthropic_sdk_native": {"input", "output", "cache_read", "cache_write"},
    "pydantic_ai": {"input", "output", "cache_read", "cache_write", "reasoning"},
}
# Libraries that do not report the requested model on the span.
NO_REQUEST_MODEL = {"langfuse"}

CANONICAL = {
    "input": "gen_ai.usage.input_tokens",
    "output": "gen_ai.usage.output_tokens",
    "cache_read": "gen_ai.usage.cache_read.input_tokens",
    "cache_write": "gen_ai.usage.cache_creation.input_tokens",
    "reasoning": "gen_ai.usage.reasoning.output_tokens",
}


def _published(model: str) -> tuple[float, float, float, float]:
    for name in sorted(PUBLISHED, key=len, reverse=True):
        if model.startswith(name):
            return PUBLISHED[name]
    raise KeyError(model)


def published_cost(model: str, tokens: dict[str, int | None]) -> float:
    p_in, p_read, p_write, p_out = _published(model)
    read, write = tokens.get("cache_read") or 0, tokens.get("cache_write") or 0
    uncached = (tokens.get("input") or 0) - read - write
    return (uncached * p_in + read * p_read + write * p_write + (tokens.get("output") or 0) * p_out) / 1e6


def _value(v: dict[str, Any]) -> Any:
    if "intValue" in v:
        return int(v["intValue"])
    for kind in ("stringValue", "doubleValue", "boolValue"):
        if kind in v:
            return v[kind]
    return v


def _attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: _value(a["value"]) for a in span.get("attributes", [])}


def _expected_calls(name: str) -> list[dict[str, Any]]:
    """Each call that has a span, with the canonical values the gateway must write."""
    truth = orjson.loads((FIXTURES / f"{name}.expected.json").read_bytes())
    out = []
    for call in truth["calls"]:
        if not call.get("span"):
            continue  # the library emitted no span for it: no usage to see
        exp: dict[str, Any] = {"span_id": call["span"]["span_id"], "trace_id": call["span"]["trace_id"],
                               "provider": call["provider"]}
        if call.get("source") == "scenario_declared":
            usage = call["usage_details"]
            if "input_tokens" in usage:  # Anthropic's shape: input excludes the cache
                tokens = {"input": usage["input_tokens"] + usage.get("cache_read_input_tokens", 0)
                          + usage.get("cache_creation_input_tokens", 0),
                          "cache_read": usage.get("cache_read_input_tokens"),
                          "cache_write": usage.get("cache_creation_input_tokens"),
                          "output": usage["output_tokens"]}
            else:
                tokens = {"input": usage.get("input"), "output": usage.get("output"),
                          "cache_read": usage.get("cache_read_input_tokens"),
                          "reasoning": usage.get("output_reasoning_tokens")}
            exp["models"] = {call["model_requested"]}
            exp["tokens"] = tokens
            cost = call.get("cost_details")
            if cost:
                exp["cost"] = cost.get("total", sum(cost.values()))
                exp["source"] = "reported"
            else:
                exp["cost"] = published_cost(call["model_requested"], tokens)
                exp["source"] = "computed"
        else:
            exp["request_model"] = None if name in NO_REQUEST_MODEL else call["model_requested"]
            exp["response_model"] = call["model_returned"]
            exp["models"] = {call["model_returned"]} if call["model_returned"] else {call["model_requested"]}
            t = call["tokens"]
            if t:
                truth_tokens = {"input": t["input_tokens_incl_cache"], "output": t["output_tokens"],
                                "cache_read": t["cached_tokens"], "cache_write": t["cache_creation_tokens"],
                                "reasoning": t["reasoning_tokens"]}
                exp["tokens"] = {k: (v if k in REPORTED[name] else None) for k, v in truth_tokens.items()}
                exp["cost"] = published_cost(call["model_returned"], exp["tokens"])
                exp["source"] = "reported" if name == "pydantic_ai" else "computed"
            else:
                exp["tokens"] = {}
                exp["cost"] = None
        out.append(exp)
    return out


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, Any]], str]:
    """All six fixtures sent once through one gateway; its output spans by id, and /metrics."""
    workdir = tmp_path_factory.mktemp("llm")
    gw = GatewayProcess(gateway_config(workdir, llm=True), workdir).wait_ready()
    try:
        total = 0
        for name in TRACE_FIXTURES:
            for body in read_records(FIXTURES / f"{name}.otlp.bin"):
                r = requests.post(f"{gw.http}/v1/traces", data=body,
                                  headers={"Content-Type": "application/x-protobuf"}, timeout=10)
                assert r.status_code == 200
        for name in TRACE_FIXTURES:
            total += sum(len(rs["scopeSpans"][i]["spans"]) for req in orjson.loads((FIXTURES / f"{name}.json").read_bytes())["requests"]
                         for rs in req["body"]["resourceSpans"] for i in range(len(rs["scopeSpans"])))
        path = workdir / "out.jsonl"
        spans = wait_for(lambda: (s := spans_in(read_json_lines(path))) and len(s) >= total and s)
        metrics = requests.get(f"{gw.admin}/metrics", timeout=5).text
    finally:
        gw.stop()
    return {s["spanId"]: s for s in spans}, metrics


@pytest.mark.parametrize("name", TRACE_FIXTURES)
def test_every_llm_call_is_canonical_and_priced(replayed, name: str) -> None:
    spans, _ = replayed
    for exp in _expected_calls(name):
        span = spans[exp["span_id"]]
        a = _attrs(span)
        where = f"{name} span {exp['span_id']} ({span['name']})"
        assert a.get("otelgate.llm.call") is True, where
        assert a.get("gen_ai.provider.name") == exp["provider"], where
        if "request_model" in exp:
            if exp["request_model"] is not None:
                assert a.get("gen_ai.request.model") == exp["request_model"], where
            if exp["response_model"] is not None:
                assert a.get("gen_ai.response.model") == exp["response_model"], where
        assert (a.get("gen_ai.response.model") or a.get("gen_ai.request.model")) in exp["models"], where
        for kind, key in CANONICAL.items():
            assert (a.get(key) or 0) == (exp["tokens"].get(kind) or 0), f"{where}: {key}"
        if exp["cost"] is None:
            assert "gen_ai.usage.cost" not in a, f"{where}: a failed call with no usage must not be priced"
        else:
            assert a.get("otelgate.cost.source") == exp["source"], where
            assert math.isclose(a["gen_ai.usage.cost"], exp["cost"], rel_tol=1e-6, abs_tol=1e-12), \
                f"{where}: cost {a['gen_ai.usage.cost']} != {exp['cost']}"
            if exp["source"] == "computed":
                assert math.isclose(a["otelgate.cost.input_usd"] + a["otelgate.cost.output_usd"], a["gen_ai.usage.cost"],
                                    rel_tol=1e-9), where
                assert a.get("otelgate.price.model"), where


@pytest.mark.parametrize("name", TRACE_FIXTURES)
def test_no_other_span_is_priced_and_trace_sums_are_right(replayed, name: str) -> None:
    spans, _ = replayed
    calls = _expected_calls(name)
    call_ids = {c["span_id"] for c in calls}
    trace_ids = {c["trace_id"] for c in calls}
    for span in spans.values():
        if span["traceId"] not in trace_ids:
            continue
        a = _attrs(span)
        if span["spanId"] not in call_ids:
            assert "gen_ai.usage.cost" not in a and "otelgate.llm.call" not in a, f"{name}: {span['name']} priced"
    for trace_id in trace_ids:
        billed = sum(c["cost"] or 0 for c in calls if c["trace_id"] == trace_id)
        summed = sum(_attrs(s).get("gen_ai.usage.cost", 0) for s in spans.values() if s["traceId"] == trace_id)
        assert math.isclose(summed, billed, rel_tol=1e-6, abs_tol=1e-12), f"{name} trace {trace_id}"


def test_pydantic_agent_spans_are_aggregates(replayed) -> None:
    spans, _ = replayed
    agents = [s for s in spans.values() if s["name"].startswith("invoke_agent")]
    assert len(agents) == 8  # six agent runs and two that failed
    for span in agents:
        a = _attrs(span)
        assert "gen_ai.usage.cost" not in a and "gen_ai.usage.input_tokens" not in a
        if "gen_ai.aggregated_usage.input_tokens" in a:
            assert a.get("otelgate.llm.aggregate") is True


def test_langfuse_provider_is_inferred_and_said(replayed) -> None:
    spans, _ = replayed
    for exp in _expected_calls("langfuse"):
        assert _attrs(spans[exp["span_id"]]).get("otelgate.provider.inferred") is True


def test_llm_metrics(replayed) -> None:
    _, text = replayed
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("otelgate_llm_"):
            name_labels, value = line.rsplit(" ", 1)
            samples[name_labels] = float(value)

    def total(prefix: str, **labels: str) -> float:
        return sum(v for k, v in samples.items() if k.startswith(prefix + "{")
                   and all(f'{lk}="{lv}"' in k for lk, lv in labels.items()))

    expected = [c for name in TRACE_FIXTURES for c in _expected_calls(name)]
    assert total("otelgate_llm_requests_total") == len(expected)
    assert total("otelgate_llm_requests_total", status="error") == sum(
        1 for name in TRACE_FIXTURES for c in orjson.loads((FIXTURES / f"{name}.expected.json").read_bytes())["calls"]
        if c.get("span") and (c["span"]["status_code"] == 2))
    for kind in ("input", "output", "cache_read", "cache_write", "reasoning"):
        want = sum(c["tokens"].get(kind) or 0 for c in expected)
        assert total("otelgate_llm_tokens_total", type=kind) == want, kind
    cost = sum(c["cost"] or 0 for c in expected)
    assert math.isclose(total("otelgate_llm_cost_usd_total"), cost, rel_tol=1e-6)
    assert total("otelgate_llm_cost_usd_total", source="reported") > 0
    assert total("otelgate_llm_request_duration_seconds_count", provider="anthropic") > 0
    assert total("otelgate_llm_unpriced_spans_total") == 0
    pydantic_calls = len(_expected_calls("pydantic_ai"))
    assert total("otelgate_llm_requests_total", service="capture-pydantic_ai") == pydantic_calls


# -- captures made with tests/capture/ (a fake provider whose log is the truth) -------------------------

# Captured fixtures (tests/capture/README.md): each `calls[i]` is one request the fake provider
# answered, with `llm_spans`, every LLM span that covers it or names its response id. Exactly one
# of them must stand for the call (otelgate.llm.call=true), with every token kind in semconv
# meaning equal to the provider's truth (what the library does not report listed below), priced
# at the published price; a failed call is counted once and never priced.
CAPTURED = ["logfire", "langchain_openllmetry", "langchain_openinference", "dify_runtime", "litellm_otel",
            "openai_agents_openinference", "google_genai", "vercel_ai_v6", "vercel_ai_v7", "openai_agents_logfire"]
CAPTURED = [n for n in CAPTURED if (FIXTURES / f"{n}.expected.json").exists()]
# Token kinds the library leaves out, by (fixture, api): those must be absent (or 0).
CAPTURED_OMITS: dict[tuple[str, str], set[str]] = {
    # OpenLLMetry's LangChain spans: no reasoning count (o3-mini's 80 are inside output_tokens).
    ("langchain_openllmetry", "openai.chat.completions"): {"reasoning"},
    # Dify's runtime spans (replica): only llm.input_tokens / llm.output_tokens.
    ("dify_runtime", "openai.chat.completions"): {"cache_read", "reasoning"},
    # AI SDK 7's @ai-sdk/otel spans: no reasoning count (o4-mini's are inside output_tokens).
    ("vercel_ai_v7", "openai.responses"): {"reasoning"},
}
# Libraries that report their own cost (checked against the published price all the same), except a
# reported 0 (LiteLLM without a price for the model), which otelgate prices itself.
REPORTS_COST = {"litellm_otel"}
# OpenInference on the Agents SDK: `llm.invocation_parameters` (the only place a requested model
# could be) holds the *response's* fields, so the model read as requested is the returned
# snapshot; a failed call's span names no model at all.
REQUEST_MODEL_IS_RETURNED = {"openai_agents_openinference"}
# Libraries that record no response model (the requested one is priced).
NO_RESPONSE_MODEL = {"dify_runtime", ("vercel_ai_v6", "openai.embeddings"), ("vercel_ai_v7", "openai.embeddings")}
# Where the library reports the requested model as the response model, by (fixture, api, stream):
# LangChain's streamed chat (its chunks carry no model name), OpenInference on the Responses API.
RESPONSE_MODEL_IS_REQUESTED = {
    ("langchain_openllmetry", "openai.chat.completions", True),
    ("langchain_openinference", "openai.chat.completions", True),
    ("langchain_openinference", "openai.responses", False),
    ("litellm_otel", "openai.chat.completions", True),
}


def _captured_truth(name: str) -> dict[str, Any]:
    return orjson.loads((FIXTURES / f"{name}.expected.json").read_bytes())


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, Any]], str]:
    workdir = tmp_path_factory.mktemp("captured")
    gw = GatewayProcess(gateway_config(workdir, llm=True), workdir).wait_ready()
    try:
        total = 0
        for name in CAPTURED:
            total += _captured_truth(name)["counts"]["spans"]
            for body in read_records(FIXTURES / f"{name}.otlp.bin"):
                r = requests.post(f"{gw.http}/v1/traces", data=body,
                                  headers={"Content-Type": "application/x-protobuf"}, timeout=10)
                assert r.status_code == 200
        path = workdir / "out.jsonl"
        spans = wait_for(lambda: (s := spans_in(read_json_lines(path))) and len(s) >= total and s)
        metrics = requests.get(f"{gw.admin}/metrics", timeout=5).text
    finally:
        gw.stop()
    return {s["spanId"]: s for s in spans}, metrics


@pytest.mark.parametrize("name", CAPTURED)
def test_captured_call_by_call(captured, name: str) -> None:
    spans, _ = captured
    truth = _captured_truth(name)
    call_spans = set()
    for call in truth["calls"]:
        where = f"{name} call {call['seq']} ({call['api']}, {call['model_requested']}, {call['http_status']})"
        if not call["llm_spans"]:
            continue  # the library emitted no span for it (README): no usage to see, none invented
        marked = [spans[s["span_id"]] for s in call["llm_spans"] if _attrs(spans[s["span_id"]]).get("otelgate.llm.call")]
        assert len(marked) == 1, f"{where}: {len(marked)} spans stand for the call"
        span = marked[0]
        call_spans.add(span["spanId"])
        a = _attrs(span)
        assert a.get("gen_ai.provider.name") == call["provider"], where
        if name in REQUEST_MODEL_IS_RETURNED:
            assert a.get("gen_ai.request.model") == call["model_returned"], where
        else:
            assert a.get("gen_ai.request.model") == call["model_requested"], where
        if call["api"] == "openai.embeddings":
            assert a.get("gen_ai.operation.name") == "embeddings", where
        if call["http_status"] != 200:
            errored = span.get("status", {}).get("code") == 2 or any(e["name"] == "exception" for e in span.get("events", []))
            assert errored, where
            assert "gen_ai.usage.cost" not in a and "gen_ai.usage.input_tokens" not in a, where
            continue
        returned = call["model_returned"]
        if (name, call["api"], call["stream"]) in RESPONSE_MODEL_IS_REQUESTED:
            returned = call["model_requested"]
        if name not in NO_RESPONSE_MODEL and (name, call["api"]) not in NO_RESPONSE_MODEL:
            assert a.get("gen_ai.response.model") == returned, where
        t = call["tokens"]
        omitted = CAPTURED_OMITS.get((name, call["api"]), set())
        want = {"input": t["input_tokens_incl_cache"], "output": t["output_tokens"], "cache_read": t["cached_tokens"],
                "cache_write": t["cache_creation_tokens"], "reasoning": t["reasoning_tokens"]}
        want = {k: (None if k in omitted else v) for k, v in want.items()}
        for kind, key in CANONICAL.items():
            assert (a.get(key) or 0) == (want[kind] or 0), f"{where}: {key} = {a.get(key)}, truth {want[kind]}"
        cost = published_cost(call["model_returned"], want)
        source = "reported" if name in REPORTS_COST and a.get("gen_ai.cost.total_cost") else "computed"
        assert a.get("otelgate.cost.source") == source, where
        assert abs(a["gen_ai.usage.cost"] - cost) <= 1e-9, f"{where}: cost {a['gen_ai.usage.cost']} != {cost}"
        assert a["gen_ai.usage.cost.amount"] == a["gen_ai.usage.cost"] and a["gen_ai.usage.cost.currency"] == "USD"
        assert a["gen_ai.usage.cost.source"] == source, where
    # No other span of these traces is a call or carries a cost.
    traces = {s["trace_id"] for c in truth["calls"] for s in c["llm_spans"]}
    for span in spans.values():
        if span["traceId"] in traces and span["spanId"] not in call_spans:
            a = _attrs(span)
            assert "otelgate.llm.call" not in a and "gen_ai.usage.cost" not in a, f"{name}: {span['name']} counted"


@pytest.mark.parametrize("name", CAPTURED)
def test_captured_metrics_count_each_call_once(captured, name: str) -> None:
    _, text = captured
    truth = _captured_truth(name)
    requests_total = errors = 0.0
    service = truth.get("service", f"capture-{name}")
    for line in text.splitlines():
        if line.startswith("otelgate_llm_requests_total{") and f'service="{service}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            requests_total += value
            if 'status="error"' in line:
                errors += value
    seen = [c for c in truth["calls"] if c["llm_spans"]]
    assert requests_total == len(seen)
    assert errors == sum(1 for c in seen if c["http_status"] != 200)
