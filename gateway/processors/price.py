"""Price each LLM call the normalizer found, and write the cost on its span.

Per call (`batch.llm_calls`), in this order:

* the span already carries `otelgate.cost.source` (it went through an otelgate before): nothing
  changes; the call's cost fields are read back from the span;
* no token counts at all (e.g. a failed call): nothing to price, nothing written (unless the
  emitter reported a non-zero cost anyway, which is kept as below);
* the emitter reported a cost (`call.reported_cost`): kept as is (source `reported`), written to
  `gen_ai.usage.cost` if the span does not carry that key, never recomputed; except a reported
  0 on a call with tokens, which is an emitter that did not know the price: priced as below;
* otherwise the price table (overrides, then genai-prices) quotes it (source `computed` or
  `override`), by the call's start time and service tier; a response model unknown to the
  table falls back to the request model;
* no price known: `otelgate.cost.source=unknown` and no cost attribute (never a guess), and one
  warning per (provider, model) for the life of the processor, saying how to add a price.

Beside `gen_ai.usage.cost` (the key Langfuse and OpenLIT read) every priced call also gets the
proposed semconv cost triple `gen_ai.usage.cost.amount` (the same USD figure),
`gen_ai.usage.cost.currency` (`USD`) and `gen_ai.usage.cost.source` (`computed`, `override` or
`reported`, as `otelgate.cost.source`). An unknown price writes none of the three.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.batch import Batch
from gateway.configtypes import StrictModel
from gateway.llm.call import (
    COST, COST_AMOUNT, COST_CURRENCY, COST_INPUT, COST_OUTPUT, COST_SOURCE, COST_SOURCE_SEMCONV, PRICE_MODEL, LlmCall,
)
from gateway.llm.pricing import Override, PriceTable, Quote, RefreshConfig
from gateway.logs import get_logger
from gateway.otlp.anyvalue import number
from gateway.processors import Processor, ProcessorContext, touch

_log = get_logger("processor.price")

_MAX_WARNED = 1000  # distinct unpriced (provider, model) pairs warned about; then one last line

# Cost splits some emitters report next to their total (OpenInference; Langfuse's JSON details).
_OI_PROMPT = "llm.cost.prompt"
_OI_COMPLETION = "llm.cost.completion"
_LANGFUSE_COST_DETAILS = "langfuse.observation.cost_details"
_WATCHED = frozenset((COST, COST_INPUT, COST_OUTPUT, COST_SOURCE, PRICE_MODEL, _OI_PROMPT, _OI_COMPLETION,
                      _LANGFUSE_COST_DETAILS, COST_AMOUNT, COST_CURRENCY, COST_SOURCE_SEMCONV))


class Config(StrictModel):
    enabled: bool = True
    overrides: list[Override] = []
    refresh: RefreshConfig | None = None


def create(config: Config, context: ProcessorContext) -> Processor:
    table = PriceTable(config.overrides, refresh=config.refresh)
    table.start()
    return PriceProcessor(table)


class PriceProcessor:
    """`Processor`: prices `batch.llm_calls` in place. `close()` stops the refresh thread."""

    def __init__(self, table: PriceTable) -> None:
        self.table = table
        self._warned: set[tuple[str | None, str | None]] = set()

    def close(self) -> None:
        self.table.close()

    def __call__(self, batch: Batch) -> Batch:
        calls = batch.llm_calls
        if not calls:
            return batch
        for call in calls:
            if self.price(call):
                touch(batch, call)
        return batch

    def price(self, call: LlmCall) -> bool:
        """Price one call; True if its span was changed."""
        reported = call.reported_cost
        if reported is not None and not math.isfinite(reported):
            reported = None
        if (call.input_tokens is None and call.output_tokens is None
                and call.cache_read_tokens is None and call.cache_write_tokens is None and not reported):
            return False  # nothing to price (e.g. a failed call; a reported 0 says nothing more)
        if reported == 0.0 and (call.input_tokens or call.output_tokens):
            # A zero for a call that used tokens is an emitter that did not know the price (LiteLLM
            # writes gen_ai.cost.total_cost = 0.0 then), not a bill: the price table decides.
            reported = None

        span = call.span
        seen = call.attributes if call.attributes is not None else _watched_attributes(span)
        if COST_SOURCE in seen:
            _read_back(call, seen)
            return False
        attrs = span.attributes  # fetched once: each `span.attributes` makes a new container object

        if reported is not None:
            cost = float(reported)
            call.cost_usd, call.cost_source = cost, "reported"
            if COST not in seen:
                _put(attrs, seen, COST, cost)
            split = _reported_split(seen)
            if split is not None:
                call.cost_input_usd, call.cost_output_usd = split
                _put(attrs, seen, COST_INPUT, split[0])
                _put(attrs, seen, COST_OUTPUT, split[1])
            _put_source(attrs, seen, "reported")
            _put_semconv(attrs, seen, cost, "reported")
            return True

        quote = self._quote(call)
        if quote is None:
            call.cost_source = "unknown"
            _put_source(attrs, seen, "unknown")
            self._warn_unknown(call)
            return True

        call.cost_usd = quote.total_usd
        call.cost_input_usd = quote.input_usd
        call.cost_output_usd = quote.output_usd
        call.cost_source = quote.source
        call.price_model = quote.matched
        _put(attrs, seen, COST, quote.total_usd)
        _put(attrs, seen, COST_INPUT, quote.input_usd)
        _put(attrs, seen, COST_OUTPUT, quote.output_usd)
        _put_source(attrs, seen, quote.source)
        _put(attrs, seen, PRICE_MODEL, quote.matched)
        _put_semconv(attrs, seen, quote.total_usd, quote.source)
        return True

    def _quote(self, call: LlmCall) -> Quote | None:
        at = call.start_time_unix_nano or None  # 0 = unknown start time: price as of now
        kwargs: dict[str, Any] = {
            "input_tokens": call.input_tokens or 0,
            "output_tokens": call.output_tokens or 0,
            "cache_read_tokens": call.cache_read_tokens or 0,
            "cache_write_tokens": call.cache_write_tokens or 0,
            "at": at,
            "service_tier": call.service_tier,
        }
        quote = None
        if call.response_model:
            quote = self.table.quote(call.response_model, call.provider, **kwargs)
        if quote is None and call.request_model and call.request_model != call.response_model:
            quote = self.table.quote(call.request_model, call.provider, **kwargs)
        return quote

    def _warn_unknown(self, call: LlmCall) -> None:
        key = (call.provider, call.model)
        if key in self._warned or len(self._warned) > _MAX_WARNED:
            return
        self._warned.add(key)
        if len(self._warned) > _MAX_WARNED:
            _log.warning("no price known for many models; not naming more of them", limit=_MAX_WARNED)
            return
        model = call.model or "<model>"
        scope = f"provider: {call.provider}, " if call.provider else ""
        _log.warning(
            "price unknown",
            provider=call.provider or "", model=call.model or "", request_model=call.request_model or "",
            effect="spans get otelgate.cost.source=unknown and no cost",
            fix=f"add to pipeline.price.overrides: {{model: {model}, {scope}input_per_mtok: <USD>, output_per_mtok: <USD>}}",
        )


def _watched_attributes(span: Span) -> dict[str, KeyValue]:
    """The attributes this processor reads or writes, by key (one pass over the span); used when
    the normalizer did not hand them over in `LlmCall.attributes`."""
    found: dict[str, KeyValue] = {}
    watched = _WATCHED
    for kv in span.attributes:
        key = kv.key
        if key in watched and key not in found:
            found[key] = kv
    return found


def _number(kv: KeyValue | None) -> float | None:
    return None if kv is None else number(kv.value)


def _read_back(call: LlmCall, seen: dict[str, KeyValue]) -> None:
    """Fill the call's cost fields from a span priced by an earlier otelgate."""
    call.cost_source = seen[COST_SOURCE].value.string_value or None
    call.cost_usd = _number(seen.get(COST))
    call.cost_input_usd = _number(seen.get(COST_INPUT))
    call.cost_output_usd = _number(seen.get(COST_OUTPUT))
    if PRICE_MODEL in seen:
        call.price_model = seen[PRICE_MODEL].value.string_value or None


def _reported_split(seen: dict[str, KeyValue]) -> tuple[float, float] | None:
    """An input/output split the emitter reported with its total: OpenInference
    `llm.cost.prompt`/`.completion`, or Langfuse cost details with `input` and `output`."""
    if _OI_PROMPT in seen and _OI_COMPLETION in seen:
        prompt, completion = _number(seen[_OI_PROMPT]), _number(seen[_OI_COMPLETION])
        if prompt is not None and completion is not None:
            return prompt, completion
    if _LANGFUSE_COST_DETAILS in seen:
        try:
            details = orjson.loads(seen[_LANGFUSE_COST_DETAILS].value.string_value)
        except orjson.JSONDecodeError:
            return None
        if isinstance(details, dict):
            inp, out = details.get("input"), details.get("output")
            if isinstance(inp, (int, float)) and isinstance(out, (int, float)) and not isinstance(inp, bool) \
                    and not isinstance(out, bool):
                return float(inp), float(out)
    return None


Attributes = Any  # a span's repeated KeyValue field (`span.attributes`)

_USD = KeyValue(key=COST_CURRENCY, value=AnyValue(string_value="USD"))
_SOURCES = {s: KeyValue(key=COST_SOURCE_SEMCONV, value=AnyValue(string_value=s))
            for s in ("computed", "override", "reported")}
_OTELGATE_SOURCES = {s: KeyValue(key=COST_SOURCE, value=AnyValue(string_value=s))
                     for s in ("computed", "override", "reported", "unknown")}


def _put_source(attrs: Attributes, seen: dict[str, KeyValue], source: str) -> None:
    """`otelgate.cost.source`: copied in from a prebuilt value (the pricer's most common write)."""
    kv = _OTELGATE_SOURCES.get(source)
    if COST_SOURCE in seen or kv is None:
        _put(attrs, seen, COST_SOURCE, source)
    else:
        attrs.append(kv)


def _put_semconv(attrs: Attributes, seen: dict[str, KeyValue], cost: float, source: str) -> None:
    """The semconv cost triple; the two constant strings are copied in from prebuilt values."""
    _put(attrs, seen, COST_AMOUNT, cost)
    if COST_CURRENCY in seen:
        seen[COST_CURRENCY].value.string_value = "USD"
    else:
        attrs.append(_USD)
    kv = _SOURCES.get(source)
    if COST_SOURCE_SEMCONV in seen or kv is None:
        _put(attrs, seen, COST_SOURCE_SEMCONV, source)
    else:
        attrs.append(kv)


def _put(attrs: Attributes, seen: dict[str, KeyValue], key: str, value: float | str) -> None:
    """Set attribute `key` (a double or a string), in place if the span has it, else added."""
    kv = seen.get(key)
    if kv is None:
        kv = seen[key] = attrs.add(key=key)
    if isinstance(value, str):
        kv.value.string_value = value
    else:
        kv.value.double_value = value
