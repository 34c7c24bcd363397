"""`pipeline.feedback`: count user feedback and evaluation scores, per app, from the GenAI
evaluation event.

A log record whose event name is `gen_ai.evaluation.result` (the OTLP field `event_name`, or an
`event.name` attribute from older SDKs) is one piece of feedback: a thumbs up/down, an
annotation, an LLM-as-judge score. The Langfuse ingestion intake turns Langfuse `score-create`
events into exactly such records, so both roads are counted the same way:

* `otelgate_llm_feedback_total{app, name, label}`: one per record; `label` is
  `gen_ai.evaluation.score.label` (`none` when the score has no label);
* `otelgate_llm_feedback_score{app, name}`: a histogram of `gen_ai.evaluation.score.value`.

`app` is the resource's `service.name` (for the Langfuse intake, `langfuse:<public key>`: one
Langfuse project). A satisfaction rate per app is then one expression, e.g.
`sum by (app) (rate(otelgate_llm_feedback_total{name="user-feedback",label="like"}[1h]))
 / sum by (app) (rate(otelgate_llm_feedback_total{name="user-feedback"}[1h]))`.

Label values are capped as the LLM metrics' are (`max_values` distinct per label, then
`__other__`). The records themselves pass unchanged: routed like any log record, and redacted
(their body, the comment, is content) by `pipeline.redact`.
"""

from __future__ import annotations

import math

from pydantic import Field

from gateway.batch import Batch
from gateway.configtypes import StrictModel
from gateway.processors import Processor, ProcessorContext
from gateway.processors.llm_metrics import _Capped
from gateway.telemetry import Metrics

EVENT = "gen_ai.evaluation.result"
NAME = "gen_ai.evaluation.name"
VALUE = "gen_ai.evaluation.score.value"
LABEL = "gen_ai.evaluation.score.label"
NO_LABEL = "none"


class Config(StrictModel):
    enabled: bool = True
    max_values: int = Field(200, gt=0, description="Distinct values per label (app, name, label) before `__other__`.")


def _number(v: object) -> float | None:
    kind = v.WhichOneof("value")  # type: ignore[attr-defined]
    if kind == "double_value":
        x = v.double_value  # type: ignore[attr-defined]
    elif kind == "int_value":
        x = float(v.int_value)  # type: ignore[attr-defined]
    elif kind == "string_value":
        try:
            x = float(v.string_value)  # type: ignore[attr-defined]
        except ValueError:
            return None
    else:
        return None
    return x if math.isfinite(x) else None


def _is_evaluation(record: object) -> bool:
    if record.event_name:  # type: ignore[attr-defined]
        return record.event_name == EVENT  # type: ignore[attr-defined]
    return any(kv.key == "event.name" and kv.value.string_value == EVENT for kv in record.attributes)  # type: ignore[attr-defined]


class Feedback:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._m = metrics
        self._app, self._name, self._label = (_Capped(config.max_values) for _ in range(3))
        self._children: dict[tuple[str, ...], object] = {}

    def __call__(self, batch: Batch) -> Batch:
        if batch.signal.name != "logs":  # the traces chain holds every processor
            return batch
        for rl in batch.request.resource_logs:
            app = None
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    if not _is_evaluation(record):
                        continue
                    if app is None:
                        app = self._app(next((kv.value.string_value for kv in rl.resource.attributes
                                              if kv.key == "service.name"), None))
                    self._record(app, record)
        return batch

    def _record(self, app: str, record: object) -> None:
        name = label = None
        value: float | None = None
        for kv in record.attributes:  # type: ignore[attr-defined]
            if kv.key == NAME:
                name = kv.value.string_value
            elif kv.key == LABEL:
                label = kv.value.string_value if kv.value.WhichOneof("value") == "string_value" else None
                if label is None and kv.value.WhichOneof("value") == "bool_value":
                    label = "true" if kv.value.bool_value else "false"
            elif kv.key == VALUE:
                value = _number(kv.value)
        name = self._name(name)
        key = ("c", app, name, self._label(label) if label else NO_LABEL)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self._m.llm_feedback.labels(*key[1:])
        counter.inc()  # type: ignore[attr-defined]
        if value is not None:
            hkey = ("h", app, name)
            histogram = self._children.get(hkey)
            if histogram is None:
                histogram = self._children[hkey] = self._m.llm_feedback_score.labels(app, name)
            histogram.observe(value)  # type: ignore[attr-defined]


SIGNALS = ("logs",)


def create(config: Config, context: ProcessorContext) -> Processor:
    return Feedback(config, context.metrics)
