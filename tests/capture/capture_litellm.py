"""Capture LiteLLM's own OpenTelemetry callback (fixture litellm_otel).

Not run in CI. In the capture venv, from tests/capture/:

    ../../.capture-venv/bin/python capture_litellm.py

`litellm.callbacks = [OpenTelemetry(OpenTelemetryConfig(exporter="otlp_http", endpoint=...))]`;
calls through the OpenAI and Anthropic providers with `api_base` at the fake. Quirks: LiteLLM
logs success/failure in a background thread, so the script waits before flushing; its cache and
reasoning counts are only inside `metadata.usage_object`, a Python `str()` of its usage.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch of the cost map

import litellm  # noqa: E402
from litellm.integrations.opentelemetry import OpenTelemetry, OpenTelemetryConfig  # noqa: E402
from opentelemetry import trace  # noqa: E402

from record import capture  # noqa: E402


def run(base: str, traces_url: str) -> None:
    os.environ["OTEL_SERVICE_NAME"] = "capture-litellm_otel"
    otel = OpenTelemetry(config=OpenTelemetryConfig(exporter="otlp_http", endpoint=traces_url))
    litellm.callbacks = [otel]
    hello = [{"role": "user", "content": "Say hello to the capture run, in one short sentence."}]
    common = {"api_base": base + "/v1", "api_key": "sk-fake", "num_retries": 0, "max_retries": 0}
    litellm.completion(model="openai/gpt-4o-mini", messages=hello, **common)
    for _ in litellm.completion(model="openai/gpt-4o-mini", messages=hello, stream=True,
                                stream_options={"include_usage": True}, **common):
        pass
    litellm.completion(model="openai/o3-mini", messages=[{"role": "user", "content": "Think, then answer: 2+2?"}],
                       **common)
    litellm.embedding(model="openai/text-embedding-3-small", input=["first text to embed", "second one"], **common)
    try:
        litellm.completion(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "FAIL429 please"}],
                           **common)
    except Exception:
        pass
    litellm.completion(model="anthropic/claude-sonnet-4-20250514", messages=hello, max_tokens=256,
                       api_base=base, api_key="sk-ant-fake", num_retries=0)
    time.sleep(3)  # LiteLLM's logging worker
    provider = trace.get_tracer_provider()
    for tp in (provider, getattr(otel, "tracer_provider", None)):
        if tp is not None and hasattr(tp, "force_flush"):
            tp.force_flush()


if __name__ == "__main__":
    capture("litellm_otel", run, "tests/capture/capture_litellm.py",
            {p: md.version(p) for p in ("litellm", "openai", "opentelemetry-sdk")}, "capture-litellm_otel")
