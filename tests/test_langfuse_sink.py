"""The Langfuse sink, from the real gateway to a strict Langfuse endpoint (tests/langfuse_server.py)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import orjson
import requests

from gateway.batch import count_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.langfuse_server import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY, LangfuseServer
from tests.test_backpressure_health_metrics import metric

PROTO = {"Content-Type": "application/x-protobuf"}


def _config(workdir: Path, url: str, secret: str = DEFAULT_SECRET_KEY, **extra: Any) -> dict[str, Any]:
    config = gateway_config(workdir, llm=True)
    config["sinks"]["langfuse"] = {
        "type": "langfuse", "endpoint": url, "public_key": DEFAULT_PUBLIC_KEY, "secret_key": secret,
        "environment": "test", "release": "r1", "batch": {"max_delay": "20ms"},
        "retry": {"initial": "100ms", "max": "500ms", "max_elapsed": "10s"}, **extra}
    return config


def _send_fixtures(gw: GatewayProcess) -> int:
    total = 0
    for name in TRACE_FIXTURES:
        for body in read_records(FIXTURES / f"{name}.otlp.bin"):
            assert requests.post(f"{gw.http}/v1/traces", data=body, headers=PROTO, timeout=10).status_code == 200
            total += count_spans(ExportTraceServiceRequest.FromString(body))
    return total


def _attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def test_every_span_arrives_with_langfuse_attributes_beside_the_file_sink(tmp_path: Path) -> None:
    with LangfuseServer().run_in_thread() as lf:
        gw = GatewayProcess(_config(tmp_path, lf.base_url), tmp_path).wait_ready()
        try:
            total = _send_fixtures(gw)
            wait_for(lambda: len(lf.spans()) >= total, timeout=20)
            file_spans = wait_for(lambda: (s := spans_in(read_json_lines(tmp_path / "out.jsonl"))) and len(s) >= total and s)
            assert metric(gw.admin, "otelgate_sink_sent_spans_total", sink="langfuse") == total
        finally:
            assert gw.stop() == 0
        assert lf.rejected == []
        assert all(r.headers["content-encoding"] == "gzip" for r in lf.received)
        got = {s.span_id.hex(): _attrs(s) for s in lf.spans()}
    assert len(got) == total == len(file_spans)
    # Every LLM call the normalizer found is a Langfuse generation (or embedding) with otelgate's cost.
    calls = [a for a in got.values() if a.get("otelgate.llm.call")]
    assert len(calls) >= 40
    for a in calls:
        expected_type = "embedding" if a.get("gen_ai.operation.name") == "embeddings" else "generation"
        assert a["langfuse.observation.type"] == expected_type
        assert a["langfuse.observation.model.name"] == (a.get("gen_ai.response.model") or a.get("gen_ai.request.model"))
        if "gen_ai.usage.cost" in a and a.get("otelgate.cost.source") != "reported":
            cost = orjson.loads(a["langfuse.observation.cost_details"])
            assert math.isclose(cost["total"], a["gen_ai.usage.cost"], rel_tol=1e-9)
        if "gen_ai.usage.input_tokens" in a:
            usage = orjson.loads(a["langfuse.observation.usage_details"])
            assert usage["input"] + usage.get("input_cached_tokens", 0) + usage.get("input_cache_creation", 0) \
                == a["gen_ai.usage.input_tokens"]
    assert all(a.get("langfuse.environment") in ("test", "capture") for a in got.values())
    assert {a.get("langfuse.user.id") for a in calls} == {"user-7f3a9c"}


def test_rate_limit_is_waited_out_and_nothing_is_lost(tmp_path: Path) -> None:
    with LangfuseServer().run_in_thread() as lf:
        lf.fail_next(2, status=429, retry_after=1)
        gw = GatewayProcess(_config(tmp_path, lf.base_url), tmp_path).wait_ready()
        try:
            started = time.monotonic()
            total = _send_fixtures(gw)
            wait_for(lambda: len(lf.spans()) >= total, timeout=20)
            assert time.monotonic() - started >= 1.9  # two Retry-After: 1 waits, not the 100 ms backoff
            assert metric(gw.admin, "otelgate_sink_failed_spans_total", sink="langfuse") > 0
            assert metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="langfuse") == 0
            health = requests.get(f"{gw.admin}/health", timeout=5).json()["sinks"]["langfuse"]
            assert health["status"] == "ok" and "429" in health["last_error"]
        finally:
            gw.stop()
        assert [status for status, _ in lf.rejected] == [429, 429]
        assert len({s.span_id for s in lf.spans()}) == total  # no duplicates


def test_wrong_keys_are_a_configuration_error_on_health(tmp_path: Path) -> None:
    with LangfuseServer().run_in_thread() as lf:
        gw = GatewayProcess(_config(tmp_path, lf.base_url, secret="wrong"), tmp_path).wait_ready()
        try:
            total = _send_fixtures(gw)
            wait_for(lambda: metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="langfuse", reason="permanent") == total)
            health = requests.get(f"{gw.admin}/health", timeout=5).json()
            assert health["status"] == "degraded"
            assert health["sinks"]["langfuse"]["status"] == "failing"
            assert "401" in health["sinks"]["langfuse"]["last_error"]
            assert "secret_key" in health["sinks"]["langfuse"]["last_error"]
            # The file sink beside it is unaffected.
            wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total", sink="out") == total)
        finally:
            gw.stop()
        assert lf.rejected and all(status == 401 for status, _ in lf.rejected)
        assert len(lf.rejected) <= len(TRACE_FIXTURES) + 2  # one attempt per batch: never retried
        assert lf.received == []


def test_invalid_ids_never_reach_langfuse(tmp_path: Path) -> None:
    """Langfuse rejects a whole export for one bad id; the receiver drops such spans one by one first."""
    with LangfuseServer().run_in_thread() as lf:
        gw = GatewayProcess(_config(tmp_path, lf.base_url), tmp_path).wait_ready()
        try:
            req = ExportTraceServiceRequest()
            scope = req.resource_spans.add().scope_spans.add()
            scope.spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="good")
            scope.spans.add(trace_id=b"\x01" * 15, span_id=b"\x03" * 8, name="bad")
            r = requests.post(f"{gw.http}/v1/traces", data=req.SerializeToString(), headers=PROTO, timeout=5)
            assert r.status_code == 200
            wait_for(lambda: len(lf.spans()) == 1)
        finally:
            gw.stop()
        assert lf.rejected == [] and lf.spans()[0].name == "good"


def test_exports_are_split_under_the_limit_with_traces_whole(tmp_path: Path) -> None:
    with LangfuseServer().run_in_thread() as lf:
        config = _config(tmp_path, lf.base_url, max_request_bytes="40KiB", batch={"max_delay": "200ms"})
        gw = GatewayProcess(config, tmp_path).wait_ready()
        try:
            total = _send_fixtures(gw)
            wait_for(lambda: len(lf.spans()) >= total, timeout=20)
        finally:
            gw.stop()
        assert len(lf.received) > 1
        for received in lf.received:  # under the limit, unless one trace alone is larger
            traces_in = {s.trace_id for s in received.spans()}
            assert received.request.ByteSize() <= 40 * 1024 or len(traces_in) == 1
        traces: dict[bytes, set[int]] = {}
        for n, received in enumerate(lf.received):
            for span in received.spans():
                traces.setdefault(span.trace_id, set()).add(n)
        # A trace spans several exports only when the gateway received it in several requests.
        sent_requests_per_trace: dict[bytes, int] = {}
        for name in TRACE_FIXTURES:
            for body in read_records(FIXTURES / f"{name}.otlp.bin"):
                for t in {s.trace_id for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                          for ss in rs.scope_spans for s in ss.spans}:
                    sent_requests_per_trace[t] = sent_requests_per_trace.get(t, 0) + 1
        for trace_id, exports in traces.items():
            assert len(exports) <= sent_requests_per_trace[trace_id]


def test_jaeger_langfuse_and_file_side_by_side(tmp_path: Path) -> None:
    """One config, three sinks: `type: jaeger` (gRPC OTLP; another otelgate stands in for Jaeger,
    which cannot run here), `type: langfuse`, and a file. Each gets every span."""
    jaeger_dir = tmp_path / "jaeger"
    jaeger_dir.mkdir()
    jaeger = GatewayProcess(gateway_config(jaeger_dir), jaeger_dir).wait_ready()
    try:
        with LangfuseServer().run_in_thread() as lf:
            config = _config(tmp_path, lf.base_url)
            config["sinks"]["jaeger"] = {"type": "jaeger", "endpoint": jaeger.grpc, "batch": {"max_delay": "20ms"}}
            gw = GatewayProcess(config, tmp_path).wait_ready()
            try:
                total = _send_fixtures(gw)
                wait_for(lambda: len(lf.spans()) >= total, timeout=20)
                wait_for(lambda: len(spans_in(read_json_lines(jaeger_dir / "out.jsonl"))) >= total, timeout=20)
                wait_for(lambda: len(spans_in(read_json_lines(tmp_path / "out.jsonl"))) >= total, timeout=20)
                for sink in ("jaeger", "langfuse", "out"):
                    assert metric(gw.admin, "otelgate_sink_sent_spans_total", sink=sink) == total
                assert requests.get(f"{gw.admin}/health", timeout=5).json()["status"] == "ok"
            finally:
                assert gw.stop() == 0
    finally:
        jaeger.stop()
    at_jaeger = spans_in(read_json_lines(jaeger_dir / "out.jsonl"))
    # Jaeger gets the normalized, priced spans (and never Langfuse's extra attributes: sinks share
    # the batch read-only, and the Langfuse sink rewrites a copy).
    assert any(a["key"] == "gen_ai.usage.cost" for s in at_jaeger for a in s.get("attributes", []))
    releases = {a["value"].get("stringValue") for s in at_jaeger for a in s.get("attributes", [])
                if a["key"] == "langfuse.release"}
    assert "r1" not in releases  # the Langfuse sink's config value went to Langfuse only
