"""Limits against hostile or broken senders, enforced on each decoded request before the pipeline.

What happens beyond each limit (`action` is `truncate` or `reject`):

| limit | truncate | reject |
|---|---|---|
| `max_spans_per_request` | the request is refused (413 / RESOURCE_EXHAUSTED), like an oversized body: dropping spans would lose data the client was told it sent | same |
| `max_attributes_per_span` (the span's; with `max_events_per_span` also each event's) | the first N are kept, `dropped_attributes_count` grows by the rest | the request is refused (400 / INVALID_ARGUMENT) |
| `max_events_per_span` | the first N events are kept, `dropped_events_count` grows | 400 |
| `max_attribute_value_bytes` (string and bytes values of the attributes of a span, its events and links, also inside arrays and kvlists) | cut to N bytes (strings at a UTF-8 character boundary) | 400 |
| `max_anyvalue_depth` (arrays/kvlists nested in one another, in any attribute) | the request is refused (400): a value that deep is never walked further | same |

A truncated span carries `otelgate.truncated=true` (not counted against the limits). A refused
request is refused whole, with a message naming the limit, so the sender can fix its side.

Cost (figures in tests/bench/RESULTS.md, "Limits"): with no `limits:` nothing here runs.
Counts are compared with `len()`. Values are walked only in spans larger than the value limit,
as no value can be larger than its span, and span sizes come from the received framing
(`gateway/otlp/wire.py`; `ByteSize()` for OTLP/JSON). Reading a repeated field a span does not
have (`span.events` on most spans) makes upb allocate a small arena for the span's wrapper, so
events are read only for `max_events_per_span`, and links (rare; the SDKs cap them) not at all
but by `max_anyvalue_depth`, the one limit that looks at every attribute (its kind). Without
it, nesting is still bounded by the decoders: OTLP/JSON at 30 levels, protobuf by upb's 100
nested messages (31 kvlists, 47 arrays).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Literal

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import Field

from gateway.batch import count_spans
from gateway.configtypes import ByteSize, StrictModel
from gateway.otlp.json_codec import MAX_ANYVALUE_DEPTH
from gateway.otlp.wire import span_sizes

TRUNCATED_ATTRIBUTE = "otelgate.truncated"
_NESTED = ("array_value", "kvlist_value")


class LimitsConfig(StrictModel):
    max_spans_per_request: int | None = Field(None, gt=0, description="More spans in one export: refused whole (413).")
    max_attributes_per_span: int | None = Field(
        None, ge=0, description="The span's attributes; with max_events_per_span set, each event's too.")
    max_events_per_span: int | None = Field(None, ge=0)
    max_attribute_value_bytes: ByteSize | None = Field(None, gt=0, description="String and bytes attribute values, in bytes.")
    max_anyvalue_depth: int | None = Field(
        None, ge=0, le=MAX_ANYVALUE_DEPTH, description="Arrays/kvlists nested in one another in an attribute value; beyond: refused.")
    action: Literal["truncate", "reject"] = Field("truncate", description="For attribute, event and value-size limits.")


class LimitExceeded(Exception):
    """A request refused whole by a limit; the message names the limit and is safe to send back."""

    def __init__(self, limit: str, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.limit = limit
        self.too_large = too_large  # 413 / RESOURCE_EXHAUSTED rather than 400 / INVALID_ARGUMENT


class Limits:
    """The limits of one config, applied to requests in place."""

    def __init__(self, config: LimitsConfig) -> None:
        self.max_spans = config.max_spans_per_request
        self.max_attributes = config.max_attributes_per_span
        self.max_events = config.max_events_per_span
        self.max_value_bytes = config.max_attribute_value_bytes
        self.max_depth = config.max_anyvalue_depth
        self.reject = config.action == "reject"
        self._count_or_depth = any(v is not None for v in (self.max_attributes, self.max_events, self.max_depth))

    @classmethod
    def build(cls, config: LimitsConfig | None) -> "Limits | None":
        """None when no limit is set, so the receivers skip limits entirely."""
        if config is None:
            return None
        limits = cls(config)
        configured = (limits.max_spans, limits.max_attributes, limits.max_events, limits.max_value_bytes, limits.max_depth)
        return limits if any(v is not None for v in configured) else None

    def apply(self, request: ExportTraceServiceRequest, raw: bytes | None) -> dict[str, int]:
        """Enforce the limits on `request` in place; `raw` is the protobuf it was parsed from, if any.

        Returns how many spans each limit truncated (empty: the request is unchanged); raises
        `LimitExceeded` when the request must be refused whole.
        """
        if self.max_spans is not None and (spans := count_spans(request)) > self.max_spans:
            raise LimitExceeded("max_spans_per_request", f"{spans} spans in one request, more than "
                                f"limits.max_spans_per_request ({self.max_spans}): send smaller batches", too_large=True)
        truncated: dict[str, int] = {}
        sizes = self._span_sizes(raw)
        if sizes is None and not self._count_or_depth:
            return truncated  # the usual case with a value limit alone: no span is large enough
        max_depth = self.max_depth
        for rs in request.resource_spans:
            if max_depth is not None:
                _check_depth(rs.resource.attributes, max_depth, None)
            for ss in rs.scope_spans:
                if max_depth is not None:
                    _check_depth(ss.scope.attributes, max_depth, None)
                for span in ss.spans:
                    cut = self._apply_to_span(span, next(sizes) if sizes is not None else 0)
                    if cut:
                        _mark_truncated(span)
                        for limit in cut:
                            truncated[limit] = truncated.get(limit, 0) + 1
        return truncated

    def _span_sizes(self, raw: bytes | None) -> Iterator[int | None] | None:
        """Each span's encoded size, in request order, read from the received framing (None: to
        be measured); None when no span can hold a value over the limit (or there is no limit)."""
        limit = self.max_value_bytes
        if limit is None:
            return None
        sizes = span_sizes(raw) if raw is not None else None
        if sizes is None:
            return itertools.repeat(None)  # OTLP/JSON: measure each span
        return iter(sizes) if max(sizes, default=0) > limit else None

    def _apply_to_span(self, span: Span, size: int | None) -> list[str]:
        """The limits that truncated `span` (usually none); `size`: its encoded size (None: unknown)."""
        cut = []
        max_attributes = self.max_attributes
        if max_attributes is not None and self._cut_attributes(span, span, max_attributes):
            cut.append("max_attributes_per_span")
        limit = self.max_events
        if limit is not None:  # reads `span.events`, absent on most spans: see the module docstring
            events = span.events
            if len(events) > limit:
                self._refuse(span, "max_events_per_span", f"{len(events)} events", limit)
                span.dropped_events_count += len(events) - limit
                del events[limit:]
                cut.append("max_events_per_span")
            if max_attributes is not None and events:
                if any([self._cut_attributes(span, event, max_attributes) for event in events]):  # a list: cut every one
                    if "max_attributes_per_span" not in cut:
                        cut.append("max_attributes_per_span")
        limit = self.max_value_bytes
        # No value can be longer than its span: only a span larger than the limit is walked.
        if limit is not None and size != 0 and (span.ByteSize() if size is None else size) > limit and self._cut_values(span, limit):
            cut.append("max_attribute_value_bytes")
        limit = self.max_depth
        if limit is not None:
            for holder in (span, *span.events, *span.links):
                _check_depth(holder.attributes, limit, span)
        return cut

    def _refuse(self, span: Span, limit: str, found: str, allowed: int) -> None:
        """With `action: reject`, refuse the request for `span`'s sake; with truncate, return."""
        if self.reject:
            raise LimitExceeded(limit, f"span {_name(span.name)} has {found}, more than limits.{limit} ({allowed})")

    def _cut_attributes(self, span: Span, holder: Span | Span.Event, limit: int) -> bool:
        """Keep the first `limit` attributes of `holder` (the span or one of its events)."""
        attributes = holder.attributes
        if len(attributes) <= limit:
            return False
        where = "" if holder is span else " on an event"
        self._refuse(span, "max_attributes_per_span", f"{len(attributes)} attributes{where}", limit)
        holder.dropped_attributes_count += len(attributes) - limit
        del attributes[limit:]
        return True

    def _cut_values(self, span: Span, limit: int) -> bool:
        cut = False
        for holder in (span, *span.events, *span.links):
            for kv in holder.attributes:
                if _cut_value(kv.value, limit):
                    if self.reject:
                        raise LimitExceeded("max_attribute_value_bytes", f"span {_name(span.name)}: attribute {_name(kv.key)} "
                                            f"has a value longer than limits.max_attribute_value_bytes ({limit} bytes)")
                    cut = True
        return cut


def _cut_value(value: AnyValue, limit: int) -> bool:
    """Cut string and bytes values longer than `limit` bytes, nested ones too; True if any was."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        text = value.string_value
        # A str of n characters is n to 4n bytes in UTF-8: encode only when that cannot tell.
        if len(text) <= limit // 4:
            return False
        encoded = text.encode()
        if len(encoded) <= limit:
            return False
        value.string_value = encoded[:limit].decode("utf-8", "ignore")  # drops only a split last character
        return True
    if kind == "bytes_value":
        if len(value.bytes_value) <= limit:
            return False
        value.bytes_value = value.bytes_value[:limit]
        return True
    if kind == "array_value":
        return any([_cut_value(v, limit) for v in value.array_value.values])  # a list: cut every one
    if kind == "kvlist_value":
        return any([_cut_value(kv.value, limit) for kv in value.kvlist_value.values])
    return False


def _check_depth(attributes: Sequence[KeyValue], limit: int, span: Span | None) -> None:
    """Refuse when an attribute of `span` (None: of a resource or scope) nests too deep."""
    for kv in attributes:
        value = kv.value
        if value.WhichOneof("value") in _NESTED and not _nests_at_most(value, limit):
            where = f"span {_name(span.name)}" if span is not None else "a resource or scope"
            raise LimitExceeded("max_anyvalue_depth", f"{where}: attribute {_name(kv.key)} nests arrays/kvlists "
                                f"deeper than limits.max_anyvalue_depth ({limit})")


def _nests_at_most(value: AnyValue, allowed: int) -> bool:
    """Whether `value` holds at most `allowed` arrays/kvlists in one another; never looks deeper."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return allowed > 0 and all(_nests_at_most(v, allowed - 1) for v in value.array_value.values)
    if kind == "kvlist_value":
        return allowed > 0 and all(_nests_at_most(kv.value, allowed - 1) for kv in value.kvlist_value.values)
    return True


def _mark_truncated(span: Span) -> None:
    for kv in span.attributes:
        if kv.key == TRUNCATED_ATTRIBUTE:
            kv.value.bool_value = True
            return
    span.attributes.add(key=TRUNCATED_ATTRIBUTE).value.bool_value = True


def _name(text: str, keep: int = 64) -> str:
    """A sender-chosen name as it may appear in an answer: quoted and bounded."""
    return repr(text if len(text) <= keep else text[:keep] + "...")
