"""The router as a function: every condition and operator, continue, default, no-route drops,
`by: trace`, and per-route head sampling. (Through the real gateway: test_routing.py.)"""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from gateway.batch import Batch, RequestContext, count_spans
from gateway.config import ConfigError, parse
from gateway.routing.match import MatchError, compile_match
from gateway.routing.router import Router
from gateway.sampling.consistent import keep, threshold
from gateway.telemetry import Metrics
from tests.test_backpressure_health_metrics import metric_value


def _kv(key: str, value: object) -> KeyValue:
    kv = KeyValue(key=key)
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    else:
        kv.value.string_value = str(value)
    return kv


def _request(*spans: dict) -> ExportTraceServiceRequest:
    """One resource/scope per distinct (service, scope) pair, spans in the order given."""
    req = ExportTraceServiceRequest()
    scopes: dict[tuple[str, str], object] = {}
    for i, s in enumerate(spans):
        key = (s.get("service", "app"), s.get("scope", "lib"))
        if key not in scopes:
            rs = req.resource_spans.add()
            rs.resource.attributes.append(_kv("service.name", key[0]))
            ss = rs.scope_spans.add()
            ss.scope.name = key[1]
            scopes[key] = ss
        span = scopes[key].spans.add(  # type: ignore[attr-defined]
            trace_id=s.get("trace", (i + 1).to_bytes(16, "big")), span_id=(i + 1).to_bytes(8, "big"),
            name=s.get("name", f"s{i}"))
        if "parent" in s:
            span.parent_span_id = s["parent"]
        span.status.code = {"unset": 0, "ok": 1, "error": 2}[s.get("status", "unset")]
        for k, v in s.get("attrs", {}).items():
            span.attributes.append(_kv(k, v))
    return req


class _Sink(str):
    """Stands for a sink driver: the router only reads its name."""

    @property
    def name(self) -> str:
        return str(self)


def _router(routes_yaml: str, sinks: str = "a b c d") -> tuple[Router, Metrics]:
    sink_yaml = "".join(f"  {n}: {{type: file, path: /tmp/{n}}}\n" for n in sinks.split())
    config = parse(f"sinks:\n{sink_yaml}routes:\n{routes_yaml}", environ={})
    metrics = Metrics()
    return Router(config.route_list(), {n: _Sink(n) for n in sinks.split()}, metrics), metrics  # type: ignore[misc]


def _where(router: Router, req: ExportTraceServiceRequest, tenant: str | None = None) -> dict[str, set[str]]:
    """Sink -> names of the spans it gets."""
    out: dict[str, set[str]] = {}
    for part, sinks in router.route(Batch(req, count_spans(req), RequestContext("test", tenant=tenant))):
        assert part.spans == count_spans(part.request)
        names = {s.name for rs in part.request.resource_spans for ss in rs.scope_spans for s in ss.spans}
        for sink in sinks:
            assert not names & out.get(sink, set()), "a sink got a span twice"  # type: ignore[call-overload]
            out.setdefault(sink, set()).update(names)  # type: ignore[call-overload]
    return out


@pytest.mark.parametrize(("condition", "expected"), [
    ("{resource.service.name: bot}", {"x"}),
    ("{resource.service.name: {in: [bot, other]}}", {"x", "y"}),
    ("{resource.service.name: {regex: '^b'}}", {"x"}),
    ("{span.gen_ai.request.model: {regex: '^gpt-4'}}", {"x", "z"}),
    ("{span.gen_ai.request.model: gpt-4o}", {"x"}),
    ("{span.gen_ai.usage.cost: {gt: 0.5}}", {"y"}),
    ("{span.gen_ai.usage.cost: {gte: 0.5}}", {"y", "z"}),
    ("{span.gen_ai.usage.cost: {lt: 0.5}}", {"x"}),
    ("{span.gen_ai.usage.cost: {lte: 0.5, gt: 0.1}}", {"z"}),
    ("{span.tokens: {gt: 100}}", {"x"}),  # ints compare as numbers
    ("{span.gen_ai.usage.cost: {exists: false}}", {"w"}),
    ("{span.stream: true}", {"y"}),
    ("{span.stream: 1}", set()),  # a boolean is not the number 1
    ("{scope.name: openai}", {"y", "z"}),
    ("{name: z}", {"z"}),
    ("{status: error}", {"w"}),
    ("{status: {in: [ok, error]}}", {"z", "w"}),
    ("{tenant: team-a}", {"x", "y", "z", "w"}),
    ("{tenant: team-b}", set()),
    ("{resource.service.name: bot, scope.name: openai}", set()),
    ("{any: [{resource.service.name: bot}, {status: error}]}", {"x", "w"}),
    ("{span.missing: {exists: true}}", set()),
])
def test_each_condition_and_operator(condition: str, expected: set[str]) -> None:
    router, _ = _router(f"  - {{name: r, match: {condition}, sinks: [a]}}\n  - {{name: d, default: true, sinks: [b]}}\n")
    req = _request(
        {"name": "x", "service": "bot", "attrs": {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.cost": 0.01, "tokens": 150}},
        {"name": "y", "service": "other", "scope": "openai", "attrs": {"gen_ai.usage.cost": 0.9, "stream": True}},
        {"name": "z", "service": "third", "scope": "openai", "status": "ok",
         "attrs": {"gen_ai.request.model": "gpt-4.1", "gen_ai.usage.cost": 0.5}},
        {"name": "w", "service": "third", "status": "error"},
    )
    got = _where(router, req, tenant="team-a")
    assert got.get("a", set()) == expected
    assert got.get("b", set()) == {"x", "y", "z", "w"} - expected  # the default takes the rest


def test_first_match_wins_continue_fans_out_and_no_route_is_counted() -> None:
    router, metrics = _router(
        "  - {name: bot, match: {resource.service.name: bot}, sinks: [a], continue: true}\n"
        "  - {name: errors, match: {status: error}, sinks: [b]}\n"
        "  - {name: again, match: {status: error}, sinks: [c]}\n"  # shadowed by `errors` (no continue)
        "  - {name: llm, match: {span.model: {exists: true}}, sinks: [a, c]}\n")
    req = _request({"name": "1", "service": "bot", "status": "error"}, {"name": "2", "attrs": {"model": "m"}},
                   {"name": "3", "service": "bot", "attrs": {"model": "m"}}, {"name": "4"})
    assert _where(router, req) == {"a": {"1", "2", "3"}, "b": {"1"}, "c": {"2", "3"}}
    assert metric_value(metrics, "otelgate_router_dropped_spans_total", reason="no_route") == 1


def test_everything_to_the_same_sinks_is_not_copied() -> None:
    router, _ = _router("  - {name: r, match: {tenant: t}, sinks: [a, b]}\n")
    req = _request({"name": "1"}, {"name": "2"})
    batch = Batch(req, 2, RequestContext("test", tenant="t"), raw=b"as received")
    [(part, sinks)] = router.route(batch)
    assert part is batch and sinks == ("a", "b")
    router, _ = _router("  - {name: r, match: {span.x: {exists: false}}, sinks: [a]}\n")
    [(part, _)] = router.route(batch)
    assert part is batch  # per-span evaluation, but one destination for all: still no copy


def test_by_trace_takes_the_whole_trace_and_remembers_it_for_late_spans() -> None:
    router, _ = _router(
        "  - {name: pricey, by: trace, match: {span.cost: {gt: 1}}, sinks: [a], continue: true}\n"
        "  - {name: all, sinks: [b]}\n")
    t1, t2 = b"\x01" * 16, b"\x02" * 16
    req = _request({"name": "root1", "trace": t1}, {"name": "llm1", "trace": t1, "attrs": {"cost": 2.5}},
                   {"name": "root2", "trace": t2}, {"name": "llm2", "trace": t2, "attrs": {"cost": 0.1}})
    assert _where(router, req) == {"a": {"root1", "llm1"}, "b": {"root1", "llm1", "root2", "llm2"}}
    late = _request({"name": "late1", "trace": t1}, {"name": "late2", "trace": t2})
    assert _where(router, late) == {"a": {"late1"}, "b": {"late1", "late2"}}


def test_route_head_sampling_keeps_a_consistent_share_with_its_threshold() -> None:
    router, metrics = _router(
        "  - {name: sampled, sinks: [a], continue: true, sampling: {head: {percentage: 25}}}\n"
        "  - {name: all, sinks: [b]}\n")
    spans = [{"name": str(i), "trace": random.Random(i).randbytes(16)} for i in range(2000)]
    req = _request(*spans)
    batch = Batch(req, len(spans), RequestContext("test"))
    deliveries = router.route(batch)
    def spans_of(sink: str) -> list:
        return [s for p, sinks in deliveries if sink in sinks
                for rs in p.request.resource_spans for ss in rs.scope_spans for s in ss.spans]

    kept = spans_of("a")
    expected = {s["name"] for s in spans if keep(s["trace"], "", threshold(0.25))}
    assert {s.name for s in kept} == expected and 350 < len(expected) < 650
    assert all(s.trace_state == "ot=th:c" for s in kept)
    assert len(spans_of("b")) == 2000 and not any(s.trace_state for s in spans_of("b"))
    assert metric_value(metrics, "otelgate_sampled_spans_total", policy="route:sampled", decision="kept") == len(expected)
    assert metric_value(metrics, "otelgate_sampled_spans_total", policy="route:sampled", decision="dropped") == 2000 - len(expected)


@pytest.mark.parametrize(("routes", "error"), [
    ("  - {name: a, sinks: [a]}\n  - {name: b, sinks: [b]}\n", "routes[1]: unreachable for traces"),
    ("  - {name: a, sinks: [a], default: true}\n  - {name: b, sinks: [b], default: true}\n",
     "routes[1].default: only one default route per signal"),
    ("  - {name: a, sinks: [a], default: true, match: {tenant: x}}\n", "routes[0].match: a default route"),
    ("  - {name: a, sinks: [a], match: {span.x: {between: 1}}}\n", "routes[0].match.span.x.between: unknown operator"),
    ("  - {name: a, sinks: [a], match: {span.x: {gt: ten}}}\n", "routes[0].match.span.x.gt: expected a number"),
    ("  - {name: a, sinks: [a], match: {status: failed}}\n", "routes[0].match.status.equals: status is one of"),
    ("  - {name: a, sinks: [a], match: {any: []}}\n", "routes[0].match.any: expected a non-empty list"),
    ("  - {name: a, sinks: [a], match: {color: red}}\n", "routes[0].match.color: unknown field"),
    ("  - {name: a, sinks: [a], by: tree}\n", "routes[0].by:"),
    ("  - {name: a, sinks: [a], sampling: {tail: {}}}\n", "routes[0].sampling.tail: unknown key"),
])
def test_route_mistakes_are_named(routes: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _router(routes)
    assert any(e.startswith(error) for e in exc.value.errors), exc.value.errors


def test_langfuse_route_on_single_spans_must_be_by_trace() -> None:
    text = ("sinks:\n  lf: {type: langfuse, endpoint: 'http://127.0.0.1:1', public_key: p, secret_key: s}\n"
            "routes:\n  - {name: r, match: {span.gen_ai.usage.cost: {gt: 1}}, sinks: [lf]}\n")
    with pytest.raises(ConfigError) as exc:
        parse(text, environ={})
    assert exc.value.errors[0].startswith("routes[0].by: this route matches single spans and sends to Langfuse")
    parse(text.replace("sinks: [lf]}", "sinks: [lf], by: trace}"), environ={})
    parse(text.replace("span.gen_ai.usage.cost: {gt: 1}", "resource.service.name: x"), environ={})  # whole resources


def test_match_errors_are_collected_not_first_only() -> None:
    with pytest.raises(MatchError) as exc:
        compile_match({"a": 1, "span.x": {"regex": "("}, "any": [{"b": 2}]}, "m")
    assert [e.split(":")[0] for e in exc.value.errors] == ["m.a", "m.span.x.regex", "m.any[0].b"]


def test_check_warns_when_data_can_match_no_route() -> None:
    config = parse("sinks: {a: {type: file}}\nroutes:\n  - {name: r, match: {tenant: x}, sinks: [a]}\n", environ={})
    warnings = config.warnings()
    assert any(w.startswith("routes: traces that match no route are dropped") for w in warnings)
    assert any(w.startswith("routes: no route carries logs") for w in warnings)
    config = parse("sinks: {a: {type: file}}\nroutes:\n  - {name: r, match: {tenant: x}, sinks: [a]}\n"
                   "  - {name: d, default: true, sinks: [a], signals: [traces, logs, metrics]}\n", environ={})
    assert not config.warnings()


def test_route_redaction_applies_to_that_routes_copy_only() -> None:
    router, metrics = _router(
        "  - {name: lf, sinks: [a], continue: true, redact: {content: hash, hash_secret: 0123456789abcdef}}\n"
        "  - {name: all, sinks: [b, c]}\n")
    prompt = '[{"role": "user", "parts": [{"type": "text", "content": "mail me at ann@example.com"}]}]'
    req = _request({"name": "chat", "attrs": {"gen_ai.input.messages": prompt, "note": "call +1 415 555 0100"}})
    batch = Batch(req, 1, RequestContext("test"))
    deliveries = router.route(batch)
    by_sink = {sink: part for part, sinks in deliveries for sink in sinks}
    assert by_sink["b"] is batch and by_sink["c"] is batch  # untouched, not copied
    redacted = {kv.key: kv.value.string_value for kv in by_sink["a"].request.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert redacted["gen_ai.input.messages"].startswith("hmac-sha256:")
    assert "415" not in redacted["note"] and "[REDACTED:phone]" in redacted["note"]
    original = {kv.key: kv.value.string_value for kv in req.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert original["gen_ai.input.messages"] == prompt  # the other sinks' data is as received
    assert metric_value(metrics, "otelgate_redactions_total", kind="content_hash") == 1
