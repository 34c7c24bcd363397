"""The unit that flows through the pipeline: one decoded export request and its span count.

A batch is decoded once by a receiver and encoded at most once by each sink. Processors edit
the request in place; sinks only read it (a sink that must change spans copies them first),
because one batch is shared by every sink a route fans out to.

`raw` holds the bytes the request was received as, while they still equal `request`: a sink
writing protobuf then writes them instead of serializing again. The pipeline clears it before
any processor runs, and a receiver never sets it when it removed invalid spans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass(slots=True)
class RequestContext:
    """What the receiver knows about where a batch came from."""

    protocol: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    request: ExportTraceServiceRequest
    spans: int
    context: RequestContext
    raw: bytes | None = None

    def serialized(self) -> bytes:
        return self.raw if self.raw is not None else self.request.SerializeToString()


def count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
