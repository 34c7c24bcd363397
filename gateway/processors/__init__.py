"""Processors: plain callables `Processor(batch) -> batch`, run in order on every batch.

They edit the batch's request in place and touch only the keys they need (see the README's
performance notes). The chain is empty in this version; normalize, price, sample and redact
plug in here.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.batch import Batch

Processor = Callable[[Batch], Batch]
