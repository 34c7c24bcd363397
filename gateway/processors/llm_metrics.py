"""`pipeline.llm_metrics`: Prometheus metrics of LLM calls (requests, tokens, cost, latency).

Counts only the batch's `llm_calls` (one per provider call, as the normalizer decided), so
aggregates and duplicates are never counted twice. Label values are capped: past
`max_models` distinct models (or `max_services` services, `max_tenants` tenants ...) new ones
are counted under `__other__`, so a flood of distinct names cannot exhaust memory.

The `tenant`, `app` and `environment` labels are what attribution (`pipeline.account`, which
runs before) resolved; users and sessions never become labels (one series per user would be
unbounded): they live in the usage store.

Counted in bulk: the families are plain ones (gateway/telemetry.py `PlainCounter`,
`PlainHistogram`: Python numbers, no lock per increment, the same /metrics text as
prometheus-client's), and a call finds all its series through one cached row per label set,
so a call costs one dict lookup and a few additions instead of six labelled, locked updates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import Field

from gateway.batch import Batch
from gateway.configtypes import StrictModel
from gateway.llm.call import LlmCall
from gateway.processors import Processor, ProcessorContext
from gateway.telemetry import Metrics, PlainBuckets, PlainValue

OTHER = "__other__"
UNKNOWN = "unknown"


class Config(StrictModel):
    enabled: bool = True
    max_models: int = Field(500, gt=0, description="Distinct model label values before `__other__`.")
    max_services: int = Field(200, gt=0, description="Distinct service label values before `__other__`.")
    max_tenants: int = Field(100, gt=0, description="Distinct tenant label values before `__other__`.")
    max_apps: int = Field(200, gt=0, description="Distinct app label values before `__other__`.")
    max_environments: int = Field(20, gt=0, description="Distinct environment label values before `__other__`.")


class _Capped:
    """Maps label values to themselves until `limit` distinct ones were seen, then to `__other__`."""

    def __init__(self, limit: int) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, value: str | None) -> str:
        value = value or UNKNOWN
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


_TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")
_MAX_ROWS = 4096  # label rows cached (by the call's raw values) before the cache starts afresh


class _Row:
    """The series one label set of LLM calls adds to, resolved once (capped values, children).

    A series is created when it is first added to, as before (a token type never reported has
    no series), so the exposition has the same series whatever the cache holds."""

    __slots__ = ("requests", "tokens", "cost", "unpriced", "duration", "input_tokens", "_m", "_names")

    def __init__(self, m: Metrics, service: str, provider: str, model: str, answered: str, operation: str,
                 status: str, owner: tuple[str, str, str], cost_source: str | None) -> None:
        self._m, self._names = m, (service, provider, model, owner, cost_source)
        self.requests = m.llm_requests.labels(service, provider, model, answered, operation, status, *owner)
        self.tokens: list[PlainValue | None] = [None] * len(_TOKEN_KINDS)
        self.cost: PlainValue | None = None
        self.unpriced: PlainValue | None = None
        self.duration: PlainBuckets | None = None
        self.input_tokens: PlainBuckets | None = None

    def token(self, i: int) -> PlainValue:
        service, provider, model, owner, _ = self._names
        child = self.tokens[i] = self._m.llm_tokens.labels(service, provider, model, _TOKEN_KINDS[i], *owner)
        return child

    def cost_child(self) -> PlainValue:
        service, provider, model, owner, source = self._names
        child = self.cost = self._m.llm_cost.labels(service, provider, model, source or "", *owner)
        return child

    def unpriced_child(self) -> PlainValue:
        _, provider, model, _, _ = self._names
        child = self.unpriced = self._m.llm_unpriced.labels(provider, model)
        return child

    def duration_child(self) -> PlainBuckets:
        service, provider, model, owner, _ = self._names
        child = self.duration = self._m.llm_duration.labels(service, provider, model, *owner)
        return child

    def input_child(self) -> PlainBuckets:
        _, _, model, owner, _ = self._names
        child = self.input_tokens = self._m.llm_input_tokens_per_call.labels(owner[1], model)
        return child


class LlmMetrics:
    """Adds each batch's LLM calls to the families, one dict lookup per call.

    The calls' raw label values (before capping) find a cached `_Row` of resolved series, whose
    plain numbers are added to in place: no label validation, no lock, no capping per call. A
    raw value maps to the same capped one for the processor's life (`_Capped` only grows), so
    the cache changes nothing in what is counted where."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._m = metrics
        self._model = _Capped(config.max_models)
        self._response_model = _Capped(config.max_models)
        self._service = _Capped(config.max_services)
        self._tenant = _Capped(config.max_tenants)
        self._app = _Capped(config.max_apps)
        self._environment = _Capped(config.max_environments)
        self._rows: dict[tuple[Any, ...], _Row] = {}

    def __call__(self, batch: Batch) -> Batch:
        calls = batch.llm_calls
        if calls:
            self.record(calls)
        return batch

    def record(self, calls: Iterable[LlmCall]) -> None:
        rows = self._rows
        for call in calls:
            source = call.cost_source
            key = (call.service, call.provider, call.request_model, call.response_model, call.operation, call.error,
                   call.tenant, call.app, call.environment, source)
            row = rows.get(key)
            if row is None:
                row = self._row(key)
            row.requests.value += 1
            n = call.input_tokens
            if n is not None:
                (row.input_tokens or row.input_child()).observe(n)
                if n:
                    (row.tokens[0] or row.token(0)).value += n
            if n := call.output_tokens:
                (row.tokens[1] or row.token(1)).value += n
            if n := call.cache_read_tokens:
                (row.tokens[2] or row.token(2)).value += n
            if n := call.cache_write_tokens:
                (row.tokens[3] or row.token(3)).value += n
            if n := call.reasoning_tokens:
                (row.tokens[4] or row.token(4)).value += n
            cost = call.cost_usd
            if cost is not None and source:
                (row.cost or row.cost_child()).value += cost
            elif source == "unknown":
                (row.unpriced or row.unpriced_child()).value += 1
            end = call.end_time_unix_nano
            if end:
                duration = (end - call.start_time_unix_nano) / 1e9
                if duration >= 0:
                    (row.duration or row.duration_child()).observe(duration)

    def _row(self, key: tuple[Any, ...]) -> _Row:
        service, provider, request_model, response_model, operation, error, tenant, app, environment, source = key
        # `model` is what the caller asked for, on every series and whether the call failed or not
        # (a failed call has no response model), so errors / requests by model is one PromQL
        # division. The model that answered is `response_model`, on the request counter only.
        model = self._model(request_model or response_model)
        service = self._service(service)
        answered = self._response_model(response_model) if response_model else ""
        owner = (self._tenant(tenant), self._app(app), self._environment(environment))
        row = _Row(self._m, service, provider or UNKNOWN, model, answered, operation or UNKNOWN,
                   "error" if error else "ok", owner, source)
        if len(self._rows) >= _MAX_ROWS:
            self._rows.clear()  # bounded whatever the traffic; the series stay in the families
        self._rows[key] = row
        return row


def create(config: Config, context: ProcessorContext) -> Processor:
    record: Callable[[Batch], Batch] = LlmMetrics(config, context.metrics)
    return record
