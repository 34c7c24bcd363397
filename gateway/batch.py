"""The unit that flows through the pipeline: one decoded export request and its item count.

A batch carries one signal (`signal`: traces, logs or metrics); `items` counts what it carries:
spans, log records or metric data points.

A batch is decoded once by a receiver and encoded at most once by each sink. Processors edit
the request in place; sinks only read it (a sink that must change spans copies them first),
because one batch is shared by every sink a route fans out to.

`raw` holds the bytes the request was received as, while they still equal `request`: a sink
writing protobuf then writes them instead of serializing again. The contract for whoever edits
the request (a test holds every registered processor to it):
- an edit inside existing spans (attributes added, changed or removed, a span field set) is
  announced with `batch.touch(resource index, scope index, span index)` for each span edited;
- any other edit (resource or scope attributes, spans added, removed or moved) sets
  `batch.raw = None`; so does a processor that does not know which spans it edited.
After a `touch`, `raw` reads None (the bytes no longer equal the request) but the received bytes
stay (`received`), valid for every untouched span: `serialized()` then re-encodes only the
touched spans and splices them into the received bytes (`gateway.otlp.wire.splice`), which is
what `SerializeToString()` would give whenever the received bytes were upb's canonical encoding.
A receiver never sets `raw` when it removed invalid spans.

`llm_calls` is what the normalizer found (None until it ran), so the pricer and the LLM metrics
work on those spans only, without reading attributes again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.otlp.signals import TRACES, Signal, count_spans
from gateway.otlp.wire import span_ranges, splice

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


class Batch:
    """One export request on its way through the pipeline (see the module docstring)."""

    __slots__ = ("request", "items", "context", "llm_calls", "signal", "_raw", "_touched", "_ranges")

    def __init__(self, request: ExportTraceServiceRequest, items: int, context: RequestContext,
                 raw: bytes | None = None, llm_calls: "list[LlmCall] | None" = None, signal: Signal = TRACES) -> None:
        self.request = request  # or ExportLogsServiceRequest / ExportMetricsServiceRequest, per `signal`
        self.items = items  # spans, log records or metric data points
        self.context = context
        self.llm_calls = llm_calls  # set by the normalizer: one per provider call
        self.signal = signal
        self._raw = raw  # the received bytes: equal to the request except in the touched spans
        self._touched: set[tuple[int, int, int]] | None = None
        self._ranges: list[tuple[int, int, int, int, int]] | None = None  # span_ranges(_raw), once asked

    def __repr__(self) -> str:
        return f"Batch({self.signal}, items={self.items}, raw={self._raw is not None}, touched={len(self.touched)})"

    @property
    def raw(self) -> bytes | None:
        """The request's encoding, if known without serializing (None once a span was touched)."""
        return self._raw if not self._touched else None

    @raw.setter
    def raw(self, value: bytes | None) -> None:
        """Set to None by whoever edited the request beyond single spans; bytes: they equal the request."""
        self._raw = value
        self._ranges = None
        self._touched = None

    @property
    def received(self) -> bytes | None:
        """The received bytes, which still hold every span not in `touched` as it is in the request
        (None once something other than single spans was edited)."""
        return self._raw

    @property
    def touched(self) -> frozenset[tuple[int, int, int]]:
        return frozenset(self._touched or ())

    def span_ranges(self) -> list[tuple[int, int, int, int, int]] | None:
        """`gateway.otlp.wire.span_ranges` of the received bytes, walked once per batch (the
        normalizer's scan and the splice decision share it); None without bytes or if unusual."""
        ranges = self._ranges
        if ranges is None and self._raw is not None:
            ranges = self._ranges = span_ranges(self._raw)
        return ranges

    def touch(self, ri: int, si: int, ki: int) -> None:
        """Say that span `request.resource_spans[ri].scope_spans[si].spans[ki]` was edited in place."""
        if self._raw is None:
            return  # the whole request is serialized anyway
        if self._touched is None:
            self._touched = set()
        self._touched.add((ri, si, ki))

    def serialized(self) -> bytes:
        """The request's protobuf encoding: the received bytes, with the touched spans spliced in
        (or a whole serialization when most spans were touched or the framing is unusual). The
        result is kept as the new `raw`: sinks only read the request, and a sink may ask twice
        (its size, then its body).

        Sinks call this from their threads, possibly at once: the new bytes are stored before the
        touched set is cleared, and read in the opposite order, so a reader sees either the old
        bytes with the old set, or the new bytes with the old set (splicing the same spans into
        bytes that already hold them gives the same bytes), or the new bytes alone."""
        touched = self._touched
        raw = self._raw
        if raw is not None and not touched:
            return raw
        out = None
        if raw is not None and self.signal is TRACES and self._worth_splicing(raw, touched):  # type: ignore[arg-type]
            rss = self.request.resource_spans
            try:
                out = splice(raw, {(ri, si, ki): rss[ri].scope_spans[si].spans[ki].SerializeToString()
                                   for ri, si, ki in touched})  # type: ignore[union-attr]
            except IndexError:  # a span index the request no longer has: the contract was broken
                out = None
        if out is None:  # no bytes, most bytes re-encoded anyway, or unusual framing: serialize whole
            out = self.request.SerializeToString()
        self._raw = out
        self._ranges = None
        self._touched = None
        return out

    def settle(self) -> None:
        """Let go of the received bytes once the processors are done, if no splice can use them:
        they would otherwise wait in the queues (or the trace buffer) beside the parsed request,
        which is what the sinks encode whole anyway (an LLM-dense request: every span touched)."""
        touched, raw = self._touched, self._raw
        if touched and raw is not None and 2500 * len(touched) + 1000 * self.items >= len(raw):
            self.raw = None

    def _worth_splicing(self, raw: bytes, touched: set[tuple[int, int, int]]) -> bool:
        """Whether re-encoding the touched spans alone beats one whole serialization. upb encodes
        about 1 byte per ns either way; the splice adds about 2.5 us per touched span (reaching and
        encoding it on its own) and about 1 us per span of the request (walking the framing in
        Python, twice), worth 2500 and 1000 bytes of encoding. So it pays only when the untouched
        spans are large (about 1 KB or more each); a request of small plain spans is cheaper to
        encode whole. The touched spans' received sizes stand in for their new ones (the edits add
        a few attributes). Measured: tests/bench/RESULTS.md, "wire"."""
        if 2500 * len(touched) + 1000 * self.items >= len(raw):
            return False  # decided without walking the framing (LLM-dense requests; see `settle`)
        ranges = self.span_ranges()
        if ranges is None:
            return False
        touched_bytes = sum(end - start for ri, si, ki, start, end in ranges if (ri, si, ki) in touched)
        return touched_bytes + 2500 * len(touched) + 1000 * len(ranges) < len(raw)


__all__ = ["Batch", "RequestContext", "count_spans"]
