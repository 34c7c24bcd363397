"""Which module implements each part. Adding a sink or a processor is one module plus one line here.

Sinks: `type:` -> a module exposing `Config` (a pydantic model with `type: Literal[<name>]`),
`SIGNALS` (the signals it carries: traces, logs, metrics) and `create(name, config, signal)`,
in the manner of the Collector's component factories.

Processors: `pipeline.<name>` -> a module exposing `Config` (with `enabled`) and
`create(config, context)`, and optionally `SIGNALS` (default: traces only) and `AFTER_SAMPLING`
(run after head sampling), and `settings(config)` when a top-level key configures it too (a
reload rebuilds it when that changes). They run in the order listed here.
"""

from __future__ import annotations

from types import ModuleType

from gateway.processors import account, feedback, llm_metrics, normalize, price, redact
from gateway.sinks import file, loadbalancing, otlp
from gateway.sinks.langfuse import sink as langfuse

SINKS: dict[str, ModuleType] = {
    "file": file,
    "otlp": otlp,
    "jaeger": otlp.jaeger,
    "langfuse": langfuse,
    "loadbalancing": loadbalancing,
}

PROCESSORS: dict[str, ModuleType] = {
    "normalize": normalize,
    "price": price,
    "account": account,  # attribution (and usage rollups): after the cost is known, before the metrics label by app
    "llm_metrics": llm_metrics,
    "feedback": feedback,  # logs: gen_ai.evaluation.result records (user feedback, scores)
    "redact": redact,  # last: the others read model names and counts, never the content it changes
}
