"""Tail sampling: hold each trace until it is complete, then keep it or not, by policies.

Spans are buffered per trace id until `decision_wait` has passed since the trace's last span,
or sooner, `idle` after its last span once the root span has arrived (an exported span has
ended, so a root means the trace is probably done). Then the policies decide, combined with
`any` (one keeps: the default) or `all`. Decisions are remembered (bounded) so that spans
arriving later follow their trace's decision at once.

Memory is bounded by `max_traces` and `max_bytes` (serialized span bytes held): beyond them the
traces idle longest are decided early, never dropped unseen, and counted in
`otelgate_tail_decided_early_total{reason}`. At shutdown (and when a reload replaces the
sampler) every buffered trace is decided at once, so nothing accepted is left undecided.

Spans are held as their protobuf encoding (no live protobuf objects: compact, and no Python
references into the received request), one bytearray per trace, tenant, resource and scope,
already framed as `ScopeSpans.spans` fields; the traces decided in one pass are written out as
one request by joining those bytes, parsed once.

One process sees only the traces that reach it: in front of several replicas, route by trace id
(e.g. the Collector's `loadbalancing` exporter with `routing_key: traceID`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import Field

from gateway.batch import Batch, RequestContext, count_spans
from gateway.configtypes import ByteSize, Duration, StrictModel
from gateway.llm.call import AGGREGATE, COST, DUPLICATE_OF, INPUT_TOKENS, OUTPUT_TOKENS
from gateway.logs import get_logger
from gateway.otlp.anyvalue import number
from gateway.otlp.wire import encode_varint
from gateway.routing.match import Match, Subject, attribute_values, compile_match
from gateway.sampling.consistent import keep, threshold
from gateway.telemetry import Metrics

_log = get_logger("tail")
_SPAN_OVERHEAD = 64  # bookkeeping bytes counted per buffered span besides its encoding
_HTTP_STATUS_KEYS = ("http.response.status_code", "http.status_code")
# An HTTP status attribute as a span's encoding holds it (upb writes fields in number order):
# KeyValue.key (tag 0x0a), KeyValue.value (tag 0x12, then the AnyValue's length); the group is
# not empty if an int_value (tag 0x18) below 500 follows, as a 1- or 2-byte varint (500 = f4 03).
_HTTP_STATUS = re.compile(
    b"(?:" + b"|".join(b"\x0a" + bytes((len(k),)) + re.escape(k.encode()) + b"\x12" for k in _HTTP_STATUS_KEYS) + b")"
    b"((?:\x02\x18[\x00-\x7f]|\x03\x18(?:[\x80-\xff][\x01\x02]|[\x80-\xf3]\x03))?)")


# -- config ----------------------------------------------------------------------------------


class _Policy(StrictModel):
    name: str | None = Field(None, description="Label in the per-policy metrics; default: the type.")


class ErrorPolicy(_Policy):
    type: Literal["error"]


class LatencyPolicy(_Policy):
    type: Literal["latency"]
    threshold: Duration = Field(gt=0, description="Keep traces longer than this (first start to last end).")


class CostPolicy(_Policy):
    type: Literal["cost"]
    threshold_usd: float = Field(ge=0, description="Keep traces whose gen_ai.usage.cost adds up to more.")


class TokensPolicy(_Policy):
    type: Literal["tokens"]
    threshold: int = Field(ge=0, description="Keep traces whose input + output tokens add up to more.")


class AttributePolicy(_Policy):
    type: Literal["attribute"]
    match: dict[str, Any] = Field(description="Conditions as in routes; one matching span keeps the trace.")


class ProbabilisticPolicy(_Policy):
    type: Literal["probabilistic"]
    percentage: float = Field(gt=0, le=100)
    precision: int = Field(4, ge=1, le=14)


class RateLimitPolicy(_Policy):
    type: Literal["rate_limit"]
    traces_per_second: float = Field(gt=0, description="At most this many traces kept per second by this policy.")


Policy = Annotated[
    Union[ErrorPolicy, LatencyPolicy, CostPolicy, TokensPolicy, AttributePolicy, ProbabilisticPolicy, RateLimitPolicy],
    Field(discriminator="type"),
]
POLICY_TYPES = ("error", "latency", "cost", "tokens", "attribute", "probabilistic", "rate_limit")


class TailConfig(StrictModel):
    decision_wait: Duration = Field(30.0, gt=0, description="Decide this long after a trace's last span.")
    idle: Duration = Field(2.0, ge=0, description="Decide this long after the last span once the root has arrived.")
    max_traces: int = Field(50_000, gt=0)
    max_bytes: ByteSize = Field(256 * 1024 * 1024, gt=0)
    decision_cache: int = Field(100_000, ge=0, description="Decisions remembered for late spans.")
    combine: Literal["any", "all"] = "any"
    policies: list[Policy] = Field(
        default_factory=list, description="None: keep every trace (a buffer for `by: trace` routes only).")


# -- traces ----------------------------------------------------------------------------------


Origin = tuple[str | None, tuple[str, str] | None]  # tenant, forwarded Langfuse credentials
PartKey = tuple[Origin, tuple[bytes, str], tuple[bytes, str]]  # origin, (resource, schema), (scope, schema)


class Trace:
    """What the buffer knows of one trace: its spans' bytes and what the policies read."""

    __slots__ = ("trace_id", "parts", "spans", "bytes", "start", "end", "error", "cost", "tokens", "matched",
                 "tracestate", "last", "rooted")

    def __init__(self, trace_id: bytes, now: float) -> None:
        self.trace_id = trace_id
        # Per part, its spans as encoded `ScopeSpans.spans` fields, ready to be joined into a
        # request. A bytearray, not a list of bytes: the garbage collector does not walk it.
        self.parts: dict[PartKey, bytearray] = {}
        self.spans = 0
        self.bytes = 0
        self.start = 0
        self.end = 0
        self.error = False
        self.cost = 0.0
        self.tokens = 0
        self.matched = 0  # bit i: attribute policy i matched a span
        self.tracestate = ""
        self.last = now
        self.rooted = False


class Policies:
    """The configured policies as one decision function over a `Trace`."""

    def __init__(self, config: TailConfig, metrics: Metrics) -> None:
        self.combine_all = config.combine == "all"
        self.matches: list[Match] = []
        # Each policy with its counters ({verdict: child}), looked up once: `labels()` per
        # decision and policy cost more than the checks themselves.
        self._checks: list[tuple[Callable[[Trace], bool], dict[bool, Any]]] = []
        self._limits: list[tuple[_TokenBucket, dict[bool, Any]]] = []
        counter = metrics.tail_policy_traces
        for policy in config.policies:
            name = policy.name or policy.type
            counts = {True: counter.labels(name, "kept"), False: counter.labels(name, "dropped")}
            if isinstance(policy, RateLimitPolicy):
                self._limits.append((_TokenBucket(policy.traces_per_second), counts))
            else:
                self._checks.append((self._check(policy), counts))
        self.active = bool(config.policies)
        self.needs_usage = any(isinstance(p, (CostPolicy, TokensPolicy)) for p in config.policies)

    def _check(self, policy: Any) -> Callable[[Trace], bool]:
        if isinstance(policy, ErrorPolicy):
            return lambda t: t.error
        if isinstance(policy, LatencyPolicy):
            limit_ns = policy.threshold * 1e9
            return lambda t: t.end - t.start > limit_ns
        if isinstance(policy, CostPolicy):
            usd = policy.threshold_usd
            return lambda t: t.cost > usd
        if isinstance(policy, TokensPolicy):
            tokens = policy.threshold
            return lambda t: t.tokens > tokens
        if isinstance(policy, AttributePolicy):
            bit = 1 << len(self.matches)
            self.matches.append(compile_match(policy.match, "match"))
            return lambda t: bool(t.matched & bit)
        assert isinstance(policy, ProbabilisticPolicy)
        reject_below = threshold(policy.percentage / 100.0, policy.precision)
        return lambda t: keep(t.trace_id, t.tracestate, reject_below)

    def decide(self, trace: Trace) -> bool:
        verdicts = []
        for check, counts in self._checks:
            verdict = check(trace)
            verdicts.append(verdict)
            counts[verdict].inc()
        decided = all(verdicts) if self.combine_all else any(verdicts)
        # Rate limits are asked last, and only if the trace would otherwise be kept (all) or
        # not (any), so a token is spent only when it makes the difference.
        if self._limits and (decided if self.combine_all else not decided):
            for bucket, counts in self._limits:
                verdict = bucket.take()
                counts[verdict].inc()
                decided = verdict
                if decided != self.combine_all:
                    break
        return decided


class _TokenBucket:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# -- the buffer ------------------------------------------------------------------------------


Emit = Callable[[Batch], None]


class TraceBuffer:
    """Holds spans by trace and hands on whole traces once decided (kept ones only).

    Without `policies` it keeps every trace: `by: trace` routes use it to see whole traces.
    """

    def __init__(self, config: TailConfig, metrics: Metrics, emit: Emit, policies: Policies | None) -> None:
        self.config = config
        self._emit = emit
        self._policies = policies if policies is not None and policies.active else None
        policies = self._policies
        self._traces: OrderedDict[bytes, Trace] = OrderedDict()  # by last arrival, oldest first
        self._rooted: OrderedDict[bytes, Trace] = OrderedDict()  # those whose root has arrived
        # Bounded, oldest first. An OrderedDict, not a dict: evicting a plain dict's oldest key
        # walks past every slot deleted before it (tens of us per decision once full).
        self._decided: OrderedDict[bytes, bool] = OrderedDict()
        self._bytes = 0
        self._task: asyncio.Task[None] | None = None
        # A short tick: the traces due are decided in small steps, not in one pause of the event
        # loop (20,000 traces/s held 5 s: about 150 ms of deciding at once with a 1 s tick).
        self._tick = max(0.05, min(0.1, config.decision_wait / 4, config.idle / 2 if config.idle else 0.1))
        policy = "tail" if policies is not None else "trace_buffer"
        self._kept_spans = metrics.sampled_spans.labels(policy, "kept")
        self._dropped_spans = metrics.sampled_spans.labels(policy, "dropped")
        self._early = metrics.tail_decided_early
        self._late = metrics.tail_late_spans
        metrics.tail_traces.set_function(lambda: len(self._traces))
        metrics.tail_bytes.set_function(lambda: self._bytes)
        self._matches = policies.matches if policies is not None else []
        self._resource_keys = frozenset(k for m in self._matches for k in m.keys("resource"))
        self._span_keys = frozenset(k for m in self._matches for k in m.keys("span"))

    @property
    def traces(self) -> int:
        return len(self._traces)

    # -- intake ------------------------------------------------------------------------------

    def add(self, batch: Batch) -> None:
        """Buffer the batch's spans (late spans follow their trace's decision at once)."""
        now = time.monotonic()
        traces, rooted, decided = self._traces, self._rooted, self._decided
        usage = self._usage(batch) if self._policies is not None and self._policies.needs_usage else None
        matches = self._matches
        tenant = batch.context.tenant
        origin: Origin = (tenant, batch.context.credentials)
        late = Trace(b"", now)
        late_dropped = 0
        added = 0
        for rs in batch.request.resource_spans:
            rkey = (rs.resource.SerializeToString(), rs.schema_url)
            resource = attribute_values(rs.resource.attributes, self._resource_keys) if self._resource_keys else None
            for ss in rs.scope_spans:
                part: PartKey = (origin, rkey, (ss.scope.SerializeToString(), ss.schema_url))
                subject = Subject(tenant, resource, ss.scope.name, ss.scope.version) if matches else None
                for span in ss.spans:
                    tid = span.trace_id
                    data = span.SerializeToString()
                    trace = traces.get(tid)
                    if trace is None:
                        verdict = decided.get(tid)
                        if verdict is not None:  # a late span: its trace was decided
                            if verdict:
                                _hold(late.parts, part, data)
                                late.spans += 1
                            else:
                                late_dropped += 1
                            continue
                        trace = traces[tid] = Trace(tid, now)
                        trace.start = span.start_time_unix_nano
                    else:
                        traces.move_to_end(tid)
                        trace.last = now
                        if trace.rooted:
                            rooted.move_to_end(tid)
                    _hold(trace.parts, part, data)
                    trace.spans += 1
                    size = len(data) + _SPAN_OVERHEAD
                    trace.bytes += size
                    added += size
                    if span.start_time_unix_nano < trace.start:
                        trace.start = span.start_time_unix_nano
                    if span.end_time_unix_nano > trace.end:
                        trace.end = span.end_time_unix_nano
                    if not trace.error and (span.status.code == 2 or (b"status_code" in data and _http_error(span, data))):
                        trace.error = True
                    if not trace.tracestate and span.trace_state:
                        trace.tracestate = span.trace_state
                    if not span.parent_span_id and not trace.rooted:
                        trace.rooted = True
                        rooted[tid] = trace
                    if usage is None and self._policies is not None and self._policies.needs_usage \
                            and b"gen_ai.usage" in data:
                        cost, tokens = _span_usage(span)
                        trace.cost += cost
                        trace.tokens += tokens
                    if subject is not None:
                        subject.span = span
                        subject.span_attributes = attribute_values(span.attributes, self._span_keys) if self._span_keys else None
                        for bit, match in enumerate(matches):
                            if not trace.matched & (1 << bit) and match.holds(subject):
                                trace.matched |= 1 << bit
        if usage:
            for tid, (cost, tokens) in usage.items():
                trace = traces.get(tid)
                if trace is not None:
                    trace.cost += cost
                    trace.tokens += tokens
        self._bytes += added
        kept: list[Trace] = [late] if late.spans else []
        if late.spans:
            self._late.labels("kept").inc(late.spans)
            self._kept_spans.inc(late.spans)
        if late_dropped:
            self._late.labels("dropped").inc(late_dropped)
            self._dropped_spans.inc(late_dropped)
        config = self.config
        while len(traces) > config.max_traces or self._bytes > config.max_bytes:
            reason = "max_traces" if len(traces) > config.max_traces else "max_bytes"
            tid, trace = next(iter(traces.items()))
            self._early.labels(reason).inc()
            self._decide(tid, trace, kept)
        if kept:
            self._write(kept)

    def _usage(self, batch: Batch) -> dict[bytes, tuple[float, int]] | None:
        """Cost and tokens per trace from the normalizer's calls (None if it did not run)."""
        if batch.llm_calls is None:
            return None
        out: dict[bytes, tuple[float, int]] = {}
        for call in batch.llm_calls:
            tid = call.span.trace_id
            cost, tokens = out.get(tid, (0.0, 0))
            out[tid] = (cost + (call.cost_usd or 0.0), tokens + (call.input_tokens or 0) + (call.output_tokens or 0))
        return out

    # -- decisions ---------------------------------------------------------------------------

    def _decide(self, tid: bytes, trace: Trace, kept: list[Trace]) -> None:
        del self._traces[tid]
        if trace.rooted:
            self._rooted.pop(tid, None)
        self._bytes -= trace.bytes
        verdict = True if self._policies is None else self._policies.decide(trace)
        if self.config.decision_cache:
            decided = self._decided
            decided[tid] = verdict
            if len(decided) > self.config.decision_cache:
                decided.popitem(last=False)
        if verdict:
            kept.append(trace)
            self._kept_spans.inc(trace.spans)
        else:
            self._dropped_spans.inc(trace.spans)

    def decide_due(self, now: float | None = None) -> int:
        """Decide the traces whose wait is over; returns how many were decided."""
        now = time.monotonic() if now is None else now
        kept: list[Trace] = []
        decided = 0
        wait, idle = self.config.decision_wait, self.config.idle
        for queue, delay in ((self._traces, wait), (self._rooted, idle)):
            while queue:
                tid, trace = next(iter(queue.items()))
                if now - trace.last < delay:
                    break
                self._decide(tid, trace, kept)
                decided += 1
        if kept:
            self._write(kept)
        return decided

    def decide_all(self, reason: str) -> None:
        """Decide every buffered trace now (shutdown, or a reload replacing this buffer)."""
        if self._traces:
            _log.info("deciding buffered traces early", traces=len(self._traces), reason=reason)
            self._early.labels(reason).inc(len(self._traces))
        kept: list[Trace] = []
        while self._traces:
            tid, trace = next(iter(self._traces.items()))
            self._decide(tid, trace, kept)
        if kept:
            self._write(kept)

    def _write(self, kept: list[Trace]) -> None:
        """Hand the kept traces on: one request per origin (tenant, credentials), built from the
        buffered bytes."""
        by_origin: dict[Origin, dict[tuple[bytes, str], dict[tuple[bytes, str], list[bytearray]]]] = {}
        for trace in kept:
            for (origin, rkey, skey), spans in trace.parts.items():
                by_origin.setdefault(origin, {}).setdefault(rkey, {}).setdefault(skey, []).append(spans)
        for origin, resources in by_origin.items():
            raw = encode_request(resources)
            request = ExportTraceServiceRequest.FromString(raw)
            context = RequestContext("tail", tenant=origin[0], credentials=origin[1])
            batch = Batch(request, count_spans(request), context, raw)
            try:
                self._emit(batch)
            except Exception:  # never lose the ticker over one batch; the emitter counts its drops
                _log.error("could not hand on decided traces", exc_info=True, spans=batch.items)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trace-buffer")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self.decide_due()

    async def stop(self, reason: str = "shutdown") -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.decide_all(reason)


def _http_error(span: Any, data: bytes) -> bool:
    """An HTTP status >= 500 among the span's attributes (`data`: the span's encoding).

    Most spans that carry a status carry an integer below 500: matched on the bytes, the usual
    case costs one regex scan instead of a walk over every attribute in Python (0.4 us, not 3).
    """
    if all(_HTTP_STATUS.findall(data)):  # each status found is an integer below 500
        return False
    for kv in span.attributes:
        if kv.key in _HTTP_STATUS_KEYS:
            code = number(kv.value)
            if code is None and kv.value.HasField("string_value") and kv.value.string_value.isdigit():
                code = int(kv.value.string_value)
            if code is not None and code >= 500:
                return True
    return False


def _span_usage(span: Any) -> tuple[float, int]:
    """Cost and tokens a span reports itself (used when the normalizer is off); skips repeats."""
    cost, tokens = 0.0, 0
    for kv in span.attributes:
        key = kv.key
        if key in (AGGREGATE, DUPLICATE_OF):
            return 0.0, 0
        if key == COST:
            cost = number(kv.value) or 0.0
        elif key in (INPUT_TOKENS, OUTPUT_TOKENS):
            tokens += int(number(kv.value) or 0)
    return cost, tokens


def _head(tag: int, size: int) -> bytes:
    return bytes((tag,)) + encode_varint(size)


def _hold(parts: dict[PartKey, bytearray], part: PartKey, span: bytes) -> None:
    """Append a span to its part as a `ScopeSpans.spans` field (tag 0x12, length, bytes)."""
    held = parts.get(part)
    if held is None:
        held = parts[part] = bytearray()
    size = len(span)
    held += bytes((0x12, size & 0x7F | 0x80, size >> 7)) if 0x80 <= size < 0x4000 else _head(0x12, size)
    held += span


def encode_request(resources: dict[tuple[bytes, str], dict[tuple[bytes, str], list[bytearray]]]) -> bytes:
    """An ExportTraceServiceRequest's encoding from encoded resources, scopes and spans (runs of
    encoded `ScopeSpans.spans` fields, see `_hold`).

    Field numbers (opentelemetry/proto/trace/v1/trace.proto): request.resource_spans = 1;
    ResourceSpans.resource = 1, .scope_spans = 2, .schema_url = 3; ScopeSpans.scope = 1,
    .spans = 2, .schema_url = 3. Length-delimited fields, so tags are (n << 3) | 2.
    Pieces are listed first (a message's length is the sum of its pieces') and joined once, so
    each span's bytes are copied once (several times faster than growing a buffer per level).
    """
    out: list[bytes] = []
    for (resource, resource_schema), scopes in resources.items():
        rs: list[bytes] = []
        if resource:
            rs += (_head(0x0A, len(resource)), resource)
        for (scope, scope_schema), spans in scopes.items():
            ss: list[bytes] = [_head(0x0A, len(scope)), scope] if scope else []
            ss += spans
            if scope_schema:
                schema = scope_schema.encode()
                ss += (_head(0x1A, len(schema)), schema)
            rs.append(_head(0x12, sum(map(len, ss))))
            rs += ss
        if resource_schema:
            schema = resource_schema.encode()
            rs += (_head(0x1A, len(schema)), schema)
        out.append(_head(0x0A, sum(map(len, rs))))
        out += rs
    return b"".join(out)
