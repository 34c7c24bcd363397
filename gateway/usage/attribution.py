"""Who each LLM call belongs to: tenant, app, user, session and environment, from ordered sources.

Every dialect names these differently (OpenInference `user.id`, Langfuse `langfuse.user.id`,
the Vercel AI SDK `ai.telemetry.metadata.userId`, Dify keys inside the OpenInference `metadata`
JSON ...), so each dimension is resolved from a list of sources, the first that has a value
winning. A source is written

* `key`: the attribute `key` of the call span, else of its resource;
* `span:key` / `resource:key`: only there;
* `key#/a/b`: inside the JSON object (a JSON string or an OTLP map) held by attribute `key`,
  the member at the JSON Pointer (RFC 6901) `/a/b`; `metadata#/app_id` is Dify's app id.

The tenant is first of all the one the request's API key (or `x-otelgate-tenant` header) named;
its sources only apply when there is none. The service is `service.name`, as everywhere.

Only LLM call spans (`batch.llm_calls`) are read, and their attributes not even once more: the
normalizer's one pass keeps the keys some source names (`span_keys`) in `LlmCall.attributes`.
Resource attributes are read once per resource per batch, and a JSON value is parsed at most
once per call. Values are strings (numbers are written as text), cut to
`MAX_VALUE` characters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from pydantic import Field, field_validator

from gateway.configtypes import StrictModel
from gateway.llm.call import LlmCall

DIMENSIONS = ("tenant", "app", "user", "session", "environment")
MAX_VALUE = 256  # characters kept of an attributed value (ids, not documents)
MAX_JSON = 64 * 1024  # a JSON attribute longer than this is not parsed (metadata, not payloads)

# Written on the call span when resolved and absent from it, so sinks and routes see them.
USER_ID = "user.id"
SESSION_ID = "session.id"
APP = "otelgate.app"
TENANT = "otelgate.tenant"

DEFAULT_SOURCES: dict[str, tuple[str, ...]] = {
    "tenant": (TENANT,),
    "app": (APP, "metadata#/app_id", "service.name"),
    "user": ("user.id", "enduser.id", "langfuse.user.id", "ai.telemetry.metadata.userId",
             "traceloop.association.properties.user_id", "metadata#/user_id", "metadata#/end_user_id"),
    "session": ("session.id", "gen_ai.conversation.id", "langfuse.session.id", "ai.telemetry.metadata.sessionId",
                "traceloop.association.properties.session_id", "metadata#/conversation_id"),
    "environment": ("deployment.environment.name", "deployment.environment"),
}
WRITTEN = {"user": USER_ID, "session": SESSION_ID, "app": APP}
_NO_RESOURCE = object()  # not a resource, not None (a call may have no resource)


@dataclass(frozen=True, slots=True)
class Source:
    key: str
    span: bool  # look on the span
    resource: bool  # look on the resource
    pointer: tuple[str, ...] | None  # JSON Pointer tokens inside the value, None: the value itself


def parse_source(text: str) -> Source:
    """`[span:|resource:]key[#/json/pointer]`; raise ValueError saying what is wrong."""
    span = resource = True
    if text.startswith("span:"):
        text, resource = text[5:], False
    elif text.startswith("resource:"):
        text, span = text[9:], False
    key, hash_, pointer = text.partition("#")
    if not key:
        raise ValueError(f"{text!r}: no attribute key (write key, span:key, resource:key or key#/json/pointer)")
    tokens: tuple[str, ...] | None = None
    if hash_:
        if not pointer.startswith("/") or pointer == "/":
            raise ValueError(f"{text!r}: after # comes a JSON Pointer such as #/app_id or #/user/id")
        tokens = tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))
    return Source(key, span, resource, tokens)


def _check_sources(value: list[str]) -> list[str]:
    for text in value:
        parse_source(text)
    return value


class AttributionConfig(StrictModel):
    """`attribution:`: the sources of each dimension, in order (the first with a value wins)."""

    tenant: list[str] = Field(list(DEFAULT_SOURCES["tenant"]),
                              description="Used only when no API key or x-otelgate-tenant header named the tenant.")
    app: list[str] = list(DEFAULT_SOURCES["app"])
    user: list[str] = list(DEFAULT_SOURCES["user"])
    session: list[str] = list(DEFAULT_SOURCES["session"])
    environment: list[str] = list(DEFAULT_SOURCES["environment"])
    write: bool = Field(True, description="Write user.id, session.id and otelgate.app on the call span when absent.")

    _sources = field_validator(*DIMENSIONS)(_check_sources)


def span_keys(config: AttributionConfig) -> dict[str, int]:
    """The span attributes attribution reads, each with the bits of the dimensions reading it (bit
    i: `DIMENSIONS[i]`), and those it writes (bit 0 unused for them: no dimension)."""
    keys: dict[str, int] = dict.fromkeys(WRITTEN.values(), 0) if config.write else {}
    for i, dim in enumerate(DIMENSIONS):
        for text in getattr(config, dim):
            source = parse_source(text)
            if source.span:
                keys[source.key] = keys.get(source.key, 0) | (1 << i)
    return keys


class Attributor:
    """Fills `tenant`, `app`, `user`, `session`, `environment` of each `LlmCall` and writes
    `user.id`, `session.id`, `otelgate.app` on its span when the span lacks them."""

    def __init__(self, config: AttributionConfig) -> None:
        self.write = config.write
        self.sources: dict[str, tuple[Source, ...]] = {
            dim: tuple(parse_source(s) for s in getattr(config, dim)) for dim in DIMENSIONS}
        self._plans = {dim: tuple((s.key, s.span, s.resource, s.pointer) for s in self.sources[dim]) for dim in DIMENSIONS}
        self._keys = {dim: frozenset(s.key for s in self.sources[dim]) for dim in DIMENSIONS}
        self._dim_keys = tuple((dim, frozenset(s.key for s in self.sources[dim] if s.span)) for dim in DIMENSIONS)
        every = [s for dim in DIMENSIONS for s in self.sources[dim]]
        self._span_keys = frozenset(span_keys(config))
        self._resource_keys = frozenset(s.key for s in every if s.resource)

    def attribute(self, calls: Sequence[LlmCall], tenant: str | None) -> bool:
        """Resolve every call of one batch (whose request named `tenant`); True if a span changed."""
        # Per resource: its attributes, and each dimension as the resource alone says it (what a
        # span without any of the dimension's keys gets: the common case, resolved once).
        resources: dict[int, tuple[dict[str, KeyValue], tuple[str | None, ...]]] = {}
        changed = False
        span_keys, resource_keys, resolve = self._span_keys, self._resource_keys, self._resolve
        dims = self._dim_keys
        write = self.write
        last_res: Any = _NO_RESOURCE
        res_attrs: dict[str, KeyValue] = {}
        defaults: Sequence[str | None] = ()
        for call in calls:
            span_attrs = call.attributes  # the normalizer's one pass kept our keys too
            mask = call.extra_mask  # ... and said which dimensions' keys the span has
            if span_attrs is None or mask is None:
                span_attrs = call.attributes = _pick(call.span.attributes, span_keys) if span_attrs is None else span_attrs
                mask = sum(1 << i for i, (_, keys) in enumerate(dims) if not keys.isdisjoint(span_attrs))
            res = call.resource
            if res is not last_res:  # a batch's calls come resource by resource
                last_res = res
                cached = resources.get(id(res))
                if cached is None:
                    attrs = _pick(res.attributes, resource_keys) if res is not None else {}
                    cached = resources[id(res)] = (attrs, tuple(
                        None if self._keys[dim].isdisjoint(attrs) else resolve(dim, {}, attrs, {}) for dim, _ in dims))
                res_attrs, defaults = cached
            values: Sequence[str | None] = defaults
            if mask:  # the span has some dimensions' keys: those are resolved for it
                values = list(defaults)
                parsed: dict[tuple[bool, str], Any] = {}
                bits = mask
                while bits:
                    low = bits & -bits
                    i = low.bit_length() - 1
                    values[i] = resolve(dims[i][0], span_attrs, res_attrs, parsed)
                    bits ^= low
            owner, app, user, session, environment = values
            call.tenant = tenant or owner
            call.app, call.user, call.session, call.environment = app, user, session, environment
            if write:  # unrolled: this runs for every call
                if user is not None and USER_ID not in span_attrs:
                    kv = span_attrs[USER_ID] = call.span.attributes.add(key=USER_ID)
                    kv.value.string_value = user
                    changed = True
                if session is not None and SESSION_ID not in span_attrs:
                    kv = span_attrs[SESSION_ID] = call.span.attributes.add(key=SESSION_ID)
                    kv.value.string_value = session
                    changed = True
                if app is not None and APP not in span_attrs:
                    kv = span_attrs[APP] = call.span.attributes.add(key=APP)
                    kv.value.string_value = app
                    changed = True
        return changed

    def _resolve(self, dim: str, span_attrs: dict[str, KeyValue], res_attrs: dict[str, KeyValue],
                 parsed: dict[tuple[bool, str], Any]) -> str | None:
        for key, on_span, on_resource, pointer in self._plans[dim]:
            kv = span_attrs.get(key) if on_span else None
            from_span = kv is not None
            if kv is None:
                if not on_resource:
                    continue
                kv = res_attrs.get(key)
                if kv is None:
                    continue
            if pointer is None:
                text = _text(kv.value)
            else:
                cache_key = (from_span, key)
                doc = parsed[cache_key] if cache_key in parsed else parsed.setdefault(cache_key, _document(kv.value))
                text = _scalar_text(_walk(doc, pointer))
            if text:
                return text
            if from_span and on_resource and (kv := res_attrs.get(key)) is not None:  # empty on the span: the resource's
                text = _text(kv.value) if pointer is None else _scalar_text(_walk(_document(kv.value), pointer))
                if text:
                    return text
        return None


def _pick(attributes: Iterable[KeyValue], keys: frozenset[str]) -> dict[str, KeyValue]:
    found: dict[str, KeyValue] = {}
    for kv in attributes:
        k = kv.key
        if k in keys and k not in found:
            found[k] = kv
    return found


def _text(value: AnyValue) -> str | None:
    text = value.string_value  # "" unless it is a string: the common case in one read
    if text:
        return text[:MAX_VALUE]
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return None
    if kind == "int_value":
        text = str(value.int_value)
    elif kind == "double_value":
        text = repr(value.double_value)
    else:
        return None
    return text[:MAX_VALUE] if text else None


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value[:MAX_VALUE] or None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _document(value: AnyValue) -> Any:
    """The JSON object a string attribute holds, or an OTLP map as a dict; None otherwise."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        s = value.string_value
        if len(s) > MAX_JSON or not s.startswith("{"):
            return None
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            return None
    if kind == "kvlist_value":
        return value.kvlist_value
    return None


def _walk(doc: Any, pointer: tuple[str, ...]) -> Any:
    for token in pointer:
        if isinstance(doc, dict):
            doc = doc.get(token)
        elif isinstance(doc, list):
            doc = doc[int(token)] if token.isdigit() and int(token) < len(doc) else None
        elif doc is not None and hasattr(doc, "values"):  # an OTLP KeyValueList
            doc = next((kv.value for kv in doc.values if kv.key == token), None)
            if doc is not None:
                kind = doc.WhichOneof("value")
                doc = doc.kvlist_value if kind == "kvlist_value" else _any(doc)
        else:
            return None
        if doc is None:
            return None
    return doc


def _any(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind in ("string_value", "int_value", "double_value", "bool_value"):
        return getattr(value, kind)
    return None
