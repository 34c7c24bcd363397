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
from gateway.redaction.keys import ALLOW, CONTENT, CONTENT_KEYS, CONTENT_PREFIXES, DEFAULT_ALLOW_KEYS, KeyRoles
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


class Redactor:
    """Redacts OTLP data in place. Built once from a `Config`; usable on any batch or request
    (the pipeline's chain, a route's own settings on a copy, log records).

    Before looking at a span value by value, two gates scan its serialized bytes once (C, no
    Python per attribute): one for boundary-free supersets of the detectors, one for the
    content keys. A span that neither finds is left as it is: the common case."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._mode = config.content
        self._cut = config.truncate_bytes if config.content == "truncate" else None
        self._hmac = hmac.new((config.hash_secret or "").encode(), digestmod=hashlib.sha256)
        self._roles = KeyRoles([*DEFAULT_ALLOW_KEYS, *config.allow_keys], content_is_special=config.content != "keep")
        self._counters: dict[str, Any] = {}
        self._family = metrics.redactions
        custom = [(c.name, c.regex) for c in config.custom]
        self._scanner = Scanner(config.detectors, custom, self._count) if config.detectors or custom else None
        patterns = gate_patterns(config.detectors, custom)
        self._pattern_gate = _gate(patterns) if patterns else None
        self._content_gate = _gate([re2.escape(k) for k in (*CONTENT_KEYS, *CONTENT_PREFIXES)]) \
            if config.content != "keep" else None

    def _count(self, kind: str, n: int = 1) -> None:
        counter = self._counters.get(kind)
        if counter is None:
            counter = self._counters[kind] = self._family.labels(kind)
        counter.inc(n)

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
            changed = self.redact_traces_request(batch.request, batch.raw)
        elif signal == "logs":
            changed = self.redact_logs_request(batch.request)  # type: ignore[arg-type]
        else:
            return batch  # metrics carry numbers, not content
        if changed:
            batch.raw = None
        return batch

    def redact_traces_request(self, request: ExportTraceServiceRequest, raw: bytes | None = None) -> bool:
        """Redact every span of `request` in place; True if anything changed. `raw`, the
        request's serialized bytes when known, lets a clean request cost one scan."""
        if raw is not None and self._needs(request, raw) == (None, False):
            return False
        changed = False
        for rs in request.resource_spans:
            changed |= self._attributes_of(rs.resource)
            for ss in rs.scope_spans:
                changed |= self._attributes_of(ss.scope)
                for span in ss.spans:
                    changed |= self.redact_span(span)
        return changed

    def redact_span(self, span: Span) -> bool:
        scanner, content = self._needs(span)
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
                    changed |= self.redact_log_record(record)
        return changed

    def redact_log_record(self, record: LogRecord) -> bool:
        """The body of a GenAI event (`gen_ai.user.message`, `gen_ai.choice`, ...) is content;
        any other body is scanned for patterns."""
        changed = self.redact_attributes(record.attributes)
        if record.HasField("body"):
            if self._mode != "keep" and _is_genai_event(record):
                if self._mode == "drop":
                    record.ClearField("body")
                    self._count("content_drop")
                    return True
                changed |= self._content_value(record.body, self._scanner)
            else:
                changed |= self.redact_anyvalue(record.body)
        return changed

    # -- attributes and values ------------------------------------------------------------

    def redact_attributes(self, attributes: Any) -> bool:
        """Redact a repeated `KeyValue` field in place (content rules by key, then patterns)."""
        return self._attributes(attributes, self._scanner, self._mode != "keep")

    def redact_anyvalue(self, value: AnyValue) -> bool:
        """Replace pattern matches in every string of `value` (nested arrays and key-value lists
        too; their keys are not looked at). True if anything changed."""
        return self._scanner is not None and self._value(value, None, self._scanner)

    def redact_text(self, text: str) -> str:
        """`text` with pattern matches replaced (JSON-aware); the same object when unchanged."""
        return self._text(text, None, self._scanner)

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

