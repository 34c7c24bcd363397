"""Capture Logfire's OpenAI and Anthropic instrumentation (fixtures logfire_openai, logfire_anthropic).

Not run in CI. Install into the capture venv (never the test venv), then run from the repo root:

    python3 -m venv .capture-venv
    .capture-venv/bin/pip install -r tests/capture/requirements.txt
    .capture-venv/bin/python tests/capture/capture_logfire.py

Quirks: `logfire.configure(send_to_logfire=False)` still wants a project dir; it is given a
temporary one. Its spans go to the recorder through `additional_span_processors` with a
BatchSpanProcessor, as Logfire itself uses (spans of one call share an export request; otelgate resolves
wrappers and duplicates within one request). Logfire puts the provider's usage
object in `gen_ai.usage.raw` (JSON) and only the plain counts in `gen_ai.usage.*`.
"""

from __future__ import annotations

import importlib.metadata as md
import tempfile

import anthropic
import logfire
import openai
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from record import capture

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}]
_configured = False


def _configure(traces_url: str) -> None:
    global _configured
    if _configured:
        raise SystemExit("run one capture per process: Logfire configures the global tracer provider once")
    _configured = True
    logfire.configure(send_to_logfire=False, console=False, service_name="capture-logfire",
                      data_dir=tempfile.mkdtemp(),
                      additional_span_processors=[BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url), schedule_delay_millis=60_000)])


def run_both(base: str, traces_url: str) -> None:
    _configure(traces_url)
    oa = openai.OpenAI(base_url=base + "/v1", api_key="sk-fake", max_retries=0)
    an = anthropic.Anthropic(base_url=base, api_key="sk-ant-fake", max_retries=0)
    logfire.instrument_openai(oa)
    logfire.instrument_anthropic(an)
    user = [{"role": "user", "content": "Say hello to the capture run, in one short sentence."}]
    with logfire.span("app"):
        oa.chat.completions.create(model="gpt-4o-mini", messages=user)
        stream = oa.chat.completions.create(model="gpt-4o-mini", messages=user, stream=True,
                                            stream_options={"include_usage": True})
        for _ in stream:
            pass
        oa.chat.completions.create(model="o3-mini", messages=[{"role": "user", "content": "Think, then answer: 2+2?"}])
        oa.chat.completions.create(model="gpt-4o-mini", tools=TOOLS,
                                   messages=[{"role": "user", "content": "TOOL: what is the weather in Paris?"}])
        oa.embeddings.create(model="text-embedding-3-small", input=["first text to embed", "second one"])
        oa.responses.create(model="gpt-4.1", input="Write one line about the sea.")
        with oa.responses.stream(model="o4-mini", input="Stream one line about the sky.") as rs:
            for _ in rs:
                pass
        try:
            oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "FAIL429 please"}])
        except openai.RateLimitError:
            pass
        an.messages.create(model="claude-sonnet-4-20250514", max_tokens=256, system="You are terse.", messages=user)
        with an.messages.stream(model="claude-3-5-haiku-20241022", max_tokens=256, messages=user) as ms:
            for _ in ms.text_stream:
                pass
        try:
            an.messages.create(model="claude-sonnet-4-20250514", max_tokens=64,
                               messages=[{"role": "user", "content": "FAIL529 now"}])
        except anthropic.APIStatusError:
            pass
    logfire.force_flush()


if __name__ == "__main__":
    versions = {p: md.version(p) for p in ("logfire", "openai", "anthropic", "opentelemetry-sdk")}
    capture("logfire", run_both, "tests/capture/capture_logfire.py", versions, "capture-logfire")
