"""Processors: plain callables `Processor(batch) -> batch`, run in order on every batch.

They edit the batch's request in place and touch only the keys they need, and say what they
edited, so no sink writes stale received bytes (the contract, in gateway/batch.py):
- an edit inside an existing span: `batch.touch(ri, si, ki)` for that span (for an LLM call's
  span: `touch(batch, call)`); a sink then writes the received bytes with only the touched spans
  re-encoded;
- anything else (resource or scope attributes, spans added, removed or reordered, or not knowing
  which spans): `batch.raw = None`, and the whole request is serialized.
A test holds every registered processor to it. Each processor
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


def touch(batch: Batch, call: Any) -> None:
    """Say that the span of `call` (an LlmCall) was edited in place."""
    where = call.where
    if where is None:
        batch.raw = None  # a call made without the normalizer's index: the whole request is serialized
    else:
        batch.touch(*where)


@dataclass(slots=True)
class ProcessorContext:
    """What a processor may use besides its config: the gateway's metrics registry, the whole
    config (for processors also configured by a top-level key) and the usage recorder."""

    metrics: Metrics
    config: Any = None  # gateway.config.Config
    usage: Any = None  # gateway.usage.recorder.Recorder when `usage.enabled`
