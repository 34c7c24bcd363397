"""What the Langfuse sink sends: spans with Langfuse's own attributes, in exports small enough for it.

`prepare` merges a sink batch's requests into ONE new request (a copy: the batch's requests are
shared with the other sinks of the route and must not change) and writes on each span only the
attributes Langfuse reads and the span lacks:

* on each LLM call (`otelgate.llm.call=true`): `langfuse.observation.type` (generation, or
  embedding), `langfuse.observation.model.name`, `langfuse.observation.usage_details` and
  `langfuse.observation.cost_details` (JSON strings) from the canonical attributes;
* on every span: `langfuse.user.id` / `langfuse.session.id` from whatever the dialect said,
  `langfuse.environment` / `langfuse.release` from the config or the resource.

`split` cuts the result into serialized exports under Langfuse's request size limit without ever
separating the spans of one trace.

Langfuse facts this relies on (langfuse/langfuse, OTel ingestion):

* attribute names: `packages/shared/src/server/otel/attributes.ts` (`LangfuseOtelSpanAttributes`):
  `user.id` / `session.id` are Langfuse's own trace keys and `langfuse.user.id` /
  `langfuse.session.id` the documented compatibility aliases it still reads;
* usage details are *disjoint buckets*: Langfuse's docs ("Token & Cost Tracking") sum every key
  that contains `input` into input usage (and `output` likewise) and sum all keys into a total
  when no `total` is sent; its own OTel mapping of `gen_ai.usage.*`
  (`OtelIngestionProcessor.cacheUsage.test.ts`, `...usageDetails.test.ts`) writes
  `input` = input minus cache reads and writes, `input_cached_tokens` (cache reads),
  `input_cache_creation` (cache writes), `output` = output minus reasoning,
  `output_reasoning_tokens`. We write the same keys with the same meaning, so the canonical
  (semconv, inclusive) counts are `input + input_cached_tokens + input_cache_creation` and
  `output + output_reasoning_tokens`, and `total` is the canonical input + output;
* ingested cost is authoritative over Langfuse's own price table (docs: "Ingested usage and cost
  are prioritized over inferred usage and cost"), so sending otelgate's cost makes both tools show
  the same number;
* `langfuse.environment` must match `^(?!langfuse)[a-z0-9-_]+$` (at most 40 characters): a value
  derived from the resource that does not is not sent (Langfuse would reject or rename it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from gateway.llm.call import (
    CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, COST, COST_INPUT, COST_OUTPUT, INPUT_TOKENS, LLM_CALL, OPERATION,
    OUTPUT_TOKENS, REASONING_TOKENS, REQUEST_MODEL, RESPONSE_MODEL,
)
from gateway.otlp.wire import encode_varint

# Langfuse's attributes.
LF_TYPE = "langfuse.observation.type"
LF_MODEL = "langfuse.observation.model.name"
LF_USAGE = "langfuse.observation.usage_details"
LF_COST = "langfuse.observation.cost_details"
LF_USER = "langfuse.user.id"
LF_SESSION = "langfuse.session.id"
LF_ENVIRONMENT = "langfuse.environment"
LF_RELEASE = "langfuse.release"

# Langfuse's usage buckets (see the module docstring).
USAGE_INPUT = "input"
USAGE_OUTPUT = "output"
USAGE_TOTAL = "total"
USAGE_CACHE_READ = "input_cached_tokens"
USAGE_CACHE_WRITE = "input_cache_creation"
USAGE_REASONING = "output_reasoning_tokens"

# Where each dialect puts the user and the session, in the order read (Langfuse's own keys first:
# what the application told Langfuse wins).
USER_KEYS = (LF_USER, "user.id", "enduser.id", "gen_ai.user", "llm.user", "traceloop.association.properties.user_id",
             "ai.telemetry.metadata.userId", "gen_ai.user.id")
SESSION_KEYS = (LF_SESSION, "session.id", "gen_ai.conversation.id", "traceloop.association.properties.session_id",
                "ai.telemetry.metadata.sessionId")
_ENV_RESOURCE_KEYS = (LF_ENVIRONMENT, "deployment.environment.name", "deployment.environment")
_RELEASE_RESOURCE_KEYS = (LF_RELEASE, "service.version")
_ENVIRONMENT_RE = re.compile(r"^(?!langfuse)[a-z0-9_-]{1,40}$")

_COUNT_KEYS = (INPUT_TOKENS, OUTPUT_TOKENS, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, REASONING_TOKENS)
_COST_KEYS = (COST, COST_INPUT, COST_OUTPUT)
_SPAN_KEYS = frozenset(USER_KEYS + SESSION_KEYS + (LF_ENVIRONMENT, LF_RELEASE, LLM_CALL))
_CALL_KEYS = frozenset((LF_TYPE, LF_MODEL, LF_USAGE, LF_COST, OPERATION, REQUEST_MODEL, RESPONSE_MODEL)
                       + _COUNT_KEYS + _COST_KEYS)
_RESOURCE_KEYS = frozenset(USER_KEYS + SESSION_KEYS + _ENV_RESOURCE_KEYS + _RELEASE_RESOURCE_KEYS)


# ---------------------------------------------------------------------------------------------
# Attribute values: never raise, whatever the emitter put there.

def _text(v: AnyValue) -> str | None:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value or None
    if kind == "int_value":
        return str(v.int_value)
    return None


def _int(v: AnyValue | None) -> int | None:
    if v is None:
        return None
    kind = v.WhichOneof("value")
    if kind == "int_value":
        return v.int_value
    if kind == "double_value" and math.isfinite(v.double_value) and v.double_value == int(v.double_value):
        return int(v.double_value)
    if kind == "string_value":
        try:
            return int(v.string_value)
        except ValueError:
            return None
    return None


def _float(v: AnyValue | None) -> float | None:
    if v is None:
        return None
    kind = v.WhichOneof("value")
    if kind == "double_value":
        return v.double_value if math.isfinite(v.double_value) else None
    if kind == "int_value":
        return float(v.int_value)
    if kind == "string_value":
        try:
            f = float(v.string_value)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _first(found: dict[str, KeyValue], keys: Sequence[str]) -> str | None:
    for key in keys:
        kv = found.get(key)
        if kv is not None and (t := _text(kv.value)):
            return t
    return None


def _set(span: Span, found: dict[str, Any], key: str, value: str) -> None:
    """Write `key`: in place when the span has it (its KeyValue is in `found`), else appended."""
    kv = found.get(key)
    if kv is not None:
        kv.value.string_value = value  # clears any other kind the emitter used
    else:
        span.attributes.add(key=key).value.string_value = value


# ---------------------------------------------------------------------------------------------
# prepare

def _usage_details(counts: dict[str, int | None]) -> dict[str, int] | None:
    inp, out = counts[INPUT_TOKENS], counts[OUTPUT_TOKENS]
    read, write, reasoning = counts[CACHE_READ_TOKENS], counts[CACHE_WRITE_TOKENS], counts[REASONING_TOKENS]
    if inp is None and out is None:
        return None
    usage: dict[str, int] = {}
    if inp is not None:
        usage[USAGE_INPUT] = max(0, inp - (read or 0) - (write or 0))
        if read:
            usage[USAGE_CACHE_READ] = read
        if write:
            usage[USAGE_CACHE_WRITE] = write
    if out is not None:
        usage[USAGE_OUTPUT] = max(0, out - (reasoning or 0))
        if reasoning:
            usage[USAGE_REASONING] = reasoning
    # A total only from counts present (never a guess): the canonical input + output.
    usage[USAGE_TOTAL] = (inp or 0) + (out or 0)
    return usage


def _cost_details(costs: dict[str, float | None]) -> dict[str, float] | None:
    total, cin, cout = costs[COST], costs[COST_INPUT], costs[COST_OUTPUT]
    if total is None:
        return None
    details: dict[str, float] = {}
    # Langfuse's cost buckets are disjoint like its usage buckets: input and output go along only
    # when they make up the total (a reported cost may split differently, e.g. a separate
    # cache-read cost: then only the total, which Langfuse takes as given).
    if cin is not None and cout is not None and math.isclose(cin + cout, total, rel_tol=1e-9, abs_tol=1e-15):
        details[USAGE_INPUT] = cin
        details[USAGE_OUTPUT] = cout
    details[USAGE_TOTAL] = total
    return details


def _map_call(span: Span, found: dict[str, Any]) -> None:
    if LF_TYPE not in found:
        operation = _text(found[OPERATION].value) if OPERATION in found else None
        _set(span, found, LF_TYPE, "embedding" if operation == "embeddings" else "generation")
    if LF_MODEL not in found:
        model = _first(found, (RESPONSE_MODEL, REQUEST_MODEL))
        if model:
            _set(span, found, LF_MODEL, model)
    # Usage and cost are rewritten even when the Langfuse SDK set them: its usage_details is in the
    # provider's own shape (OpenAI prompt_tokens + *_details, Anthropic input_tokens excluding the
    # cache, or whatever keys an application declared) and its cost_details is an estimate or
    # zeros. The canonical counts and otelgate's cost are what every other sink of the route shows,
    # so Langfuse shows the same numbers. Without canonical values the SDK's stay untouched.
    usage = _usage_details({k: _int(found[k].value) if k in found else None for k in _COUNT_KEYS})
    if usage is not None:
        _set(span, found, LF_USAGE, orjson.dumps(usage).decode())
    cost = _cost_details({k: _float(found[k].value) if k in found else None for k in _COST_KEYS})
    if cost is not None:
        _set(span, found, LF_COST, orjson.dumps(cost).decode())


def prepare(requests: Sequence[ExportTraceServiceRequest], *, environment: str | None,
            release: str | None) -> ExportTraceServiceRequest:
    """A new request holding every span of `requests`, with the Langfuse attributes written (see module doc)."""
    out = ExportTraceServiceRequest()
    for request in requests:
        out.MergeFrom(request)  # deep copy: edits below never reach the shared originals

    # Pass 1: read the few keys needed, once per span. User and session are trace-level in
    # Langfuse, and SDKs set them on one span only (the `app` span, or the call that passed a
    # `user` to the provider): a span without them gets the trace's (its root's first), then the
    # resource's, so every observation of a trace is attributed alike.
    spans: list[tuple[Span, dict[str, Any], int]] = []
    resources: list[tuple[str | None, str | None, str | None, str | None]] = []
    trace_user: dict[bytes, tuple[bool, str]] = {}
    trace_session: dict[bytes, tuple[bool, str]] = {}
    for ri, rs in enumerate(out.resource_spans):
        rattrs = {kv.key: kv for kv in rs.resource.attributes if kv.key in _RESOURCE_KEYS}
        env = _first(rattrs, (LF_ENVIRONMENT,)) or environment or _first(rattrs, _ENV_RESOURCE_KEYS[1:])
        if env is not None and env != environment and not _ENVIRONMENT_RE.match(env):
            env = None
        rel = _first(rattrs, (LF_RELEASE,)) or release or _first(rattrs, _RELEASE_RESOURCE_KEYS[1:])
        resources.append((_first(rattrs, USER_KEYS), _first(rattrs, SESSION_KEYS), env, rel))
        for ss in rs.scope_spans:
            for span in ss.spans:
                found: dict[str, Any] = {}
                call = False
                for kv in span.attributes:
                    key = kv.key
                    if key in _SPAN_KEYS:
                        if key == LLM_CALL:
                            call = kv.value.WhichOneof("value") == "bool_value" and kv.value.bool_value
                        else:
                            found[key] = kv
                    if key in _CALL_KEYS:
                        found[key] = kv
                if call:
                    found[LLM_CALL] = True
                root = not span.parent_span_id
                for keys, per_trace in ((USER_KEYS, trace_user), (SESSION_KEYS, trace_session)):
                    value = _first(found, keys)
                    if value is not None:
                        known = per_trace.get(span.trace_id)
                        if known is None or (root and not known[0]):
                            per_trace[span.trace_id] = (root, value)
                spans.append((span, found, ri))

    # Pass 2: write.
    for span, found, ri in spans:
        r_user, r_session, env, rel = resources[ri]
        if found.pop(LLM_CALL, False):
            _map_call(span, found)
        for key, keys, per_trace, r_value in ((LF_USER, USER_KEYS, trace_user, r_user),
                                              (LF_SESSION, SESSION_KEYS, trace_session, r_session)):
            if key in found:
                continue  # what the application told Langfuse stays
            own = _first(found, keys)
            value = own or (per_trace[span.trace_id][1] if span.trace_id in per_trace else None) or r_value
            if value:
                _set(span, found, key, value)
        if env and LF_ENVIRONMENT not in found:
            _set(span, found, LF_ENVIRONMENT, env)
        if rel and LF_RELEASE not in found:
            _set(span, found, LF_RELEASE, rel)
    return out


# ---------------------------------------------------------------------------------------------
# split

def _field(tag: bytes, body: bytes) -> bytes:
    return tag + encode_varint(len(body)) + body


_RS_TAG = b"\x0a"  # ExportTraceServiceRequest.resource_spans = 1
_SS_TAG = b"\x12"  # ResourceSpans.scope_spans = 2
_SPAN_TAG = b"\x12"  # ScopeSpans.spans = 2
_MAX_FRAMING = 1 + 5  # a tag and a length varint (lengths < 2**35)


def split(request: ExportTraceServiceRequest, max_bytes: int) -> list[bytes]:
    """Serialized exports of `request`, each at most `max_bytes`, every trace whole in one of them.

    A trace is never cut: Langfuse builds a trace from its spans, and a piece holding children
    without their root (or a retry of one piece only) would show a broken tree. A trace larger
    than `max_bytes` goes alone in one piece, over the limit. Each piece repeats the resource and
    scope of its spans; order is kept. Pieces are encoded by concatenating the spans' own bytes
    with protobuf framing (no message copies), which is byte for byte what serializing the
    equivalent request gives.
    """
    if request.ByteSize() <= max_bytes:
        return [request.SerializeToString()]

    # Per resource and scope: header bytes (fields before/after the repeated children).
    rs_heads: list[tuple[bytes, bytes]] = []
    ss_heads: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    traces: dict[bytes, list[tuple[int, int, int, bytes]]] = {}  # trace id -> (ri, si, index, span bytes)
    index = 0
    for ri, rs in enumerate(request.resource_spans):
        rs_heads.append((ResourceSpans(resource=rs.resource).SerializeToString() if rs.HasField("resource") else b"",
                         ResourceSpans(schema_url=rs.schema_url).SerializeToString()))
        for si, ss in enumerate(rs.scope_spans):
            ss_heads[(ri, si)] = (ScopeSpans(scope=ss.scope).SerializeToString() if ss.HasField("scope") else b"",
                                  ScopeSpans(schema_url=ss.schema_url).SerializeToString())
            for span in ss.spans:
                traces.setdefault(span.trace_id, []).append((ri, si, index, span.SerializeToString()))
                index += 1

    def rs_cost(ri: int) -> int:
        return _MAX_FRAMING + len(rs_heads[ri][0]) + len(rs_heads[ri][1])

    def ss_cost(key: tuple[int, int]) -> int:
        return _MAX_FRAMING + len(ss_heads[key][0]) + len(ss_heads[key][1])

    # Greedy packing of whole traces, on an upper bound of the encoded size (framing counted at
    # its largest), so a piece is never over the limit unless one trace alone is.
    pieces: list[list[tuple[int, int, int, bytes]]] = []
    current: list[tuple[int, int, int, bytes]] = []
    size, seen_rs, seen_ss = 0, set(), set()
    for spans in traces.values():
        add, new_rs, new_ss = 0, set(), set()
        for ri, si, _, body in spans:
            add += _MAX_FRAMING + len(body)
            if ri not in seen_rs and ri not in new_rs:
                new_rs.add(ri)
                add += rs_cost(ri)
            if (ri, si) not in seen_ss and (ri, si) not in new_ss:
                new_ss.add((ri, si))
                add += ss_cost((ri, si))
        if current and size + add > max_bytes:
            pieces.append(current)
            current, size, seen_rs, seen_ss = [], 0, set(), set()
            add = sum(_MAX_FRAMING + len(b) for *_, b in spans)
            add += sum(rs_cost(ri) for ri in {s[0] for s in spans})
            add += sum(ss_cost(k) for k in {(s[0], s[1]) for s in spans})
        current.extend(spans)
        size += add
        seen_rs.update(s[0] for s in spans)
        seen_ss.update((s[0], s[1]) for s in spans)
    if current:
        pieces.append(current)
    return [_encode(piece, rs_heads, ss_heads) for piece in pieces]


def _encode(piece: list[tuple[int, int, int, bytes]], rs_heads: list[tuple[bytes, bytes]],
            ss_heads: dict[tuple[int, int], tuple[bytes, bytes]]) -> bytes:
    grouped: dict[int, dict[int, list[tuple[int, bytes]]]] = {}
    for ri, si, index, body in piece:
        grouped.setdefault(ri, {}).setdefault(si, []).append((index, body))
    out = []
    for ri in sorted(grouped):
        scopes = []
        for si in sorted(grouped[ri]):
            head, tail = ss_heads[(ri, si)]
            bodies = b"".join(_field(_SPAN_TAG, body) for _, body in sorted(grouped[ri][si]))
            scopes.append(_field(_SS_TAG, head + bodies + tail))
        head, tail = rs_heads[ri]
        out.append(_field(_RS_TAG, head + b"".join(scopes) + tail))
    return b"".join(out)
