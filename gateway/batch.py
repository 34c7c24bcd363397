"""The unit that flows through the pipeline: one decoded export request and its item count.

A batch carries one signal (`signal`: traces, logs or metrics); `items` counts what it carries:
spans, log records or metric data points.

A batch is decoded once by a receiver and encoded at most once by each sink. Processors edit
the request in place; sinks only read it (a sink that must change spans copies them first),
because one batch is shared by every sink a route fans out to.

`raw` holds the bytes the request was received as, while they still equal `request`: a sink
writing protobuf then writes them instead of serializing again. Whoever edits the request
clears it: a processor that wrote anything sets `batch.raw = None` (a test holds every
registered processor to that), and a receiver never sets it when it removed invalid spans.

`llm_calls` is what the normalizer found (None until it ran), so the pricer and the LLM metrics
work on those spans only, without reading attributes again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.otlp.signals import TRACES, Signal, count_spans

if TYPE_CHECKING:
    from gateway.llm.call import LlmCall

# The loop guard: every export an otlp sink sends names the otelgate instances its data passed
# through in this header (gRPC metadata or HTTP); a receiver that finds its own id drops it.
VIA_HEADER = "x-otelgate-via"
INSTANCE_ID = os.urandom(8).hex()  # this process; a restart is a new instance


@dataclass(slots=True)
class RequestContext:
    """What the receiver knows about where a batch came from."""

    protocol: str
    headers: dict[str, str] = field(default_factory=dict)
    tenant: str | None = None  # who sent it; routes match on it (`tenant:`)
    tenant_attribute: str | None = None  # set when an API key named the tenant: the resource attribute to write it to
    # Langfuse credentials (public key, secret key) the sender authenticated with on the Langfuse
    # path; a `langfuse` sink with `forward_credentials` sends with them.
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    via: tuple[str, ...] = ()  # otelgate instances the data already passed through (VIA_HEADER)


@dataclass(slots=True)
class Batch:
    request: ExportTraceServiceRequest  # or ExportLogsServiceRequest / ExportMetricsServiceRequest, per `signal`
    items: int  # spans, log records or metric data points
    context: RequestContext
    raw: bytes | None = None
    llm_calls: "list[LlmCall] | None" = None  # set by the normalizer: one per provider call
    signal: Signal = TRACES

    def serialized(self) -> bytes:
        return self.raw if self.raw is not None else self.request.SerializeToString()


__all__ = ["Batch", "RequestContext", "count_spans"]
