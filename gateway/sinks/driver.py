"""The sink driver: a bounded queue in front of one sink, with batching, retries and accounting.

Guarantees (what the README promises for every sink):
- A span is counted `sent` only after the sink's `send` returned; `dropped` (with a reason) when
  it will never be sent: `queue_full`, `permanent`, `retry_exhausted`, `error`, `shutdown`.
  Every span admitted to the queue ends in exactly one of the two.
- The queue is bounded in spans, counting spans being sent, so memory stays bounded while a
  sink is down; what happens when full is the sink's `queue.when_full`.
- One worker per sink sends batches in arrival order; a slow or failing sink only fills its own
  queue and never waits on (or makes wait) another sink or a receiver.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Sequence

from gateway.batch import Batch
from gateway.errors import PermanentError, RetryableError
from gateway.logs import get_logger
from gateway.sinks.base import Rejected, Sink, SinkConfig
from gateway.telemetry import Metrics

_FAILING_AFTER_ATTEMPTS = 3


class SinkDriver:
    def __init__(self, name: str, sink: Sink, config: SinkConfig, metrics: Metrics) -> None:
        self.name = name
        self.sink = sink
        self.config = config
        self.capacity = config.queue.max_spans
        self.when_full = config.queue.when_full
        self.status = "ok"
        self.last_error: str | None = None
        self._log = get_logger(f"sink.{name}")
        self._queue: deque[Batch] = deque()
        self._queued_spans = 0  # waiting, not yet taken by the worker
        self._depth = 0  # waiting + being sent
        self._first_arrival = 0.0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._sent = metrics.sink_sent_spans.labels(name)
        self._failed = metrics.sink_failed_spans.labels(name)
        self._dropped = metrics.sink_dropped_spans

    # -- admission (called by the pipeline, on the event loop, never waits) -----------------

    @property
    def depth(self) -> int:
        return self._depth

    def has_room(self, spans: int) -> bool:
        """An empty queue always takes one batch, however large, so no request is refused forever."""
        return not self._closing and (self._depth == 0 or self._depth + spans <= self.capacity)

    def can_take(self, spans: int) -> bool:
        """Room now, or room that `drop_oldest` can make by evicting batches not yet being sent."""
        if self.has_room(spans):
            return True
        if self.when_full != "drop_oldest" or self._closing:
            return False
        in_flight = self._depth - self._queued_spans
        return in_flight == 0 or in_flight + spans <= self.capacity

    def put(self, batch: Batch) -> None:
        """Enqueue `batch`, or apply `when_full` if there is no room (the caller decided not to refuse)."""
        if self._closing:
            self.drop(batch.spans, "shutdown")
            return
        if not self.has_room(batch.spans):
            if self.when_full == "drop_oldest":
                while self._queue and not self.has_room(batch.spans):
                    old = self._queue.popleft()
                    self._queued_spans -= old.spans
                    self._depth -= old.spans
                    self.drop(old.spans, "queue_full")
            if not self.has_room(batch.spans):
                self.drop(batch.spans, "queue_full")
                return
        if not self._queue:
            self._first_arrival = time.monotonic()
            self._wakeup.set()
        self._queue.append(batch)
        self._queued_spans += batch.spans
        self._depth += batch.spans
        if self._queued_spans >= self.config.batch.max_spans:
            self._wakeup.set()

    def drop(self, spans: int, reason: str, detail: str | None = None) -> None:
        if spans <= 0:
            return
        self._dropped.labels(self.name, reason).inc(spans)
        self._log.warning("spans dropped", sink=self.name, spans=spans, reason=reason, **({"error": detail} if detail else {}))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._worker is None:
            await self.sink.start()
            self._worker = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    async def drain(self, timeout: float) -> None:
        """Stop taking data, deliver what is queued within `timeout`, then close the sink.

        What could not be delivered in time is counted as dropped (`reason="shutdown"`).
        """
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout)
            except asyncio.TimeoutError:
                self._worker.cancel()
                await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._depth:
            self._log.error("shutdown grace period over; undelivered spans dropped", sink=self.name, spans=self._depth)
            self.drop(self._depth, "shutdown")
            self._queue.clear()
            self._queued_spans = self._depth = 0
        try:
            await self.sink.shutdown()
        except Exception:
            self._log.error("sink failed to close", exc_info=True, sink=self.name)

    def health(self) -> dict[str, object]:
        return {"status": self.status, "queue_depth": self._depth, "queue_capacity": self.capacity, "last_error": self.last_error}

    # -- worker ------------------------------------------------------------------------------

    async def _run(self) -> None:
        max_spans, max_delay = self.config.batch.max_spans, self.config.batch.max_delay
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            while not self._closing and self._queued_spans < max_spans:
                linger = self._first_arrival + max_delay - time.monotonic()
                if linger <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), linger)
                except asyncio.TimeoutError:
                    break
            taken = self._take(max_spans)
            await self._deliver(taken)

    def _take(self, max_spans: int) -> list[Batch]:
        taken = [self._queue.popleft()]
        spans = taken[0].spans
        while self._queue and spans + self._queue[0].spans <= max_spans:
            batch = self._queue.popleft()
            taken.append(batch)
            spans += batch.spans
        self._queued_spans -= spans
        if self._queue:
            self._first_arrival = time.monotonic()
        return taken

    async def _deliver(self, batches: Sequence[Batch]) -> None:
        spans = sum(b.spans for b in batches)
        retry = self.config.retry
        started = time.monotonic()
        attempt = 0
        try:
            while True:
                try:
                    result = await self.sink.send(batches)
                except PermanentError as exc:
                    self._fail(spans, str(exc), "failing")
                    self.drop(spans, "permanent", str(exc))
                    return
                except RetryableError as exc:
                    attempt += 1
                    delay = _backoff(attempt, retry.initial, retry.max, exc.retry_after)
                    self._fail(spans, str(exc), "failing" if attempt >= _FAILING_AFTER_ATTEMPTS else "retrying")
                    if time.monotonic() - started + delay > retry.max_elapsed:
                        self.drop(spans, "retry_exhausted", str(exc))
                        return
                    self._log.warning("send failed; will retry", sink=self.name, spans=spans, attempt=attempt,
                                      retry_in_s=round(delay, 3), error=str(exc))
                    await asyncio.sleep(delay)
                except Exception as exc:  # a bug in the sink: never retried blindly, never silent
                    self._log.error("sink raised an unexpected error; batch dropped", exc_info=True, sink=self.name)
                    self._fail(spans, f"{type(exc).__name__}: {exc}", "failing")
                    self.drop(spans, "error")
                    return
                else:
                    rejected = min(spans, result.spans) if isinstance(result, Rejected) else 0
                    if rejected:
                        self.last_error = result.message
                        self.drop(rejected, "rejected", result.message)
                    self._sent.inc(spans - rejected)
                    self.status = "ok"
                    return
        except asyncio.CancelledError:
            self.drop(spans, "shutdown")
            raise
        finally:
            self._depth -= spans

    def _fail(self, spans: int, error: str, status: str) -> None:
        self._failed.inc(spans)
        self.last_error = error
        self.status = status


def _backoff(attempt: int, initial: float, maximum: float, server_hint: float | None) -> float:
    """Exponential backoff with +-50% jitter (the Collector's randomization), never below the server's hint."""
    base = min(maximum, initial * 2 ** (attempt - 1))
    delay = base * random.uniform(0.5, 1.5)
    return max(min(delay, maximum), server_hint or 0.0)
