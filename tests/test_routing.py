"""Routing and tail sampling through the real gateway, with real SDK traffic: conditions on
resource, span attributes after normalization and pricing, tenant (gRPC metadata and HTTP
header), fan-out, default, no-route drops; `by: trace` keeping whole traces; tail sampling
keeping errors and expensive traces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric


def _file_sinks(workdir: Path, *names: str) -> dict[str, Any]:
    return {n: {"type": "file", "path": str(workdir / f"{n}.jsonl"), "batch": {"max_delay": "20ms"}} for n in names}


def _names(workdir: Path, sink: str) -> list[str]:
    return sorted(s["name"] for s in spans_in(read_json_lines(workdir / f"{sink}.jsonl")))


def _send(exporter: Any, service: str, spans: list[dict[str, Any]]) -> None:
    """One trace: a root `<service>:root` and the given children (name, attributes, error)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # each span exported as it ends: children first
    tracer = provider.get_tracer("tests.routing")
    with tracer.start_as_current_span(f"{service}:root"):
        for child in spans:
            with tracer.start_as_current_span(child["name"], attributes=child.get("attributes", {})) as span:
                if child.get("error"):
                    span.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()


def _llm(name: str, input_tokens: int) -> dict[str, Any]:
    return {"name": name, "attributes": {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                                         "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": input_tokens,
                                         "gen_ai.usage.output_tokens": 10}}


def test_routes_by_resource_span_attribute_tenant_with_fan_out_and_default(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, llm=True)
    config["sinks"] = _file_sinks(tmp_path, "langfuse_a", "jaeger", "audit", "team_b", "rest")
    config["routes"] = [
        {"name": "support", "match": {"resource.service.name": "support-bot"}, "sinks": ["langfuse_a"], "continue": True},
        {"name": "expensive", "match": {"span.gen_ai.usage.cost": {"gt": 0.01}}, "sinks": ["audit"], "continue": True},
        {"name": "team-b", "match": {"tenant": "team-b"}, "sinks": ["team_b"]},
        {"name": "models", "match": {"any": [{"span.gen_ai.request.model": {"regex": "^gpt-4"}},
                                             {"resource.service.name": {"in": ["batch-job"]}}]}, "sinks": ["jaeger"]},
        {"name": "rest", "default": True, "sinks": ["rest"]},
    ]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        _send(HttpExporter(endpoint=f"{gw.http}/v1/traces"), "support-bot", [_llm("bot-cheap", 100)])
        _send(GrpcExporter(endpoint=gw.grpc, insecure=True), "search", [_llm("search-pricey", 10_000), {"name": "search-plain"}])
        _send(GrpcExporter(endpoint=gw.grpc, insecure=True, headers=(("x-otelgate-tenant", "team-b"),)), "billing",
              [{"name": "billing-plain"}])
        _send(HttpExporter(endpoint=f"{gw.http}/v1/traces", headers={"x-otelgate-tenant": "team-b"}), "search",
              [_llm("teamb-pricey", 10_000)])
        wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total") >= 12)
        # gpt-4o input $2.50/Mtok: 10k tokens = $0.025 (> 0.01); 100 tokens = $0.00025
        assert _names(tmp_path, "langfuse_a") == ["bot-cheap", "support-bot:root"]
        assert _names(tmp_path, "audit") == ["search-pricey", "teamb-pricey"]
        assert _names(tmp_path, "team_b") == ["billing-plain", "billing:root", "search:root", "teamb-pricey"]
        assert _names(tmp_path, "jaeger") == ["bot-cheap", "search-pricey"]
        assert _names(tmp_path, "rest") == ["search-plain", "search:root"]  # support-bot:root was taken by `support`
        assert metric(gw.admin, "otelgate_router_dropped_spans_total") == 0
    finally:
        assert gw.stop() == 0


def test_data_no_route_takes_is_dropped_and_counted(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    config["routes"] = [{"name": "bots", "match": {"resource.service.name": {"regex": "bot$"}}, "sinks": ["out"]}]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        _send(HttpExporter(endpoint=f"{gw.http}/v1/traces"), "chat-bot", [{"name": "a"}])
        _send(HttpExporter(endpoint=f"{gw.http}/v1/traces"), "web", [{"name": "b"}, {"name": "c"}])
        wait_for(lambda: metric(gw.admin, "otelgate_router_dropped_spans_total", reason="no_route") == 3)
        wait_for(lambda: _names(tmp_path, "out") == ["a", "chat-bot:root"])
    finally:
        assert gw.stop() == 0


def test_tail_sampling_keeps_errors_and_expensive_traces_whole_and_by_trace_routes_them(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, llm=True)
    config["sinks"] = _file_sinks(tmp_path, "main", "audit")
    config["sampling"] = {"tail": {"decision_wait": "5s", "idle": "300ms", "policies": [
        {"type": "error"}, {"type": "cost", "threshold_usd": 0.01}]}}
    config["routes"] = [
        {"name": "audit", "by": "trace", "match": {"span.gen_ai.usage.cost": {"gt": 0.01}}, "sinks": ["audit"],
         "continue": True},
        {"name": "all", "sinks": ["main"]},
    ]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        _send(HttpExporter(endpoint=f"{gw.http}/v1/traces"), "cheap", [_llm("cheap-llm", 100), {"name": "cheap-tool"}])
        _send(HttpExporter(endpoint=f"{gw.http}/v1/traces"), "pricey", [_llm("pricey-llm", 10_000), {"name": "pricey-tool"}])
        _send(GrpcExporter(endpoint=gw.grpc, insecure=True), "failing", [{"name": "failing-tool", "error": True}])
        wait_for(lambda: metric(gw.admin, "otelgate_sampled_spans_total", policy="tail") == 8)
        wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total") == 8)
        assert _names(tmp_path, "main") == ["failing-tool", "failing:root", "pricey-llm", "pricey-tool", "pricey:root"]
        assert _names(tmp_path, "audit") == ["pricey-llm", "pricey-tool", "pricey:root"]  # the root came after the match
        assert metric(gw.admin, "otelgate_sampled_spans_total", policy="tail", decision="dropped") == 3
        assert metric(gw.admin, "otelgate_tail_policy_traces_total", policy="cost", decision="kept") == 1
        assert metric(gw.admin, "otelgate_tail_traces") == 0
    finally:
        assert gw.stop() == 0
