"""Capture the OpenAI Agents SDK under OpenInference and under Logfire (fixtures
openai_agents_openinference, openai_agents_logfire).

Not run in CI. In the capture venv, from tests/capture/ (one per process):

    ../../.capture-venv/bin/python capture_openai_agents.py openinference
    ../../.capture-venv/bin/python capture_openai_agents.py logfire

Quirks: the Agents SDK's own trace exporter posts to api.openai.com; it is removed with
`set_trace_processors([])` before the OpenInference instrumentor adds its processor. The model
client is an `AsyncOpenAI` at the fake with `max_retries=0`; the SDK talks the Responses API.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as md
import sys

from agents import Agent, Runner, set_default_openai_client, set_trace_processors
from openai import AsyncOpenAI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from record import capture


def run(base: str, traces_url: str) -> None:
    set_trace_processors([])
    if MODE == "logfire":
        import tempfile

        import logfire
        logfire.configure(send_to_logfire=False, console=False, service_name="capture-openai_agents_logfire",
                          data_dir=tempfile.mkdtemp(), additional_span_processors=[
                              BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url), schedule_delay_millis=60_000)])
        logfire.instrument_openai_agents()
        flush = logfire.force_flush
    else:
        from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor
        tp = TracerProvider(resource=Resource.create({"service.name": "capture-openai_agents_openinference"}))
        tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url), schedule_delay_millis=60_000))
        OpenAIAgentsInstrumentor().instrument(tracer_provider=tp)
        flush = tp.force_flush
    set_default_openai_client(AsyncOpenAI(base_url=base + "/v1", api_key="sk-fake", max_retries=0))

    async def main() -> None:
        await Runner.run(Agent(name="greeter", instructions="You are terse.", model="gpt-4.1"),
                         "Say hello to the capture run, in one short sentence.")
        await Runner.run(Agent(name="thinker", instructions="Think first.", model="o4-mini"), "What is 2+2?")
        try:
            await Runner.run(Agent(name="failing", instructions="You are terse.", model="gpt-4.1"), "FAIL429 please")
        except Exception:
            pass

    asyncio.run(main())
    flush()


MODE = sys.argv[1] if len(sys.argv) > 1 else "openinference"

if __name__ == "__main__":
    lib = "logfire" if MODE == "logfire" else "openinference-instrumentation-openai-agents"
    capture(f"openai_agents_{MODE}", run, "tests/capture/capture_openai_agents.py",
            {p: md.version(p) for p in ("openai-agents", lib, "openai", "opentelemetry-sdk")},
            f"capture-openai_agents_{MODE}")
