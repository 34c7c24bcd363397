"""Known LLM traffic for the usage tests: sent with the real OTel SDK, summed here independently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode


@dataclass(frozen=True)
class Turn:
    """One trace: `calls` LLM calls of one app/user/session."""

    app: str
    user: str | None
    session: str | None
    calls: int = 1
    model: str = "gpt-4o"
    input_tokens: int = 1000
    output_tokens: int = 100
    error: bool = False
    environment: str = "prod"


TRAFFIC = [
    Turn("support-bot", "alice", "s-1", calls=2),
    Turn("support-bot", "alice", "s-1"),
    Turn("support-bot", "bob", "s-2", model="gpt-4o-mini", input_tokens=5000),
    Turn("support-bot", "bob", "s-3", error=True),
    Turn("search", "carol", "s-4", calls=3, input_tokens=200, output_tokens=20),
    Turn("search", None, None, environment="staging"),
]


def send(endpoint: str, turns: list[Turn] = TRAFFIC, service: str = "svc", headers: dict[str, str] | None = None) -> None:
    """Each turn as one trace: a root span and its LLM call spans (Dify-style metadata for the app)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(HttpExporter(endpoint=endpoint + "/v1/traces", headers=headers)))
    tracer = provider.get_tracer("tests.usage")
    for turn in turns:
        with tracer.start_as_current_span("turn"):
            for _ in range(turn.calls):
                attrs: dict[str, Any] = {
                    "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": turn.model, "gen_ai.usage.input_tokens": turn.input_tokens,
                    "gen_ai.usage.output_tokens": turn.output_tokens, "metadata": f'{{"app_id": "{turn.app}"}}',
                    "deployment.environment.name": turn.environment}
                if turn.user:
                    attrs["user.id"] = turn.user
                if turn.session:
                    attrs["session.id"] = turn.session
                with tracer.start_as_current_span("chat " + turn.model, attributes=attrs) as span:
                    if turn.error:
                        span.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
