"""Capture a replica of Dify's model-runtime spans (fixture dify_runtime).

Not run in CI. A replica, not Dify itself (which cannot run here): the span shape of the Dify
observability guide's runtime instrumentation, `llm.invoke.{model}` from tracer
`dify.model_runtime` with `llm.model`, `llm.provider`, `llm.input_tokens`, `llm.output_tokens`,
and `record_exception` on failure, written with the real OpenTelemetry SDK around real OpenAI SDK
calls to the fake provider (the token counts are what the provider returned). No library marker,
no response model, no cache or reasoning counts: the span carries only those four keys.

    ../../.capture-venv/bin/python capture_dify_runtime.py      # from tests/capture/

One failure propagates out of the span (the SDK sets status ERROR and records the exception);
the other is caught and only `record_exception`-ed, status left unset, as hand-written code does.
"""

from __future__ import annotations

import importlib.metadata as md

import openai
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from record import capture


def run(base: str, traces_url: str) -> None:
    tp = TracerProvider(resource=Resource.create({"service.name": "capture-dify_runtime"}))
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url), schedule_delay_millis=60_000))
    tracer = tp.get_tracer("dify.model_runtime")
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-fake", max_retries=0)

    def invoke(model: str, text: str, stream: bool = False) -> None:
        with tracer.start_as_current_span(f"llm.invoke.{model}") as span:
            span.set_attribute("llm.model", model)
            span.set_attribute("llm.provider", "langgenius/openai/openai")
            messages = [{"role": "user", "content": text}]
            if stream:
                usage = None
                for chunk in client.chat.completions.create(model=model, messages=messages, stream=True,
                                                            stream_options={"include_usage": True}):
                    usage = chunk.usage or usage
            else:
                usage = client.chat.completions.create(model=model, messages=messages).usage
            span.set_attribute("llm.input_tokens", usage.prompt_tokens)
            span.set_attribute("llm.output_tokens", usage.completion_tokens)

    with tracer.start_as_current_span("workflow.run"):
        invoke("gpt-4o-mini", "Say hello to the capture run, in one short sentence.")
        invoke("gpt-4o-mini", "Stream a hello to the capture run.", stream=True)
        invoke("o3-mini", "Think, then answer: 2+2?")
        with tracer.start_as_current_span("llm.invoke.text-embedding-3-small") as span:
            span.set_attribute("llm.model", "text-embedding-3-small")
            span.set_attribute("llm.provider", "langgenius/openai/openai")
            r = client.embeddings.create(model="text-embedding-3-small", input=["first text to embed"])
            span.set_attribute("llm.input_tokens", r.usage.prompt_tokens)
        try:
            invoke("gpt-4o-mini", "FAIL429 please")
        except openai.RateLimitError:
            pass
        with tracer.start_as_current_span("llm.invoke.gpt-4o-mini") as span:
            span.set_attribute("llm.model", "gpt-4o-mini")
            span.set_attribute("llm.provider", "langgenius/openai/openai")
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "FAIL500"}])
            except openai.InternalServerError as e:
                span.record_exception(e)
    tp.force_flush()


if __name__ == "__main__":
    capture("dify_runtime", run, "tests/capture/capture_dify_runtime.py",
            {p: md.version(p) for p in ("openai", "opentelemetry-sdk")}, "capture-dify_runtime")
