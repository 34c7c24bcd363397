"""Dify's OpenTelemetry provider and its Arize/Phoenix tracer (replicas: tests/fixtures/dify_*,
recorded by tests/capture/dify_replicas.py), checked call by call through the real gateway.

A message, a workflow and a chatflow each cost exactly what their spans say, whether the
spans arrive one per request in the order Dify sends them, one per request in any other order,
or all in one request: one priced span per call (the `llm` span, the LLM nodes), the CHAIN
`message` span that repeats its child's usage and the workflow spans left unpriced, Dify's
plugin provider ids mapped to canonical providers, the failed node not priced as a success.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import FIXTURES, read_records
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for

# Published prices, USD per token (input, output).
_PREFIX = (0x10, 0x20, 0x30)  # first trace id byte, per delivery mode
PRICES = {"gpt-4o-mini": (0.15e-6, 0.6e-6), "gpt-4o": (2.5e-6, 10e-6), "claude-3-5-sonnet-20241022": (3e-6, 15e-6)}


def _attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", [])}


def _requests(name: str, mode: int) -> list[bytes]:
    """The fixture's export requests for delivery `mode` (0: as recorded, 1: shuffled, 2: all in
    one), each mode's traces on ids of their own so the runs never meet in the gateway."""
    out = []
    for body in read_records(FIXTURES / f"{name}.otlp.bin"):
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.trace_id = bytes([_PREFIX[mode]]) + span.trace_id[1:]
        out.append(request)
    if mode == 1:
        random.Random(13).shuffle(out)
    if mode == 2:
        merged = ExportTraceServiceRequest()
        for request in out:
            merged.resource_spans.extend(request.resource_spans)
        out = [merged]
    return [r.SerializeToString() for r in out]


@pytest.mark.parametrize("name", ["dify_otel", "dify_phoenix"])
def test_dify_replica_call_by_call(tmp_path: Path, name: str) -> None:
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())["calls"]
    n_spans = sum(len(ss.spans) for body in read_records(FIXTURES / f"{name}.otlp.bin")
                  for rs in ExportTraceServiceRequest.FromString(body).resource_spans for ss in rs.scope_spans)
    gw = GatewayProcess(gateway_config(tmp_path, llm=True), tmp_path).wait_ready()
    try:
        for mode in (0, 1, 2):
            for body in _requests(name, mode):
                r = requests.post(f"{gw.http}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"},
                                  timeout=5)
                assert r.status_code == 200
        spans = wait_for(lambda: len(s := spans_in(read_json_lines(tmp_path / "out.jsonl"))) >= 3 * n_spans and s)
    finally:
        assert gw.stop() == 0
    assert len(spans) == 3 * n_spans
    for mode in (0, 1, 2):
        mine = [s for s in spans if s["traceId"][:2] == f"{_PREFIX[mode]:02x}"]
        priced = [s for s in mine if _attrs(s).get("otelgate.llm.call")]
        assert len(priced) == len(expected), (mode, [s["name"] for s in priced])
        unmatched = list(priced)
        for call in expected:
            span = next((s for s in unmatched if _is(s, call)), None)
            assert span is not None, (mode, call, [(s["name"], _attrs(s)) for s in unmatched])
            unmatched.remove(span)
            a = _attrs(span)
            assert a["gen_ai.provider.name"] == call["provider"]
            if call["error"]:
                assert span["status"]["code"] == 2
                # Dify's OTel provider writes 0 tokens for a failed node (its usage {} read as 0): priced 0.0,
                # what the span says; the Phoenix tracer writes no counts: no cost at all.
                assert a.get("gen_ai.usage.cost") in (None, 0.0)
                assert a.get("gen_ai.usage.cost") is None or int(a["gen_ai.usage.input_tokens"]) == 0
                continue
            price_in, price_out = PRICES[call["model"]]
            assert a["gen_ai.usage.cost"] == pytest.approx(
                call["input_tokens"] * price_in + call["output_tokens"] * price_out, abs=1e-9)
        # The wrappers that repeat usage (Dify's CHAIN message span, the workflow spans) stay unpriced.
        for s in mine:
            if s["name"] == "message" or s["name"].startswith(("workflow", "chatflow")):
                assert "gen_ai.usage.cost" not in _attrs(s), s["name"]


def _is(span: dict[str, Any], call: dict[str, Any]) -> bool:
    a = _attrs(span)
    model = a.get("gen_ai.response.model") or a.get("gen_ai.request.model")
    return model == call["model"] and int(a.get("gen_ai.usage.input_tokens") or 0) == call["input_tokens"] and \
        int(a.get("gen_ai.usage.output_tokens") or 0) == call["output_tokens"]



@pytest.mark.parametrize("plugin_id, provider", [
    ("langgenius/openai/openai", "openai"), ("langgenius/anthropic/anthropic", "anthropic"),
    ("langgenius/azure_openai/azure_openai", "azure.ai.openai"), ("langgenius/bedrock/bedrock", "aws.bedrock"),
    ("langgenius/gemini/google", "gcp.gemini"), ("langgenius/vertex_ai/vertex_ai", "gcp.vertex_ai"),
    ("langgenius/deepseek/deepseek", "deepseek"),
])
def test_dify_plugin_provider_ids(plugin_id: str, provider: str) -> None:
    """Dify names providers by plugin id (<org>/<plugin>/<provider>); the plugin names the API."""
    from gateway.llm.providers import canonical_provider
    assert canonical_provider(plugin_id) == provider
