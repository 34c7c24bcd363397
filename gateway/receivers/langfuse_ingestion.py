"""Langfuse's legacy ingestion API on the HTTP receiver: what the Langfuse SDK v2 (and so Dify's
Langfuse integration) speaks.

* `POST /api/public/ingestion`: a JSON `{"batch": [events], "metadata": {...}}`. Each event is
  converted to OTLP and goes through the normal pipeline (normalized, priced, sampled, routed,
  redacted): traces, spans, generations and events become spans in Langfuse's own OTel dialect
  (the attributes the Langfuse SDK v3 writes, which the normalizer already reads), scores
  become `gen_ai.evaluation.result` log records joined to their trace and span.
* `GET /api/public/projects`: the one project of the key pair, so the SDK's `auth_check()` and
  Dify's project-id read work.

Answers are Langfuse's (web/src/pages/api/public/ingestion.ts and processEventBatch.ts of
langfuse/langfuse): 207 `{"successes": [{"id", "status": 201}], "errors": [{"id", "status",
"message", "error"}]}` per event (a bad event never fails the others; `sdk-log` events are
logged and listed in neither), 400 `{"message": "Invalid request data", "errors": [...]}` when
the body is not `{batch: [...]}`, 401 `{"error": "UnauthorizedError", "message": ...}` for a key
pair not in `auth.langfuse_keys` (any pair is taken when `auth` is off, as on the OTel path),
405 `{"error": "MethodNotAllowedError", ...}`; 429/503 with Retry-After under backpressure,
having accepted nothing.

Ids. A Langfuse trace id that is a UUID or 32 hex digits is the OTel trace id (dashes removed);
any other string is hashed (SHA-256, first 16 bytes). An observation id of 16 hex digits is the
span id, others are hashed (first 8 bytes). A trace-create becomes a root span whose id is
derived from the trace id; observations without a parent hang under it, and a score without an
observation points at it. The same Langfuse ids always give the same OTel ids, across requests
and across otelgate restarts.

Updates. Langfuse upserts observations by id; OTLP spans cannot change once sent. So, within a
request, events on one observation are merged (creates first, then updates, each by timestamp,
as Langfuse orders them). An observation still open at the end of a request (no `endTime`:
`span()` now, `.end()` later) is held for `receivers.http.langfuse_hold` (5 s) for its update
and then sent once, merged; held observations are flushed at shutdown. An update for an
observation not held (sent already, or never seen) is sent as a span of its own with the same
ids and `otelgate.langfuse.partial=true` (Langfuse's OTel ingestion merges spans by id).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ScopeLogs
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status

from gateway.batch import RequestContext
from gateway.errors import RateLimited, Refused
from gateway.logs import get_logger
from gateway.otlp import compression
from gateway.otlp.signals import SIGNALS, TRACES
from gateway.receivers.auth import Unauthenticated
from gateway.receivers.intake import Admission, Intake
from gateway.receivers.limits import LimitExceeded

INGESTION_PATH = "/api/public/ingestion"
PROJECTS_PATH = "/api/public/projects"
INTAKE = "langfuse.ingestion"  # resource attribute otelgate.intake
EVALUATION_EVENT = "gen_ai.evaluation.result"
PROTOCOL = "http"
LOGS = SIGNALS["logs"]

TRACE_EVENTS = frozenset(("trace-create",))
CREATE_EVENTS = {"span-create": "span", "generation-create": "generation", "event-create": "event",
                 "observation-create": None}  # legacy: the body says its type
UPDATE_EVENTS = {"span-update": "span", "generation-update": "generation", "observation-update": None}
SCORE_EVENTS = frozenset(("score-create",))
KNOWN_EVENTS = TRACE_EVENTS | set(CREATE_EVENTS) | set(UPDATE_EVENTS) | SCORE_EVENTS | {"sdk-log"}

_MAX_HELD = 10_000  # open observations held at once; past it the oldest is sent as it is
_GIVE_UP_S = 30.0  # a held observation the pipeline keeps refusing is dropped (counted) after this
_log = get_logger("receiver.langfuse")


# ---------------------------------------------------------------------------------------------
# Ids and values


def trace_id(lf_id: str) -> bytes:
    """The OTel trace id of a Langfuse trace id (see the module docstring)."""
    h = lf_id.replace("-", "")
    if len(h) == 32 and (raw := _hex(h)) is not None and any(raw):
        return raw
    return hashlib.sha256(b"otelgate.langfuse.trace:" + lf_id.encode()).digest()[:16]


def observation_span_id(lf_id: str) -> bytes:
    if len(lf_id) == 16 and (raw := _hex(lf_id)) is not None and any(raw):
        return raw
    return hashlib.sha256(b"otelgate.langfuse.observation:" + lf_id.encode()).digest()[:8]


def root_span_id(lf_trace_id: str) -> bytes:
    """The span id of the root span a trace-create becomes."""
    return hashlib.sha256(b"otelgate.langfuse.trace-root:" + lf_trace_id.encode()).digest()[:8]


def project_id(public_key: str | None) -> str:
    """The id `GET /api/public/projects` answers for a key pair: stable, and never the key itself."""
    if not public_key:
        return "otelgate"
    return "otelgate-" + hashlib.sha256(public_key.encode()).hexdigest()[:16]


def _hex(s: str) -> bytes | None:
    try:
        return bytes.fromhex(s) if s.isascii() and s.isalnum() else None  # fromhex alone skips spaces
    except ValueError:
        return None


def _nanos(value: Any) -> int | None:
    """Unix nanoseconds of an ISO 8601 time (naive means UTC, as Langfuse reads it); None if not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _text(value: Any) -> str:
    """A string attribute value: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _kv(key: str, value: Any) -> KeyValue:
    kv = KeyValue(key=key)
    _set(kv.value, value)
    return kv


def _add(attributes: Any, key: str, value: Any) -> None:
    """Append `key: value` to a repeated KeyValue field in place (no copy, unlike extend)."""
    kv = attributes.add()
    kv.key = key
    _set(kv.value, value)


def _set(v: AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int) and -(2 ** 63) <= value < 2 ** 63:
        v.int_value = value
    elif isinstance(value, float):
        v.double_value = value
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        v.array_value.values.extend(AnyValue(string_value=x) for x in value)
    else:
        v.string_value = _text(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# ---------------------------------------------------------------------------------------------
# Usage and cost: Langfuse v2 `usage` -> Langfuse's usage_details / cost_details (what its OTel
# ingestion reads, and the normalizer maps to the canonical attributes).

_V2_USAGE = {"input": "input", "output": "output", "total": "total",
             "promptTokens": "input", "completionTokens": "output", "totalTokens": "total",
             "prompt_tokens": "input", "completion_tokens": "output", "total_tokens": "total"}
_V2_COST = {"inputCost": "input", "outputCost": "output", "totalCost": "total"}


def usage_and_cost(body: dict[str, Any]) -> tuple[dict[str, int] | None, dict[str, float] | None]:
    """(usage_details, cost_details) of a generation body. Counts in a unit other than tokens
    (Dify's suggested-question generations count characters) are not token usage: left out."""
    details: dict[str, int] = {}
    costs: dict[str, float] = {}
    usage = body.get("usage")
    if isinstance(usage, dict):
        unit = usage.get("unit")
        if unit in (None, "TOKENS", "tokens"):
            for key, bucket in _V2_USAGE.items():
                v = usage.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and v == int(v):
                    details.setdefault(bucket, int(v))
        for key, bucket in _V2_COST.items():
            v = _number(usage.get(key))
            if v is not None and v >= 0:
                costs[bucket] = v
    for source, target, conv in ((body.get("usageDetails"), details, int), (body.get("costDetails"), costs, float)):
        if isinstance(source, dict):
            for key, v in source.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and isinstance(key, str):
                    target[key] = conv(v)  # type: ignore[index]
    return details or None, costs or None


# ---------------------------------------------------------------------------------------------
# Events -> spans and log records


class InvalidEvent(ValueError):
    """An event Langfuse would refuse (its 400 per-event answer); the message says why."""


@dataclass(slots=True)
class Observation:
    """One observation's merged body, while its events are collected."""

    kind: str  # span, generation, event
    body: dict[str, Any]
    partial: bool = False  # only updates seen: a later part of an observation sent before
    since: float = field(default_factory=time.monotonic)
    event_ids: list[str] = field(default_factory=list)

    def merge(self, body: dict[str, Any]) -> None:
        for key, value in body.items():
            if value is not None:
                self.body[key] = value

    @property
    def finished(self) -> bool:
        return self.kind == "event" or self.body.get("endTime") is not None


def _check(event: Any) -> tuple[str, str, dict[str, Any]]:
    """(event id, type, body) of a well-formed event, else `InvalidEvent`."""
    if not isinstance(event, dict):
        raise InvalidEvent("event must be an object")
    eid, etype, body = event.get("id"), event.get("type"), event.get("body")
    if not isinstance(eid, str) or not eid:
        raise InvalidEvent("id: Required string")
    if etype not in KNOWN_EVENTS:
        raise InvalidEvent(f"type: Invalid discriminator value {etype!r}")
    if not isinstance(event.get("timestamp"), str):
        raise InvalidEvent("timestamp: Required string")
    if not isinstance(body, dict):
        raise InvalidEvent("body: Expected object")
    if etype == "sdk-log":
        return eid, etype, body
    bid = body.get("id")
    if bid is not None and not isinstance(bid, str):
        raise InvalidEvent("body.id: Expected string")
    if etype in UPDATE_EVENTS and not bid:
        raise InvalidEvent("body.id: Required for an update")
    for key in ("traceId", "parentObservationId", "name", "observationId"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise InvalidEvent(f"body.{key}: Expected string")
    for key in ("startTime", "endTime", "completionStartTime", "timestamp"):
        if body.get(key) is not None and _nanos(body[key]) is None:
            raise InvalidEvent(f"body.{key}: Invalid datetime")
    if etype in SCORE_EVENTS:
        if not isinstance(body.get("name"), str) or not body["name"]:
            raise InvalidEvent("body.name: Required string")
        value = body.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InvalidEvent("body.value: Expected number or string")
        if not body.get("traceId") and not body.get("sessionId"):
            raise InvalidEvent("body.traceId: a score needs a traceId (or a sessionId)")
    if etype in CREATE_EVENTS and not bid and etype != "event-create":
        raise InvalidEvent("body.id: Required string")
    return eid, etype, body


def _trace_span(span: Span, body: dict[str, Any], at: int) -> None:
    """Fill `span` (added in place to its request: no copy) with the trace's root span."""
    lf_id = body["id"]
    span.trace_id, span.span_id, span.name = trace_id(lf_id), root_span_id(lf_id), body.get("name") or "trace"
    span.kind, span.start_time_unix_nano, span.end_time_unix_nano = Span.SPAN_KIND_INTERNAL, at, at
    attrs = span.attributes
    _add(attrs, "otelgate.langfuse.trace_id", lf_id)
    for key, attr in (("name", "langfuse.trace.name"), ("userId", "user.id"), ("sessionId", "session.id"),
                      ("release", "langfuse.release"), ("version", "langfuse.version"),
                      ("environment", "langfuse.environment"), ("public", "langfuse.trace.public"),
                      ("input", "langfuse.trace.input"), ("output", "langfuse.trace.output")):
        if body.get(key) is not None:
            _add(attrs, attr, body[key])
    tags = body.get("tags")
    if isinstance(tags, list) and tags:
        _add(attrs, "langfuse.trace.tags", [str(t) for t in tags])
    _metadata(attrs, "langfuse.trace.metadata", body.get("metadata"))


def _metadata(attributes: Any, prefix: str, metadata: Any) -> None:
    """Langfuse's OTel form: one `<prefix>.<key>` attribute per top-level key."""
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if value is not None:
                _add(attributes, f"{prefix}.{key}", value)
    elif metadata is not None:
        _add(attributes, prefix, metadata)


def _observation_span(span: Span, obs: Observation, at: int) -> None:
    """Fill `span` (added in place to its request) with an observation's merged body."""
    b = obs.body
    lf_id = b.get("id") or obs.event_ids[0]
    lf_trace = b.get("traceId") or lf_id
    start = _nanos(b.get("startTime")) or at
    end = _nanos(b.get("endTime")) or start
    parent = b.get("parentObservationId")
    span.trace_id, span.span_id = trace_id(lf_trace), observation_span_id(lf_id)
    span.parent_span_id = observation_span_id(parent) if parent else root_span_id(lf_trace)
    span.name, span.kind = b.get("name") or obs.kind, Span.SPAN_KIND_INTERNAL
    span.start_time_unix_nano, span.end_time_unix_nano = start, max(end, start)
    attrs = span.attributes
    _add(attrs, "langfuse.observation.type", obs.kind)
    _add(attrs, "otelgate.langfuse.trace_id", lf_trace)
    _add(attrs, "otelgate.langfuse.observation_id", lf_id)
    if obs.partial:
        _add(attrs, "otelgate.langfuse.partial", True)
    for key, attr in (("input", "langfuse.observation.input"), ("output", "langfuse.observation.output"),
                      ("level", "langfuse.observation.level"), ("statusMessage", "langfuse.observation.status_message"),
                      ("version", "langfuse.version"), ("environment", "langfuse.environment"),
                      ("completionStartTime", "langfuse.observation.completion_start_time"),
                      ("model", "langfuse.observation.model.name"), ("promptName", "langfuse.observation.prompt.name"),
                      ("promptVersion", "langfuse.observation.prompt.version")):
        value = b.get(key)
        if value is not None and value != "":
            _add(attrs, attr, value)
    if isinstance(b.get("modelParameters"), dict):
        _add(attrs, "langfuse.observation.model.parameters", b["modelParameters"])
    usage, cost = usage_and_cost(b)
    if usage:
        _add(attrs, "langfuse.observation.usage_details", usage)
    if cost:
        _add(attrs, "langfuse.observation.cost_details", cost)
    _metadata(attrs, "langfuse.observation.metadata", b.get("metadata"))
    metadata = b.get("metadata")
    if obs.kind == "generation" and isinstance(metadata, dict):
        # Dify's generations name their provider only in the metadata (`model_provider`, a plugin
        # id such as langgenius/openai/openai, which the normalizer maps to the canonical name).
        provider = metadata.get("model_provider")
        if isinstance(provider, str) and provider:
            _add(attrs, "gen_ai.provider.name", provider)
    if b.get("level") == "ERROR":
        span.status.code = Status.STATUS_CODE_ERROR
        if isinstance(b.get("statusMessage"), str):
            span.status.message = b["statusMessage"]


def score_record(record: LogRecord, body: dict[str, Any], at: int) -> None:
    """A score as the GenAI evaluation event, joined to its trace (and observation, if any).

    A numeric value is `gen_ai.evaluation.score.value`; a categorical one (a string) is the
    label; a BOOLEAN score (1/0) is both (label `true`/`false`). The comment is the body, which
    redaction treats as content.
    """
    lf_trace = body.get("traceId")
    record.time_unix_nano, record.observed_time_unix_nano = _nanos(body.get("timestamp")) or at, at
    record.event_name, record.severity_number, record.severity_text = EVALUATION_EVENT, 9, "INFO"
    if lf_trace:
        record.trace_id = trace_id(lf_trace)
        obs = body.get("observationId")
        record.span_id = observation_span_id(obs) if obs else root_span_id(lf_trace)
    value, data_type = body.get("value"), body.get("dataType")
    attrs = record.attributes
    _add(attrs, "gen_ai.evaluation.name", body["name"])
    number = _number(value)
    if number is not None:
        _add(attrs, "gen_ai.evaluation.score.value", number)
        if data_type == "BOOLEAN":
            _add(attrs, "gen_ai.evaluation.score.label", "true" if number else "false")
    else:
        _add(attrs, "gen_ai.evaluation.score.label", str(value))
    for key, attr in (("id", "langfuse.score.id"), ("dataType", "langfuse.score.data_type"),
                      ("source", "langfuse.score.source"), ("configId", "langfuse.score.config_id"),
                      ("sessionId", "session.id"), ("environment", "langfuse.environment"),
                      ("traceId", "otelgate.langfuse.trace_id"), ("observationId", "otelgate.langfuse.observation_id")):
        if body.get(key) is not None:
            _add(attrs, attr, body[key])
    _metadata(attrs, "langfuse.score.metadata", body.get("metadata"))
    if isinstance(body.get("comment"), str) and body["comment"]:
        record.body.string_value = body["comment"]


def _resource_attributes(context: RequestContext, metadata: Any) -> list[KeyValue]:
    public_key = context.credentials[0] if context.credentials else None
    attrs = [_kv("otelgate.intake", INTAKE), _kv("service.name", f"langfuse:{public_key}" if public_key else "langfuse")]
    if isinstance(metadata, dict):
        if isinstance(metadata.get("sdk_name"), str):
            attrs.append(_kv("telemetry.sdk.name", f"langfuse-{metadata['sdk_name']}"))
        if isinstance(metadata.get("sdk_version"), str):
            attrs.append(_kv("telemetry.sdk.version", metadata["sdk_version"]))
        if isinstance(metadata.get("sdk_integration"), str):
            attrs.append(_kv("langfuse.sdk.integration", metadata["sdk_integration"]))
    return attrs


def traces_request(resource: list[KeyValue]) -> tuple[ExportTraceServiceRequest, Any]:
    """An empty request with this resource, and its spans field to fill in place."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(resource)
    ss = rs.scope_spans.add()
    ss.scope.name = "langfuse.ingestion"
    return request, ss.spans


def logs_request(resource: list[KeyValue]) -> tuple[ExportLogsServiceRequest, Any]:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.extend(resource)
    sl = rl.scope_logs.add()
    sl.scope.name = "langfuse.ingestion"
    return request, sl.log_records


@dataclass(slots=True)
class Converted:
    successes: list[str]
    errors: list[dict[str, Any]]
    spans: Any  # ready now: the repeated Span field given to convert
    records: Any  # the repeated LogRecord field
    held: dict[str, Observation]  # open observations, by Langfuse observation id


def convert(batch: list[Any], held: Callable[[str], Observation | None], spans: Any = None, records: Any = None,
            now_ns: int | None = None) -> Converted:
    """Langfuse events -> spans (added to `spans`, a request's repeated Span field), log records
    (to `records`) and observations still open.

    `held(observation_id)` returns (and takes over) an observation an earlier request left open.
    """
    at = now_ns or time.time_ns()
    out = Converted([], [], spans if spans is not None else ScopeSpans().spans,
                    records if records is not None else ScopeLogs().log_records, {})
    checked: list[tuple[str, str, dict[str, Any], int]] = []
    for event in batch:
        try:
            eid, etype, body = _check(event)
        except InvalidEvent as exc:
            eid = event.get("id") if isinstance(event, dict) and isinstance(event.get("id"), str) else "unknown"
            out.errors.append({"id": eid, "status": 400, "message": "Invalid request data", "error": str(exc)})
            continue
        if etype == "sdk-log":
            _log.info("langfuse sdk-log event", log=_text(body.get("log"))[:500])
            continue
        checked.append((eid, etype, body, _nanos(event["timestamp"]) or at))
    # Langfuse's order: every non-update by timestamp, then the updates by timestamp.
    checked.sort(key=lambda e: (e[1] in UPDATE_EVENTS, e[3]))
    traces: dict[str, tuple[dict[str, Any], int]] = {}
    observations: dict[str, Observation] = {}
    for eid, etype, body, ts in checked:
        out.successes.append(eid)
        if etype in TRACE_EVENTS:
            lf_id = body.get("id") or eid
            merged, _ = traces.get(lf_id, ({}, ts))
            merged.update({k: v for k, v in body.items() if v is not None}, id=lf_id)
            traces[lf_id] = (merged, min(ts, _nanos(body.get("timestamp")) or ts))
        elif etype in SCORE_EVENTS:
            score_record(out.records.add(), {**body, "id": body.get("id") or eid}, ts)
        else:
            lf_id = body.get("id") or eid
            kind = CREATE_EVENTS.get(etype) or UPDATE_EVENTS.get(etype) or _legacy_kind(body)
            obs = observations.get(lf_id)
            if obs is None:
                obs = held(lf_id)
                if obs is None:
                    obs = Observation(kind, {"id": lf_id}, partial=etype in UPDATE_EVENTS)
                observations[lf_id] = obs
            if etype in CREATE_EVENTS:
                obs.partial = False
                if obs.kind != kind and kind in ("generation", "event"):
                    obs.kind = kind
            obs.merge(body)
            if "startTime" not in obs.body and etype in CREATE_EVENTS:
                obs.body["startTime"] = event_time(ts)
            obs.event_ids.append(eid)
    for body, ts in traces.values():
        _trace_span(out.spans.add(), body, _nanos(body.get("timestamp")) or ts)
    for lf_id, obs in observations.items():
        if obs.finished or obs.partial:
            _observation_span(out.spans.add(), obs, at)
        else:
            out.held[lf_id] = obs
    return out


def event_time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat()


def _legacy_kind(body: dict[str, Any]) -> str:
    kind = str(body.get("type") or "span").lower()
    return kind if kind in ("span", "generation", "event") else "span"


# ---------------------------------------------------------------------------------------------
# The HTTP handlers


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


@dataclass(slots=True)
class _Held:
    observation: Observation
    context: RequestContext
    resource: list[KeyValue]


class LangfuseIngestion:
    """The two routes, and the observations held open between requests."""

    def __init__(self, intake: Intake, max_body_bytes: int, hold_s: float = 5.0, admission: Admission | None = None) -> None:
        self._intake = intake
        self._admission = admission  # the HTTP receiver's bound on requests and bytes in progress
        self._max_body_bytes = max_body_bytes
        self._hold_s = hold_s
        self._held: dict[tuple[str | None, str], _Held] = {}  # (public key, observation id), oldest first
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", INGESTION_PATH, self.ingest)
        app.router.add_route("*", PROJECTS_PATH, self.projects)

    def _identify(self, request: web.Request) -> RequestContext | web.Response:
        try:
            return self._intake.identify_langfuse(PROTOCOL, request.headers.get)
        except Unauthenticated as exc:
            return _json(401, {"error": "UnauthorizedError", "message": str(exc)})

    async def projects(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return _json(405, {"error": "MethodNotAllowedError", "message": "Method not allowed"})
        context = self._identify(request)
        if isinstance(context, web.Response):
            return context
        public_key = context.credentials[0] if context.credentials else None
        name = context.tenant or "otelgate"
        return _json(200, {"data": [{"id": project_id(public_key), "name": name, "metadata": {},
                                     "organization": {"id": "otelgate", "name": "otelgate"}}]})

    async def ingest(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            return await self._ingest(request)
        finally:
            self._intake.observe_latency(PROTOCOL, time.perf_counter() - started)

    async def _ingest(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return _json(405, {"error": "MethodNotAllowedError", "message": "Method not allowed"})
        context = self._identify(request)
        if isinstance(context, web.Response):
            return context
        admission, size = self._admission, request.content_length or 0
        if admission is not None and not admission.enter(size):
            self._intake.overloaded(PROTOCOL)
            return _json(503, {"message": "otelgate is at its limit of requests in progress "
                                          "(receivers.http.max_in_flight_requests / max_in_flight_bytes); retry later"},
                         {"Retry-After": "1"})
        try:
            return await self._read_and_accept(request, context)
        finally:
            if admission is not None:
                admission.leave(size)

    async def _read_and_accept(self, request: web.Request, context: RequestContext) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
        limit = self._max_body_bytes
        try:
            body = compression.decompress(await request.read(), encoding, limit)
        except (web.HTTPRequestEntityTooLarge, compression.TooLarge):
            self._intake.malformed(PROTOCOL, "too_large")
            return _json(413, {"message": f"Request body larger than {limit} bytes (receivers.http.max_body_bytes)"})
        except (compression.CorruptBody, KeyError) as exc:
            self._intake.malformed(PROTOCOL, "malformed")
            return _json(400, {"message": "Invalid request data", "errors": [f"cannot decode {encoding} body: {exc}"]})
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self._intake.malformed(PROTOCOL, "malformed")
            return _json(400, {"message": "Invalid request data", "errors": [f"body is not JSON: {exc}"]})
        if not isinstance(payload, dict) or not isinstance(payload.get("batch"), list):
            self._intake.malformed(PROTOCOL, "malformed")
            return _json(400, {"message": "Invalid request data", "errors": ["batch: Required array"]})
        public_key = context.credentials[0] if context.credentials else None
        taken: dict[str, _Held] = {}

        def held(lf_id: str) -> Observation | None:
            entry = self._held.pop((public_key, lf_id), None)
            if entry is None:
                return None
            taken[lf_id] = entry
            return entry.observation

        resource = _resource_attributes(context, payload.get("metadata"))
        traces, spans = traces_request(resource)
        logs, records = logs_request(resource)
        out = convert(payload["batch"], held, spans, records)
        try:
            if len(records):
                await self._intake.accept(logs, context, None, LOGS)
            if len(spans):
                await self._intake.accept(traces, context, None, TRACES)
        except (Refused, LimitExceeded) as exc:
            for lf_id, entry in taken.items():  # nothing of this request was kept: back as they were
                self._held[(public_key, lf_id)] = entry
            if isinstance(exc, LimitExceeded):
                return _json(413 if exc.too_large else 400, {"message": str(exc)})
            status = 429 if isinstance(exc, RateLimited) else 503
            retry_after = str(max(1, int(exc.retry_after + 0.999)))
            return _json(status, {"message": str(exc)}, {"Retry-After": retry_after})
        for lf_id, obs in out.held.items():
            self._hold((public_key, lf_id), _Held(obs, context, resource))
        if out.errors:
            self._intake.rejected(PROTOCOL, "invalid_langfuse_event", len(out.errors))
        if not len(records) and not len(spans):  # nothing reached the pipeline: count the request here
            self._intake.malformed(PROTOCOL, "partial" if out.errors else "accepted")
        return _json(207, {"successes": [{"id": i, "status": 201} for i in out.successes], "errors": out.errors})

    # -- observations held open --------------------------------------------------------------

    def _hold(self, key: tuple[str | None, str], entry: _Held) -> None:
        self._held[key] = entry
        if len(self._held) > _MAX_HELD:
            oldest = next(iter(self._held))
            self._release([self._held.pop(oldest)])
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._expire())

    async def _expire(self) -> None:
        while self._held:
            await asyncio.sleep(min(1.0, max(self._hold_s / 4, 0.05)))
            now = time.monotonic()
            due = [k for k, e in self._held.items() if now - e.observation.since >= self._hold_s]
            await self._send([self._held.pop(k) for k in due])

    def _release(self, entries: list[_Held]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(entries))
        self._sending.add(task)  # a task nobody references may be collected before it ran
        task.add_done_callback(self._sending.discard)

    async def _send(self, entries: list[_Held], final: bool = False) -> None:
        """Send held observations as they are (still open: their end is their start)."""
        at = time.time_ns()
        for entry in entries:
            request, spans = traces_request(entry.resource)
            _observation_span(spans.add(), entry.observation, at)
            try:
                await self._intake.accept(request, entry.context, None, TRACES)
            except Refused as exc:
                age = time.monotonic() - entry.observation.since
                if not final and age < self._hold_s + _GIVE_UP_S:
                    key = (entry.context.credentials[0] if entry.context.credentials else None,
                           entry.observation.body.get("id", ""))
                    self._held.setdefault(key, entry)  # try again on the next tick
                    continue
                _log.warning("langfuse observation dropped: the pipeline refused it", reason=exc.reason,
                             observation=str(entry.observation.body.get("id")))
            except LimitExceeded as exc:
                _log.warning("langfuse observation dropped: over a limit", reason=exc.limit)

    async def close(self) -> None:
        """Send every observation still held (at shutdown, before the sinks drain)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        entries, self._held = list(self._held.values()), {}
        await self._send(entries, final=True)
