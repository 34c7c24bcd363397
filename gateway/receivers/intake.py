"""What both OTLP receivers do with a request: authenticate, check spans, hand over, count.

The receivers own only their protocol (framing, status codes); this module owns the meaning,
so gRPC and HTTP accept and refuse exactly the same data and count it the same way. The key set
(`auth`) and the limits are plain attributes, read once per request: a config reload replaces
them with `configure(new_config)`, and requests in flight finish with what they started with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from gateway.batch import INSTANCE_ID, VIA_HEADER, Batch, RequestContext, count_spans
from gateway.config import Config
from gateway.errors import Refused
from gateway.logs import get_logger
from gateway.pipeline import Pipeline
from gateway.otlp.signals import TRACES, Signal
from gateway.receivers.auth import Authenticator, Unauthenticated, basic_credentials, stamp_tenant
from gateway.receivers.limits import LimitExceeded, Limits
from gateway.telemetry import Metrics

# Without `auth:`, a sender may name its tenant in this header (gRPC metadata or HTTP); routes
# match it with `tenant:`. With `auth:` it is ignored: the API key names the tenant.
TENANT_HEADER = "x-otelgate-tenant"
_REFUSAL_LOG_EVERY_S = 10.0  # a client retrying with a bad key must not flood the log
_LOOP_LOG_EVERY_S = 600.0  # a loop repeats every export: one warning, then the counter says it

_log = get_logger("receiver")


# In-flight requests one receiver processes at once when `max_in_flight_requests` is 0. Measured
# (tests/bench/bench_overload.py, RESULTS.md): a request of 100-500 spans takes 3-20 ms of the
# event loop from body to queue on the project's VM, so 32 in progress bound the wait for a slot
# to well under a second, while 8 in flight already keep the gateway's core busy (the closed-loop
# maximum in that benchmark); a higher bound only adds latency, a lower one risks idling.
DEFAULT_MAX_IN_FLIGHT = 32


class Admission:
    """Admission control for one receiver: a bound on requests and bytes in progress, checked before
    the body is decoded, so under overload the gateway refuses at once (cheap) instead of queueing
    work it cannot finish in time (latency for everyone, then client timeouts, and retries that
    duplicate what was written after the client gave up).

    (Refusing also while the event loop runs late was tried: a sink encoding a large batch makes
    the loop late too, and goodput under 3x overload fell from 0.73 to 0.24 of the maximum.)"""

    __slots__ = ("max_requests", "max_bytes", "requests", "bytes", "_gauge")

    def __init__(self, max_requests: int, max_bytes: int, gauge: Any = None) -> None:
        self.max_requests = max_requests or DEFAULT_MAX_IN_FLIGHT
        self.max_bytes = max_bytes
        self.requests = 0
        self.bytes = 0
        if gauge is not None:
            gauge.set_function(lambda: self.requests)

    def enter(self, size: int) -> bool:
        """Take a slot for a request of `size` bytes, or False (refuse it). One request always fits."""
        if self.requests and (self.requests >= self.max_requests or
                              (self.max_bytes and self.bytes + size > self.max_bytes)):
            return False
        self.requests += 1
        self.bytes += size
        return True

    def take_bytes(self, size: int) -> bool:
        """Add `size` bytes to a request that entered with 0 before its size was known (gRPC:
        admitted when the RPC arrives, sized once its message is read), or False: the caller
        refuses it and leaves with 0. A request alone in progress always fits."""
        if self.requests > 1 and self.max_bytes and self.bytes + size > self.max_bytes:
            return False
        self.bytes += size
        return True

    def leave(self, size: int) -> None:
        self.requests -= 1
        self.bytes -= size


@dataclass(slots=True, frozen=True)
class Accepted:
    rejected: int
    error_message: str


ALL_ACCEPTED = Accepted(0, "")  # the answer to most requests: one shared instance, never changed


class _Hot:
    """The counter children every accepted request of one protocol and signal touches, looked up
    once: prometheus-client's `labels(...)` validates the label values and takes a lock on every
    call, about 2-3 us each, three times per request (tests/bench/RESULTS.md, issue 15 "small
    requests"). prometheus-client never drops a child, so a cached one stays the family's."""

    __slots__ = ("accepted_items", "accepted", "partial")

    def __init__(self, metrics: Metrics, protocol: str, signal: Signal) -> None:
        self.accepted_items = metrics.signals[signal.name].receiver_accepted.labels(protocol)
        self.accepted = metrics.receiver_requests.labels(protocol, "accepted")
        self.partial = metrics.receiver_requests.labels(protocol, "partial")


class Intake:
    def __init__(self, pipeline: Pipeline, metrics: Metrics) -> None:
        self._pipeline = pipeline
        self._metrics = metrics
        self.auth: Authenticator | None = None
        self.limits: Limits | None = None
        self._refusals_unlogged = 0
        self._refusal_logged_at = float("-inf")
        self._loop_logged_at = float("-inf")
        self._hot: dict[tuple[str, str], _Hot] = {}
        self._latency: dict[str, Any] = {}

    def _hot_for(self, protocol: str, signal: Signal) -> _Hot:
        hot = self._hot.get((protocol, signal.name))
        if hot is None:
            hot = self._hot[(protocol, signal.name)] = _Hot(self._metrics, protocol, signal)
        return hot

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    def overloaded(self, protocol: str) -> None:
        """Count a request admission control refused (before its body was read or decoded)."""
        self._metrics.receiver_requests.labels(protocol, "overloaded").inc()

    def backpressure(self, protocol: str, signal: Signal) -> Refused | None:
        """The pipeline's refusal of any request of `signal` now (every queue it can reach is full),
        counted; receivers ask before reading the body, so a refusal costs no decode. Its spans
        are not in `otelgate_receiver_refused_spans_total` (never decoded, so never counted)."""
        refusal = self._pipeline.refusal_before_decode(signal)
        if refusal is not None:
            self._metrics.receiver_requests.labels(protocol, "refused").inc()
        return refusal

    def configure(self, config: Config) -> None:
        """Take the key set and the limits from `config` (at start, and on each reload)."""
        self.auth = Authenticator(config.auth) if config.auth is not None else None
        self.limits = Limits.build(config.limits)
        if self.auth is not None:
            _log.info("receivers require an API key", header=self.auth.header, keys=len(self.auth.fingerprints),
                      fingerprints=",".join(self.auth.fingerprints))

    def identify(self, protocol: str, header: Callable[[str], str | None]) -> RequestContext:
        """Who sent a request, from its headers (`header(name)` -> value), before its body is read.

        With `auth:`, the tenant of its API key, or `Unauthenticated` (counted, and logged with
        at most the key's fingerprint); without, the `x-otelgate-tenant` header, if any.
        """
        auth = self.auth
        via = _via(header(VIA_HEADER))
        if auth is None:
            return RequestContext(protocol, tenant=header(TENANT_HEADER), via=via)
        try:
            tenant = auth.tenant(header(auth.header))
        except Unauthenticated as exc:
            self._metrics.receiver_requests.labels(protocol, "unauthenticated").inc()
            self._log_refusal(protocol, exc)
            raise
        return RequestContext(protocol, tenant=tenant, tenant_attribute=auth.tenant_attribute, via=via)

    def identify_langfuse(self, protocol: str, header: Callable[[str], str | None]) -> RequestContext:
        """Who sent a request on the Langfuse-compatible path: its Basic auth key pair.

        With `auth:`, the pair must be one of `auth.langfuse_keys` (its tenant is the data's);
        without, any pair is taken (and may be forwarded) and the tenant header applies.
        """
        auth = self.auth
        if auth is None:
            return RequestContext(protocol, tenant=header(TENANT_HEADER),
                                  credentials=basic_credentials(header("authorization")))
        try:
            tenant, credentials = auth.langfuse_tenant(header("authorization"))
        except Unauthenticated as exc:
            self._metrics.receiver_requests.labels(protocol, "unauthenticated").inc()
            self._log_refusal(protocol, exc)
            raise
        return RequestContext(protocol, tenant=tenant, tenant_attribute=auth.tenant_attribute, credentials=credentials)

    def _log_refusal(self, protocol: str, exc: Unauthenticated) -> None:
        now = time.monotonic()
        if now - self._refusal_logged_at < _REFUSAL_LOG_EVERY_S:
            self._refusals_unlogged += 1
            return
        fields = {"key_fingerprint": exc.fingerprint} if exc.fingerprint else {}
        if self._refusals_unlogged:
            fields["not_logged_since"] = str(self._refusals_unlogged)
        _log.warning("request refused: not authenticated", protocol=protocol, reason=str(exc), **fields)
        self._refusal_logged_at, self._refusals_unlogged = now, 0

    async def accept(self, request: Any, context: RequestContext, raw: bytes | None = None,
                     signal: Signal = TRACES) -> Accepted:
        """Hand the valid items to the pipeline; raise `Refused` (nothing accepted) under
        backpressure, `LimitExceeded` when a limit refuses the request.

        `raw` is the protobuf encoding `request` was parsed from, if there was one. The item count
        limit applies to every signal; the others are span limits.
        """
        protocol = context.protocol
        m = self._metrics
        counters = m.signals[signal.name]
        if context.via and INSTANCE_ID in context.via:
            return self._looped(request, context, signal)
        limits = self.limits
        if limits is not None and signal is not TRACES and limits.max_spans is not None:
            # The count limit holds for every signal (log records, metric points); the others are span limits.
            if (items := signal.count(request)) > limits.max_spans:
                counters.receiver_rejected.labels(protocol, "max_spans_per_request").inc(items)
                m.receiver_requests.labels(protocol, "limit_exceeded").inc()
                raise LimitExceeded("max_spans_per_request", f"{items} {signal.items.replace('_', ' ')} in one request, "
                                    f"more than limits.max_spans_per_request ({limits.max_spans}): send smaller batches",
                                    too_large=True)
        if limits is not None and signal is TRACES:  # before span checks remove anything: limits read sizes from `raw`
            try:
                truncated = limits.apply(request, raw)
            except LimitExceeded as exc:
                m.receiver_rejected_spans.labels(protocol, exc.limit).inc(count_spans(request))
                m.receiver_requests.labels(protocol, "limit_exceeded").inc()
                raise
            if truncated:
                for limit, spans in truncated.items():
                    m.receiver_truncated_spans.labels(protocol, limit).inc(spans)
                raw = None
        kept, rejected, message = signal.remove_invalid(request)
        if rejected:
            counters.receiver_rejected.labels(protocol, "invalid_id").inc(rejected)
            raw = None
        if kept and context.tenant_attribute is not None and context.tenant is not None:
            stamp_tenant(getattr(request, signal.resources_field), context.tenant_attribute, context.tenant)
            raw = None
        if kept:
            try:
                await self._pipeline.consume(Batch(request, kept, context, raw, signal=signal))
            except Refused as exc:
                counters.receiver_refused.labels(protocol, exc.reason).inc(kept)
                m.receiver_requests.labels(protocol, "refused").inc()
                raise
        hot = self._hot_for(protocol, signal)
        if kept:
            hot.accepted_items.inc(kept)
        if not rejected:
            hot.accepted.inc()
            return ALL_ACCEPTED
        hot.partial.inc()
        return Accepted(rejected, message)

    def _looped(self, request: Any, context: RequestContext, signal: Signal) -> Accepted:
        """Data this instance already handled came back (a sink points at this gateway, or at
        another otelgate that sends back): drop it, count it, warn (rate-limited), and answer with
        partial success so the sender counts it as rejected instead of retrying."""
        items = signal.count(request)
        self._metrics.signals[signal.name].receiver_rejected.labels(context.protocol, "loop").inc(items)
        self._metrics.receiver_requests.labels(context.protocol, "loop").inc()
        now = time.monotonic()
        if now - self._loop_logged_at >= _LOOP_LOG_EVERY_S:
            _log.warning("data came back to the otelgate instance that already handled it; dropped (a sink sends "
                         "to this gateway, directly or through another otelgate): fix that sink's endpoint",
                         protocol=context.protocol, items=str(items), via=",".join(context.via))
            self._loop_logged_at = now
        return Accepted(items, f"loop: this data already passed through otelgate instance {INSTANCE_ID}; dropped")

    def malformed(self, protocol: str, outcome: str) -> None:
        """Count a request that could not be read at all (bad payload, too large, wrong type)."""
        self._metrics.receiver_requests.labels(protocol, outcome).inc()

    def rejected(self, protocol: str, reason: str, items: int, signal: Signal = TRACES) -> None:
        """Count items a receiver refused before the pipeline (Langfuse events that do not validate)."""
        self._metrics.signals[signal.name].receiver_rejected.labels(protocol, reason).inc(items)

    def observe_latency(self, protocol: str, seconds: float) -> None:
        child = self._latency.get(protocol)
        if child is None:
            child = self._latency[protocol] = self._metrics.receiver_request_duration.labels(protocol)
        child.observe(seconds)


def _via(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (p.strip() for p in value.split(",")) if v) if value else ()


def describe_decode_error(exc: DecodeError, what: str, signal: Signal = TRACES) -> str:
    """The answer to a protobuf `what` (body, message) that upb could not parse: its own text
    names only the type, so the one cause a sender cannot guess, nesting, is spelled out."""
    if "MaxDepth" in str(exc):
        return (f"invalid protobuf: the {what} nests deeper than the parser allows (100 messages: about "
                "31 kvlists or 47 arrays in one attribute value)")
    return f"invalid protobuf: the {what} is not an {signal.request.__name__}"
