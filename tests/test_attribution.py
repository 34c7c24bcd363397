"""Attribution: each LLM call's tenant, app, user, session and environment, from the dialects'
attributes (and Dify's `metadata` JSON), written back on the span so sinks and routes see it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from gateway.batch import Batch, RequestContext, count_spans
from gateway.config import ConfigError, parse
from gateway.pipeline import build_processors
from gateway.telemetry import Metrics
from gateway.usage.attribution import AttributionConfig, parse_source
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for

LLM = {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
       "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10}


def _kv(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, dict):
        return {"key": key, "value": {"kvlistValue": {"values": [_kv(k, v) for k, v in value.items()]}}}
    return {"key": key, "value": {"stringValue": value}}


def _batch(span_attrs: dict[str, Any], resource: dict[str, Any] | None = None, tenant: str | None = None,
           config: str = "") -> tuple[Batch, list[Any]]:
    from google.protobuf.json_format import ParseDict
    body = {"resourceSpans": [{"resource": {"attributes": [_kv(k, v) for k, v in (resource or {}).items()]},
                               "scopeSpans": [{"scope": {"name": "t"}, "spans": [{
                                   "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
                                   "name": "chat", "startTimeUnixNano": "1700000000000000000",
                                   "endTimeUnixNano": "1700000001000000000",
                                   "attributes": [_kv(k, v) for k, v in {**LLM, **span_attrs}.items()]}]}]}]}
    request = ParseDict(body, ExportTraceServiceRequest())
    batch = Batch(request, count_spans(request), RequestContext("test", tenant=tenant))
    cfg = parse("sinks: {a: {type: file}}\n" + config, environ={})
    for process in build_processors(cfg, Metrics()):
        batch = process(batch)
    calls = list(batch.llm_calls or ())
    return batch, calls


def _span_attrs(batch: Batch) -> dict[str, str]:
    span = batch.request.resource_spans[0].scope_spans[0].spans[0]
    return {kv.key: kv.value.string_value for kv in span.attributes}


def test_openinference_user_session_and_environment() -> None:
    batch, calls = _batch({"user.id": "u-1", "session.id": "s-1"},
                          {"service.name": "support-bot", "deployment.environment.name": "prod"})
    (call,) = calls
    assert (call.tenant, call.app, call.user, call.session, call.environment) == (None, "support-bot", "u-1", "s-1", "prod")
    attrs = _span_attrs(batch)
    assert attrs["otelgate.app"] == "support-bot"  # written: it was absent
    assert attrs["user.id"] == "u-1"
    assert list(attrs).count("user.id") == 1  # present already: not written twice


def test_dify_metadata_json() -> None:
    metadata = orjson.dumps({"app_id": "app-42", "tenant_id": "t-9", "user_id": "acct-1", "end_user_id": "eu-7",
                             "conversation_id": "conv-3"}).decode()
    batch, (call,) = _batch({"metadata": metadata}, {"service.name": "dify"}, tenant="team-a")
    assert (call.tenant, call.app, call.user, call.session) == ("team-a", "app-42", "acct-1", "conv-3")
    attrs = _span_attrs(batch)
    assert (attrs["otelgate.app"], attrs["user.id"], attrs["session.id"]) == ("app-42", "acct-1", "conv-3")


def test_each_dialect_default_source() -> None:
    cases = [
        ({"enduser.id": "a"}, "a", None),
        ({"langfuse.user.id": "b", "langfuse.session.id": "lb"}, "b", "lb"),
        ({"ai.telemetry.metadata.userId": "c", "ai.telemetry.metadata.sessionId": "vc"}, "c", "vc"),
        ({"traceloop.association.properties.user_id": "d", "traceloop.association.properties.session_id": "td"}, "d", "td"),
        ({"gen_ai.conversation.id": "g"}, None, "g"),
        ({"metadata": '{"end_user_id": "e"}'}, "e", None),
        ({"user.id": "first", "enduser.id": "second"}, "first", None),  # order: the first source wins
    ]
    for attrs, user, session in cases:
        _, (call,) = _batch(attrs)
        assert (call.user, call.session) == (user, session), attrs


def test_resource_attributes_count_and_span_wins() -> None:
    _, (call,) = _batch({"user.id": "span-user"}, {"user.id": "res-user", "session.id": "res-session"})
    assert (call.user, call.session) == ("span-user", "res-session")


def test_configured_sources_json_pointer_and_scope() -> None:
    config = ("attribution:\n"
              "  app: ['resource:app.name', 'metadata#/nested/app', service.name]\n"
              "  user: ['span:customer', 'meta#/who']\n"
              "  tenant: ['metadata#/tenant_id']\n"
              "  write: false\n")
    meta = orjson.dumps({"nested": {"app": "deep-app"}, "tenant_id": "t-x"}).decode()
    batch, (call,) = _batch({"metadata": meta, "app.name": "on-span-ignored", "meta": {"who": "map-user"}},
                            {"service.name": "svc", "customer": "resource-ignored"}, config=config)
    assert (call.app, call.user, call.tenant) == ("deep-app", "map-user", "t-x")
    assert "otelgate.app" not in _span_attrs(batch)  # write: false


def test_an_upstream_otelgate_app_is_kept() -> None:
    batch, (call,) = _batch({"otelgate.app": "upstream"}, {"service.name": "svc"})
    assert call.app == "upstream"
    assert list(_span_attrs(batch)).count("otelgate.app") == 1


def test_values_are_bounded_and_bad_json_ignored() -> None:
    _, (call,) = _batch({"user.id": "x" * 1000, "metadata": "{not json", "session.id": 12345})
    assert call.user == "x" * 256
    assert call.session == "12345"
    assert call.app is None


@pytest.mark.parametrize("source, fragment", [("#/a", "no attribute key"), ("metadata#app", "JSON Pointer"),
                                              ("span:", "no attribute key")])
def test_bad_sources_fail_at_load(source: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_source(source)
    with pytest.raises(ConfigError) as err:
        parse(f"sinks: {{a: {{type: file}}}}\nattribution: {{user: ['{source}']}}", environ={})
    assert any("attribution.user" in e for e in err.value.errors), err.value.errors


def test_pointer_escapes() -> None:
    assert parse_source("m#/a~1b/c~0d").pointer == ("a/b", "c~d")
    assert AttributionConfig().user[0] == "user.id"


def test_routes_match_what_attribution_wrote(tmp_path: Path) -> None:
    """Through the real gateway: a route on `span.otelgate.app` (from Dify's metadata) and one on
    `span.user.id` (from the Vercel AI SDK's metadata) see the values attribution wrote."""
    config = gateway_config(tmp_path, llm=True)
    config["sinks"] = {n: {"type": "file", "path": str(tmp_path / f"{n}.jsonl"), "batch": {"max_delay": "20ms"}}
                       for n in ("app42", "vip", "rest")}
    config["routes"] = [
        {"name": "app42", "match": {"span.otelgate.app": "app-42"}, "sinks": ["app42"]},
        {"name": "vip", "match": {"span.user.id": "vip-user"}, "sinks": ["vip"]},
        {"name": "rest", "default": True, "sinks": ["rest"]},
    ]
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
        provider.add_span_processor(SimpleSpanProcessor(HttpExporter(endpoint=gw.http + "/v1/traces")))
        tracer = provider.get_tracer("tests.attribution")
        with tracer.start_as_current_span("dify", attributes={**LLM, "metadata": '{"app_id": "app-42"}'}):
            pass
        with tracer.start_as_current_span("vercel", attributes={**LLM, "ai.telemetry.metadata.userId": "vip-user"}):
            pass
        with tracer.start_as_current_span("plain", attributes=LLM):
            pass
        provider.shutdown()
        for sink, name in (("app42", "dify"), ("vip", "vercel"), ("rest", "plain")):
            spans = wait_for(lambda s=sink: spans_in(read_json_lines(tmp_path / f"{s}.jsonl")))
            assert [s["name"] for s in spans] == [name]
        (plain,) = spans_in(read_json_lines(tmp_path / "rest.jsonl"))
        attrs = {a["key"]: a["value"] for a in plain["attributes"]}
        assert attrs["otelgate.app"] == {"stringValue": "svc"}  # no app named: the service
        assert "user.id" not in attrs
    finally:
        gw.stop()


def test_a_reload_rebuilds_what_reads_attribution_and_only_that() -> None:
    from gateway.pipeline import _named_processors
    metrics = Metrics()
    base = "sinks: {a: {type: file}}\n"
    first = _named_processors(parse(base, environ={}), metrics)
    same = _named_processors(parse(base, environ={}), metrics, first)
    assert all(same[n][1] is first[n][1] for n in first)  # nothing changed: every processor kept
    changed = _named_processors(parse(base + "attribution: {user: [customer.id]}", environ={}), metrics, first)
    assert changed["account"][1] is not first["account"][1]
    assert changed["normalize"][1] is not first["normalize"][1]  # it keeps attribution's keys in its pass
    assert changed["price"][1] is first["price"][1] and changed["llm_metrics"][1] is first["llm_metrics"][1]
    batch, (call,) = _batch({"customer.id": "c-1", "user.id": "ignored"}, config="attribution: {user: [customer.id]}")
    assert call.user == "c-1"
