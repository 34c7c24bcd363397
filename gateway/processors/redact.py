"""`pipeline.redact`: strip personal data and secrets from spans (and log records) before any sink.

Two independent parts:

* **Content** (`content: keep | drop | hash | truncate`): what happens to the prompts and
  completions of every LLM dialect (`gateway.redaction.keys`), as span attributes, span event
  attributes (`gen_ai.content.prompt` events) and GenAI log event bodies. `hash` writes
  `hmac-sha256:<hex>` (HMAC-SHA256 with `hash_secret`), so equal contents stay joinable without
  being readable. `truncate` keeps the first `truncate_bytes` UTF-8 bytes of every string (of
  every string leaf of a JSON value, which so stays valid JSON) and appends `[TRUNCATED:<bytes
  before>]`.
* **Patterns** (`detectors`, `custom`): every string the data carries, not only content: span
  names and status messages, span, event, link, resource and scope attributes, strings inside
  arrays and key-value lists, and the string leaves of values holding JSON (parsed, redacted,
  re-encoded: still valid JSON for Langfuse and Jaeger; double-encoded JSON too). Matches become
  `[REDACTED:<kind>]`.

Keys in `allow_keys` (plus the built-in ids, model names, token counts: `keys.DEFAULT_ALLOW_KEYS`)
are never touched. Numbers and booleans are never looked at. Redacting twice gives the result
of redacting once, so spans may pass through several otelgates. Counts go to
`otelgate_redactions_total{kind}`; values are never logged.

Redaction fails closed: nothing here catches exceptions, so a bug refuses the request (the
receivers' error boundary answers it) instead of letting content through unredacted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Any, Literal

import orjson
import re2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import Field, field_validator, model_validator

from gateway.batch import Batch
from gateway.configtypes import StrictModel
from gateway.processors import Processor, ProcessorContext
from gateway.redaction.detectors import DETECTORS, RESERVED_KINDS, Scanner, check_regex, compile_re2, gate_patterns
from gateway.otlp.wire import span_ranges
from gateway.redaction.locate import Target, candidate_attributes, candidate_spans, key_value
from gateway.redaction.keys import ALLOW, CONTENT, SCAN, CONTENT_KEYS, CONTENT_PREFIXES, DEFAULT_ALLOW_KEYS, KeyRoles
from gateway.telemetry import Metrics

Detector = Literal[DETECTORS]  # type: ignore[valid-type]


class CustomDetector(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="The kind, in markers and in the metric.")
    regex: str = Field(min_length=1, description="RE2 syntax: no lookaround, no backreferences.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_KINDS or name.startswith("content_"):
            raise ValueError(f"{name!r} is the name of a built-in kind; choose another")
        return name

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str) -> str:
        problem = check_regex(regex)
        if problem is not None:
            raise ValueError(problem)
        return regex


class Config(StrictModel):
    enabled: bool = False
    content: Literal["keep", "drop", "hash", "truncate"] = Field("keep", description=(
        "What happens to prompts and completions: keep (patterns still apply), drop, hash, truncate."))
    truncate_bytes: int = Field(1024, gt=0, description="content: truncate keeps this many UTF-8 bytes per string.")
    hash_secret: str | None = Field(None, min_length=16, repr=False, description="HMAC key for content: hash.")
    detectors: list[Detector] = Field(list(DETECTORS), description="Built-in detectors to run; [] for none.")
    custom: list[CustomDetector] = []
    allow_keys: list[str] = Field([], description="Keys never touched, added to the built-in list; `prefix.*` allowed.")

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if self.content == "hash" and not self.hash_secret:
            raise ValueError("content: hash needs hash_secret (at least 16 characters, e.g. ${env:OTELGATE_REDACT_SECRET})")
        names = [c.name for c in self.custom]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"custom: duplicate name(s) {', '.join(duplicates)}")
        return self


# `[TRUNCATED:<n>]` at the end of a string: already truncated (by this or an upstream otelgate).
_TRUNCATED = re.compile(r"\[TRUNCATED:\d+\]\Z")
_HASHED = re.compile(r"hmac-sha256:[0-9a-f]{64}\Z")
_JSON_START = frozenset('{["')
_JSON_END = {"{": "}", "[": "]", '"': '"'}
_MAX_JSON_NESTING = 4  # JSON inside a JSON string inside a JSON string...: deeper is scanned as text
_GENAI_EVENT = "gen_ai."
_UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED
# Decisions on short attributes are remembered (addresses, URLs, hosts recur across spans): at most
# this many, for encodings of at most this many bytes. The cache holds the attributes it was
# given, in memory only, as the batches do.
_MAX_CACHED_ENTRY = 320
_MAX_CACHED_ENTRIES = 4096
_UNCHANGED, _REPLACE, _AS_MESSAGE, _CONTENT_ROLE = range(4)  # what `_decide` says to do with an attribute


class Redactor:
    """Redacts OTLP data in place. Built once from a `Config`; usable on any batch or request
    (the pipeline's chain, a route's own settings on a copy, log records).

    Two gates, boundary-free supersets of the detectors and the content keys, scan serialized
    bytes in C. With the request's received bytes, one scan per gate covers the whole request
    and `gateway.redaction.locate` maps each candidate to its span and attribute: only those are
    read in Python, the rest of the request not at all. Without them (a route's copy, a span on
    its own), each span's serialization is scanned and a span with a candidate is read value by
    value. Both give the result of scanning every value: a property test holds them to it."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._mode = config.content
        self._cut = config.truncate_bytes if config.content == "truncate" else None
        self._hmac = hmac.new((config.hash_secret or "").encode(), digestmod=hashlib.sha256)
        self._roles = KeyRoles([*DEFAULT_ALLOW_KEYS, *config.allow_keys], content_is_special=config.content != "keep")
        self._counters: dict[str, Any] = {}
        self._tally: dict[str, int] = {}  # counts of the current call, folded in by `_flush`
        # The bytes path's decisions, by the attribute's encoding (`_decide`).
        self._decisions: dict[bytes, tuple[int, str | None, tuple[tuple[str, int], ...]]] = {}
        self._family = metrics.redactions
        custom = [(c.name, c.regex) for c in config.custom]
        self._scanner = Scanner(config.detectors, custom, self._count) if config.detectors or custom else None
        patterns = gate_patterns(config.detectors, custom)
        self._pattern_gate = _gate(patterns) if patterns else None
        self._content_gate = _gate([re2.escape(k) for k in (*CONTENT_KEYS, *CONTENT_PREFIXES)]) \
            if config.content != "keep" else None
        self._pattern_find = _finder(patterns) if patterns else None
        self._content_find = _finder([re2.escape(k) for k in (*CONTENT_KEYS, *CONTENT_PREFIXES)]) \
            if config.content != "keep" else None

    def _count(self, kind: str, n: int = 1) -> None:
        self._tally[kind] = self._tally.get(kind, 0) + n

    def _flush(self) -> None:
        """Fold the counts of this call into `otelgate_redactions_total`: one locked increment
        per kind and request, not one per value."""
        if self._tally:
            for kind, n in self._tally.items():
                counter = self._counters.get(kind)
                if counter is None:
                    counter = self._counters[kind] = self._family.labels(kind)
                counter.inc(n)
            self._tally = {}

    def _needs(self, message: Any, data: bytes | None = None) -> tuple[Scanner | None, bool]:
        """What `message` (a span, a resource, a request) may need: the scanner if a value may
        hold a match (else None), and whether it may hold content to drop, hash or cut. A
        missing gate (a user regex with `^`, `$` or `\\b`) answers "may"."""
        scanner, content = self._scanner, self._mode != "keep"
        pattern_gate = self._pattern_gate if scanner is not None else None
        content_gate = self._content_gate if content else None
        if pattern_gate is not None or content_gate is not None:
            if data is None:
                data = message.SerializeToString()
            if pattern_gate is not None and not pattern_gate(data):
                scanner = None
            if content_gate is not None and not content_gate(data):
                content = False
        return scanner, content

    # -- batches and requests -------------------------------------------------------------

    def __call__(self, batch: Batch) -> Batch:
        signal = batch.signal.name
        if signal == "traces":
            self._redact_batch(batch)
            return batch
        elif signal == "logs":
            changed = self.redact_logs_request(batch.request)  # type: ignore[arg-type]
        else:
            return batch  # metrics carry numbers, not content
        if changed:
            batch.raw = None
        return batch

    def redact_traces_request(self, request: ExportTraceServiceRequest, raw: bytes | None = None) -> bool:
        """Redact every span of `request` in place; True if anything changed. `raw`, the
        request's serialized bytes when known, lets the gates scan the whole request once and
        this look only at the attributes they point at (`gateway.redaction.locate`)."""
        edits = self._traces_from_bytes(request, raw) if raw is not None else None
        changed = self._traces_as_messages(request) if edits is None else bool(edits[0]) or edits[1]
        self._flush()
        return changed

    def _redact_batch(self, batch: Batch) -> None:
        """As `redact_traces_request`, and say what changed the way the batch contract asks: the
        spans edited (`touch`), or `raw = None` when a resource or scope changed. Spans an earlier
        processor touched are read as messages (their received bytes are stale); every other span
        is decided from the received bytes."""
        request = batch.request
        raw, stale = batch.raw, frozenset()
        if raw is None and batch.received is not None:
            raw, stale = batch.received, batch.touched
        edits = self._traces_from_bytes(request, raw, stale) if raw is not None else None
        if edits is None:
            if self._traces_as_messages(request):
                batch.raw = None
            self._flush()
            return
        spans, outside = edits
        for ri, si, ki in stale:
            if self._span(request.resource_spans[ri].scope_spans[si].spans[ki]):
                spans.add((ri, si, ki))
        self._flush()
        if outside:
            batch.raw = None
        else:
            for where in spans:
                batch.touch(*where)

    def _traces_as_messages(self, request: ExportTraceServiceRequest) -> bool:
        """Span by span, each gated by its own serialization: the reference the bytes path must equal."""
        changed = False
        for rs in request.resource_spans:
            changed |= self._attributes_of(rs.resource)
            for ss in rs.scope_spans:
                changed |= self._attributes_of(ss.scope)
                for span in ss.spans:
                    changed |= self._span(span)
        return changed

    def _traces_from_bytes(self, request: ExportTraceServiceRequest, raw: bytes,
                           stale: frozenset[tuple[int, int, int]] = frozenset()
                           ) -> tuple[set[tuple[int, int, int]], bool] | None:
        """Redact from one scan of `raw` per gate: (the spans edited, whether a resource or scope
        was), or None if its framing is unusual (the caller then goes span by span). A missing
        gate means every span may need it: None too. Spans in `stale` (whose bytes in `raw` are
        not theirs any more) are left to the caller."""
        scanner, content = self._scanner, self._mode != "keep"
        if (scanner is not None and self._pattern_find is None) or (content and self._content_find is None):
            return None
        if scanner is None and not content:
            return set(), False
        if not ((scanner is not None and self._pattern_find(raw, 0, len(raw)) >= 0)  # type: ignore[misc]
                or (content and self._content_find(raw, 0, len(raw)) >= 0)):  # type: ignore[misc]
            return set(), False  # the common clean request: one C call per gate
        ranges = span_ranges(raw)
        if ranges is None:
            return None
        starts = [r[3] for r in ranges]
        whole: set[int] = set()  # spans with content to drop, hash or cut: read as messages
        outside = False
        if content:
            spans_with_content, outside = candidate_spans(raw, ranges, self._content_find, starts)  # type: ignore[arg-type]
            whole.update(spans_with_content)
        by_span: dict[int, list[Target] | None] = {}
        if scanner is not None:
            by_span, elsewhere = candidate_attributes(raw, ranges, self._pattern_find, starts, whole)  # type: ignore[arg-type]
            outside |= elsewhere
        changed_outside = False
        if outside:  # a candidate in a resource or a scope (or in framing): those, as messages
            for rs in request.resource_spans:
                changed_outside |= self._attributes_of(rs.resource)
                for ss in rs.scope_spans:
                    changed_outside |= self._attributes_of(ss.scope)
        edited: set[tuple[int, int, int]] = set()
        containers: dict[tuple[int, int], Any] = {}
        for i in sorted(whole.union(by_span)):
            ri, si, ki, _, _ = ranges[i]
            if stale and (ri, si, ki) in stale:
                continue
            spans = containers.get((ri, si))
            if spans is None:
                spans = containers[(ri, si)] = request.resource_spans[ri].scope_spans[si].spans
            targets = by_span.get(i)
            if targets is None:  # as a message, with what the scans found in it
                changed = self._span_with(spans[ki], scanner if i in by_span else None, i in whole)
            else:
                changed = self._span_targets(raw, spans, ki, targets, scanner)  # type: ignore[arg-type]
            if changed:
                edited.add((ri, si, ki))
        return edited, changed_outside

    def _span_targets(self, raw: bytes, spans: Any, index: int, targets: list[Target], scanner: Scanner) -> bool:
        """The attributes of span `index` of `spans` that hold a pattern candidate, decided from
        their bytes (`_decide`); the span is touched only to write, or to read an attribute whose
        encoding is unusual."""
        cache, tally = self._decisions, self._tally
        changed = False
        span = None
        for attribute, start, end in targets:
            entry = raw[start:end]
            decision = cache.get(entry)
            if decision is None:
                decision = self._decide(entry, scanner)
            action, redacted, counts = decision
            for kind, n in counts:
                tally[kind] = tally.get(kind, 0) + n
            if action == _UNCHANGED:
                continue
            if span is None:
                span = spans[index]
            if action == _REPLACE:
                span.attributes[attribute].value.string_value = redacted
                changed = True
            elif action == _AS_MESSAGE:
                kv = span.attributes[attribute]
                role = self._roles(kv.key)
                if role == SCAN:
                    changed |= self._value(kv.value, None, scanner)
                elif role == CONTENT:
                    return self._span(span) or changed
            else:  # content, whose spans go the message way: defensive
                return self._span(span) or changed
        return changed

    def _decide(self, entry: bytes, scanner: Scanner) -> tuple[int, str | None, tuple[tuple[str, int], ...]]:
        """What to do with an attribute, from its KeyValue encoding: (action, the new string value,
        the counts it causes). Remembered for short entries: the same address, host or URL recurs
        in span after span under the same key, and a repeat then costs one dict lookup (its counts
        are added again on every repeat)."""
        located = key_value(entry)
        decision: tuple[int, str | None, tuple[tuple[str, int], ...]]
        if located is None:
            decision = (_AS_MESSAGE, None, ())
        else:
            key_start, key_end, value_start, value_end = located
            role = self._roles(entry[key_start:key_end].decode())
            if role == ALLOW:
                decision = (_UNCHANGED, None, ())
            elif role == CONTENT:
                decision = (_CONTENT_ROLE, None, ())
            else:
                text = entry[value_start:value_end].decode()
                tally, self._tally = self._tally, {}
                try:
                    redacted = self._text(text, None, scanner)
                    counts = tuple(self._tally.items())
                finally:
                    self._tally = tally
                decision = (_UNCHANGED, None, counts) if redacted is text else (_REPLACE, redacted, counts)
        if len(entry) <= _MAX_CACHED_ENTRY:
            if len(self._decisions) >= _MAX_CACHED_ENTRIES:
                self._decisions.clear()
            self._decisions[entry] = decision
        return decision

    def redact_span(self, span: Span) -> bool:
        """Redact one span in place; True if anything changed."""
        changed = self._span(span)
        self._flush()
        return changed

    def _span(self, span: Span) -> bool:
        scanner, content = self._needs(span)
        return self._span_with(span, scanner, content)

    def _span_with(self, span: Span, scanner: Scanner | None, content: bool) -> bool:
        """`span` as a message: patterns with `scanner`, content rules if `content`."""
        if scanner is None and not content:
            return False
        changed = False
        if scanner is not None:
            changed |= self._text_field(span, "name", scanner)
            if span.HasField("status"):
                changed |= self._text_field(span.status, "message", scanner)
        changed |= self._attributes(span.attributes, scanner, content)
        for event in span.events:
            changed |= self._attributes(event.attributes, scanner, content)
        for link in span.links:
            changed |= self._attributes(link.attributes, scanner, content)
        return changed

    def redact_logs_request(self, request: ExportLogsServiceRequest) -> bool:
        """Redact every log record of `request` in place; True if anything changed."""
        changed = False
        for rl in request.resource_logs:
            changed |= self._attributes_of(rl.resource)
            for sl in rl.scope_logs:
                changed |= self._attributes_of(sl.scope)
                for record in sl.log_records:
                    changed |= self._log_record(record)
        self._flush()
        return changed

    def redact_log_record(self, record: LogRecord) -> bool:
        """The body of a GenAI event (`gen_ai.user.message`, `gen_ai.choice`, ...) is content;
        any other body is scanned for patterns."""
        changed = self._log_record(record)
        self._flush()
        return changed

    def _log_record(self, record: LogRecord) -> bool:
        changed = self._attributes(record.attributes, self._scanner, self._mode != "keep")
        if record.HasField("body"):
            if self._mode != "keep" and _is_genai_event(record):
                if self._mode == "drop":
                    record.ClearField("body")
                    self._count("content_drop")
                    return True
                changed |= self._content_value(record.body, self._scanner)
            elif self._scanner is not None:
                changed |= self._value(record.body, None, self._scanner)
        return changed

    # -- attributes and values ------------------------------------------------------------

    def redact_attributes(self, attributes: Any) -> bool:
        """Redact a repeated `KeyValue` field in place (content rules by key, then patterns)."""
        changed = self._attributes(attributes, self._scanner, self._mode != "keep")
        self._flush()
        return changed

    def redact_anyvalue(self, value: AnyValue) -> bool:
        """Replace pattern matches in every string of `value` (nested arrays and key-value lists
        too; their keys are not looked at). True if anything changed."""
        changed = self._scanner is not None and self._value(value, None, self._scanner)
        self._flush()
        return changed

    def redact_text(self, text: str) -> str:
        """`text` with pattern matches replaced (JSON-aware); the same object when unchanged."""
        redacted = self._text(text, None, self._scanner)
        self._flush()
        return redacted

    def _attributes_of(self, message: Any) -> bool:
        """The attributes of a resource or a scope, if its gates say they may need it."""
        if not message.attributes:
            return False
        scanner, content = self._needs(message)
        return (scanner is not None or content) and self._attributes(message.attributes, scanner, content)

    def _attributes(self, attributes: Any, scanner: Scanner | None, content: bool) -> bool:
        if not attributes:
            return False
        known, role_of = self._roles.known, self._roles
        changed = False
        dropped: list[int] = []
        for i, kv in enumerate(attributes):
            key = kv.key
            role = known.get(key)
            if role is None:
                role = role_of(key)
            if role == ALLOW:
                continue
            if role == CONTENT and content:
                if self._mode == "drop":
                    dropped.append(i)
                    continue
                changed |= self._content_value(kv.value, scanner)
            elif scanner is not None:
                changed |= self._value(kv.value, None, scanner)
        if dropped:
            for i in reversed(dropped):
                del attributes[i]
            self._count("content_drop", len(dropped))
            changed = True
        return changed

    # -- content --------------------------------------------------------------------------

    def _content_value(self, value: AnyValue, scanner: Scanner | None) -> bool:
        """Apply `hash` or `truncate` to one content value (`drop` is the caller's)."""
        if self._mode == "hash":
            if value.WhichOneof("value") == "string_value":
                text = value.string_value
                if _HASHED.match(text):
                    return False
                data = text.encode()
            else:
                data = value.SerializeToString(deterministic=True)
            digest = self._hmac.copy()
            digest.update(data)
            value.string_value = "hmac-sha256:" + digest.hexdigest()
            self._count("content_hash")
            return True
        return self._value(value, self._cut, scanner)

    def _value(self, value: AnyValue, cut: int | None, scanner: Scanner | None) -> bool:
        """Patterns (and with `cut`, the content cut) on every string of `value`, in place."""
        kind = value.WhichOneof("value")
        if kind == "string_value":
            text = value.string_value
            redacted = self._text(text, cut, scanner)
            if redacted is text:
                return False
            value.string_value = redacted
            return True
        changed = False
        if kind == "array_value":
            for item in value.array_value.values:
                changed |= self._value(item, cut, scanner)
        elif kind == "kvlist_value":
            for kv in value.kvlist_value.values:
                changed |= self._value(kv.value, cut, scanner)
        elif kind == "bytes_value" and cut is not None and len(value.bytes_value) > cut:
            value.bytes_value = value.bytes_value[:cut]
            self._count("content_truncate")
            changed = True
        return changed

    # -- text -----------------------------------------------------------------------------

    def _text(self, text: str, cut: int | None, scanner: Scanner | None, nesting: int = 0) -> str:
        """Patterns, then (content: truncate) the cut, then patterns on what the cut left (it may
        have split a match into something still sensitive). Values that hold JSON are handled
        leaf by leaf, so they stay valid JSON."""
        if not text or (scanner is None and cut is None):
            return text
        if text[0] in _JSON_START and nesting < _MAX_JSON_NESTING and text[-1] == _JSON_END[text[0]]:
            redacted = self._json(text, cut, scanner, nesting)
            if redacted is not None:
                return redacted
        result = scanner.redact(text) if scanner is not None else text
        if cut is not None and len(result) * 4 > cut and not _already_truncated(result):
            data = result.encode()
            if len(data) > cut:
                kept = data[:cut].decode(errors="ignore")  # drops a character the cut split
                result = f"{kept}[TRUNCATED:{len(data)}]"
                if scanner is not None:
                    result = scanner.redact(result)
                self._count("content_truncate")
        return result

    def _json(self, text: str, cut: int | None, scanner: Scanner | None, nesting: int) -> str | None:
        """`text` parsed as JSON, its string leaves redacted, re-encoded if anything changed (in
        orjson's compact form; object keys are not scanned; an integer beyond 64 bits comes back
        as a float); None if `text` is not JSON (it is then handled as plain text)."""
        if (cut is None or len(text) * 4 <= cut) and not _escapes_may_hide(text) and (
                scanner is None or not scanner.finds(text)):
            return text  # the raw text has no candidate, and no leaf can need a cut
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if isinstance(document, str):  # double-encoded (MLflow): a JSON string holding the value
            inner = self._text(document, cut, scanner, nesting + 1)
            return text if inner is document else orjson.dumps(inner).decode()
        if not isinstance(document, (dict, list)):
            return text  # a number, true, false or null: nothing to redact
        changed = False
        pending: list[Any] = [document]
        while pending:  # iterative: JSON nesting may be deeper than Python's recursion limit
            node = pending.pop()
            for key, item in (node.items() if isinstance(node, dict) else enumerate(node)):
                if type(item) is str:
                    redacted = self._text(item, cut, scanner, nesting + 1)
                    if redacted is not item:
                        node[key] = redacted
                        changed = True
                elif isinstance(item, (dict, list)):
                    pending.append(item)
        return orjson.dumps(document).decode() if changed else text

    def _text_field(self, message: Any, field: str, scanner: Scanner) -> bool:
        text = getattr(message, field)
        redacted = self._text(text, None, scanner)
        if redacted is text:
            return False
        setattr(message, field, redacted)
        return True


def _gate(patterns: list[str]) -> Callable[[bytes], bool]:
    """Whether `data` holds a match of any of `patterns` (RE2, one scan)."""
    match = compile_re2("|".join(patterns)).Match

    def finds(data: bytes) -> bool:
        return match(_UNANCHORED, data, 0, len(data))[0][0] >= 0
    return finds


def _finder(patterns: list[str]) -> Callable[[bytes, int, int], int]:
    """Where the first match of any of `patterns` in data[start:end] starts (-1: none)."""
    match = compile_re2("|".join(patterns)).Match

    def find(data: bytes, start: int, end: int) -> int:
        return match(_UNANCHORED, data, start, end)[0][0]
    return find


def _escapes_may_hide(text: str) -> bool:
    """Whether JSON escapes in `text` may hide a match from a scan of the raw text. The detectors
    take `\\n`, `\\t`, `\\"`... for token boundaries; `\\u0040` or `\\/` (PHP escapes slashes)
    inside a match they cannot see through."""
    return "\\u" in text or "\\/" in text


def _already_truncated(text: str) -> bool:
    """Ends with `[TRUNCATED:<n>]` (by this or an upstream otelgate): cutting again would only
    stack markers."""
    return text.endswith("]") and _TRUNCATED.search(text[-32:]) is not None


def _is_genai_event(record: LogRecord) -> bool:
    if record.event_name:
        return record.event_name.startswith(_GENAI_EVENT)
    for kv in record.attributes:
        if kv.key == "event.name":
            return kv.value.string_value.startswith(_GENAI_EVENT)
    return False


SIGNALS = ("traces", "logs")
AFTER_SAMPLING = True  # no work on spans head sampling drops


def create(config: Config, context: ProcessorContext) -> Processor:
    return Redactor(config, context.metrics)

