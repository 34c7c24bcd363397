"""What both OTLP receivers do with a decoded request: check spans, hand over, count.

The receivers own only their protocol (framing, status codes); this module owns the meaning,
so gRPC and HTTP accept and refuse exactly the same data and count it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import Batch, RequestContext
from gateway.errors import Refused
from gateway.otlp.validate import remove_invalid_spans
from gateway.pipeline import Pipeline
from gateway.telemetry import Metrics

# Until receivers authenticate (API keys name the tenant), a sender may name its tenant in this
# header (gRPC metadata or HTTP); routes match it with `tenant:`.
TENANT_HEADER = "x-otelgate-tenant"


@dataclass(slots=True)
class Accepted:
    rejected: int
    error_message: str


class Intake:
    def __init__(self, pipeline: Pipeline, metrics: Metrics) -> None:
        self._pipeline = pipeline
        self._metrics = metrics

    async def accept(self, request: ExportTraceServiceRequest, context: RequestContext, raw: bytes | None = None) -> Accepted:
        """Hand valid spans to the pipeline; raise `Refused` (nothing accepted) under backpressure.

        `raw` is the protobuf encoding `request` was parsed from, if there was one.
        """
        protocol = context.protocol
        m = self._metrics
        kept, rejected, message = remove_invalid_spans(request)
        if rejected:
            m.receiver_rejected_spans.labels(protocol, "invalid_id").inc(rejected)
        if kept:
            try:
                await self._pipeline.consume(Batch(request, kept, context, None if rejected else raw))
            except Refused as exc:
                m.receiver_refused_spans.labels(protocol, exc.reason).inc(kept)
                m.receiver_requests.labels(protocol, "refused").inc()
                raise
            m.receiver_accepted_spans.labels(protocol).inc(kept)
        m.receiver_requests.labels(protocol, "partial" if rejected else "accepted").inc()
        return Accepted(rejected, message)

    def malformed(self, protocol: str, outcome: str) -> None:
        """Count a request that could not be read at all (bad payload, too large, wrong type)."""
        self._metrics.receiver_requests.labels(protocol, outcome).inc()

    def observe_latency(self, protocol: str, seconds: float) -> None:
        self._metrics.receiver_request_duration.labels(protocol).observe(seconds)
