"""What every sink shares: the queue, batch and retry settings, and the small `Sink` protocol.

A sink only encodes and writes (`send`); queueing, batching, retries, accounting and health
belong to the driver (`gateway.sinks.driver`), so every sink gets them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import Field, model_validator

from gateway.batch import Batch
from gateway.configtypes import ByteSize, Duration, StrictModel


class QueueConfig(StrictModel):
    type: Literal["memory", "disk"] = Field(
        "memory", description="disk: every accepted batch is in a write-ahead log before the client is answered.")
    max_spans: int = Field(100_000, gt=0, description="Capacity in spans, counting those being sent.")
    max_bytes: ByteSize = Field(1024**3, gt=0, description="disk: the write-ahead log's budget on disk.")
    min_free_bytes: ByteSize = Field(
        64 * 1024 * 1024, ge=0,
        description="disk: refuse (as when full) rather than leave less than this free on the log's filesystem.")
    dir: str = Field("./otelgate-queue", description="disk: the log lives in <dir>/<sink name>/.")
    fsync: Literal["always", "batch", "never"] = Field(
        "batch", description="disk: batch = one fsync per accepted batch; always = also per acknowledgement; never = the OS decides.")
    when_full: Literal["drop_newest", "drop_oldest", "refuse"] = Field(
        "drop_newest",
        description="drop_newest/drop_oldest: this sink loses data (counted) so other sinks keep flowing; "
        "refuse: the whole request is refused with backpressure (retryable) while this queue is full.",
    )


class BatchConfig(StrictModel):
    max_spans: int = Field(8192, gt=0, description="Send once this many spans wait.")
    max_delay: Duration = Field(0.2, description="Send at most this long after the first span arrived.")


class RetryConfig(StrictModel):
    initial: Duration = 5.0
    max: Duration = 30.0
    max_elapsed: Duration = Field(300.0, description="Give up on a batch (counted as dropped) after this long.")

    @model_validator(mode="after")
    def _ordered(self) -> "RetryConfig":
        if self.initial > self.max:
            raise ValueError("retry.initial must not exceed retry.max")
        return self


class SinkConfig(StrictModel):
    """Base of every sink's config; each sink adds `type: Literal[...]` and its own keys."""

    queue: QueueConfig = QueueConfig()
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server took the export but refused some spans (OTLP `partial_success`): never retried."""

    spans: int
    message: str


def is_retry_of(previous: Sequence[Batch] | None, batches: Sequence[Batch]) -> bool:
    """Whether `send(batches)` is the driver retrying the same send (the very same batch objects),
    so a sink that delivered part of it before failing resends only the rest."""
    return previous is not None and len(previous) == len(batches) and all(
        a is b for a, b in zip(previous, batches))


class Sink(Protocol):
    """Encodes and writes batches. Raises `PermanentError` or `RetryableError` on failure, or
    returns `Rejected` when the receiving end accepted the export but refused part of it."""

    async def start(self) -> None: ...

    async def send(self, batches: Sequence[Batch]) -> Rejected | None: ...

    async def shutdown(self) -> None: ...
