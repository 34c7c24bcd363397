"""Capture the OpenAI Agents SDK under OpenInference (fixture openai_agents_openinference).

Not run in CI. In the capture venv, from tests/capture/:

    ../../.capture-venv/bin/python capture_openai_agents.py

Quirks: the Agents SDK's own trace exporter posts to api.openai.com; it is removed with
`set_trace_processors([])` before the OpenInference instrumentor adds its processor. The model
client is an `AsyncOpenAI` at the fake with `max_retries=0`; the SDK talks the Responses API.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as md

from agents import Agent, Runner, set_default_openai_client, set_trace_processors
from openai import AsyncOpenAI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from record import capture


def run(base: str, traces_url: str) -> None:
    from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor
    tp = TracerProvider(resource=Resource.create({"service.name": "capture-openai_agents_openinference"}))
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url), schedule_delay_millis=60_000))
    set_trace_processors([])
    OpenAIAgentsInstrumentor().instrument(tracer_provider=tp)
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
    tp.force_flush()


if __name__ == "__main__":
    capture("openai_agents_openinference", run, "tests/capture/capture_openai_agents.py",
            {p: md.version(p) for p in ("openai-agents", "openinference-instrumentation-openai-agents", "openai",
                                        "opentelemetry-sdk")}, "capture-openai_agents_openinference")
