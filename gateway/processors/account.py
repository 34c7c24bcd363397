"""`pipeline.account`: attribute each LLM call to its owner, and account for it.

Runs after pricing and before the LLM metrics, on `batch.llm_calls` only:

* attribution (top-level `attribution:`, gateway/usage/attribution.py) fills each call's
  tenant, app, user, session and environment, and writes `user.id`, `session.id` and
  `otelgate.app` on the span when it lacks them, so sinks and routes see them;
* when the usage store is on (top-level `usage:`), the call is added to its in-memory rollups
  (plain dict updates; the store flushes them in the background);
* while a budget is exceeded, the calls that count toward it get `otelgate.budget.exceeded=<name>`.
"""

from __future__ import annotations

from typing import Any

from gateway.batch import Batch
from gateway.budgets.alerter import EXCEEDED, exceeded_names
from gateway.configtypes import StrictModel
from gateway.llm.call import LlmCall
from gateway.processors import Processor, ProcessorContext, touch
from gateway.usage.attribution import AttributionConfig, Attributor


class Config(StrictModel):
    enabled: bool = True


def settings(config: Any) -> object:
    """What this processor is built from besides `pipeline.account` (a reload rebuilds it when they change)."""
    return (config.pipeline.account, config.attribution)  # budgets reach it through the recorder


class Account:
    def __init__(self, attribution: AttributionConfig, recorder: Any = None) -> None:
        self.attributor = Attributor(attribution)
        self.recorder = recorder

    def __call__(self, batch: Batch) -> Batch:
        calls = batch.llm_calls
        if not calls:
            return batch
        if self.attributor.attribute(calls, batch.context.tenant):
            for call in calls:  # it writes on call spans only; which of them it does not say
                touch(batch, call)
        recorder = self.recorder
        if recorder is not None:
            recorder.record(calls)
            if recorder.exceeded:
                for call in _mark_exceeded(recorder.exceeded, calls):
                    touch(batch, call)
        return batch


def _mark_exceeded(exceeded: dict[str, Any], calls: list[LlmCall]) -> list[LlmCall]:
    """`otelgate.budget.exceeded=<name>[,<name>...]` on the calls that count toward an exceeded
    budget; returns the calls it wrote on."""
    changed = []
    for call in calls:
        names = exceeded_names(exceeded, call)
        if names is not None:
            kv = next((kv for kv in call.span.attributes if kv.key == EXCEEDED), None)
            if kv is None:
                kv = call.span.attributes.add()
                kv.key = EXCEEDED
            kv.value.string_value = names
            changed.append(call)
    return changed


def create(config: Config, context: ProcessorContext) -> Processor:
    attribution = getattr(context.config, "attribution", None) or AttributionConfig()
    return Account(attribution, context.usage)
