"""Capture Google GenAI with opentelemetry-instrumentation-google-genai (fixture google_genai).

Not run in CI. In the capture venv, from tests/capture/:

    ../../.capture-venv/bin/python capture_google_genai.py

The google-genai client talks the Gemini API (`/v1beta/models/{model}:generateContent`,
`:streamGenerateContent?alt=sse`) at the fake through `http_options.base_url`.
"""

from __future__ import annotations

import importlib.metadata as md

from google import genai
from google.genai import types
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from record import capture


def run(base: str, traces_url: str) -> None:
    from opentelemetry.instrumentation.google_genai import GoogleGenAiSdkInstrumentor
    tp = TracerProvider(resource=Resource.create({"service.name": "capture-google_genai"}))
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url), schedule_delay_millis=60_000))
    GoogleGenAiSdkInstrumentor().instrument(tracer_provider=tp)
    client = genai.Client(api_key="fake-key", http_options=types.HttpOptions(base_url=base, retry_options=None))
    client.models.generate_content(model="gemini-2.0-flash", contents="Say hello to the capture run, in one sentence.")
    for _ in client.models.generate_content_stream(model="gemini-2.0-flash", contents="Stream a hello."):
        pass
    client.models.generate_content(model="gemini-2.0-flash", contents="Be terse.",
                                   config=types.GenerateContentConfig(system_instruction="You are terse."))
    try:
        client.models.generate_content(model="gemini-2.0-flash", contents="FAIL429 please")
    except Exception:
        pass
    tp.force_flush()


if __name__ == "__main__":
    capture("google_genai", run, "tests/capture/capture_google_genai.py",
            {p: md.version(p) for p in ("google-genai", "opentelemetry-instrumentation-google-genai",
                                        "opentelemetry-sdk")}, "capture-google_genai")
