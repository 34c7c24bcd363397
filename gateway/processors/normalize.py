"""`pipeline.normalize`: recognise LLM provider calls in every dialect and write canonical attributes.

For each span the normalizer reads the attribute keys once, keeping only the keys it knows
(`_KEYS`); a span with none of them (most spans: HTTP, DB, ...) costs that one pass and nothing
else. For the others it decides what the span is:

* a **call** (one provider request: chat / completion / generation / embeddings): it writes the
  OTel GenAI canonical attributes (provider, operation, models, token counts with the semconv
  meaning: input includes cache reads and writes, output includes reasoning), marks the span
  `otelgate.llm.call=true` and hands an `LlmCall` to the next processors;
* an **aggregate** (agent spans, Vercel `ai.generateText` parents, Langfuse trace-level
  observations, a framework span wrapping an instrumented SDK call with the same usage): no
  `LlmCall`, no canonical usage; marked `otelgate.llm.aggregate=true` when it carries usage;
* a **duplicate** (two instrumentations on one client: same trace and `gen_ai.response.id`, or
  sibling spans of two scopes overlapping in time with the same model and usage):
  marked `otelgate.duplicate_of=<span id of the one kept>`, no `LlmCall`.

Provider-native usage objects (Logfire's `gen_ai.usage.raw`, LiteLLM's `metadata.usage_object`)
win over the flat counts beside them; hand-written `llm.*` spans (Dify's `llm.invoke.{model}`)
are calls only with a model and a token count (see `_weak_call`).

Only missing or different canonical attributes are written, so a second run (or a span that
already went through another otelgate) changes nothing. The dialects and their aliases are
described in CONVENTIONS.md; the choices made where it is silent are commented below.
"""

from __future__ import annotations

import ast
import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import orjson
import re2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from pydantic import Field

from gateway.batch import Batch
from gateway.configtypes import StrictModel
from gateway.llm.call import (
    AGGREGATE, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, CACHE_WRITE_TOKENS_NEXT, COST, COST_AMOUNT, COST_CURRENCY,
    COST_SOURCE_SEMCONV, COST_INPUT, COST_OUTPUT, COST_SOURCE, DUPLICATE_OF,
    INPUT_TOKENS, LLM_CALL, OPERATION, OUTPUT_TOKENS, PRICE_MODEL, PROVIDER, PROVIDER_INFERRED, REASONING_TOKENS,
    REQUEST_MODEL, RESPONSE_ID, RESPONSE_MODEL, LlmCall,
)
from gateway.llm.providers import canonical_provider, infer_provider
from gateway.logs import get_logger
from gateway.processors import Processor, ProcessorContext
from gateway.usage.attribution import span_keys

_log = get_logger("processor.normalize")
_MAX_LOGGED = 10  # internal errors logged with their traceback; later ones only counted


# `semconv`: which names the normalizer writes for the one concept whose name is moving. Both are
# always read. `current` is the name in the published registry (and the one Langfuse's OTel intake
# and otelgate's langfuse sink read); `next` is the rename opentelemetry-util-genai already emits;
# `both` writes the two during a migration.
SEMCONV_CACHE_WRITE = {
    "current": (CACHE_WRITE_TOKENS,),
    "next": (CACHE_WRITE_TOKENS_NEXT,),
    "both": (CACHE_WRITE_TOKENS, CACHE_WRITE_TOKENS_NEXT),
}


class Config(StrictModel):
    enabled: bool = True
    keep_originals: bool = Field(True, description=(
        "Keep the dialect attributes folded into the canonical ones (false: remove them; nothing else is removed)."))
    semconv: Literal["current", "next", "both"] = Field("current", description=(
        "Names written for cache writes: current = gen_ai.usage.cache_creation.input_tokens, next = "
        "gen_ai.usage.cache_write.input_tokens, both = the two. Both are always read."))


# ---------------------------------------------------------------------------------------------
# Attribute names. Each tuple lists the aliases of one concept, canonical first, in the order read.

_PROVIDER_KEYS = (PROVIDER, "gen_ai.system", "llm.provider", "ai.model.provider", "mlflow.llm.provider", "llm.system")
_REQUEST_MODEL_KEYS = (REQUEST_MODEL, "llm.request.model_name", "ai.model.id", "mlflow.llm.model", "llm.model",
                       "llm.model_id")
_RESPONSE_MODEL_KEYS = (RESPONSE_MODEL, "llm.response.model_name", "ai.response.model", "llm.model_name",
                        "embedding.model_name")
_INVOCATION_KEYS = ("llm.invocation_parameters", "embedding.invocation_parameters")
LANGFUSE_MODEL = "langfuse.observation.model.name"

_INPUT_KEYS = (INPUT_TOKENS, "gen_ai.usage.prompt_tokens", "llm.token_count.prompt", "llm.usage.prompt_tokens",
               "ai.usage.inputTokens", "ai.usage.promptTokens", "ai.usage.tokens", "llm.input_tokens",
               "llm.prompt_tokens")
_OUTPUT_KEYS = (OUTPUT_TOKENS, "gen_ai.usage.completion_tokens", "llm.token_count.completion",
                "llm.usage.completion_tokens", "ai.usage.outputTokens", "ai.usage.completionTokens",
                "llm.output_tokens", "llm.completion_tokens")
_CACHE_READ_KEYS = (CACHE_READ_TOKENS, "gen_ai.usage.cache_read_input_tokens", "gen_ai.usage.details.cache_read_tokens",
                    "gen_ai.usage.details.cache_read_input_tokens", "gen_ai.usage.prompt_tokens_details.cached_tokens",
                    "gen_ai.usage.input_tokens_details.cached_tokens", "llm.token_count.prompt_details.cache_read",
                    "llm.usage.cache_read_input_tokens", "ai.usage.inputTokenDetails.cacheReadTokens",
                    "ai.usage.cachedInputTokens")
_CACHE_WRITE_KEYS = (CACHE_WRITE_TOKENS, CACHE_WRITE_TOKENS_NEXT,
                     "gen_ai.usage.cache_creation_input_tokens", "gen_ai.usage.details.cache_write_tokens",
                     "gen_ai.usage.details.cache_creation_input_tokens", "llm.token_count.prompt_details.cache_write",
                     "llm.usage.cache_creation_input_tokens", "ai.usage.inputTokenDetails.cacheWriteTokens",
                     "ai.usage.cacheCreationInputTokens")
_REASONING_KEYS = (REASONING_TOKENS, "gen_ai.usage.reasoning_tokens", "gen_ai.usage.details.reasoning_tokens",
                   "gen_ai.usage.completion_tokens_details.reasoning_tokens",
                   "gen_ai.usage.output_tokens_details.reasoning_tokens", "llm.usage.reasoning_tokens",
                   "llm.token_count.completion_details.reasoning", "ai.usage.outputTokenDetails.reasoningTokens",
                   "ai.usage.reasoningTokens")
_TOTAL_KEYS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total", "ai.usage.totalTokens",
               "llm.total_tokens")
# Hand-written `llm.*` spans (Dify's model runtime `llm.invoke.{model}`, and the like): keys with no
# library behind them, so they make a span a call only together (a model and a token count), or on
# a span named like Dify's runtime spans; see _classify.
_WEAK_KEYS = frozenset(("llm.model", "llm.model_id", "llm.input_tokens", "llm.prompt_tokens", "llm.output_tokens",
                        "llm.completion_tokens", "llm.total_tokens"))
_WEAK_CALL_NAMES = ("llm.invoke",)
# Provider-native usage objects: Logfire's `gen_ai.usage.raw` (JSON, or a map), LiteLLM's
# `metadata.usage_object` (a Python repr). Precedence: each count they carry wins over the flat
# attributes beside them (the library derived those from this very object, and drops cache and
# reasoning counts on the way); counts they lack come from the flat attributes.
USAGE_RAW = "gen_ai.usage.raw"
LITELLM_USAGE = "metadata.usage_object"
_AGGREGATED_KEYS = ("gen_ai.aggregated_usage.input_tokens", "gen_ai.aggregated_usage.output_tokens")
_VERCEL_V6_DETAIL_KEYS = ("ai.usage.inputTokenDetails.noCacheTokens", "ai.usage.inputTokenDetails.cacheReadTokens",
                          "ai.usage.inputTokenDetails.cacheWriteTokens")
LANGFUSE_USAGE = "langfuse.observation.usage_details"
LANGFUSE_COST = "langfuse.observation.cost_details"
LANGFUSE_TYPE = "langfuse.observation.type"
LANGFUSE_LEVEL = "langfuse.observation.level"
LANGFUSE_PARAMS = "langfuse.observation.model.parameters"
MLFLOW_USAGE = "mlflow.chat.tokenUsage"
MLFLOW_TYPE = "mlflow.spanType"
LANGSMITH_KIND = "langsmith.span.kind"
LANGSMITH_INPUT_DETAILS = "gen_ai.usage.input_token_details"
LANGSMITH_OUTPUT_DETAILS = "gen_ai.usage.output_token_details"
OPENINFERENCE_KIND = "openinference.span.kind"
REQUEST_TYPE = "llm.request.type"
VERCEL_OPERATION = "ai.operationId"
VERCEL_PROVIDER_METADATA = "ai.response.providerMetadata"
_RESPONSE_ID_KEYS = (RESPONSE_ID, "ai.response.id")

# Cost the emitter reported, in the order preferred.
_COST_KEYS = (COST, COST_AMOUNT, "llm.cost.total", "gen_ai.cost.total_cost", "litellm.cost.total", "operation.cost",
              "mlflow.llm.cost", LANGFUSE_COST)
_TIER_KEYS = ("openai.response.service_tier", "gen_ai.openai.response.service_tier", "gen_ai.response.service_tier",
              "anthropic.response.service_tier", "langfuse.observation.metadata.service_tier",
              "openai.request.service_tier", "gen_ai.openai.request.service_tier", "gen_ai.request.service_tier")

_HOST_KEYS = ("server.address", "url.full", "gen_ai.openai.api_base", "server.port")
# Read by the pricer (through LlmCall.attributes), never by the normalizer.
_PRICER_KEYS = (COST_INPUT, COST_OUTPUT, PRICE_MODEL, "llm.cost.prompt", "llm.cost.completion", COST_CURRENCY,
                COST_SOURCE_SEMCONV)

# Keys that never make a span an LLM span on their own.
_CONTEXT_KEYS = (frozenset(_HOST_KEYS) - {"gen_ai.openai.api_base"}) | frozenset(_PRICER_KEYS)

_KEYS = frozenset(
    _PROVIDER_KEYS + _REQUEST_MODEL_KEYS + _RESPONSE_MODEL_KEYS + _INVOCATION_KEYS + _INPUT_KEYS + _OUTPUT_KEYS
    + _CACHE_READ_KEYS + _CACHE_WRITE_KEYS + _REASONING_KEYS + _TOTAL_KEYS + _AGGREGATED_KEYS + _VERCEL_V6_DETAIL_KEYS
    + _RESPONSE_ID_KEYS + _COST_KEYS + _TIER_KEYS + _HOST_KEYS + _PRICER_KEYS + (
        LANGFUSE_MODEL, LANGFUSE_USAGE, LANGFUSE_TYPE, LANGFUSE_LEVEL, LANGFUSE_PARAMS, MLFLOW_USAGE, MLFLOW_TYPE,
        LANGSMITH_KIND, LANGSMITH_INPUT_DETAILS, LANGSMITH_OUTPUT_DETAILS, OPENINFERENCE_KIND, REQUEST_TYPE,
        VERCEL_OPERATION, VERCEL_PROVIDER_METADATA, OPERATION, LLM_CALL, AGGREGATE, DUPLICATE_OF, PROVIDER_INFERRED,
        COST_SOURCE, USAGE_RAW, LITELLM_USAGE))

# Keys whose presence means the span carries usage (for marking aggregates).
_USAGE_KEYS = frozenset(_INPUT_KEYS + _OUTPUT_KEYS + _AGGREGATED_KEYS + (LANGFUSE_USAGE, MLFLOW_USAGE))
_MODEL_KEYS = _REQUEST_MODEL_KEYS + _RESPONSE_MODEL_KEYS + (LANGFUSE_MODEL,)
_MODEL_KEY_SET = frozenset(_MODEL_KEYS)
_TOKEN_KEY_SET = frozenset(_INPUT_KEYS + _OUTPUT_KEYS)

# Scalar aliases removed when `keep_originals: false` (canonical key, its aliases). JSON containers
# (Langfuse usage_details, MLflow tokenUsage, invocation parameters, LangSmith details) are kept:
# they hold more than what was folded.
_FOLDABLE = (
    ("provider", _PROVIDER_KEYS[1:]),
    ("request_model", _REQUEST_MODEL_KEYS[1:]),
    ("response_model", _RESPONSE_MODEL_KEYS[1:]),
    ("input_tokens", _INPUT_KEYS[1:]),
    ("output_tokens", _OUTPUT_KEYS[1:]),
    ("cache_read_tokens", _CACHE_READ_KEYS[1:]),
    ("cache_write_tokens", _CACHE_WRITE_KEYS[1:]),
    ("reasoning_tokens", _REASONING_KEYS[1:]),
)

# The scan records, per span, a bit mask of the groups of keys present, so the examination
# probes the aliases of a concept only when at least one of them is there.
_B_LLM = 1  # any key that makes a span LLM-ish (all but the host keys)
(_B_PROVIDER, _B_REQUEST_MODEL, _B_RESPONSE_MODEL, _B_INPUT, _B_OUTPUT, _B_CACHE_READ, _B_CACHE_WRITE, _B_REASONING,
 _B_COST, _B_TIER, _B_RESPONSE_ID, _B_HOST, _B_INVOCATION, _B_LANGSMITH, _B_JSON_USAGE, _B_MARKER, _B_LANGFUSE,
 _B_VERCEL, _B_RAW, _B_WEAK) = (1 << i for i in range(1, 21))
_KEY_BITS: dict[str, int] = dict.fromkeys(_KEYS, _B_LLM)
for _keys, _bit in ((_PROVIDER_KEYS, _B_PROVIDER), (_REQUEST_MODEL_KEYS, _B_REQUEST_MODEL),
                    (_RESPONSE_MODEL_KEYS, _B_RESPONSE_MODEL), (_INPUT_KEYS, _B_INPUT), (_OUTPUT_KEYS, _B_OUTPUT),
                    (_CACHE_READ_KEYS, _B_CACHE_READ), (_CACHE_WRITE_KEYS, _B_CACHE_WRITE),
                    (_REASONING_KEYS, _B_REASONING), (_COST_KEYS, _B_COST), (_TIER_KEYS, _B_TIER),
                    (_RESPONSE_ID_KEYS, _B_RESPONSE_ID), (_HOST_KEYS, _B_HOST),
                    (_INVOCATION_KEYS + (LANGFUSE_PARAMS,), _B_INVOCATION),
                    ((LANGSMITH_INPUT_DETAILS, LANGSMITH_OUTPUT_DETAILS), _B_LANGSMITH),
                    ((LANGFUSE_USAGE, MLFLOW_USAGE), _B_JSON_USAGE),
                    ((LLM_CALL, AGGREGATE, DUPLICATE_OF, PROVIDER_INFERRED), _B_MARKER),
                    ((LANGFUSE_LEVEL, LANGFUSE_MODEL), _B_LANGFUSE),
                    ((VERCEL_OPERATION, VERCEL_PROVIDER_METADATA) + _VERCEL_V6_DETAIL_KEYS, _B_VERCEL),
                    ((USAGE_RAW, LITELLM_USAGE), _B_RAW), (tuple(_WEAK_KEYS), _B_WEAK)):
    for _k in _keys:
        _KEY_BITS[_k] |= _bit
for _k in _CONTEXT_KEYS:
    _KEY_BITS[_k] &= ~_B_LLM
del _keys, _bit, _k

# ---------------------------------------------------------------------------------------------
# Operations.

_CALL_OPERATIONS = {
    "chat": "chat", "text_completion": "text_completion", "generate_content": "generate_content",
    "embeddings": "embeddings", "completion": "text_completion", "embedding": "embeddings", "embed": "embeddings",
    "embed_content": "embeddings", "responses": "chat", "response": "chat", "chat_completion": "chat",
    "chat.completions": "chat", "messages": "chat",
}
_NON_CALL_OPERATIONS = frozenset({
    "invoke_agent", "create_agent", "execute_tool", "invoke_workflow", "retrieval", "rerank", "agent", "tool",
    "workflow", "chain", "task", "execute_task", "guardrail", "evaluation", "handoff",
})
# `llm.request.type`: OpenLLMetry (chat, completion, embedding, rerank) and LiteLLM call types.
_REQUEST_TYPES = {
    "chat": "chat", "acompletion": "chat", "responses": "chat", "aresponses": "chat",
    "text_completion": "text_completion", "atext_completion": "text_completion",
    "embedding": "embeddings", "aembedding": "embeddings", "embeddings": "embeddings",
}
_NON_CALL_REQUEST_TYPES = frozenset({"rerank", "arerank", "image_generation", "aimage_generation", "moderation",
                                     "amoderation", "transcription", "atranscription", "speech", "aspeech"})
_OPENINFERENCE_KINDS = {"LLM": "chat", "EMBEDDING": "embeddings"}
_LANGFUSE_TYPES = {"generation": "chat", "embedding": "embeddings"}
_MLFLOW_TYPES = {"LLM": "chat", "CHAT_MODEL": "chat", "EMBEDDING": "embeddings"}
_LANGSMITH_KINDS = {"llm": "chat", "embedding": "embeddings"}

# ---------------------------------------------------------------------------------------------
# Whether `gen_ai.usage.input_tokens` of an Anthropic-family call (Anthropic itself, or Claude on
# Bedrock / Vertex) already includes cache reads and writes, by instrumentation scope. The
# semantic conventions say it should; some emitters write the raw Anthropic value, which does not.
# Scopes not listed follow the conventions, unless the sanity rule (input < cache) says otherwise.
_ANTHROPIC_INPUT_INCLUDES_CACHE: dict[str, bool] = {
    "com.anthropic.sdk.python": True,  # the anthropic SDK's own spans (fixture: 33 = 21 + 8 + 4)
    "pydantic-ai": True,  # fixture: same
    "opentelemetry.instrumentation.anthropic": True,  # OpenLLMetry adds cache read + creation
    "ai": False,  # Vercel AI SDK: `inputTokens` is Anthropic's own input_tokens
}
_ANTHROPIC_INPUT_INCLUDES_CACHE_PREFIXES: tuple[tuple[str, bool], ...] = (
    ("openlit", False),  # OpenLIT writes response.usage.input_tokens as it is
)

_MAX_COUNT = 1 << 53  # a larger token count is garbage (and would not fit an int64 once summed)
_MAX_COST = 1e9
_MAX_JSON = 64 * 1024  # larger JSON values are not parsed
_MAX_REPR = 4096  # Python-repr values (LangSmith) parsed with ast.literal_eval
_MAX_MODEL = 256
_MAX_DEPTH = 64  # parent hops when looking for a call below a call
_INVOCATION_MODEL = re.compile(r'"model"\s*:\s*"([^"\\]{1,256})"')

_CALL, _AGGREGATE, _DUPLICATE, _WRAPPER, _NONE = 1, 2, 3, 4, 0
_STATUS_ERROR = 2


class _Found:
    """One LLM-ish span: its call (if it is one) and what the batch-wide decisions need."""

    __slots__ = ("span", "attrs", "role", "call", "input_raw", "has_usage", "trace_id", "span_id", "parent_id",
                 "response_id", "marked_dup", "duplicate_of", "exact", "scope", "call_below", "where")

    def __init__(self, span: Any, attrs: dict[str, Any], role: int, call: LlmCall | None = None,
                 input_raw: int | None = None, has_usage: bool = False) -> None:
        self.span = span
        self.attrs = attrs
        self.role = role
        self.call = call
        self.input_raw = input_raw
        self.has_usage = has_usage
        self.trace_id = self.span_id = self.parent_id = b""  # read by _resolve, only when needed
        self.response_id: str | None = None
        self.marked_dup = False
        self.duplicate_of = b""
        self.exact = 0  # concepts whose canonical attribute already holds the value (_B_* bits)
        self.scope = ""  # instrumentation scope name
        self.call_below = False  # another call span lies below this one (set by _resolve)
        self.where = (0, 0, 0)  # (resource, scope, span) index in the request, for Batch.touch


# ---------------------------------------------------------------------------------------------
# Reading values. Never raise: a value of the wrong kind is as good as absent.


def _str(kv: Any) -> str | None:
    s = kv.value.string_value  # "" when the value is not a string
    return s or None


def _jstr(kv: Any) -> str | None:
    """A string that may be JSON-encoded once more (MLflow: `"\\"LLM\\""`)."""
    s = kv.value.string_value
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"' and len(s) <= _MAX_MODEL * 4:
        try:
            decoded = orjson.loads(s)
        except Exception:
            return s
        return decoded if isinstance(decoded, str) and decoded else None
    return s or None


def _count(value: Any) -> int | None:
    """A token count from a Python value (JSON / repr), or None."""
    if type(value) is int:  # the common case first (bool is not int here)
        return value if 0 <= value <= _MAX_COUNT else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= _MAX_COUNT else None
    if isinstance(value, float):
        if value.is_integer() and 0 <= value <= _MAX_COUNT:
            return int(value)
        return None
    if isinstance(value, str) and 0 < len(value) <= 20:
        try:
            n = int(value.strip().strip('"'))
        except ValueError:
            return None
        return n if 0 <= n <= _MAX_COUNT else None
    return None


def _int(kv: Any) -> int | None:
    v = kv.value
    n = v.int_value  # 0 when the value is not an int: only then is the kind worth asking
    if n:
        return n if 0 < n <= _MAX_COUNT else None
    kind = v.WhichOneof("value")
    if kind == "int_value":
        return 0
    if kind == "double_value":
        return _count(v.double_value)
    if kind == "string_value":
        return _count(v.string_value)
    return None


def _money(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not 0 < len(value) <= 40:
            return None
        try:
            value = float(value.strip().strip('"'))
        except ValueError:
            return None
    if isinstance(value, (int, float)):
        f = float(value)
        return f if math.isfinite(f) and 0 <= f <= _MAX_COST else None
    return None


def _float(kv: Any) -> float | None:
    v = kv.value
    f = v.double_value  # 0.0 when not a double
    if f > 0.0:
        return f if f <= _MAX_COST else None  # also rejects +inf; NaN fails `> 0`
    kind = v.WhichOneof("value")
    if kind == "double_value":
        return _money(v.double_value)
    if kind == "int_value":
        return _money(v.int_value)
    if kind == "string_value":
        return _money(v.string_value)
    return None


def _json(s: str | None) -> Any:
    if not s or len(s) > _MAX_JSON:
        return None
    try:
        return orjson.loads(s)
    except Exception:
        return None


def _json_or_repr(s: str | None) -> Any:
    """JSON, or a Python literal (LangSmith writes `"{'cache_read': 10}"`)."""
    value = _json(s)
    if value is None and s and len(s) <= _MAX_REPR and s[:1] in "{[":
        try:
            value = ast.literal_eval(s)
        except Exception:  # SyntaxError, ValueError, MemoryError, RecursionError...
            return None
    return value


def _first_int(d: dict[str, Any], keys: Iterable[str]) -> int | None:
    for k in keys:
        kv = d.get(k)
        if kv is not None:
            n = _int(kv)
            if n is not None:
                return n
    return None


def _first_str(d: dict[str, Any], keys: Iterable[str]) -> str | None:
    for k in keys:
        kv = d.get(k)
        if kv is not None:
            s = _jstr(kv) if k[0] == "m" else _str(kv)
            if s is not None and len(s) <= _MAX_MODEL:
                return s
    return None


def _get(obj: dict[str, Any], *keys: str) -> int | None:
    for k in keys:
        if k in obj:
            n = _count(obj[k])
            if n is not None:
                return n
    return None


def _nested(obj: dict[str, Any], outer: str, inner: str) -> int | None:
    sub = obj.get(outer)
    return _count(sub.get(inner)) if isinstance(sub, dict) else None


def _usage_from_json(obj: Any) -> tuple[int | None, int | None, int | None, int | None, int | None] | None:
    """(input, output, cache_read, cache_write, reasoning) with semconv meaning, from a usage object.

    Shapes: OpenAI chat (`prompt_tokens`..., input includes cache), OpenAI Responses (`input_tokens`
    + `*_details`, includes), Anthropic (`input_tokens` + `cache_*_input_tokens`, excludes), Vercel
    camelCase, and Langfuse's generic keys (`input`, `output`, `total`, `cache_read_input_tokens`,
    `output_reasoning_tokens`...).
    """
    if not isinstance(obj, dict):
        return None
    if "prompt_tokens" in obj or "completion_tokens" in obj:
        inp, out = _get(obj, "prompt_tokens"), _get(obj, "completion_tokens")
        cr = _nested(obj, "prompt_tokens_details", "cached_tokens")
        if cr is None:
            cr = _get(obj, "cache_read_input_tokens")
        cw = _get(obj, "cache_creation_input_tokens")
        rs = _nested(obj, "completion_tokens_details", "reasoning_tokens")
        return _sane(inp, out, cr, cw, rs)
    if "input_tokens" in obj or "output_tokens" in obj:
        inp, out = _get(obj, "input_tokens"), _get(obj, "output_tokens")
        rs = _nested(obj, "output_tokens_details", "reasoning_tokens")
        acr, acw = _get(obj, "cache_read_input_tokens"), _get(obj, "cache_creation_input_tokens")
        if acr is not None or acw is not None:  # Anthropic's shape: input_tokens excludes the cache
            if inp is not None:
                inp += (acr or 0) + (acw or 0)
            return _sane(inp, out, acr, acw, rs)
        return _sane(inp, out, _nested(obj, "input_tokens_details", "cached_tokens"), None, rs)
    if "promptTokens" in obj or "inputTokens" in obj:
        inp, out = _get(obj, "inputTokens", "promptTokens"), _get(obj, "outputTokens", "completionTokens")
        return _sane(inp, out, _get(obj, "cachedInputTokens"), None, _get(obj, "reasoningTokens"))
    if "input" in obj or "output" in obj or "total" in obj:
        inp, out, total = _get(obj, "input"), _get(obj, "output"), _get(obj, "total")
        cr = _get(obj, "cache_read_input_tokens", "input_cached_tokens", "input_cache_read", "cache_read")
        cw = _get(obj, "cache_creation_input_tokens", "input_cache_creation", "input_cache_write", "cache_creation",
                  "cache_write")
        rs = _get(obj, "output_reasoning_tokens", "output_reasoning", "reasoning_tokens")
        # Langfuse's own buckets are disjoint (input without cache, output without reasoning; total is
        # their sum). A declared `total` says which convention the application used.
        cache, reasoning = (cr or 0) + (cw or 0), rs or 0
        input_excludes = output_excludes = True
        if total is not None:
            i, o = inp or 0, out or 0
            if total == i + o:
                input_excludes = output_excludes = False
            elif total == i + o + reasoning and total != i + o + cache:
                input_excludes = False
            elif total == i + o + cache and total != i + o + reasoning:
                output_excludes = False
        if input_excludes and inp is not None:
            inp += cache
        if output_excludes and out is not None:
            out += reasoning
        return _sane(inp, out, cr, cw, rs)
    return None


def _sane(inp: int | None, out: int | None, cr: int | None, cw: int | None,
          rs: int | None) -> tuple[int | None, int | None, int | None, int | None, int | None]:
    """Counts that cannot include their parts get them added (input < cache, output < reasoning)."""
    cache = (cr or 0) + (cw or 0)
    if inp is not None and inp < cache:
        inp += cache
    if out is not None and rs and out < rs:
        out += rs
    if inp is not None and inp > _MAX_COUNT:
        inp = None
    if out is not None and out > _MAX_COUNT:
        out = None
    return inp, out, cr, cw, rs


_REPR_COUNT = re.compile(
    r"""['"]?(prompt_tokens|completion_tokens|input_tokens|output_tokens|cached_tokens|reasoning_tokens|"""
    r"""cache_read_input_tokens|cache_creation_input_tokens)['"]?\s*[:=]\s*(\d{1,16})""")
_REPR_NESTED = {"cached_tokens": "prompt_tokens_details", "reasoning_tokens": "completion_tokens_details"}


def _native_usage(d: dict[str, Any]) -> tuple[int | None, int | None, int | None, int | None, int | None] | None:
    """(input, output, cache_read, cache_write, reasoning) from a provider-native usage object."""
    kv = d.get(USAGE_RAW)
    if kv is not None:
        v = kv.value
        if v.WhichOneof("value") == "kvlist_value":
            obj: Any = _plain_map(v.kvlist_value)
        else:
            obj = _json(v.string_value)
        usage = _usage_from_json(obj)
        if usage is not None:
            return usage
    kv = d.get(LITELLM_USAGE)
    if kv is not None:
        return _usage_from_repr(kv.value.string_value)
    return None


def _plain_map(kvlist: Any, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvlist.values:
        v = kv.value
        kind = v.WhichOneof("value")
        if kind == "kvlist_value" and depth < 2:
            out[kv.key] = _plain_map(v.kvlist_value, depth + 1)
        elif kind in ("int_value", "double_value", "string_value"):
            out[kv.key] = getattr(v, kind)
    return out


def _usage_from_repr(s: str) -> tuple[int | None, int | None, int | None, int | None, int | None] | None:
    """LiteLLM's `metadata.usage_object`: `str()` of its usage dict, whose detail values may be
    `PromptTokensDetailsWrapper(cached_tokens=8, ...)` objects (not literals): literal_eval first,
    else the counts by name."""
    if not s or len(s) > _MAX_JSON:
        return None
    obj = _json_or_repr(s)
    if not isinstance(obj, dict):
        obj = {}
        for key, n in _REPR_COUNT.findall(s):
            outer = _REPR_NESTED.get(key)
            if outer is not None:
                obj.setdefault(outer, {}).setdefault(key, int(n))
            else:
                obj.setdefault(key, int(n))
    return _usage_from_json(obj)


def _anthropic_includes_cache(scope: str) -> bool | None:
    hit = _ANTHROPIC_INPUT_INCLUDES_CACHE.get(scope)
    if hit is not None:
        return hit
    for prefix, includes in _ANTHROPIC_INPUT_INCLUDES_CACHE_PREFIXES:
        if scope.startswith(prefix):
            return includes
    return None


# ---------------------------------------------------------------------------------------------
# Classification.


def _classify(d: dict[str, Any], span: Any, mask: int) -> tuple[int, str | None]:
    """(role, operation) of an LLM-ish span from its kind attributes, most specific dialect first."""
    kv = d.get(VERCEL_OPERATION)
    if kv is not None:
        op = kv.value.string_value
        if op.endswith(".doGenerate") or op.endswith(".doStream"):
            return _CALL, "chat"
        if op.endswith(".doEmbed"):
            return _CALL, "embeddings"
        if op.startswith("ai."):
            return _NONE, None  # ai.generateText, ai.streamText, ai.embed, ai.toolCall...: parents
    kv = d.get(OPERATION)
    if kv is not None:
        op = kv.value.string_value.strip().lower()
        if op in _CALL_OPERATIONS:
            return _CALL, _CALL_OPERATIONS[op]
        if op in _NON_CALL_OPERATIONS:
            return _NONE, None
    kv = d.get(REQUEST_TYPE)
    if kv is not None:
        rt = kv.value.string_value.strip().lower()
        if rt in _REQUEST_TYPES:
            return _CALL, _REQUEST_TYPES[rt]
        if rt == "completion":
            # OpenLLMetry's Anthropic spans (`anthropic.chat`) and LiteLLM's `completion()` are chat.
            name = span.name
            return _CALL, "chat" if ("chat" in name or "litellm" in name) else "text_completion"
        if rt in _NON_CALL_REQUEST_TYPES:
            return _NONE, None
    kv = d.get(OPENINFERENCE_KIND)
    if kv is not None:
        return _mapped(_OPENINFERENCE_KINDS.get(kv.value.string_value.strip().upper()))
    kv = d.get(LANGFUSE_TYPE)
    if kv is not None:
        return _mapped(_LANGFUSE_TYPES.get(kv.value.string_value.strip().lower()))
    kv = d.get(MLFLOW_TYPE)
    if kv is not None:
        return _mapped(_MLFLOW_TYPES.get((_jstr(kv) or "").strip().upper()))
    kv = d.get(LANGSMITH_KIND)
    if kv is not None:
        return _mapped(_LANGSMITH_KINDS.get(kv.value.string_value.strip().lower()))
    # No kind attribute: a model or usage says it is a call, unless it is an aggregate.
    for k in _AGGREGATED_KEYS:
        if k in d:
            return _NONE, None
    model = None
    for k in _MODEL_KEYS:
        if k in d:
            model = d[k].value.string_value or "?"
            break
    if model is None:
        for k in _INPUT_KEYS + _OUTPUT_KEYS:
            if k in d:
                model = ""
                break
    if model is None:
        return _NONE, None
    if mask & _B_WEAK and not _strong_evidence(d) and not _weak_call(d, span, model):
        return _NONE, None
    return _CALL, "embeddings" if "embed" in model.lower() else "chat"


def _strong_evidence(d: dict[str, Any]) -> bool:
    """A model or token key of a known dialect (not only hand-written `llm.*` keys)."""
    for k in d:
        if k not in _WEAK_KEYS and (k in _MODEL_KEY_SET or k in _TOKEN_KEY_SET):
            return True
    return False


def _weak_call(d: dict[str, Any], span: Any, model: str) -> bool:
    """A span with only hand-written `llm.*` keys is a call when it names a model and carries a token
    count (`llm.model` alone is configuration; tokens alone are a tokenizer's count), or when it is
    named like Dify's runtime spans (`llm.invoke.{model}`, which carry no tokens when they fail).
    Spans about tokens (`llm.tokenize`, `count_tokens`) are not calls whatever they carry."""
    name = span.name
    if name.startswith(_WEAK_CALL_NAMES):
        return True
    if "token" in name.lower() or model in ("", "?"):
        return False
    for k in ("llm.input_tokens", "llm.output_tokens", "llm.prompt_tokens", "llm.completion_tokens"):
        kv = d.get(k)
        if kv is not None and _int(kv) is not None:
            return True
    return False


def _mapped(operation: str | None) -> tuple[int, str | None]:
    return (_CALL, operation) if operation else (_NONE, None)


# ---------------------------------------------------------------------------------------------
# Writing.


_TRUE_ATTRIBUTES = {k: KeyValue(key=k, value=AnyValue(bool_value=True))
                    for k in (LLM_CALL, AGGREGATE, PROVIDER_INFERRED)}


def _put_str(span: Any, d: dict[str, Any], key: str, value: str) -> bool:
    """Set `key` to the string `value` unless it already is; True when the span changed."""
    kv = d.get(key)
    if kv is None:
        kv = span.attributes.add()
        kv.key = key
        kv.value.string_value = value
        return True
    v = kv.value
    if v.string_value == value and (value or v.WhichOneof("value") == "string_value"):
        return False  # a non-empty string_value can only be the value set
    v.string_value = value
    return True


def _put_int(span: Any, d: dict[str, Any], key: str, value: int) -> bool:
    kv = d.get(key)
    if kv is None:
        kv = span.attributes.add()
        kv.key = key
        kv.value.int_value = value
        return True
    v = kv.value
    if v.int_value == value and (value or v.WhichOneof("value") == "int_value"):
        return False
    v.int_value = value
    return True


def _put_true(span: Any, d: dict[str, Any], key: str) -> bool:
    kv = d.get(key)
    if kv is None:
        span.attributes.append(_TRUE_ATTRIBUTES[key])  # copied in
        return True
    v = kv.value
    if v.bool_value:
        return False
    v.bool_value = True
    return True


# ---------------------------------------------------------------------------------------------


_EXTRA_SHIFT = 48  # the bits of `extra_keys` sit above the normalizer's own
_UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED
_DENSE = 0.35
_PROBE = 8


def _compile_gate(keys: Iterable[str]) -> Any:
    """The low-level RE2 `.Match` of an alternation of `keys` (literal, Latin-1: any byte is a
    character, so no invalid UTF-8 around a key can hide it)."""
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    options.log_errors = False
    options.max_mem = 32 << 20
    pattern = "|".join(re.escape(k) for k in sorted(keys, key=lambda k: (-len(k), k)))
    compiled = re2._re2.RE2(pattern.encode(), options)
    if not compiled.ok():
        raise ValueError(compiled.error().decode(errors="replace"))
    return compiled.Match


def _every_span(request: Any) -> Iterator[tuple[int, int, int]]:
    """(resource, scope, span) index of every span of `request`, in order: the path without bytes."""
    for ri, rs in enumerate(request.resource_spans):
        for si, ss in enumerate(rs.scope_spans):
            for ki in range(len(ss.spans)):
                yield ri, si, ki


class Normalizer:
    def __init__(self, config: Config, extra_keys: dict[str, int] | None = None) -> None:
        """`extra_keys`: attributes later processors read on call spans (attribution's sources) and
        a bit mask for each; the same pass keeps them in `LlmCall.attributes` and ORs their masks into
        `LlmCall.extra_mask`, so nobody reads a call span's attributes twice."""
        self._keep = config.keep_originals
        self._key_bits = dict(_KEY_BITS)
        for key, bits in (extra_keys or {}).items():
            self._key_bits[key] = self._key_bits.get(key, 0) | (bits << _EXTRA_SHIFT)
        # One RE2 alternation of every key that can make a span LLM-ish, scanned over the received
        # bytes: a span without a hit is never iterated (see `_candidates`).
        self._gate = _compile_gate(k for k, bits in self._key_bits.items() if bits & _B_LLM)
        # Share of spans the scan found candidates in, recently (a moving average): above _DENSE
        # the loop over every span is cheaper (measured: tests/bench/RESULTS.md, "wire"), and one
        # request in _PROBE is scanned anyway to notice when the traffic changes. Both paths give
        # the same result; this only picks the cheaper.
        self._dense = 0.0
        self._requests = 0
        self._cw_keys = SEMCONV_CACHE_WRITE[config.semconv]
        self._cw_key = self._cw_keys[0]
        self.errors = 0  # spans skipped because normalizing them raised (a bug: never expected)

    def _failed(self, where: str) -> None:
        """A bug must not lose the batch: the span is left as it came, and the error logged."""
        self.errors += 1
        if self.errors <= _MAX_LOGGED:
            _log.error("normalize failed; span left unchanged", exc_info=True, step=where, errors=self.errors)

    def __call__(self, batch: Batch) -> Batch:
        request = batch.request
        found: list[_Found] = []
        received = batch.received
        self._requests += 1
        if received is None or (self._dense > _DENSE and self._requests % _PROBE):
            # No bytes (JSON intake, or edited beyond single spans), or recent requests were mostly
            # LLM spans (the scan would cost more than it saves): every span.
            self._scan(request, _every_span(request), found)
        else:
            first = self._gate(_UNANCHORED, received, 0, len(received))[0][0]
            ranges = batch.span_ranges() if first >= 0 or batch.touched else []
            if ranges is None:  # unusual framing
                self._scan(request, _every_span(request), found)
            elif ranges:  # else no key the normalizer reads anywhere in the request: nothing to do
                where = self._candidates(batch, received, ranges, first)
                self._dense += (len(where) / len(ranges) - self._dense) / 4
                self._scan(request, where, found)
            else:
                self._dense -= self._dense / 4
        calls: list[LlmCall] = []
        if found:
            if len(found) >= 2:
                try:
                    self._resolve(request, found)
                except Exception:
                    self._failed("resolve")
            write = self._write
            for f in found:
                try:
                    changed = write(f)
                except Exception:
                    self._failed("write")
                    batch.touch(*f.where)  # it may have written part
                    continue
                if changed:
                    batch.touch(*f.where)  # the received bytes still hold every other span
                if f.role == _CALL:
                    calls.append(f.call)  # type: ignore[arg-type]
        batch.llm_calls = calls
        return batch

    def _candidates(self, batch: Batch, raw: bytes, ranges: list[tuple[int, int, int, int, int]],
                    p: int) -> list[tuple[int, int, int]]:
        """The spans whose received bytes hold a key the normalizer reads, in request order (one
        scan of the request; each hit skips to the end of its span), plus the spans an earlier
        processor touched (their received bytes are stale). A key is plain bytes on the wire, so
        a span without a hit has no such attribute: the examination would skip it anyway. `p` is
        the first hit (-1: none)."""
        match = self._gate
        starts = [r[3] for r in ranges]
        end = len(raw)
        out: list[tuple[int, int, int]] = []
        while p >= 0:
            i = bisect_right(starts, p) - 1
            if i >= 0 and p < ranges[i][4]:  # in span i (else in a resource or scope: look further)
                ri, si, ki, _, pos = ranges[i]
                out.append((ri, si, ki))
            else:
                pos = p + 1
            p = match(_UNANCHORED, raw, pos, end)[0][0]
        touched = batch.touched
        if touched:
            out = sorted(set(out) | touched)
        return out

    def _scan(self, request: Any, where: Iterable[tuple[int, int, int]], found: list[_Found]) -> None:
        """Examine the spans at `where` (request order) whose attributes hold an LLM key."""
        key_bits = self._key_bits
        examine = self._examine
        resource_spans = request.resource_spans
        last_rs = last_ss = -1
        rs = ss = spans = None
        service: str | None = None
        resource = None
        scope: str | None = None
        for where_ in where:
            ri, si, ki = where_
            if ri != last_rs:
                rs, last_rs, last_ss = resource_spans[ri], ri, -1
                service = resource = None
            if si != last_ss:
                ss, last_ss = rs.scope_spans[si], si  # type: ignore[union-attr]
                spans = ss.spans
                scope = None
            span = spans[ki]  # type: ignore[index]
            d: dict[str, Any] = {}
            mask = 0
            for kv in span.attributes:
                k = kv.key
                if k in key_bits:
                    d[k] = kv
                    mask |= key_bits[k]
            if not mask & _B_LLM:
                continue  # not an LLM span: the common case
            if scope is None:
                scope = ss.scope.name  # type: ignore[union-attr]
            try:
                f = examine(span, d, mask, scope)
            except Exception:
                self._failed("examine")
                continue
            if f is None:
                continue
            f.scope = scope
            f.where = where_
            if f.call is not None:
                if service is None:
                    service = _service(rs)
                    resource = rs.resource  # type: ignore[union-attr]
                f.call.service = service
                f.call.resource = resource
                f.call.extra_mask = mask >> _EXTRA_SHIFT
                f.call.where = where_
            found.append(f)

    # -- per span -------------------------------------------------------------------------------

    def _examine(self, span: Any, d: dict[str, Any], mask: int, scope: str) -> _Found | None:
        already = inferred = False
        if mask & _B_MARKER:  # otelgate's own markers: decided by an otelgate upstream (or an earlier run)
            if DUPLICATE_OF in d:
                f = _Found(span, d, _DUPLICATE)
                f.marked_dup = True
                if mask & _B_RESPONSE_ID:
                    f.response_id = _first_str(d, _RESPONSE_ID_KEYS)
                return f
            if AGGREGATE in d:
                return None
            already = LLM_CALL in d  # normalized before: canonical counts have the semconv meaning
            kv = d.get(PROVIDER_INFERRED)
            inferred = kv is not None and kv.value.bool_value
        role, operation = _classify(d, span, mask)
        if role != _CALL:
            if already:
                operation = "chat"
            elif _USAGE_KEYS.isdisjoint(d) or (mask & _B_WEAK and not _strong_evidence(d)):
                return None  # hand-written `llm.*` counts that are not a call are not an aggregate either
            else:
                return _Found(span, d, _AGGREGATE, has_usage=True)

        error = span.status.code == _STATUS_ERROR
        if mask & _B_WEAK and not error and span.events:
            # Hand-written spans record the exception without always setting the status.
            error = any(e.name == "exception" for e in span.events)
        if mask & _B_LANGFUSE and not error:
            kv = d.get(LANGFUSE_LEVEL)
            error = kv is not None and kv.value.string_value == "ERROR"

        # Each concept is read from its canonical key when that holds a good value of the right kind
        # (`exact`: nothing to write back), else from the first alias that does.
        get = d.get
        exact = 0

        # Models.
        request_model = response_model = None
        if mask & _B_REQUEST_MODEL:
            kv = get(REQUEST_MODEL)
            if kv is not None and 0 < len(name := kv.value.string_value) <= _MAX_MODEL:
                request_model = name
                exact |= _B_REQUEST_MODEL
            else:
                request_model = _first_str(d, _REQUEST_MODEL_KEYS)
        if mask & _B_RESPONSE_MODEL:
            kv = get(RESPONSE_MODEL)
            if kv is not None and 0 < len(name := kv.value.string_value) <= _MAX_MODEL:
                response_model = name
                exact |= _B_RESPONSE_MODEL
            else:
                response_model = _first_str(d, _RESPONSE_MODEL_KEYS)
        params: Any = None
        if request_model is None and mask & _B_INVOCATION:
            for k in _INVOCATION_KEYS:  # OpenInference: the requested model is only in here
                kv = d.get(k)
                if kv is not None:
                    text = kv.value.string_value
                    params = _json(text)
                    request_model = _invocation_model(params, text)
                    if request_model:
                        break
        if request_model is None and response_model is None and mask & _B_LANGFUSE:
            kv = d.get(LANGFUSE_MODEL)
            if kv is not None:
                # Langfuse's model is the returned snapshot on success, the requested one on errors.
                name = _str(kv)
                if name is not None and len(name) <= _MAX_MODEL:
                    if error:
                        request_model = name
                    else:
                        response_model = name
        model = response_model or request_model

        # Provider.
        provider = None
        if mask & _B_PROVIDER:
            kv = get(PROVIDER)
            if kv is not None:
                raw = kv.value.string_value
                provider = canonical_provider(raw)
                if provider is not None and provider == raw:
                    exact |= _B_PROVIDER
            if provider is None:
                for k in _PROVIDER_KEYS:
                    kv = get(k)
                    if kv is not None:
                        provider = canonical_provider(_jstr(kv) if k[0] == "m" else _str(kv))
                        if provider is not None:
                            break
        if provider is None:
            address, url, port = _host(d) if mask & _B_HOST else (None, None, None)
            provider = infer_provider(model, address, url, port)
            inferred = provider is not None
        elif provider == "openai" and mask & _B_HOST:
            # An OpenAI client pointed at Azure: the host says who served (and bills) it.
            address, url, port = _host(d)
            if address or url:
                host = infer_provider(None, address, url, port)
                if host == "azure.ai.openai" or host == "azure.ai.inference":
                    provider, inferred = host, True
                    exact &= ~_B_PROVIDER

        # Usage.
        inp = out = cr = cw = rs = None
        if mask & _B_INPUT:
            kv = get(INPUT_TOKENS)
            if kv is not None and 0 < (n := kv.value.int_value) <= _MAX_COUNT:
                inp = n
                exact |= _B_INPUT
            else:
                inp = _first_int(d, _INPUT_KEYS)
        if mask & _B_OUTPUT:
            kv = get(OUTPUT_TOKENS)
            if kv is not None and 0 < (n := kv.value.int_value) <= _MAX_COUNT:
                out = n
                exact |= _B_OUTPUT
            else:
                out = _first_int(d, _OUTPUT_KEYS)
        if mask & _B_CACHE_READ:
            kv = get(CACHE_READ_TOKENS)
            if kv is not None and 0 < (n := kv.value.int_value) <= _MAX_COUNT:
                cr = n
                exact |= _B_CACHE_READ
            else:
                cr = _first_int(d, _CACHE_READ_KEYS)
        if mask & _B_CACHE_WRITE:
            kv = get(self._cw_key)
            if kv is not None and 0 < (n := kv.value.int_value) <= _MAX_COUNT:
                cw = n
                exact |= _B_CACHE_WRITE
            else:
                cw = _first_int(d, _CACHE_WRITE_KEYS)
        if mask & _B_REASONING:
            kv = get(REASONING_TOKENS)
            if kv is not None and 0 < (n := kv.value.int_value) <= _MAX_COUNT:
                rs = n
                exact |= _B_REASONING
            else:
                rs = _first_int(d, _REASONING_KEYS)
        input_raw = inp
        native = _native_usage(d) if mask & _B_RAW else None
        if native is not None:
            # The provider's own usage object, already in semconv meaning: each count it has wins.
            counts = [inp, out, cr, cw, rs]
            for i, (n, bit) in enumerate(zip(native, (_B_INPUT, _B_OUTPUT, _B_CACHE_READ, _B_CACHE_WRITE,
                                                      _B_REASONING))):
                if n is not None and n != counts[i]:
                    counts[i] = n
                    exact &= ~bit
            inp, out, cr, cw, rs = counts
            if input_raw is None:
                input_raw = inp
        elif inp is None and out is None:
            if mask & _B_JSON_USAGE:
                usage = None
                kv = d.get(LANGFUSE_USAGE)
                if kv is not None:
                    usage = _usage_from_json(_json(kv.value.string_value))
                if usage is None:
                    kv = d.get(MLFLOW_USAGE)
                    if kv is not None:
                        value = _json(kv.value.string_value)
                        if isinstance(value, str):  # encoded twice
                            value = _json(value)
                        usage = _usage_from_json(value)
                if usage is not None:
                    inp, out = usage[0], usage[1]
                    input_raw = inp
                    if cr is None:
                        cr = usage[2]
                    if cw is None:
                        cw = usage[3]
                    if rs is None:
                        rs = usage[4]
        elif inp is not None and not already:
            vercel = mask & _B_VERCEL or scope == "ai"
            anthropic = None
            if vercel and (cr is None or cw is None):
                anthropic = provider == "anthropic" or (model is not None and "claude" in model.lower())
                if anthropic:
                    cr, cw = _vercel_anthropic_cache(d, cr, cw)
            if cr or cw:
                if anthropic is None:
                    anthropic = provider == "anthropic" or (model is not None and "claude" in model.lower())
                includes: bool | None = None
                if vercel:
                    if any(k in d for k in _VERCEL_V6_DETAIL_KEYS):
                        includes = True  # v6: inputTokens is the total, with inputTokenDetails.*
                    else:
                        includes = not anthropic  # v4/v5: Anthropic's own input_tokens
                elif anthropic:
                    includes = _anthropic_includes_cache(scope)
                cache = (cr or 0) + (cw or 0)
                # A count below its parts cannot include them. (Absurd sums are left as they are: the
                # canonical count written must read back the same on the next pass.)
                if (includes is False or inp < cache) and inp + cache <= _MAX_COUNT:
                    inp += cache
                    exact &= ~_B_INPUT
        if mask & _B_LANGSMITH and (cr is None or cw is None or rs is None):
            cr, cw, rs = _langsmith_details(d, cr, cw, rs)
        if out is not None and rs and out < rs and out + rs <= _MAX_COUNT:
            out += rs
            exact &= ~_B_OUTPUT

        # Cost the emitter reported.
        cost = cost_key = None
        if mask & _B_COST:
            if COST_SOURCE in d:  # priced by an otelgate upstream: its figure is kept as it is
                kv = d.get(COST)
                if kv is not None:
                    cost, cost_key = _float(kv), COST
            else:
                for k in _COST_KEYS:
                    kv = d.get(k)
                    if kv is not None and k == COST_AMOUNT and (c := d.get(COST_CURRENCY)) is not None and \
                            c.value.string_value.upper() not in ("", "USD"):
                        continue  # a cost in another currency is not a USD figure
                    if kv is not None:
                        cost = _reported_cost(k, kv)
                        if cost is not None:
                            cost_key = k
                            break

        tier = None
        if mask & _B_TIER:
            tier = _tier(d)
        if tier is None and mask & _B_INVOCATION:
            tier = _requested_tier(d, params)

        call = LlmCall(
            span, "", operation or "chat", provider, inferred, request_model, response_model, inp, out, cr, cw, rs,
            tier, cost, cost_key, span.start_time_unix_nano, span.end_time_unix_nano, error, d)
        f = _Found(span, d, _CALL, call, input_raw, inp is not None or out is not None)
        f.exact = exact
        if mask & _B_RESPONSE_ID:
            f.response_id = _first_str(d, _RESPONSE_ID_KEYS)
        return f

    # -- batch-wide decisions -------------------------------------------------------------------

    def _resolve(self, request: Any, found: list[_Found]) -> None:
        """Wrappers (a call with a call below it) and duplicates (same trace and response id)."""
        callish = [f for f in found if f.role == _CALL or f.role == _DUPLICATE]
        if len(callish) < 2:
            return
        per_trace: dict[bytes, int] = {}
        for f in callish:
            span = f.span
            f.trace_id, f.span_id, f.parent_id = span.trace_id, span.span_id, span.parent_span_id
            per_trace[f.trace_id] = per_trace.get(f.trace_id, 0) + 1
        traces = {t for t, n in per_trace.items() if n >= 2}
        if not traces:
            return
        parents: dict[tuple[bytes, bytes], bytes] = {}
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    t = span.trace_id
                    if t in traces:
                        parents[(t, span.span_id)] = span.parent_span_id
        index = {(f.trace_id, f.span_id): f for f in callish if f.trace_id in traces}
        for f in callish:
            t = f.trace_id
            if t not in traces:
                continue
            parent, hops, seen = f.parent_id, 0, {f.span_id}
            while parent and hops < _MAX_DEPTH and parent not in seen:
                seen.add(parent)
                above = index.get((t, parent))
                if above is not None:
                    above.call_below = True
                if above is not None and (above.role == _CALL or above.role == _WRAPPER) and not above.marked_dup:
                    if not above.has_usage:
                        above.role = _WRAPPER  # e.g. a failed framework span around the failed SDK call
                    elif f.role == _CALL and _same_usage(above, f):
                        above.role = _AGGREGATE
                parent = parents.get((t, parent), b"")
                hops += 1
        groups: dict[tuple[bytes, str], list[_Found]] = {}
        for f in callish:
            if f.role == _CALL and f.response_id and f.trace_id in traces:
                groups.setdefault((f.trace_id, f.response_id), []).append(f)
        for group in groups.values():
            if len(group) < 2:
                continue
            keep = max(group, key=_completeness)  # the first of the most complete
            for f in group:
                if f is not keep:
                    f.role = _DUPLICATE
                    f.duplicate_of = keep.span_id
        if len({f.scope for f in callish}) >= 2:  # duplicates need two instrumentations
            _sibling_duplicates(callish, traces)
        for f in callish:  # Logfire's stream-end spans have no duration
            c = f.call
            if c is not None and f.has_usage and c.start_time_unix_nano == c.end_time_unix_nano:
                _stream_halves(callish, traces)
                break

    # -- output ---------------------------------------------------------------------------------

    def _write(self, f: _Found) -> bool:
        span, d, role = f.span, f.attrs, f.role
        if role == _CALL:
            c: LlmCall = f.call  # type: ignore[assignment]
            exact = f.exact
            changed = False
            if c.provider is not None and not exact & _B_PROVIDER and _put_str(span, d, PROVIDER, c.provider):
                changed = True
            if _put_str(span, d, OPERATION, c.operation):
                changed = True
            if c.request_model is not None and not exact & _B_REQUEST_MODEL and \
                    _put_str(span, d, REQUEST_MODEL, c.request_model):
                changed = True
            if c.response_model is not None and not exact & _B_RESPONSE_MODEL and \
                    _put_str(span, d, RESPONSE_MODEL, c.response_model):
                changed = True
            if c.input_tokens is not None and not exact & _B_INPUT and _put_int(span, d, INPUT_TOKENS, c.input_tokens):
                changed = True
            if c.output_tokens is not None and not exact & _B_OUTPUT and \
                    _put_int(span, d, OUTPUT_TOKENS, c.output_tokens):
                changed = True
            if c.cache_read_tokens is not None and not exact & _B_CACHE_READ and \
                    _put_int(span, d, CACHE_READ_TOKENS, c.cache_read_tokens):
                changed = True
            if c.cache_write_tokens is not None:
                for key in self._cw_keys if not exact & _B_CACHE_WRITE else self._cw_keys[1:]:
                    if _put_int(span, d, key, c.cache_write_tokens):
                        changed = True
            if c.reasoning_tokens is not None and not exact & _B_REASONING and \
                    _put_int(span, d, REASONING_TOKENS, c.reasoning_tokens):
                changed = True
            if _put_true(span, d, LLM_CALL):
                changed = True
            if c.provider_inferred and _put_true(span, d, PROVIDER_INFERRED):
                changed = True
            if not self._keep and _remove_folded(span, d, c, self._cw_keys):
                changed = True
            return changed
        if role == _DUPLICATE:
            return False if f.marked_dup else _put_str(span, d, DUPLICATE_OF, f.duplicate_of.hex())
        if role == _AGGREGATE:
            return _put_true(span, d, AGGREGATE)  # only spans that carry usage become aggregates
        return False  # _WRAPPER: a call span around another call, without usage of its own


def _host(d: dict[str, Any]) -> tuple[str | None, str | None, int | None]:
    kv = d.get("server.address")
    address = _str(kv) if kv is not None else None
    kv = d.get("url.full") or d.get("gen_ai.openai.api_base")
    url = _str(kv) if kv is not None else None
    kv = d.get("server.port")
    port = _int(kv) if kv is not None else None
    return address, url, port


def _tier(d: dict[str, Any]) -> str | None:
    for k in _TIER_KEYS:
        kv = d.get(k)
        if kv is not None:
            tier = _jstr(kv) if k[0] == "l" else _str(kv)  # Langfuse metadata values are JSON
            if tier and len(tier) <= 32:
                return tier
    return None


def _requested_tier(d: dict[str, Any], params: Any) -> str | None:
    """The tier asked for, from OpenInference invocation parameters or Langfuse model parameters."""
    if not isinstance(params, dict):
        kv = d.get(LANGFUSE_PARAMS)
        params = _json(kv.value.string_value) if kv is not None else None
    if isinstance(params, dict):
        tier = params.get("service_tier")
        if isinstance(tier, str) and tier and len(tier) <= 32:
            return tier
    return None


def _langsmith_details(d: dict[str, Any], cr: int | None, cw: int | None,
                       rs: int | None) -> tuple[int | None, int | None, int | None]:
    """LangSmith's token details: Python-repr (or JSON) dicts `{'cache_read': 10}`."""
    kv = d.get(LANGSMITH_INPUT_DETAILS)
    if kv is not None and (cr is None or cw is None):
        details = _json_or_repr(kv.value.string_value)
        if isinstance(details, dict):
            if cr is None:
                cr = _get(details, "cache_read", "cached_tokens", "cache_read_input_tokens")
            if cw is None:
                cw = _get(details, "cache_creation", "cache_write", "cache_creation_input_tokens")
    kv = d.get(LANGSMITH_OUTPUT_DETAILS)
    if kv is not None and rs is None:
        details = _json_or_repr(kv.value.string_value)
        if isinstance(details, dict):
            rs = _get(details, "reasoning", "reasoning_tokens")
    return cr, cw, rs


def _service(rs: Any) -> str:
    for kv in rs.resource.attributes:
        if kv.key == "service.name":
            return kv.value.string_value
    return ""


def _invocation_model(params: Any, text: str) -> str | None:
    if isinstance(params, dict):
        model = params.get("model") or params.get("model_name")
        return model if isinstance(model, str) and model and len(model) <= _MAX_MODEL else None
    if len(text) > _MAX_JSON:  # too large to parse: the first "model" key
        m = _INVOCATION_MODEL.search(text, 0, _MAX_JSON)
        return m.group(1) if m else None
    return None


def _vercel_anthropic_cache(d: dict[str, Any], cr: int | None, cw: int | None) -> tuple[int | None, int | None]:
    """Vercel AI SDK with Anthropic: cache counts in `ai.response.providerMetadata` (JSON)."""
    kv = d.get(VERCEL_PROVIDER_METADATA)
    if kv is None:
        return cr, cw
    meta = _json(kv.value.string_value)
    if isinstance(meta, dict):
        for vendor in ("anthropic", "bedrock", "vertex"):
            sub = meta.get(vendor)
            if isinstance(sub, dict):
                if cr is None:
                    cr = _get(sub, "cacheReadInputTokens")
                if cw is None:
                    cw = _get(sub, "cacheCreationInputTokens", "cacheWriteInputTokens")
                    usage = sub.get("usage")
                    if cw is None and isinstance(usage, dict):
                        cw = _get(usage, "cache_creation_input_tokens", "cacheWriteInputTokens")
    return cr, cw


def _reported_cost(key: str, kv: Any) -> float | None:
    if key == LANGFUSE_COST or key == "mlflow.llm.cost":
        s = kv.value.string_value
        if not s:
            return _float(kv)
        value = _json(s)
        if isinstance(value, str):  # MLflow encodes values once more
            value = _json(value)
        if isinstance(value, dict):
            for total_key in ("total", "total_cost", "totalCost"):
                if total_key in value:
                    return _money(value[total_key])
            parts = [_money(v) for v in value.values()]
            if not parts or any(p is None for p in parts):
                return None
            return _money(sum(parts))  # type: ignore[arg-type]
        return _money(value)
    return _float(kv)


_MAX_SIBLINGS = 64  # calls under one parent compared pairwise; a larger fan-out is left as it is


def _sibling_duplicates(callish: list[_Found], traces: set[bytes]) -> None:
    """Two instrumentations on one call that share no response id (LangChain's `ChatOpenAI.chat`
    beside OpenLLMetry's `openai.response`): sibling call spans (same trace, same parent) from
    different instrumentation scopes, overlapping in time, with compatible models and providers
    and the same usage, neither with a call span below it. One library's own spans are never
    merged (two identical calls it makes are two calls), nor are calls that do not overlap, nor
    siblings that each wrap instrumented calls of their own."""
    siblings: dict[tuple[bytes, bytes], list[_Found]] = {}
    for f in callish:
        if f.role == _CALL and f.has_usage and not f.call_below and f.trace_id in traces:
            siblings.setdefault((f.trace_id, f.parent_id), []).append(f)
    for group in siblings.values():
        if len(group) < 2 or len(group) > _MAX_SIBLINGS or len({f.scope for f in group}) < 2:
            continue
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a.role != _CALL or b.role != _CALL or a.scope == b.scope:
                    continue
                ca, cb = a.call, b.call
                if ca is None or cb is None:
                    continue
                if not (ca.start_time_unix_nano < cb.end_time_unix_nano
                        and cb.start_time_unix_nano < ca.end_time_unix_nano):
                    continue
                if ca.provider and cb.provider and ca.provider != cb.provider:
                    continue
                if not _same_usage(a, b) or not _same_model(ca, cb):
                    continue
                keep, drop = (a, b) if _completeness(a) >= _completeness(b) else (b, a)
                drop.role = _DUPLICATE
                drop.duplicate_of = keep.span_id


def _stream_halves(callish: list[_Found], traces: set[bytes]) -> None:
    """Logfire records a streamed call as two spans of one scope under one parent: the request span
    (no usage) and, once the stream is consumed, a zero-duration span (`streaming response from
    ...`) with the usage. The request half is then not a call of its own (a wrapper): the usage
    half stands for the call. Paired in time order, each usage half with the latest request half
    of the same model that started before it."""
    groups: dict[tuple[bytes, bytes, str], list[_Found]] = {}
    for f in callish:
        if f.role == _CALL and f.trace_id in traces and f.call is not None:
            groups.setdefault((f.trace_id, f.parent_id, f.scope), []).append(f)
    for group in groups.values():
        if len(group) < 2 or len(group) > _MAX_SIBLINGS:
            continue
        halves = [f for f in group if f.has_usage and f.call.start_time_unix_nano == f.call.end_time_unix_nano]
        requests = [f for f in group if not f.has_usage and not f.call.error and not f.call_below]
        if not halves or not requests:
            continue
        requests.sort(key=lambda f: f.call.start_time_unix_nano)
        for half in sorted(halves, key=lambda f: f.call.start_time_unix_nano):
            t = half.call.start_time_unix_nano
            for req in reversed(requests):
                if req.role == _CALL and req.call.start_time_unix_nano <= t and _same_model(req.call, half.call):
                    req.role = _WRAPPER
                    break


def _same_model(a: LlmCall, b: LlmCall) -> bool:
    """Some model of one is some model of the other, or a dated snapshot of it."""
    for x in (a.request_model, a.response_model):
        if not x:
            continue
        for y in (b.request_model, b.response_model):
            if y and (x == y or x.startswith(y) or y.startswith(x)):
                return True
    return False


def _same_usage(a: _Found, b: _Found) -> bool:
    """Same call seen twice: equal output, and equal input as reported or as normalized."""
    ca, cb = a.call, b.call
    if ca is None or cb is None or ca.output_tokens != cb.output_tokens:
        return False
    return ca.input_tokens in (cb.input_tokens, b.input_raw) or a.input_raw in (cb.input_tokens, b.input_raw)


def _completeness(f: _Found) -> int:
    c = f.call
    if c is None:
        return -1
    return sum(v is not None for v in (c.input_tokens, c.output_tokens, c.cache_read_tokens, c.cache_write_tokens,
                                       c.reasoning_tokens, c.request_model, c.response_model, c.provider))


def _remove_folded(span: Any, d: dict[str, Any], call: LlmCall, written: tuple[str, ...]) -> bool:
    """Delete the scalar aliases of each concept whose canonical attribute was written."""
    remove = set()
    for field, aliases in _FOLDABLE:
        if getattr(call, field) is not None:
            for k in aliases:
                if k in d and k not in written:
                    remove.add(k)
    if call.cache_write_tokens is not None and CACHE_WRITE_TOKENS in d and CACHE_WRITE_TOKENS not in written:
        remove.add(CACHE_WRITE_TOKENS)
    if not remove:
        return False
    attrs = span.attributes
    for i in range(len(attrs) - 1, -1, -1):
        if attrs[i].key in remove:
            del attrs[i]
    for k in remove:
        del d[k]
    return True


def settings(config: Any) -> object:
    """The normalizer also reads the attribution sources' keys (see `Normalizer`)."""
    return (config.pipeline.normalize, config.attribution)


def create(config: Config, context: ProcessorContext) -> Processor:
    attribution = getattr(context.config, "attribution", None)
    return Normalizer(config, span_keys(attribution) if attribution is not None else None)
