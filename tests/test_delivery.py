"""The sink driver and the pipeline's admission rules, in process, with a scripted sink.

The scripted sink implements our own `Sink` protocol (it stands in for no external service):
it fails or stalls on command so that retries, drops and isolation can be checked exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import Batch, RequestContext
from gateway.config import parse
from gateway.errors import PermanentError, Refused, RetryableError
from gateway.pipeline import Pipeline
from gateway.sinks.base import Rejected, SinkConfig
from gateway.sinks.driver import SinkDriver, _backoff
from gateway.telemetry import Metrics


class ScriptedSink:
    def __init__(self, failures: Sequence[Exception] = (), rejected: Rejected | None = None) -> None:
        self.failures = list(failures)
        self.rejected = rejected
        self.sent: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed = False

    async def start(self) -> None: ...

    async def send(self, batches: Sequence[Batch]) -> None:
        await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append([b.items for b in batches])
        return self.rejected

    async def shutdown(self) -> None:
        self.closed = True


def _batch(spans: int) -> Batch:
    return Batch(ExportTraceServiceRequest(), spans, RequestContext("test"))


def _config(**kw: object) -> SinkConfig:
    base = {"batch": {"max_spans": 10, "max_delay": "10ms"}, "retry": {"initial": "10ms", "max": "20ms", "max_elapsed": "1s"}}
    base.update(kw)
    return SinkConfig.model_validate(base)


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_batches_by_size_and_delay() -> None:
    metrics = Metrics()
    sink = ScriptedSink()
    driver = SinkDriver("s", sink, _config(), metrics)
    await driver.start()
    for n in (4, 4, 4, 1):
        driver.put(_batch(n))
    await asyncio.sleep(0.1)
    assert sink.sent == [[4, 4], [4, 1]]  # never more than max_spans=10 per send
    assert _value(metrics, "otelgate_sink_sent_spans_total", sink="s") == 13
    await driver.drain(1)
    assert sink.closed


async def test_retryable_errors_are_retried_then_delivered() -> None:
    metrics = Metrics()
    sink = ScriptedSink([RetryableError("down"), RetryableError("still down", retry_after=0.05)])
    driver = SinkDriver("s", sink, _config(retry={"initial": "100ms", "max": "200ms", "max_elapsed": "5s"}), metrics)
    await driver.start()
    driver.put(_batch(3))
    await asyncio.sleep(0.04)
    assert driver.health()["status"] == "retrying" and driver.health()["last_error"] == "down"
    await asyncio.sleep(0.6)
    assert sink.sent == [[3]]
    assert driver.health()["status"] == "ok" and driver.depth == 0
    assert _value(metrics, "otelgate_sink_failed_spans_total", sink="s") == 6
    assert _value(metrics, "otelgate_sink_sent_spans_total", sink="s") == 3
    await driver.drain(1)


async def test_permanent_error_drops_and_counts() -> None:
    metrics = Metrics()
    sink = ScriptedSink([PermanentError("400 bad request")])
    driver = SinkDriver("s", sink, _config(), metrics)
    await driver.start()
    driver.put(_batch(5))
    driver.put(_batch(7))  # too many to join the first send: sent separately, and succeeds
    await asyncio.sleep(0.1)
    assert sink.sent == [[7]]
    assert _value(metrics, "otelgate_sink_dropped_spans_total", sink="s", reason="permanent") == 5
    assert driver.health()["status"] == "ok" and driver.health()["last_error"] == "400 bad request"
    await driver.drain(1)


async def test_retries_give_up_after_max_elapsed() -> None:
    metrics = Metrics()
    sink = ScriptedSink([RetryableError("down")] * 100)
    driver = SinkDriver("s", sink, _config(retry={"initial": "10ms", "max": "20ms", "max_elapsed": "100ms"}), metrics)
    await driver.start()
    driver.put(_batch(2))
    await asyncio.sleep(0.3)
    assert _value(metrics, "otelgate_sink_dropped_spans_total", sink="s", reason="retry_exhausted") == 2
    assert driver.health()["status"] == "failing"
    await driver.drain(0.1)


async def test_unexpected_exception_is_counted_not_retried() -> None:
    metrics = Metrics()
    sink = ScriptedSink([KeyError("bug")])
    driver = SinkDriver("s", sink, _config(), metrics)
    await driver.start()
    driver.put(_batch(2))
    await asyncio.sleep(0.05)
    assert _value(metrics, "otelgate_sink_dropped_spans_total", sink="s", reason="error") == 2
    await driver.drain(0.1)


async def test_drain_counts_what_could_not_be_delivered() -> None:
    metrics = Metrics()
    sink = ScriptedSink()
    sink.gate.clear()  # the sink hangs
    driver = SinkDriver("s", sink, _config(), metrics)
    await driver.start()
    for _ in range(3):
        driver.put(_batch(6))
    await asyncio.sleep(0.05)
    await driver.drain(0.1)
    assert _value(metrics, "otelgate_sink_dropped_spans_total", sink="s", reason="shutdown") == 18
    assert driver.depth == 0 and sink.closed
    driver.put(_batch(1))  # after drain: counted, never silently lost
    assert _value(metrics, "otelgate_sink_dropped_spans_total", sink="s", reason="shutdown") == 19


def test_backoff_grows_with_jitter_and_respects_server_hint() -> None:
    delays = [_backoff(a, 1.0, 8.0, None) for a in range(1, 8)]
    assert 0.5 <= delays[0] <= 1.5
    assert all(d <= 8.0 for d in delays)
    assert _backoff(1, 1.0, 8.0, 20.0) == 20.0
    # A hint shorter than the grown backoff decides too: a backend that says "in 1 s" is tried in 1 s.
    assert _backoff(6, 1.0, 8.0, 1.0) == 1.0


def _pipeline(text: str) -> tuple[Pipeline, dict[str, ScriptedSink], Metrics]:
    metrics = Metrics()
    pipeline = Pipeline(parse(text, environ={}), metrics)
    sinks = {}
    for name, driver in pipeline.drivers.items():
        driver.sink = sinks[name] = ScriptedSink()
        sinks[name].gate.clear()  # nothing leaves: queues only fill
    return pipeline, sinks, metrics


FANOUT = """
sinks:
  a: {type: file, queue: {max_spans: 10}, batch: {max_delay: 0s}}
  b: {type: file, queue: {max_spans: 100, when_full: %s}, batch: {max_delay: 0s}}
"""


async def test_one_full_sink_drops_its_copy_others_keep_flowing() -> None:
    pipeline, _, metrics = _pipeline(FANOUT % "drop_newest")
    await pipeline.start()
    for _ in range(5):
        await pipeline.consume(_batch(5))  # a fills at 10 and drops the rest; b takes all
    assert pipeline.drivers["a"].depth == 10 and pipeline.drivers["b"].depth == 25
    assert _value(metrics, "otelgate_sink_dropped_spans_total", sink="a", reason="queue_full") == 15
    await pipeline.drain(0.05)


async def test_refuse_when_no_target_has_room() -> None:
    pipeline, _, _ = _pipeline("sinks: {a: {type: file, queue: {max_spans: 10}, batch: {max_delay: 0s}}}")
    await pipeline.start()
    await pipeline.consume(_batch(6))
    with pytest.raises(Refused):
        await pipeline.consume(_batch(6))
    assert pipeline.drivers["a"].depth == 6
    await pipeline.drain(0.05)


async def test_refuse_policy_refuses_whole_request_without_partial_enqueue() -> None:
    pipeline, _, _ = _pipeline(FANOUT.replace("max_spans: 100,", "max_spans: 10,") % "refuse")
    await pipeline.start()
    await pipeline.consume(_batch(8))
    with pytest.raises(Refused) as err:
        await pipeline.consume(_batch(8))
    assert "b" in str(err.value)
    assert pipeline.drivers["a"].depth == 8 and pipeline.drivers["b"].depth == 8  # nothing half-accepted
    await pipeline.drain(0.05)


async def test_drop_oldest_makes_room_for_new_data() -> None:
    pipeline, _, metrics = _pipeline(FANOUT % "drop_oldest")
    await pipeline.start()
    driver = pipeline.drivers["b"]
    driver.capacity = 20
    for _ in range(6):
        await pipeline.consume(_batch(5))
    # The first batch is being "sent" (stuck in the sink) and cannot be evicted; waiting ones can.
    assert driver.depth <= 20
    assert _value(metrics, "otelgate_sink_dropped_spans_total", sink="b", reason="queue_full") == 10
    await pipeline.drain(0.05)


async def test_an_oversized_batch_is_taken_by_an_empty_queue() -> None:
    pipeline, _, _ = _pipeline("sinks: {a: {type: file, queue: {max_spans: 10}}}")
    await pipeline.start()
    await pipeline.consume(_batch(50))
    assert pipeline.drivers["a"].depth == 50
    await pipeline.drain(0.05)


async def test_closing_pipeline_refuses() -> None:
    pipeline, _, _ = _pipeline("sinks: {a: {type: file}}")
    await pipeline.start()
    await pipeline.drain(0.05)
    with pytest.raises(Refused, match="shutting down"):
        await pipeline.consume(_batch(1))


async def test_partial_success_counts_the_rejected_spans_as_dropped() -> None:
    metrics = Metrics()
    sink = ScriptedSink(rejected=Rejected(2, "2 spans had an invalid parent id"))
    driver = SinkDriver("s", sink, _config(), metrics)
    await driver.start()
    driver.put(_batch(5))
    await asyncio.sleep(0.05)
    assert _value(metrics, "otelgate_sink_sent_spans_total", sink="s") == 3
    assert _value(metrics, "otelgate_sink_dropped_spans_total", sink="s", reason="rejected") == 2
    assert driver.health()["last_error"] == "2 spans had an invalid parent id"
    await driver.drain(0.1)
