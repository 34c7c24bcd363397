"""Record replicas of Dify's two OpenTelemetry exporters (not run in CI; the recordings are
tests/fixtures/dify_otel.* and tests/fixtures/dify_phoenix.*).

Dify cannot run here, so this replays what its exporters emit, with the same libraries they
use: the real OpenTelemetry SDK and OTLP/HTTP exporter, and the real OpenInference semantic
conventions (`openinference-semantic-conventions`, the package `openinference.semconv` comes
from), against a local recorder that keeps every export request's bytes.

* `dify_otel`: replica built from langgenius/dify `api/core/ops/unified_trace/otel.py`
  (`UnifiedOTelAdapter`: resource `service.name=dify`, `gen_ai.*` from the canonical span's
  metadata: `model_provider`, `model_name`, `prompt_tokens`, `completion_tokens`,
  `total_tokens`, on every span that has them), `otlp_adapter.py` (`OTLPUnifiedAdapter.emit`:
  OpenInference kind, input/output, `metadata` JSON, `session.id`, `dify.span.id`; each span
  started, ended and exported in its own `export((span,))` call, parent first) and
  `trace_builder.py` (`CanonicalTraceBuilder`: a message is a CHAIN `message` span and a
  synthetic LLM `llm` child carrying the same metadata, tokens included; a workflow is a CHAIN
  `workflow_<run id>` and its node spans, with `prompt_tokens` 0 on nodes without usage; a
  chatflow adds a CHAIN `chatflow_<run id>` root over the workflow span).
* `dify_phoenix`: replica built from `api/core/ops/arize_phoenix_trace/arize_phoenix_trace.py`
  (`ArizePhoenixDataTrace`: resource `openinference.project.name` / `model_id`, no
  service.name; a `SimpleSpanProcessor`, so each span is exported alone when it ends: end order;
  a `Dify` root per trace ended at once; message: CHAIN `message` with the token counts only in
  its metadata JSON, LLM `llm` child with `llm.token_count.*`, `llm.model_name`,
  `llm.provider`; workflow: CHAIN `workflow` and a span per node named by node type, LLM
  nodes with `llm.token_count.*`).

The usage is what Dify's database would hold for these runs (fixed numbers below, as Dify's
model runtime reports them); the plugin provider ids are Dify's (`langgenius/openai/openai`,
`langgenius/anthropic/anthropic`). Dify's Anthropic plugin reports `prompt_tokens` that
already include cache writes weighted 1.25x and cache reads weighted 0.1x (so that input price
x prompt_tokens is the bill); the chatflow's Anthropic node replays such a count.

    .venv/bin/pip install openinference-semantic-conventions==0.1.42
    .venv/bin/python tests/capture/dify_replicas.py    # writes tests/fixtures/dify_*.{otlp.bin,expected.json}
"""

from __future__ import annotations

import json
import struct
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from openinference.semconv.trace import OpenInferenceMimeTypeValues, OpenInferenceSpanKindValues, SpanAttributes
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk import trace as trace_sdk
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode, set_span_in_context, use_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=timezone.utc)
META = {"app_id": "9f1c0c1e-app0-4b7e-9d1a-000000000001", "tenant_id": "5d2f7a10-tnt0-4c1e-8b9f-000000000001",
        "user_id": "end-user-42", "conversation_id": "c0ffee00-conv-4a3b-8c2d-000000000001"}
OPENAI, ANTHROPIC = "langgenius/openai/openai", "langgenius/anthropic/anthropic"

# The three runs (ids, nodes, usage as Dify's database holds them).
MESSAGE = {"id": "a1b2c3d4-0001-4e5f-8a9b-000000000001", "model": "gpt-4o-mini", "provider": OPENAI,
           "prompt_tokens": 120, "completion_tokens": 30}
WORKFLOW = {"run": "b1b2c3d4-0002-4e5f-8a9b-000000000002", "nodes": [
    {"id": "b1-node-start", "type": "start", "title": "Start", "t": 0, "d": 0.01},
    {"id": "b1-node-llm", "type": "llm", "title": "Summarize", "t": 0.01, "d": 2.0, "model": "gpt-4o",
     "provider": OPENAI, "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}},
    {"id": "b1-node-code", "type": "code", "title": "Format", "t": 2.02, "d": 0.05},
    {"id": "b1-node-tool", "type": "tool", "title": "Search", "t": 2.1, "d": 0.4},
    {"id": "b1-node-end", "type": "end", "title": "End", "t": 2.6, "d": 0.01}]}
# prompt_tokens of the Anthropic node: 2000 plain + 1.25 x 800 cache writes + 0.1 x 5000 cache reads.
CHATFLOW = {"run": "c1b2c3d4-0003-4e5f-8a9b-000000000003", "message": "c1b2c3d4-0003-4e5f-8a9b-00000000c0de",
            "nodes": [
    {"id": "c1-node-start", "type": "start", "title": "Start", "t": 0, "d": 0.01},
    {"id": "c1-node-kr", "type": "knowledge-retrieval", "title": "Docs", "t": 0.01, "d": 0.3},
    {"id": "c1-node-llm", "type": "llm", "title": "Answer", "t": 0.31, "d": 3.0, "model": "claude-3-5-sonnet-20241022",
     "provider": ANTHROPIC, "usage": {"prompt_tokens": 3500, "completion_tokens": 150, "total_tokens": 3650}},
    {"id": "c1-node-llm2", "type": "llm", "title": "Rewrite", "t": 3.31, "d": 0.2, "model": "gpt-4o",
     "provider": OPENAI, "error": "[openai] Rate Limit Error"},
    {"id": "c1-node-answer", "type": "answer", "title": "Answer", "t": 3.6, "d": 0.01}]}


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                recorder.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"

    def write(self, name: str, expected: dict[str, Any]) -> None:
        with open(FIXTURES / f"{name}.otlp.bin", "wb") as f:
            for body in self.bodies:
                f.write(struct.pack(">I", len(body)) + body)
        (FIXTURES / f"{name}.expected.json").write_text(json.dumps(expected, indent=1) + "\n")
        self.bodies.clear()


def ns(dt: datetime) -> int:
    return int(dt.timestamp() * 1_000_000_000)


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Dify's generic OpenTelemetry provider (unified_trace)

def canonical_traces() -> list[dict[str, Any]]:
    """CanonicalTraceBuilder's output for the three runs: parent-first span lists."""
    out = []
    m = MESSAGE
    meta = {**META, "trace_entity_type": "message", "model_provider": m["provider"], "model_name": m["model"],
            "prompt_tokens": m["prompt_tokens"], "completion_tokens": m["completion_tokens"],
            "total_tokens": m["prompt_tokens"] + m["completion_tokens"]}
    end = T0 + timedelta(seconds=1.5)
    out.append({"kind": "message", "session": META["conversation_id"], "spans": [
        dict(id=m["id"], parent=None, name="message", kind="CHAIN", start=T0, end=end, inputs={"query": "hi"},
             outputs="hello", error=None, metadata=meta),
        dict(id=f"{m['id']}:llm", parent=m["id"], name="llm", kind="LLM", start=T0, end=end, inputs={"query": "hi"},
             outputs="hello", error=None, metadata=meta, synthetic=True)]})
    for run, message in ((WORKFLOW, None), (CHATFLOW, CHATFLOW["message"])):
        start = T0 + timedelta(minutes=1 if message is None else 2)
        last = max(n["t"] + n["d"] for n in run["nodes"])
        spans = []
        if message:
            spans.append(dict(id=message, parent=None, name=f"chatflow_{run['run']}", kind="CHAIN", start=start,
                              end=start + timedelta(seconds=last), inputs={"query": "q"}, outputs={"answer": "a"},
                              error=None, metadata={**META, "trace_entity_type": "message"}))
        spans.append(dict(id=run["run"], parent=message, name=f"workflow_{run['run']}", kind="CHAIN", start=start,
                          end=start + timedelta(seconds=last), inputs={"q": "x"}, outputs={"a": "y"}, error=None,
                          metadata={**META, "workflow_id": "wf-1", "workflow_run_id": run["run"],
                                    "workflow_app_log_id": None,
                                    "total_tokens": sum(n.get("usage", {}).get("total_tokens", 0) for n in run["nodes"])}))
        nodes = []
        for n in run["nodes"]:
            usage = n.get("usage", {})
            md = {"node_id": n["id"], "node_execution_id": n["id"], "node_type": n["type"],
                  "status": "failed" if n.get("error") else "succeeded", "model_provider": n.get("provider"),
                  "model_name": n.get("model"), "prompt_tokens": usage.get("prompt_tokens", 0),
                  "completion_tokens": usage.get("completion_tokens", 0), "total_tokens": usage.get("total_tokens", 0)}
            kind = {"llm": "LLM", "knowledge-retrieval": "RETRIEVER", "tool": "TOOL", "agent": "AGENT"}.get(n["type"], "CHAIN")
            s0 = start + timedelta(seconds=n["t"])
            nodes.append(dict(id=n["id"], parent=run["run"], name=f"{n['type']}_{n['title']}", kind=kind, start=s0,
                              end=s0 + timedelta(seconds=n["d"]), inputs=[] if n["type"] == "llm" else {},
                              outputs={"usage": usage} if usage else {}, error=n.get("error"), metadata=md))
        # trace_builder's emit(): sorted by id, each after its parent.
        by_id = {s["id"]: s for s in spans + nodes}
        ordered, seen = [], set()

        def emit(sid: str) -> None:
            if sid in seen:
                return
            s = by_id[sid]
            if s["parent"] in by_id:
                emit(s["parent"])
            seen.add(sid)
            ordered.append(s)

        for sid in sorted(by_id):
            emit(sid)
        out.append({"kind": "chatflow" if message else "workflow", "session": META["conversation_id"] if message else run["run"],
                    "spans": ordered})
    return out


def gen_ai_attributes(span: dict[str, Any], session: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    op = {"LLM": "chat", "TOOL": "execute_tool", "AGENT": "invoke_agent"}.get(span["kind"])
    if op:
        attrs["gen_ai.operation.name"] = op
    if span["kind"] == "TOOL":
        attrs["gen_ai.tool.name"] = span["name"]
    if session:
        attrs["gen_ai.conversation.id"] = session
    for key, attr in (("model_provider", "gen_ai.provider.name"), ("model_name", "gen_ai.request.model"),
                      ("prompt_tokens", "gen_ai.usage.input_tokens"), ("completion_tokens", "gen_ai.usage.output_tokens"),
                      ("total_tokens", "gen_ai.usage.total_tokens")):
        value = span["metadata"].get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, str) and value):
            attrs[attr] = value
    return attrs


def record_otel(recorder: Recorder) -> None:
    exporter = OTLPSpanExporter(endpoint=recorder.url, timeout=30)
    provider = trace_sdk.TracerProvider(resource=Resource.create({"service.name": "dify"}))
    tracer = provider.get_tracer("unified_otel_dify")
    for trace in canonical_traces():
        live: dict[str, Any] = {}
        for cs in trace["spans"]:
            metadata = {**cs["metadata"], "dify.span.kind": cs["kind"].lower()}
            attributes = {
                SpanAttributes.OPENINFERENCE_SPAN_KIND: OpenInferenceSpanKindValues[cs["kind"]].value,
                SpanAttributes.INPUT_VALUE: dumps(cs["inputs"]),
                SpanAttributes.INPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
                SpanAttributes.OUTPUT_VALUE: dumps(cs["outputs"]),
                SpanAttributes.OUTPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
                SpanAttributes.METADATA: dumps(metadata),
                SpanAttributes.SESSION_ID: trace["session"],
                "dify.span.id": cs["id"],
                "dify.span.synthetic": bool(cs.get("synthetic")),
                **gen_ai_attributes(cs, trace["session"]),
            }
            parent = live.get(cs["parent"] or "")
            span = tracer.start_span(name=cs["name"], context=set_span_in_context(parent) if parent else None,
                                     attributes=attributes, start_time=ns(cs["start"]))
            live[cs["id"]] = span
            if cs["error"]:
                span.set_status(Status(StatusCode.ERROR, cs["error"]))
                span.record_exception(RuntimeError(cs["error"]))
            else:
                span.set_status(Status(StatusCode.OK))
            span.end(end_time=ns(cs["end"]))
            assert exporter.export((span,)).name == "SUCCESS"


# ---------------------------------------------------------------------------------------------
# Dify's Arize/Phoenix tracer

def record_phoenix(recorder: Recorder) -> None:
    exporter = OTLPSpanExporter(endpoint=recorder.url, headers={"api_key": "", "authorization": "Bearer "}, timeout=30)
    provider = trace_sdk.TracerProvider(resource=Resource(attributes={"openinference.project.name": "dify-app",
                                                                       "model_id": "dify-app"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("arize_phoenix_tracer_dify-app")
    propagator = TraceContextTextMapPropagator()

    def root(dify_trace_id: str) -> Any:
        carrier: dict[str, str] = {}
        span = tracer.start_span(name="Dify")
        span.set_attribute(SpanAttributes.OPENINFERENCE_SPAN_KIND, OpenInferenceSpanKindValues.CHAIN.value)
        span.set_attribute("dify_project_name", "dify-app")
        span.set_attribute("dify_trace_id", dify_trace_id)
        with use_span(span, end_on_exit=False):
            propagator.inject(carrier=carrier)
        span.set_status(Status(StatusCode.OK))
        span.end()
        return propagator.extract(carrier=carrier)

    def status(span: Any, error: str | None) -> None:
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
            span.add_event(name="exception", attributes={"exception.type": "str", "exception.message": error,
                                                         "exception.escaped": False, "exception.stacktrace": error})
        else:
            span.set_status(Status(StatusCode.OK))

    # message_trace
    m = MESSAGE
    context = root(m["id"])
    meta = {**META, "created_from": "Dify", "trace_id": "", "message_id": m["id"], "status": "normal",
            "status_message": "", "level": "DEFAULT", "trace_entity_type": "message", "conversation_model": "chat",
            "message_tokens": m["prompt_tokens"], "answer_tokens": m["completion_tokens"],
            "total_tokens": m["prompt_tokens"] + m["completion_tokens"], "conversation_mode": "chat",
            "model_provider": m["provider"], "model_id": m["model"]}
    end = T0 + timedelta(seconds=1.5)
    message = tracer.start_span(name="message", start_time=ns(T0), context=context, attributes={
        SpanAttributes.OPENINFERENCE_SPAN_KIND: "CHAIN", SpanAttributes.INPUT_VALUE: "hi",
        SpanAttributes.INPUT_MIME_TYPE: "text/plain", SpanAttributes.OUTPUT_VALUE: "hello",
        SpanAttributes.OUTPUT_MIME_TYPE: "text/plain", SpanAttributes.METADATA: dumps(meta),
        SpanAttributes.SESSION_ID: META["conversation_id"]})
    llm = tracer.start_span(name="llm", start_time=ns(T0), context=set_span_in_context(message), attributes={
        SpanAttributes.OPENINFERENCE_SPAN_KIND: "LLM", SpanAttributes.INPUT_VALUE: dumps({"query": "hi"}),
        SpanAttributes.INPUT_MIME_TYPE: "application/json", SpanAttributes.OUTPUT_VALUE: "hello",
        SpanAttributes.OUTPUT_MIME_TYPE: "text/plain", SpanAttributes.METADATA: dumps(meta),
        SpanAttributes.SESSION_ID: META["conversation_id"], f"{SpanAttributes.LLM_INPUT_MESSAGES}.0.message.content": "hi",
        f"{SpanAttributes.LLM_INPUT_MESSAGES}.0.message.role": "user",
        SpanAttributes.LLM_TOKEN_COUNT_TOTAL: m["prompt_tokens"] + m["completion_tokens"],
        SpanAttributes.LLM_TOKEN_COUNT_PROMPT: m["prompt_tokens"], SpanAttributes.LLM_TOKEN_COUNT_COMPLETION: m["completion_tokens"],
        SpanAttributes.LLM_MODEL_NAME: m["model"], SpanAttributes.LLM_PROVIDER: m["provider"]})
    status(llm, None)
    llm.end(end_time=ns(end))
    status(message, None)
    message.end(end_time=ns(end))

    # workflow_trace (a workflow app, then a chatflow: message_id set)
    for run, message_id in ((WORKFLOW, None), (CHATFLOW, CHATFLOW["message"])):
        start = T0 + timedelta(minutes=1 if message_id is None else 2)
        last = max(n["t"] + n["d"] for n in run["nodes"])
        context = root(message_id or run["run"])
        wmeta = {**META, "created_from": "Dify", "message_id": message_id or "", "trace_entity_type": "workflow",
                 "workflow_run_id": run["run"],
                 "total_tokens": sum(n.get("usage", {}).get("total_tokens", 0) for n in run["nodes"])}
        workflow = tracer.start_span(name="workflow", start_time=ns(start), context=context, attributes={
            SpanAttributes.OPENINFERENCE_SPAN_KIND: "CHAIN", SpanAttributes.INPUT_VALUE: dumps({"q": "x"}),
            SpanAttributes.INPUT_MIME_TYPE: "application/json", SpanAttributes.OUTPUT_VALUE: dumps({"a": "y"}),
            SpanAttributes.OUTPUT_MIME_TYPE: "application/json", SpanAttributes.METADATA: dumps(wmeta),
            SpanAttributes.SESSION_ID: META["conversation_id"] if message_id else ""})
        for n in run["nodes"]:
            usage = n.get("usage", {})
            kind = {"llm": "LLM", "knowledge-retrieval": "RETRIEVER", "tool": "TOOL", "agent": "AGENT"}.get(n["type"], "CHAIN")
            nmeta = {"node_id": n["id"], "node_type": n["type"], "node_status": "failed" if n.get("error") else "succeeded",
                     "tenant_id": META["tenant_id"], "app_id": META["app_id"], "app_name": n["title"],
                     "status": "failed" if n.get("error") else "succeeded", "status_message": n.get("error") or "",
                     "level": "ERROR" if n.get("error") else "DEFAULT"}
            if n["type"] == "llm":
                nmeta.update({"ls_provider": n["provider"], "ls_model_name": n["model"]})
                if usage:
                    nmeta.update(usage)
            s0 = start + timedelta(seconds=n["t"])
            node = tracer.start_span(name=n["type"], start_time=ns(s0), context=set_span_in_context(workflow), attributes={
                SpanAttributes.OPENINFERENCE_SPAN_KIND: kind, SpanAttributes.INPUT_VALUE: "{}",
                SpanAttributes.INPUT_MIME_TYPE: "application/json",
                SpanAttributes.OUTPUT_VALUE: dumps({"usage": usage} if usage else {}),
                SpanAttributes.OUTPUT_MIME_TYPE: "application/json", SpanAttributes.METADATA: dumps(nmeta),
                SpanAttributes.SESSION_ID: META["conversation_id"] if message_id else ""})
            if n["type"] == "llm":
                attrs: dict[str, Any] = {SpanAttributes.INPUT_VALUE: "[]", SpanAttributes.LLM_PROVIDER: n["provider"],
                                         SpanAttributes.LLM_MODEL_NAME: n["model"]}
                if usage:
                    attrs.update({SpanAttributes.LLM_TOKEN_COUNT_TOTAL: usage["total_tokens"],
                                  SpanAttributes.LLM_TOKEN_COUNT_PROMPT: usage["prompt_tokens"],
                                  SpanAttributes.LLM_TOKEN_COUNT_COMPLETION: usage["completion_tokens"]})
                node.set_attributes(attrs)
            status(node, n.get("error"))
            node.end(end_time=ns(s0 + timedelta(seconds=n["d"])))
        status(workflow, None)
        workflow.end(end_time=ns(start + timedelta(seconds=last)))
    provider.shutdown()


def expected() -> dict[str, Any]:
    """The calls: one per LLM node or message, with the usage Dify reported."""
    calls = [{"trace": "message", "model": MESSAGE["model"], "provider": "openai", "input_tokens": MESSAGE["prompt_tokens"],
              "output_tokens": MESSAGE["completion_tokens"], "error": False}]
    for kind, run in (("workflow", WORKFLOW), ("chatflow", CHATFLOW)):
        for n in run["nodes"]:
            if n["type"] == "llm":
                usage = n.get("usage", {})
                calls.append({"trace": kind, "node": n["id"], "model": n["model"],
                              "provider": n["provider"].rsplit("/", 1)[1], "input_tokens": usage.get("prompt_tokens", 0),
                              "output_tokens": usage.get("completion_tokens", 0), "error": bool(n.get("error"))})
    return {"calls": calls}


def main() -> None:
    recorder = Recorder()
    record_otel(recorder)
    recorder.write("dify_otel", {**expected(), "order": "parent first, one span per export request"})
    record_phoenix(recorder)
    recorder.write("dify_phoenix", {**expected(), "order": "end order, one span per export request"})


if __name__ == "__main__":
    main()
