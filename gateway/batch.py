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

A new attribute on an existing span (the normalizer's, the pricer's, attribution's) is added with
`batch.add_attribute(where, span, key, value)` instead, which needs no touch: while the span is
untouched the attribute is kept as its encoding and `serialized()` appends it to the span's
received bytes, so the span is neither written in upb nor re-encoded. The message gets it when
something reads `request` (or `received`, `touched`), so every reader sees it; code that holds
a request or span object from before the processors must read `batch.request` again.

`llm_calls` is what the normalizer found (None until it ran), so the pricer and the LLM metrics
work on those spans only, without reading attributes again.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.otlp.attributes import Value, add_to_message, encoded
from gateway.otlp.signals import TRACES, Signal, count_spans
from gateway.otlp.wire import span_ranges, splice

if TYPE_CHECKING:
    from gateway.llm.call import LlmCall

# The loop guard: every export an otlp sink sends names the otelgate instances its data passed
# through in this header (gRPC metadata or HTTP); a receiver that finds its own id drops it.
VIA_HEADER = "x-otelgate-via"
INSTANCE_ID = os.urandom(8).hex()  # this process; a restart is a new instance

_ADDING = threading.Lock()  # held while added attributes move into a shared batch's message or bytes


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

    __slots__ = ("_request", "items", "context", "llm_calls", "signal", "_raw", "_touched", "_ranges", "_appends", "_owed")

    def __init__(self, request: ExportTraceServiceRequest, items: int, context: RequestContext,
                 raw: bytes | None = None, llm_calls: "list[LlmCall] | None" = None, signal: Signal = TRACES) -> None:
        self._request = request  # or ExportLogsServiceRequest / ExportMetricsServiceRequest, per `signal`
        self.items = items  # spans, log records or metric data points
        self.context = context
        self.llm_calls = llm_calls  # set by the normalizer: one per provider call
        self.signal = signal
        self._raw = raw  # the received bytes: equal to the request except in the touched spans
        self._touched: set[tuple[int, int, int]] | None = None
        self._ranges: list[tuple[int, int, int, int, int]] | None = None  # span_ranges(_raw), once asked
        # Attributes added to untouched spans and not yet in the message: where -> (span, [(key,
        # value)], [their encodings]) (`add_attribute`).
        self._appends: dict[tuple[int, int, int], tuple[Any, list[tuple[str, Value]], list[bytes]]] | None = None
        # Added attributes already in `_raw` (a serialization spliced them in) but not in the message.
        self._owed: list[tuple[Any, list[tuple[str, Value]]]] | None = None

    def __repr__(self) -> str:
        return f"Batch({self.signal}, items={self.items}, raw={self._raw is not None}, touched={len(self._touched or ())})"

    @property
    def request(self) -> Any:
        """The parsed request, holding every attribute added so far (`add_attribute`)."""
        if self._appends or self._owed:
            self._into_message()
        return self._request

    @request.setter
    def request(self, value: Any) -> None:
        self._into_message()
        self._request = value

    @property
    def raw(self) -> bytes | None:
        """The request's encoding, if known without serializing (None once a span was touched or an
        attribute added)."""
        return self._raw if not self._touched and not self._appends else None

    @raw.setter
    def raw(self, value: bytes | None) -> None:
        """Set to None by whoever edited the request beyond single spans; bytes: they equal the request."""
        self._into_message()
        self._raw = value
        self._ranges = None
        self._touched = None

    @property
    def received(self) -> bytes | None:
        """The received bytes, which still hold every span not in `touched` as it is in the request
        (None once something other than single spans was edited)."""
        if self._appends or self._owed:
            self._into_message()
        return self._raw

    @property
    def touched(self) -> frozenset[tuple[int, int, int]]:
        if self._appends or self._owed:
            self._into_message()
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
        appends = self._appends
        if appends and (ri, si, ki) in appends:  # the message gets them now, in the order they came
            span, values, _ = appends.pop((ri, si, ki))
            for key, value in values:
                add_to_message(span, key, value)
        if self._raw is None:
            return  # the whole request is serialized anyway
        if self._touched is None:
            self._touched = set()
        self._touched.add((ri, si, ki))

    def add_attribute(self, where: tuple[int, int, int] | None, span: Any, key: str, value: Value) -> None:
        """Add `key=value` to `span` (at `where`, as `touch` counts; None: not known), which does
        not have that key. While the span's received bytes are valid this costs no upb write: the
        attribute's encoding is kept, `serialized()` appends it to the span's received bytes, and
        the message gets the attribute only when something reads `request` (gateway/otlp/attributes.py).
        Needs no `touch`."""
        if where is None or self._raw is None or self.signal is not TRACES or (self._touched and where in self._touched):
            add_to_message(span, key, value)
            if where is None:
                self.raw = None
            else:
                self.touch(*where)
            return
        appends = self._appends
        if appends is None:
            appends = self._appends = {}
        pending = appends.get(where)
        if pending is None:
            pending = appends[where] = (span, [], [])
        pending[1].append((key, value))
        pending[2].append(encoded(key, value))

    def _into_message(self) -> None:
        """Put every added attribute the message lacks into it: the pending ones (their spans become
        touched: the received bytes lack them too) and those a serialization already spliced into
        `_raw`. Under a lock: sinks read and serialize a shared batch from their threads."""
        with _ADDING:
            appends, owed = self._appends, self._owed
            self._appends = self._owed = None
            if owed:
                for span, values in owed:
                    for key, value in values:
                        add_to_message(span, key, value)
            if appends:
                touched = self._touched
                if touched is None and self._raw is not None:
                    touched = self._touched = set()
                for where, (span, values, _) in appends.items():
                    for key, value in values:
                        add_to_message(span, key, value)
                    if touched is not None:
                        touched.add(where)

    def serialized(self) -> bytes:
        """The request's protobuf encoding: the received bytes, with the touched spans spliced in
        and the added attributes appended to their spans (or a whole serialization when most
        spans were touched or the framing is unusual). The result is kept as the new `raw`: sinks
        only read the request, and a sink may ask twice (its size, then its body).

        Sinks call this from their threads, possibly at once: the new bytes are stored before the
        touched set is cleared, and read in the opposite order, so a reader sees either the old
        bytes with the old set, or the new bytes with the old set (splicing the same spans into
        bytes that already hold them gives the same bytes), or the new bytes alone. A batch with
        added attributes is serialized under the lock that puts them into the message."""
        if self._appends:
            with _ADDING:
                if self._appends:
                    return self._serialize()
        return self._serialize()

    def _serialize(self) -> bytes:
        touched = self._touched
        raw = self._raw
        appends = self._appends
        if raw is not None and not touched and not appends:
            return raw
        out = None
        if raw is not None and self.signal is TRACES and self._worth_splicing(raw, touched, appends):
            rss = self._request.resource_spans
            try:
                spans = {(ri, si, ki): rss[ri].scope_spans[si].spans[ki].SerializeToString()
                         for ri, si, ki in touched or ()}
                ranges = self.span_ranges() if appends else None
                if appends and ranges is not None:
                    at = {r[:3]: r for r in ranges}
                    for where, (_, _, blobs) in appends.items():
                        r = at[where]
                        spans[where] = raw[r[3]:r[4]] + b"".join(blobs)
                if not appends or ranges is not None:
                    out = splice(raw, spans)
            except (IndexError, KeyError):  # a span index the request no longer has: the contract was broken
                out = None
        if out is None:  # no bytes, most bytes re-encoded anyway, or unusual framing: serialize whole
            if appends:
                self._appends = None  # (the caller holds the lock)
                for span, values, _ in appends.values():
                    for key, value in values:
                        add_to_message(span, key, value)
            out = self._request.SerializeToString()
        elif appends:  # in the bytes now; the message gets them when read
            owed = self._owed or []
            owed.extend((span, values) for span, values, _ in appends.values())
            self._owed = owed
            self._appends = None
        self._raw = out
        self._ranges = None
        self._touched = None
        return out

    def settle(self) -> None:
        """Let go of the received bytes once the processors are done, if no splice can use them:
        they would otherwise wait in the queues (or the trace buffer) beside the parsed request,
        which is what the sinks encode whole anyway (an LLM-dense request: every span touched).
        Kept while attributes wait to be appended to them: that splice is the cheap way out."""
        touched, raw = self._touched, self._raw
        if touched and raw is not None and not self._appends and 2500 * len(touched) + 1000 * self.items >= len(raw):
            self.raw = None

    def _worth_splicing(self, raw: bytes, touched: set[tuple[int, int, int]] | None,
                        appends: dict[tuple[int, int, int], Any] | None) -> bool:
        """Whether splicing beats one whole serialization. upb encodes about 1 byte per ns either
        way; the splice adds about 2.5 us per touched span (reaching and encoding it on its own)
        and about 1 us per span of the request (walking the framing in Python, twice), worth 2500
        and 1000 bytes of encoding. A span with added attributes costs about 0.5 us (its received
        bytes and theirs joined), where the whole serialization must first add each attribute to
        the message (about 1.4 us each). So touched spans alone pay only when the untouched spans
        are large (about 1 KB or more each); added attributes pay almost always. The touched
        spans' received sizes stand in for their new ones. Measured: tests/bench/RESULTS.md, "wire"
        and "appends"."""
        touched = touched or set()
        fixed = 2500 * len(touched) + 1000 * self.items
        whole = len(raw)
        if appends:
            fixed += 500 * len(appends)
            whole += 1400 * sum(len(values) for _, values, _ in appends.values())
        if fixed >= whole:
            return False  # decided without walking the framing (LLM-dense requests; see `settle`)
        ranges = self.span_ranges()
        if ranges is None:
            return False
        if touched:
            fixed += sum(end - start for ri, si, ki, start, end in ranges if (ri, si, ki) in touched)
        return fixed < whole


__all__ = ["Batch", "RequestContext", "count_spans"]
