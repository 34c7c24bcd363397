"""Per-span checks that a receiver must make before accepting spans.

The OTLP spec lets a server reject some spans of a request and accept the rest, reporting the
count in `partial_success`. A span with a trace id that is not 16 bytes or a span id that is not
8 bytes (or all zero, which W3C Trace Context calls invalid) can never be joined to a trace and
is refused by backends such as Langfuse for the whole export, so it is removed here, one by one.
Log records are held to the same ids when they carry them (they are optional there).
"""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
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


def remove_invalid_log_records(request: ExportLogsServiceRequest) -> tuple[int, int, str]:
    """A log record's trace and span ids are optional; when present they must be well formed,
    or the record could never be joined to its span."""
    kept = rejected = 0
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            records = sl.log_records
            bad = [i for i, r in enumerate(records)
                   if (r.trace_id and (len(r.trace_id) != 16 or r.trace_id == _ZERO_TRACE))
                   or (r.span_id and (len(r.span_id) != 8 or r.span_id == _ZERO_SPAN))]
            for i in reversed(bad):
                del records[i]
            kept += len(records)
            rejected += len(bad)
    if not rejected:
        return kept, 0, ""
    return kept, rejected, (f"rejected {rejected} of {kept + rejected} log records: trace_id must be empty or 16 "
                            "bytes and span_id empty or 8 bytes, not all zero")
