"""Processors: plain callables `Processor(batch) -> batch`, run in order on every batch.

They edit the batch's request in place and touch only the keys they need; one that changed
anything sets `batch.raw = None`, so no sink writes the stale received bytes. Each processor
module exposes `Config` (its pydantic model under `pipeline.<name>`) and
`create(config, context) -> Processor`; classes do their setup (tables, caches, regexes) in
`create`, so a bad option fails at load, never on the first span.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.batch import Batch
from gateway.telemetry import Metrics

Processor = Callable[[Batch], Batch]


@dataclass(slots=True)
class ProcessorContext:
    """What a processor may use besides its config: the gateway's metrics registry, the whole
    config (for processors also configured by a top-level key) and the usage recorder."""

    metrics: Metrics
    config: Any = None  # gateway.config.Config
    usage: Any = None  # gateway.usage.recorder.Recorder when `usage.enabled`
