"""`LlmCall`: what the normalizer learned about one provider call, handed to the next processors.

The normalizer reads a span's attributes once and records the facts here (with a reference to
the protobuf span, so later processors edit it in place without reading its attributes again).
The pricer fills the cost fields, attribution the owner fields (tenant, app, user, session,
environment); the LLM metrics and the usage accounting read everything. Spans that are not one
provider call (aggregates, wrappers, duplicates) never get an `LlmCall`, so nothing downstream
can count them twice.

Token counts follow the OTel GenAI semantic conventions whatever the dialect said:
`input_tokens` INCLUDES cache reads and cache writes, `output_tokens` INCLUDES reasoning. A count
the span did not report is None (never a guess); a total may be derived only from counts present.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

# Canonical attributes written by the normalizer (OTel GenAI semantic conventions).
PROVIDER = "gen_ai.provider.name"
OPERATION = "gen_ai.operation.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
CACHE_WRITE_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
CACHE_WRITE_TOKENS_NEXT = "gen_ai.usage.cache_write.input_tokens"  # the rename; see normalize `semconv`
REASONING_TOKENS = "gen_ai.usage.reasoning.output_tokens"

# Markers written by otelgate.
LLM_CALL = "otelgate.llm.call"  # true on each span that is one priced provider call
AGGREGATE = "otelgate.llm.aggregate"  # true on a span whose usage repeats its children's
DUPLICATE_OF = "otelgate.duplicate_of"  # span id (hex) of the span that stands for the same call
PROVIDER_INFERRED = "otelgate.provider.inferred"

# Written by the pricer.
COST = "gen_ai.usage.cost"  # USD total; Langfuse and OpenLIT read this key
COST_AMOUNT = "gen_ai.usage.cost.amount"  # the proposed semconv cost: amount, currency, source
COST_CURRENCY = "gen_ai.usage.cost.currency"
COST_SOURCE_SEMCONV = "gen_ai.usage.cost.source"
COST_INPUT = "otelgate.cost.input_usd"
COST_OUTPUT = "otelgate.cost.output_usd"
COST_SOURCE = "otelgate.cost.source"  # computed | override | reported | unknown
PRICE_MODEL = "otelgate.price.model"


@dataclass(slots=True)
class LlmCall:
    span: Span
    service: str  # resource `service.name`, "" when absent
    operation: str  # canonical gen_ai.operation.name: chat, text_completion, embeddings, ...
    provider: str | None  # canonical provider name (see gateway.llm.providers), None if unknown
    provider_inferred: bool
    request_model: str | None
    response_model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    service_tier: str | None  # e.g. "default", "flex", "priority", "standard"
    reported_cost: float | None  # USD the emitter already reported, if any
    reported_cost_key: str | None  # the attribute it came from
    start_time_unix_nano: int
    end_time_unix_nano: int
    error: bool  # span status ERROR
    # The span's attributes the LLM processors read (cost keys included), by key, as the
    # normalizer found them in its one pass: the pricer looks them up here instead of scanning.
    attributes: dict[str, KeyValue] | None = None
    # Filled by the pricer:
    cost_usd: float | None = None
    cost_input_usd: float | None = None
    cost_output_usd: float | None = None
    cost_source: str | None = None  # computed | override | reported | unknown
    price_model: str | None = None
    # The resource the span came with (set by the normalizer), for attribution; and which of the
    # attribution's keys the span has, one bit per dimension (None: not known, look).
    resource: Resource | None = None
    extra_mask: int | None = None
    # Where the span is in its request, (resource, scope, span) index: a processor that edits the
    # span says so with `batch.touch(*call.where)` (None: not known, set `batch.raw = None`).
    where: tuple[int, int, int] | None = None
    # Filled by attribution (gateway/usage/attribution.py): who the call belongs to; None: unknown.
    tenant: str | None = None
    app: str | None = None
    user: str | None = None
    session: str | None = None
    environment: str | None = None

    @property
    def model(self) -> str | None:
        """The model to price and label by: the response model when known, else the requested one."""
        return self.response_model or self.request_model
