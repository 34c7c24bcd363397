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
from typing import Any, Literal

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import Field, field_validator, model_validator

from gateway.batch import Batch
from gateway.configtypes import StrictModel
from gateway.processors import Processor, ProcessorContext
from gateway.redaction.detectors import DETECTORS, RESERVED_KINDS, Scanner, check_regex
from gateway.redaction.keys import ALLOW, CONTENT, DEFAULT_ALLOW_KEYS, KeyRoles
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


class Redactor:
    """Redacts OTLP data in place. Built once from a `Config`; usable on any batch or request
    (the pipeline's chain, a route's own settings on a copy, log records)."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._mode = config.content
        self._cut = config.truncate_bytes if config.content == "truncate" else None
        self._hmac = hmac.new((config.hash_secret or "").encode(), digestmod=hashlib.sha256)
        self._roles = KeyRoles([*DEFAULT_ALLOW_KEYS, *config.allow_keys], content_is_special=config.content != "keep")
        self._counters: dict[str, Any] = {}
        self._family = metrics.redactions
        scanning = bool(config.detectors or config.custom)
        self._scanner = Scanner(config.detectors, [(c.name, c.regex) for c in config.custom], self._count) \
            if scanning else None
        self._scan_only = scanning and config.content == "keep"  # spans can be checked whole first

    def _count(self, kind: str, n: int = 1) -> None:
        counter = self._counters.get(kind)
        if counter is None:
            counter = self._counters[kind] = self._family.labels(kind)
        counter.inc(n)

    # -- batches and requests -------------------------------------------------------------

    def __call__(self, batch: Batch) -> Batch:
        if self.redact_traces_request(batch.request):
            batch.raw = None
        return batch

    def redact_traces_request(self, request: ExportTraceServiceRequest) -> bool:
        """Redact every span of `request` in place; True if anything changed."""
        changed = False
        for rs in request.resource_spans:
            changed |= self.redact_attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                changed |= self.redact_attributes(ss.scope.attributes)
                for span in ss.spans:
                    changed |= self.redact_span(span)
        return changed

    def redact_span(self, span: Span) -> bool:
        if self._scan_only and self._clean(span):
            return False
        changed = self._text_field(span, "name")
        if span.HasField("status"):
            changed |= self._text_field(span.status, "message")
        changed |= self.redact_attributes(span.attributes)
        for event in span.events:
            changed |= self.redact_attributes(event.attributes)
        for link in span.links:
            changed |= self.redact_attributes(link.attributes)
        return changed

    def _clean(self, span: Span) -> bool:
        """Whether one scan of all the span's strings, joined, finds nothing, and nothing else
        needs a look: the common case, one C call per span instead of one per value."""
        parts = [span.name]
        if span.HasField("status"):
            parts.append(span.status.message)
        if not self._collect(span.attributes, parts):
            return False
        for event in span.events:
            if not self._collect(event.attributes, parts):
                return False
        for link in span.links:
            if not self._collect(link.attributes, parts):
                return False
        assert self._scanner is not None
        return not self._scanner.finds_any(parts)

    def _collect(self, attributes: Any, parts: list[str]) -> bool:
        """Append the strings of `attributes` to scan to `parts`; False if a value needs more
        than a scan (content to drop, hash or cut; an array or a list; JSON with escapes)."""
        known, role_of = self._roles.known, self._roles
        for kv in attributes:
            key = kv.key
            role = known.get(key)
            if role is None:
                role = role_of(key)
            if role == ALLOW:
                continue
            if role == CONTENT:
                return False
            value = kv.value
            kind = value.WhichOneof("value")
            if kind == "string_value":
                text = value.string_value
                if text[:1] in _JSON_START and _escapes_may_hide(text):
                    return False
                parts.append(text)
            elif kind == "array_value":  # tags and the like: strings only, else the full path
                for item in value.array_value.values:
                    item_kind = item.WhichOneof("value")
                    if item_kind != "string_value":
                        if item_kind == "array_value" or item_kind == "kvlist_value":
                            return False
                        continue
                    text = item.string_value
                    if text[:1] in _JSON_START and _escapes_may_hide(text):
                        return False
                    parts.append(text)
            elif kind == "kvlist_value":
                return False
        return True

    def redact_logs_request(self, request: ExportLogsServiceRequest) -> bool:
        """Redact every log record of `request` in place; True if anything changed."""
        changed = False
        for rl in request.resource_logs:
            changed |= self.redact_attributes(rl.resource.attributes)
            for sl in rl.scope_logs:
                changed |= self.redact_attributes(sl.scope.attributes)
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
                changed |= self._content_value(record.body)
            else:
                changed |= self.redact_anyvalue(record.body)
        return changed

    # -- attributes and values ------------------------------------------------------------

    def redact_attributes(self, attributes: Any) -> bool:
        """Redact a repeated `KeyValue` field in place (content rules by key, then patterns)."""
        if not attributes:
            return False
        role_of, changed = self._roles, False
        dropped: list[int] = []
        for i, kv in enumerate(attributes):
            role = role_of(kv.key)
            if role == ALLOW:
                continue
            if role == CONTENT:
                if self._mode == "drop":
                    dropped.append(i)
                    continue
                changed |= self._content_value(kv.value)
            else:
                changed |= self.redact_anyvalue(kv.value)
        if dropped:
            for i in reversed(dropped):
                del attributes[i]
            self._count("content_drop", len(dropped))
            changed = True
        return changed

    def redact_anyvalue(self, value: AnyValue) -> bool:
        """Replace pattern matches in every string of `value` (nested arrays and key-value lists
        too; their keys are not looked at). True if anything changed."""
        return self._value(value, None)

    def redact_text(self, text: str) -> str:
        """`text` with pattern matches replaced (JSON-aware); the same object when unchanged."""
        return self._text(text, None)

    # -- content --------------------------------------------------------------------------

    def _content_value(self, value: AnyValue) -> bool:
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
        return self._value(value, self._cut)

    def _value(self, value: AnyValue, cut: int | None) -> bool:
        """Patterns (and with `cut`, the content cut) on every string of `value`, in place."""
        kind = value.WhichOneof("value")
        if kind == "string_value":
            text = value.string_value
            redacted = self._text(text, cut)
            if redacted is text:
                return False
            value.string_value = redacted
            return True
        changed = False
        if kind == "array_value":
            for item in value.array_value.values:
                changed |= self._value(item, cut)
        elif kind == "kvlist_value":
            for kv in value.kvlist_value.values:
                changed |= self._value(kv.value, cut)
        elif kind == "bytes_value" and cut is not None and len(value.bytes_value) > cut:
            value.bytes_value = value.bytes_value[:cut]
            self._count("content_truncate")
            changed = True
        return changed

    # -- text -----------------------------------------------------------------------------

    def _text(self, text: str, cut: int | None, nesting: int = 0) -> str:
        """Patterns, then (content: truncate) the cut, then patterns on what the cut left (it may
        have split a match into something still sensitive). Values that hold JSON are handled
        leaf by leaf, so they stay valid JSON."""
        if not text:
            return text
        if text[0] in _JSON_START and nesting < _MAX_JSON_NESTING and text[-1] == _JSON_END[text[0]]:
            redacted = self._json(text, cut, nesting)
            if redacted is not None:
                return redacted
        scanner = self._scanner
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

    def _json(self, text: str, cut: int | None, nesting: int) -> str | None:
        """`text` parsed as JSON, its string leaves redacted, re-encoded if anything changed (in
        orjson's compact form; object keys are not scanned; an integer beyond 64 bits comes back
        as a float); None if `text` is not JSON (it is then handled as plain text)."""
        if (cut is None or len(text) * 4 <= cut) and not _escapes_may_hide(text) and (
                self._scanner is None or not self._scanner.finds(text)):
            return text  # the raw text has no candidate, and no leaf can need a cut
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if isinstance(document, str):  # double-encoded (MLflow): a JSON string holding the value
            inner = self._text(document, cut, nesting + 1)
            return text if inner is document else orjson.dumps(inner).decode()
        if not isinstance(document, (dict, list)):
            return text  # a number, true, false or null: nothing to redact
        changed = False
        pending: list[Any] = [document]
        while pending:  # iterative: JSON nesting may be deeper than Python's recursion limit
            node = pending.pop()
            for key, item in (node.items() if isinstance(node, dict) else enumerate(node)):
                if type(item) is str:
                    redacted = self._text(item, cut, nesting + 1)
                    if redacted is not item:
                        node[key] = redacted
                        changed = True
                elif isinstance(item, (dict, list)):
                    pending.append(item)
        return orjson.dumps(document).decode() if changed else text

    def _text_field(self, message: Any, field: str) -> bool:
        text = getattr(message, field)
        redacted = self._text(text, None)
        if redacted is text:
            return False
        setattr(message, field, redacted)
        return True


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


def create(config: Config, context: ProcessorContext) -> Processor:
    return Redactor(config, context.metrics)

