"""The sink driver: a bounded queue in front of one sink, with batching, retries and accounting.

Guarantees (what the README promises for every sink):
- A span is counted `sent` only after its sink's `send` returned; `dropped` (with a reason) when
  it will never be sent: `queue_full`, `disk_full`, `disk_error`, `permanent`, `retry_exhausted`,
  `error`, `shutdown`, or `rejected` (the server accepted the export but refused those
  spans: OTLP partial success). Every span admitted to the queue ends in exactly one of the two,
  except that a disk queue keeps what it could not deliver at shutdown for the next start.
- A disk queue admits a batch only once it is in the log: an append that fails (budget, the
  filesystem's free space less `queue.min_free_bytes`, ENOSPC, an I/O error) is this sink's
  refusal of the request, never an acknowledged batch dropped later. The pipeline refuses the
  request (503 / UNAVAILABLE) when no target took it; otherwise this sink counts its copy as
  dropped (`disk_full` or `disk_error`) at admission. Room is checked again on every request,
  so a queue that was full accepts by itself once space returns.
- The queue is bounded in spans, counting spans being sent, so memory stays bounded while a
  sink is down; a disk queue is bounded in bytes on disk too. What happens when full is the
  sink's `queue.when_full`.
- With `queue.type: disk`, every admitted batch is appended to the sink's write-ahead log
  (`gateway.sinks.wal`) before the pipeline answers the client, and acknowledged in the log
  once delivered or dropped; after a crash the log's unacknowledged batches are delivered
  first, in order (at least once: a batch delivered just before a crash may be sent again).
- A sink carrying several signals has one driver (queue, worker, log) per signal, as a
  Collector exporter is instantiated once per pipeline; counts are in spans, log records or
  metric data points.
- One worker per sink sends batches in arrival order; a slow or failing sink only fills its own
  queue and never waits on (or makes wait) another sink or a receiver.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gateway.batch import Batch, RequestContext
from gateway.errors import PermanentError, RetryableError
from gateway.logs import get_logger
from gateway.otlp.signals import TRACES, Signal
from gateway.sinks.base import Rejected, Sink, SinkConfig
from gateway.sinks.wal import WriteAheadLog, disk_free, is_disk_full
from gateway.telemetry import Metrics

_FAILING_AFTER_ATTEMPTS = 3
_RECORD_OVERHEAD = 64  # framing and record fields around a request in the write-ahead log


@dataclass(slots=True)
class _Entry:
    batch: Batch
    sequence: int | None = None  # in the write-ahead log, once appended
    appended: "asyncio.Future[int] | None" = None
    disk_bytes: int = 0  # what it holds of the disk budget until acknowledged
    failed: bool = False  # its append failed: not in the log, not in the queue (the pipeline counts it)


class SinkDriver:
    def __init__(self, name: str, sink: Sink, config: SinkConfig, metrics: Metrics, signal: Signal = TRACES,
                 backend: str | None = None) -> None:
        """`backend`: which of a loadbalancing sink's backends this driver sends to (a label of `sent`)."""
        self.name = name
        self.signal = signal
        self.key = driver_key(name, signal)
        self.sink = sink
        self.config = config
        self.capacity = config.queue.max_spans
        self.when_full = config.queue.when_full
        self.status = "ok"
        self.last_error: str | None = None
        self._log = get_logger(f"sink.{self.key}")
        self._queue: deque[_Entry] = deque()
        self._queued_spans = 0  # waiting, not yet taken by the worker
        self._depth = 0  # waiting + being sent
        self._first_arrival = 0.0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        counters = metrics.signals[signal.name]
        self._sent = counters.sink_sent.labels(name, backend)
        self._failed = counters.sink_failed.labels(name)
        self._dropped = counters.sink_dropped
        self._wal: WriteAheadLog | None = None
        self._disk: ThreadPoolExecutor | None = None
        self._disk_bytes = 0  # of admitted batches not yet acknowledged (appended or being appended)
        self._writing = 0  # bytes handed to the disk thread, not yet appended
        self._full: str | None = None  # why the queue refuses, while it does (shown on /health)
        self._refused_size = (1, 0)  # (items, bytes on disk) of the last batch it could not take
        self._retry_wait = asyncio.Event()  # set by drain(): cuts a disk queue's retry wait short
        self._gave_up = False  # a disk queue stopped sending at close; the rest stays in the log
        if config.queue.type == "disk":
            # Disk is reclaimed a whole segment at a time: keep segments small next to the budget,
            # so dropping the oldest batches (or delivering them) frees space soon.
            segment = max(4096, min(16 * 1024 * 1024, config.queue.max_bytes // 8))
            log_dir = name if signal is TRACES else f"{name}.{signal.name}"
            self._wal = WriteAheadLog(Path(config.queue.dir) / log_dir, max_bytes=config.queue.max_bytes,
                                      fsync=config.queue.fsync, segment_bytes=segment,
                                      min_free_bytes=config.queue.min_free_bytes)
            self._log_dir = Path(config.queue.dir) / log_dir
            self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"wal-{name}")

    @property
    def durable(self) -> bool:
        return self._wal is not None

    # -- admission (called by the pipeline, on the event loop, never waits) -----------------

    @property
    def depth(self) -> int:
        return self._depth

    def has_room(self, batch: Batch) -> bool:
        """An empty queue always takes one batch, however large (short of a full filesystem), so no
        request is refused forever."""
        need = len(batch.serialized()) + _RECORD_OVERHEAD if self._wal else 0
        self._full = self._room_problem(batch.items, need)
        if self._full is not None:
            self._refused_size = (batch.items, need)
        return self._full is None

    def _room_problem(self, items: int, need: int) -> str | None:
        """Why `items` (`need` bytes on disk) cannot be queued now, or None."""
        if self._closing:
            return "closing"
        if self._wal is not None:
            reserve = self.config.queue.min_free_bytes
            try:
                free = disk_free(self._log_dir) - self._writing
            except OSError as exc:
                return f"disk: cannot read the queue's filesystem: {exc}"
            if need + reserve > free:
                return (f"disk_full: the filesystem of {self._log_dir} has {max(free, 0)} bytes free, less than "
                        f"this batch ({need}) plus queue.min_free_bytes ({reserve})")
        if self._depth == 0:
            return None
        if self._depth + items > self.capacity:
            return f"queue_full: {self._depth} of queue.max_spans {self.capacity} queued"
        if self._wal is not None and self._disk_bytes + need > self.config.queue.max_bytes:
            return f"queue_full: {self._disk_bytes} bytes queued on disk, budget queue.max_bytes {self.config.queue.max_bytes}"
        return None

    def still_full(self) -> bool:
        """Whether a batch like the last one this queue could not take would still be refused now
        (False once it took one, and for `drop_oldest`, which makes room). Lets a receiver refuse
        a request under backpressure before reading and decoding it (`Pipeline.refusal_before_decode`)."""
        if self._full is None or self.when_full == "drop_oldest":
            return False
        return self._room_problem(*self._refused_size) is not None

    @property
    def full_reason(self) -> str | None:
        """Why the queue refused the last batch it could not take (None once it took one)."""
        return self._full

    def _full_reason(self) -> str:
        """The drop reason label for the current refusal."""
        return "disk_full" if self._full is not None and self._full.startswith("disk") else "queue_full"

    def can_take(self, batch: Batch) -> bool:
        """Room now, or room that `drop_oldest` can make by evicting batches not yet being sent."""
        if self.has_room(batch):
            return True
        if self.when_full != "drop_oldest" or self._closing:
            return False
        in_flight = self._depth - self._queued_spans
        return in_flight == 0 or in_flight + batch.items <= self.capacity

    def put(self, batch: Batch) -> "asyncio.Future[int] | None":
        """Enqueue `batch`, or apply `when_full` if there is no room (the caller decided not to refuse).

        For a disk queue, returns the future of the append to the write-ahead log: the caller
        answers its client only once it is done.
        """
        if self._closing:
            self.drop(batch.items, "shutdown")
            return None
        if not self.has_room(batch):
            if self.when_full == "drop_oldest":
                while self._queue and not self.has_room(batch):
                    old = self._queue.popleft()
                    self._queued_spans -= old.batch.items
                    self._depth -= old.batch.items
                    self.drop(old.batch.items, "queue_full")
                    self._ack(old)
            if not self.has_room(batch):
                self.drop(batch.items, self._full_reason(), self._full)
                return None
        entry = _Entry(batch)
        if self._wal is not None:
            entry.appended = self._append(entry)
        if not self._queue:
            self._first_arrival = time.monotonic()
            self._wakeup.set()
        self._queue.append(entry)
        self._queued_spans += batch.items
        self._depth += batch.items
        if self._queued_spans >= self.config.batch.max_spans:
            self._wakeup.set()
        return entry.appended

    def _append(self, entry: _Entry) -> "asyncio.Future[int]":
        """Append to the log on the sink's disk thread (in admission order)."""
        assert self._wal is not None and self._disk is not None
        body = entry.batch.serialized()
        entry.disk_bytes = len(body) + _RECORD_OVERHEAD
        self._disk_bytes += entry.disk_bytes
        self._writing += entry.disk_bytes
        future = asyncio.get_running_loop().run_in_executor(self._disk, self._wal.append, body, entry.batch.items)

        def appended(f: "asyncio.Future[int]") -> None:
            self._writing -= entry.disk_bytes
            if not f.cancelled() and f.exception() is None:
                entry.sequence = f.result()
                return
            # Not in the log: this sink did not take the batch. It leaves the queue and the budget;
            # the pipeline refuses the request or counts this copy as dropped.
            self._disk_bytes -= entry.disk_bytes
            entry.disk_bytes = 0
            entry.failed = True
            try:
                self._queue.remove(entry)
                self._queued_spans -= entry.batch.items
            except ValueError:
                pass  # the worker has taken it; it skips failed entries
            self._depth -= entry.batch.items
            exc = f.exception() if not f.cancelled() else None
            self.last_error = f"cannot append to the disk queue: {exc}"
            if exc is not None and is_disk_full(exc):
                self._full = f"disk_full: {exc}"
                self._refused_size = (entry.batch.items, len(entry.batch.serialized()) + _RECORD_OVERHEAD)
            self._log.warning("disk queue append failed; this sink did not take the batch", sink=self.key,
                              count=entry.batch.items, error=str(exc))

        future.add_done_callback(appended)
        return future

    def append_failure(self, future: "asyncio.Future[int]") -> str | None:
        """The drop reason for a batch whose append (`future`, from `put`) failed, or None if it is in the log."""
        if future.cancelled():
            return "disk_error"
        exc = future.exception()
        if exc is None:
            return None
        return "disk_full" if is_disk_full(exc) else "disk_error"

    def _ack(self, entry: _Entry) -> None:
        """The entry is done (delivered or dropped): tell the log, on the disk thread, in order."""
        if self._wal is None or self._disk is None:
            return
        if entry.sequence is not None:
            self._disk_bytes -= entry.disk_bytes
            entry.disk_bytes = 0
            asyncio.get_running_loop().run_in_executor(self._disk, self._wal.ack, entry.sequence).add_done_callback(
                self._acked)
        elif entry.appended is not None and not entry.appended.done():
            # Dropped before its append finished: acknowledge it once it has a sequence.
            entry.appended.add_done_callback(lambda f: None if f.cancelled() or f.exception() else self._ack(entry))

    def _acked(self, future: "asyncio.Future[None]") -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            # The batch was delivered; only its acknowledgement is missing: it is sent again after a restart.
            self.last_error = f"cannot write the disk queue's acknowledgement: {exc}"
            self._log.error("disk queue ack failed; the batch may be delivered again after a restart",
                            sink=self.key, error=str(exc))

    def drop(self, spans: int, reason: str, detail: str | None = None) -> None:
        if spans <= 0:
            return
        self._dropped.labels(self.name, reason).inc(spans)
        self._log.warning(f"{self.signal.items.replace('_', ' ')} dropped", sink=self.key, count=spans, reason=reason, **({"error": detail} if detail else {}))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._worker is None:
            if self._wal is not None:
                await self._replay()
            await self.sink.start()
            self._worker = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    async def _replay(self) -> None:
        """Queue what the log holds from before a restart, ahead of anything new."""
        assert self._wal is not None
        records = await asyncio.get_running_loop().run_in_executor(self._disk, self._wal.open)
        spans = 0
        for record in records:
            request = self.signal.request.FromString(record.request)
            batch = Batch(request, record.spans, RequestContext("wal"), raw=record.request, signal=self.signal)
            entry = _Entry(batch, record.sequence, disk_bytes=len(record.request) + _RECORD_OVERHEAD)
            self._disk_bytes += entry.disk_bytes
            self._queue.append(entry)
            self._queued_spans += record.spans
            self._depth += record.spans
            spans += record.spans
        if records:
            self._first_arrival = time.monotonic()
            self._log.info("delivering what the disk queue kept", sink=self.key, batches=len(records), spans=spans)

    async def drain(self, timeout: float) -> None:
        """Stop taking data, deliver what is queued within `timeout`, then close the sink.

        What could not be delivered in time is counted as dropped (`reason="shutdown"`), except
        in a disk queue, which keeps it for the next start.
        """
        self._closing = True
        self._wakeup.set()
        self._retry_wait.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout)
            except asyncio.TimeoutError:
                self._worker.cancel()
                await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._depth:
            if self._wal is not None:
                self._log.warning("shutdown grace period over; undelivered spans kept in the disk queue",
                                  sink=self.key, spans=self._depth)
            else:
                self._log.error("shutdown grace period over; undelivered spans dropped", sink=self.key, spans=self._depth)
                self.drop(self._depth, "shutdown")
            self._queue.clear()
            self._queued_spans = self._depth = 0
        try:
            await self.sink.shutdown()
        except Exception:
            self._log.error("sink failed to close", exc_info=True, sink=self.key)
        if self._wal is not None and self._disk is not None:
            await asyncio.get_running_loop().run_in_executor(self._disk, self._wal.close)
            self._disk.shutdown(wait=True)

    def health(self) -> dict[str, object]:
        """`full` (with the reason in `full_reason`) while the queue refuses; checked afresh, so it
        clears as soon as the queue has room again."""
        if self._full is not None:
            self._full = self._room_problem(*self._refused_size)  # would the batch it refused fit now?
        status = "full" if self._full is not None and not self._closing else self.status
        out: dict[str, object] = {"status": status, "queue_depth": self._depth, "queue_capacity": self.capacity,
                                  "last_error": self.last_error}
        if status == "full":
            out["full_reason"] = self._full
        return out

    # -- worker ------------------------------------------------------------------------------

    async def _run(self) -> None:
        max_spans, max_delay = self.config.batch.max_spans, self.config.batch.max_delay
        while True:
            while not self._queue or self._gave_up:
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

    def _take(self, max_spans: int) -> list[_Entry]:
        taken = [self._queue.popleft()]
        spans = taken[0].batch.items
        while self._queue and spans + self._queue[0].batch.items <= max_spans:
            entry = self._queue.popleft()
            taken.append(entry)
            spans += entry.batch.items
        self._queued_spans -= spans
        if self._queue:
            self._first_arrival = time.monotonic()
        return taken

    async def _deliver(self, entries: Sequence[_Entry]) -> None:
        if self._wal is not None:
            entries = await self._durable(entries)
            if not entries:
                return
        batches = [e.batch for e in entries]
        spans = sum(b.items for b in batches)
        retry = self.config.retry
        started = time.monotonic()
        attempt = 0
        done = False  # delivered or dropped: the log may forget it
        kept = False  # cancelled at shutdown, still in the disk queue: drain() reports it
        try:
            while True:
                try:
                    result = await self.sink.send(batches)
                except PermanentError as exc:
                    self._fail(spans, str(exc), "failing")
                    self.drop(spans, "permanent", str(exc))
                    done = True
                    return
                except RetryableError as exc:
                    attempt += 1
                    delay = _backoff(attempt, retry.initial, retry.max, exc.retry_after)
                    self._fail(spans, str(exc), "failing" if attempt >= _FAILING_AFTER_ATTEMPTS else "retrying")
                    if time.monotonic() - started + delay > retry.max_elapsed:
                        self.drop(spans, "retry_exhausted", str(exc))
                        done = True
                        return
                    self._log.warning("send failed; will retry", sink=self.key, spans=spans, attempt=attempt,
                                      retry_in_s=round(delay, 3), error=str(exc))
                    if self._wal is None:
                        await asyncio.sleep(delay)  # a memory queue retries within drain()'s grace period
                        continue
                    # A disk queue keeps what it cannot send now: closing (drain(), a reload's
                    # handover) ends the wait at once instead of holding everyone for the backoff.
                    if not self._closing:
                        try:
                            await asyncio.wait_for(self._retry_wait.wait(), delay)
                        except asyncio.TimeoutError:
                            pass
                    if self._closing:
                        kept = self._gave_up = True
                        return
                except Exception as exc:  # a bug in the sink: never retried blindly, never silent
                    self._log.error("sink raised an unexpected error; batch dropped", exc_info=True, sink=self.key)
                    self._fail(spans, f"{type(exc).__name__}: {exc}", "failing")
                    self.drop(spans, "error")
                    done = True
                    return
                else:
                    rejected = min(spans, result.spans) if isinstance(result, Rejected) else 0
                    if rejected:
                        self.last_error = result.message
                        self.drop(rejected, "rejected", result.message)
                    self._sent.inc(spans - rejected)
                    self.status = "ok"
                    done = True
                    return
        except asyncio.CancelledError:
            if self._wal is None:
                self.drop(spans, "shutdown")
            else:
                kept = True
            raise
        finally:
            if not kept:
                self._depth -= spans
            if done:
                for entry in entries:
                    self._ack(entry)

    async def _durable(self, entries: Sequence[_Entry]) -> list[_Entry]:
        """Wait for the entries' appends; one that did not reach the log was never this sink's
        (its callback took it out of the queue; the pipeline refused or counted it)."""
        kept = []
        for entry in entries:
            if entry.appended is not None:
                await asyncio.gather(entry.appended, return_exceptions=True)
            if not entry.failed:
                kept.append(entry)
        return kept

    def _fail(self, spans: int, error: str, status: str) -> None:
        self._failed.inc(spans)
        self.last_error = error
        self.status = status


def driver_key(sink: str, signal: Signal) -> str:
    """How a sink's driver for `signal` is named in /health and logs: `out`, `out/logs`, `out/metrics`."""
    return sink if signal is TRACES else f"{sink}/{signal.name}"


def _backoff(attempt: int, initial: float, maximum: float, server_hint: float | None) -> float:
    """The server's hint (Retry-After, RetryInfo) when it gave one, as the OTel SDK exporters do (the
    server knows when it will take data again; backoff grown from earlier failures would wait past
    it); otherwise exponential backoff with +-50% jitter (the Collector's randomization)."""
    if server_hint is not None and server_hint > 0:
        return server_hint
    base = min(maximum, initial * 2 ** (attempt - 1))
    delay = base * random.uniform(0.5, 1.5)
    return min(delay, maximum)
