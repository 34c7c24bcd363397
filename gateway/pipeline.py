"""The pipeline: processors -> router -> sink queues, built once from a config.

Admission is atomic: a batch is checked against every target queue and then put into all of
them, with no `await` in between, so a request is either accepted by every sink that can take
it or refused as a whole (nothing half-accepted, so a client retry duplicates nothing).
Refusal happens when no target can take the batch, or when a full target says
`when_full: refuse`; otherwise full targets drop (their copy, or with `drop_oldest` their
oldest waiting data) and count it, so one dead sink never stops the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from gateway.batch import Batch
from gateway.config import Config
from gateway.errors import Refused
from gateway.logs import get_logger
from gateway.processors import Processor, ProcessorContext
from gateway.registry import PROCESSORS, SINKS
from gateway.routing import Router
from gateway.sampling.head import HeadSampler
from gateway.sinks.driver import SinkDriver
from gateway.telemetry import Metrics

_log = get_logger("pipeline")
_RETRY_AFTER_S = 1.0


class Pipeline:
    def __init__(self, config: Config, metrics: Metrics, processors: Sequence[Processor] | None = None) -> None:
        """`processors` replaces the configured chain (tests inject one); None builds it from `pipeline:`."""
        self.metrics = metrics
        self.drivers = {
            name: SinkDriver(name, SINKS[cfg.type].create(name, cfg), cfg, metrics)
            for name, cfg in config.sinks.items()
        }
        self.router = Router(config.route_list(), self.drivers)
        self.processors = tuple(build_processors(config, metrics) if processors is None else processors)
        self._closing = False
        self._no_route = metrics.router_dropped_spans.labels("no_route")
        metrics.watch_queues(self._queue_rows)

    def _queue_rows(self) -> Iterable[tuple[str, int, int]]:
        return ((name, d.depth, d.capacity) for name, d in self.drivers.items())

    async def start(self) -> None:
        started: list[SinkDriver] = []
        try:
            for driver in self.drivers.values():
                await driver.start()
                started.append(driver)
        except BaseException:
            await asyncio.gather(*(d.drain(0) for d in started), return_exceptions=True)
            raise

    async def consume(self, batch: Batch) -> None:
        """Accept `batch` into every target queue, or raise `Refused` having accepted nothing."""
        if self._closing:
            raise Refused("otelgate is shutting down; retry later", retry_after=_RETRY_AFTER_S)
        for process in self.processors:
            batch = process(batch)
        # Sinks read spans, not the processors' notes; and live references to protobuf
        # sub-messages make every later protobuf access slower while the batch waits in queues.
        batch.llm_calls = None
        if not batch.spans:
            return  # everything was sampled out (counted there)
        targets = self.router.route(batch)
        if not targets:
            self._no_route.inc(batch.spans)
            return
        if batch.raw is None and any(d.durable for d in targets):
            batch.raw = batch.request.SerializeToString()  # once, for every disk queue (and sinks after them)
        full = [d for d in targets if not d.can_take(batch)]
        if full and (len(full) == len(targets) or any(d.when_full == "refuse" for d in full)):
            names = ", ".join(d.name for d in full)
            raise Refused(f"sink queue full ({names}); retry later", retry_after=_RETRY_AFTER_S)
        appends = [f for driver in targets if (f := driver.put(batch)) is not None]
        if appends:
            # Answer only once the batch is in every disk queue's write-ahead log. A failed append
            # is the driver's to count (the batch is dropped there); other sinks still deliver it.
            await asyncio.gather(*appends, return_exceptions=True)

    async def drain(self, timeout: float) -> None:
        """Deliver what the queues hold within `timeout` (all sinks in parallel), then close them."""
        self._closing = True
        await asyncio.gather(*(d.drain(timeout) for d in self.drivers.values()))
        for process in self.processors:
            close = getattr(process, "close", None)  # processors with background work (price refresh)
            if close is not None:
                close()

    def health(self) -> dict[str, dict[str, object]]:
        return {name: d.health() for name, d in self.drivers.items()}


def build_processors(config: Config, metrics: Metrics) -> list[Processor]:
    """The enabled processors of `pipeline:`, in registry order, then head sampling (last, so the
    LLM metrics count every call, sampled or not)."""
    context = ProcessorContext(metrics)
    chain: list[Processor] = []
    for name, module in PROCESSORS.items():
        settings = getattr(config.pipeline, name)
        if settings.enabled:
            chain.append(module.create(settings, context))
    if config.sampling.head is not None:
        chain.append(HeadSampler(config.sampling.head, metrics))
    return chain
