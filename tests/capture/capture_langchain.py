"""Capture LangChain under OpenLLMetry and under OpenInference (fixtures langchain_openllmetry,
langchain_openinference).

Not run in CI. In the capture venv (never the test venv), from tests/capture/:

    ../../.capture-venv/bin/python capture_langchain.py openllmetry
    ../../.capture-venv/bin/python capture_langchain.py openinference

`openllmetry` instruments LangChain *and* the OpenAI SDK (opentelemetry-instrumentation-langchain
+ -openai, as Traceloop's SDK does), so every call is seen twice: `ChatOpenAI.chat` and
`openai.chat` / `openai.response`. `openinference` instruments LangChain alone.

Quirks: `OpenAIEmbeddings` tokenizes with tiktoken (a download) unless
`check_embedding_ctx_length=False`; the clients get `max_retries=0` so an error is one request.
Spans go through a BatchSpanProcessor flushed at the end (one export request).
"""

from __future__ import annotations

import importlib.metadata as md
import sys

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from record import capture


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return f"Sunny in {city}"


def _provider(traces_url: str, service: str) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({"service.name": service}))
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url), schedule_delay_millis=60_000))
    return tp


def _calls(base: str, tp: TracerProvider) -> None:
    url = base + "/v1"
    hello = [HumanMessage("Say hello to the capture run, in one short sentence.")]
    tracer = tp.get_tracer("capture")
    with tracer.start_as_current_span("app"):
        ChatOpenAI(model="gpt-4o-mini", base_url=url, api_key="sk-fake", max_retries=0).invoke(hello)
        for _ in ChatOpenAI(model="gpt-4o-mini", base_url=url, api_key="sk-fake", max_retries=0,
                            stream_usage=True).stream(hello):
            pass
        ChatOpenAI(model="o3-mini", base_url=url, api_key="sk-fake", max_retries=0).invoke(
            [HumanMessage("Think, then answer: 2+2?")])
        ChatOpenAI(model="gpt-4o-mini", base_url=url, api_key="sk-fake", max_retries=0).bind_tools(
            [get_weather]).invoke([HumanMessage("TOOL: what is the weather in Paris?")])
        OpenAIEmbeddings(model="text-embedding-3-small", base_url=url, api_key="sk-fake", max_retries=0,
                         check_embedding_ctx_length=False).embed_documents(["first text to embed", "second one"])
        ChatOpenAI(model="gpt-4.1", base_url=url, api_key="sk-fake", max_retries=0, use_responses_api=True).invoke(
            [HumanMessage("Write one line about the sea.")])
        try:
            ChatOpenAI(model="gpt-4o-mini", base_url=url, api_key="sk-fake", max_retries=0).invoke(
                [HumanMessage("FAIL429 please")])
        except Exception:
            pass
    tp.force_flush()


def run_openllmetry(base: str, traces_url: str) -> None:
    from opentelemetry.instrumentation.langchain import LangchainInstrumentor
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    tp = _provider(traces_url, "capture-langchain_openllmetry")
    LangchainInstrumentor().instrument(tracer_provider=tp)
    OpenAIInstrumentor().instrument(tracer_provider=tp)
    _calls(base, tp)


def run_openinference(base: str, traces_url: str) -> None:
    from openinference.instrumentation.langchain import LangChainInstrumentor
    tp = _provider(traces_url, "capture-langchain_openinference")
    LangChainInstrumentor().instrument(tracer_provider=tp)
    _calls(base, tp)


if __name__ == "__main__":
    mode = sys.argv[1]
    packages = ["langchain-core", "langchain-openai", "openai", "opentelemetry-sdk"] + (
        ["opentelemetry-instrumentation-langchain", "opentelemetry-instrumentation-openai"]
        if mode == "openllmetry" else ["openinference-instrumentation-langchain"])
    name = f"langchain_{mode}"
    capture(name, run_openllmetry if mode == "openllmetry" else run_openinference, "tests/capture/capture_langchain.py",
            {p: md.version(p) for p in packages}, f"capture-{name}")
