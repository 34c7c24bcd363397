"""Per-span checks that a receiver must make before accepting spans.

The OTLP spec lets a server reject some spans of a request and accept the rest, reporting the
count in `partial_success`. A span with a trace id that is not 16 bytes or a span id that is not
8 bytes (or all zero, which W3C Trace Context calls invalid) can never be joined to a trace and
is refused by backends such as Langfuse for the whole export, so it is removed here, one by one.
"""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


def remove_invalid_spans(request: ExportTraceServiceRequest) -> tuple[int, int, str]:
    """Drop invalid spans in place; return (kept, rejected, error message or "")."""
    kept = rejected = 0
    problems: dict[str, int] = {}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            spans = ss.spans
            bad: list[int] = []
            for i, span in enumerate(spans):
                trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
                if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
                    problem = f"trace_id must be 16 bytes and not all zero (got {len(trace_id)} bytes)"
                elif len(span_id) != 8 or span_id == _ZERO_SPAN:
                    problem = f"span_id must be 8 bytes and not all zero (got {len(span_id)} bytes)"
                elif parent and len(parent) != 8:
                    problem = f"parent_span_id must be empty or 8 bytes (got {len(parent)} bytes)"
                else:
                    continue
                bad.append(i)
                problems[problem] = problems.get(problem, 0) + 1
            for i in reversed(bad):
                del spans[i]
            kept += len(spans)
            rejected += len(bad)
    if not rejected:
        return kept, 0, ""
    detail = "; ".join(f"{n} with {p}" for p, n in problems.items())
    return kept, rejected, f"rejected {rejected} of {kept + rejected} spans: {detail}"
