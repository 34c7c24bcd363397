"""Head sampling: keep a consistent share of traces, decided from the trace id alone.

Runs after the LLM processors (so LLM metrics count every call, sampled or not). Each span is
decided on its own but consistently: spans of one trace share the trace id (and its `rv`), so a
trace is kept or dropped whole, by every otelgate replica and every Collector in proportional
mode alike. `sampling.priority` on a span overrides: 0 drops it, more than 0 keeps it. Kept spans
carry `ot=th:<threshold>` in their tracestate so that backends can count each as 1 / p spans.

Log records that carry a trace id get the same decision as their trace's spans, so the GenAI
event records (prompts, completions) of a dropped trace are dropped with it; records without a
trace id are kept. (A span's `rv` in its tracestate, which log records do not carry, would make
the two disagree: senders that set `rv` should sample at the source.)
"""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import Field

from gateway.batch import Batch
from gateway.configtypes import StrictModel
from gateway.otlp.anyvalue import number
from gateway.otlp.signals import LOGS
from gateway.sampling.consistent import keep, threshold, with_threshold
from gateway.telemetry import Metrics

PRIORITY = "sampling.priority"


class HeadConfig(StrictModel):
    percentage: float = Field(100.0, gt=0, le=100, description="Share of traces kept, in percent.")
    precision: int = Field(4, ge=1, le=14, description="Hex digits of the threshold (the Collector's sampling_precision).")


class HeadSampler:
    def __init__(self, config: HeadConfig, metrics: Metrics) -> None:
        self.reject_below = threshold(config.percentage / 100.0, config.precision)
        self._kept = metrics.sampled_spans.labels("head", "kept")
        self._dropped = metrics.sampled_spans.labels("head", "dropped")
        self._logs_kept = metrics.sampled_log_records.labels("head", "kept")
        self._logs_dropped = metrics.sampled_log_records.labels("head", "dropped")

    def __call__(self, batch: Batch) -> Batch:
        if batch.signal is LOGS:
            return self._logs(batch)
        reject_below = self.reject_below
        kept_total = dropped_total = 0
        marked: list[tuple[int, int, int]] = []  # kept spans whose tracestate got the threshold
        for ri, rs in enumerate(batch.request.resource_spans):
            for si, ss in enumerate(rs.scope_spans):
                spans = ss.spans
                drop = []
                for ki, span in enumerate(spans):
                    state = span.trace_state
                    if not decide(span, reject_below):
                        drop.append(ki)
                    elif reject_below and span.trace_state != state:
                        marked.append((ri, si, ki))
                for i in reversed(drop):
                    del spans[i]
                dropped_total += len(drop)
                kept_total += len(spans)
        if dropped_total:
            batch.raw = None  # spans removed: the indices of the received bytes no longer hold
        else:
            for where in marked:
                batch.touch(*where)
        batch.items = kept_total
        self._kept.inc(kept_total)
        self._dropped.inc(dropped_total)
        return batch


    def _logs(self, batch: Batch) -> Batch:
        reject_below = self.reject_below
        kept_total = dropped_total = 0
        for rl in batch.request.resource_logs:  # type: ignore[attr-defined]
            for sl in rl.scope_logs:
                records = sl.log_records
                drop = [i for i, r in enumerate(records) if r.trace_id and not keep(r.trace_id, "", reject_below)]
                for i in reversed(drop):
                    del records[i]
                dropped_total += len(drop)
                kept_total += len(records)
        if dropped_total:
            batch.raw = None
        batch.items = kept_total
        self._logs_kept.inc(kept_total)
        self._logs_dropped.inc(dropped_total)
        return batch


SIGNALS = ("traces", "logs")


def decide(span: Span, reject_below: int, mark: bool = True) -> bool:
    """Keep `span`? `sampling.priority` decides if present; else the trace id against the threshold.

    A span kept by the threshold gets `ot=th:` in its tracestate (when `mark`).
    """
    priority = _priority(span)
    if priority is not None:
        return priority > 0
    if not keep(span.trace_id, span.trace_state, reject_below):
        return False
    if mark and reject_below:
        span.trace_state = with_threshold(span.trace_state, reject_below)
    return True


def _priority(span: Span) -> int | None:
    for kv in span.attributes:
        if kv.key == PRIORITY:
            value = number(kv.value)
            return None if value is None else int(value)
    return None
