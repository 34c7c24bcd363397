"""`pipeline.llm_metrics`: Prometheus metrics of LLM calls (requests, tokens, cost, latency).

Counts only the batch's `llm_calls` (one per provider call, as the normalizer decided), so
aggregates and duplicates are never counted twice. Label values are capped: past
`max_models` distinct models (or `max_services` services, `max_tenants` tenants ...) new ones
are counted under `__other__`, so a flood of distinct names cannot exhaust memory.

The `tenant`, `app` and `environment` labels are what attribution (`pipeline.account`, which
runs before) resolved; users and sessions never become labels (one series per user would be
unbounded): they live in the usage store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from gateway.batch import Batch
from gateway.configtypes import StrictModel
from gateway.llm.call import LlmCall
from gateway.processors import Processor, ProcessorContext
from gateway.telemetry import Metrics

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


class LlmMetrics:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._m = metrics
        self._model = _Capped(config.max_models)
        self._response_model = _Capped(config.max_models)
        self._service = _Capped(config.max_services)
        self._tenant = _Capped(config.max_tenants)
        self._app = _Capped(config.max_apps)
        self._environment = _Capped(config.max_environments)
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, family: Any, *labels: str) -> Any:
        """`family.labels(*labels)`, cached: prometheus-client validates labels on every call."""
        key = (id(family), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def __call__(self, batch: Batch) -> Batch:
        for call in batch.llm_calls or ():
            self._record(call)
        return batch

    def _record(self, call: LlmCall) -> None:
        m, child = self._m, self._child
        # `model` is what the caller asked for, on every series and whether the call failed or not
        # (a failed call has no response model), so errors / requests by model is one PromQL
        # division. The model that answered is `response_model`, on the request counter only.
        model = self._model(call.request_model or call.response_model)
        service, provider = self._service(call.service), call.provider or UNKNOWN
        answered = self._response_model(call.response_model) if call.response_model else ""
        app = self._app(call.app)
        owner = (self._tenant(call.tenant), app, self._environment(call.environment))
        child(m.llm_requests, service, provider, model, answered, call.operation or UNKNOWN,
              "error" if call.error else "ok", *owner).inc()
        for kind, count in (("input", call.input_tokens), ("output", call.output_tokens),
                            ("cache_read", call.cache_read_tokens), ("cache_write", call.cache_write_tokens),
                            ("reasoning", call.reasoning_tokens)):
            if count:
                child(m.llm_tokens, service, provider, model, kind, *owner).inc(count)
        if call.input_tokens is not None:
            child(m.llm_input_tokens_per_call, app, model).observe(call.input_tokens)
        if call.cost_usd is not None and call.cost_source:
            child(m.llm_cost, service, provider, model, call.cost_source, *owner).inc(call.cost_usd)
        elif call.cost_source == "unknown":
            child(m.llm_unpriced, provider, model).inc()
        duration = (call.end_time_unix_nano - call.start_time_unix_nano) / 1e9
        if duration >= 0 and call.end_time_unix_nano:
            child(m.llm_duration, service, provider, model, *owner).observe(duration)

def create(config: Config, context: ProcessorContext) -> Processor:
    record: Callable[[Batch], Batch] = LlmMetrics(config, context.metrics)
    return record
