"""The pipeline: processors -> (trace buffer) -> router -> sink queues.

Admission is atomic: a batch is checked against every target queue and then put into all of
them, with no `await` in between, so a request is either accepted by every sink that can take
it or refused as a whole (nothing half-accepted, so a client retry duplicates nothing).
Refusal happens when every target of some part of the batch is full, or when a full target
says `when_full: refuse`; otherwise full targets drop (their copy, or with `drop_oldest` their
oldest waiting data) and count it, so one dead sink never stops the others.

What one config builds (processors, router, trace buffer) is a `Flow`, read once per batch
and replaced as a whole by a reload, so a batch never sees half of an old config and half of
a new one. Sinks whose settings did not change keep their queues and connections across a
reload; removed or changed ones drain first.

Each signal (traces, logs, metrics) has its own processor chain and router, and a sink has one
driver (queue) per signal it is routed; logs and metrics go through the processors that declare
them (redaction) and are never held in the trace buffer.

With a trace buffer (tail sampling, or `by: trace` routes) a batch is accepted into memory and
reaches the sinks when its trace is decided; a full sink queue then drops (counted), since the
client was answered long before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from gateway.batch import Batch
from gateway.config import Config
from gateway.errors import Refused
from gateway.logs import get_logger
from gateway.otlp.signals import SIGNALS, TRACES, Signal
from gateway.processors import Processor, ProcessorContext
from gateway.registry import PROCESSORS, SINKS
from gateway.routing.router import Delivery, Router
from gateway.sampling import head
from gateway.sampling.head import HeadSampler
from gateway.sampling.tail import Policies, TailConfig, TraceBuffer
from gateway.sinks.driver import SinkDriver, driver_key
from gateway.telemetry import Metrics

_log = get_logger("pipeline")
_RETRY_AFTER_S = 1.0


@dataclass(slots=True)
class Flow:
    """What one config builds; processors (`named`) and `buffer` may be carried over to the next."""

    config: Config
    named: dict[str, tuple[object, Processor]]  # pipeline.<name> -> (its settings, the processor)
    chains: dict[str, tuple[Processor, ...]]  # by signal name; traces' holds every processor
    routers: dict[str, Router]  # by signal name
    buffer: TraceBuffer | None
    buffer_config: TailConfig | None


class Pipeline:
    def __init__(self, config: Config, metrics: Metrics, processors: Sequence[Processor] | None = None,
                 usage: object = None) -> None:
        """`processors` replaces the configured chain (tests inject one); None builds it from `pipeline:`.
        `usage` is the usage store's recorder the `account` processor feeds (None: usage off)."""
        self.metrics = metrics
        self.usage = usage
        self._injected = tuple(processors) if processors is not None else None
        self.drivers = {d.key: d for d in (self._driver(name, cfg, signal) for name, cfg, signal in _needed(config))}
        self.flow = self._build(config, self.drivers, None)
        self._closing = False
        self._paused: asyncio.Event | None = None
        self._held: list[Batch] = []
        self._draining: set[asyncio.Task[None]] = set()
        metrics.watch_queues(self._queue_rows)

    def _driver(self, name: str, cfg: object, signal: Signal) -> SinkDriver:
        if hasattr(module := SINKS[cfg.type], "create_driver"):  # type: ignore[attr-defined]  # queues per backend
            return module.create_driver(name, cfg, self.metrics, signal)  # type: ignore[no-any-return]
        sink = SINKS[cfg.type].create(name, cfg, signal)  # type: ignore[attr-defined]
        return SinkDriver(name, sink, cfg, self.metrics, signal)  # type: ignore[arg-type]

    def _queue_rows(self) -> Iterable[tuple[str, str, int, int]]:
        return ((d.name, d.signal.name, d.depth, d.capacity) for d in self.drivers.values())

    def _build(self, config: Config, drivers: dict[str, SinkDriver], previous: Flow | None) -> Flow:
        named = previous.named if previous is not None else {}
        if self._injected is not None:
            chain, named = list(self._injected), {}
        else:
            named = _named_processors(config, self.metrics, named, self.usage)
            chain = _with_head_sampling(config, named, self.metrics)
        chains = {"traces": tuple(chain)}
        for sig in ("logs", "metrics"):  # the same chain, less what does not read that signal
            chains[sig] = tuple(p for p in chain if sig in getattr(_module_of(p, named), "SIGNALS", ("traces",)))
        routes = config.route_list()
        routers = {sig.name: Router(routes, {d.name: d for d in drivers.values() if d.signal is sig}, self.metrics, sig)
                   for sig in SIGNALS.values()}
        buffer_config = config.sampling.tail or (TailConfig() if routers["traces"].by_trace else None)
        buffer = None
        if buffer_config is not None:
            if previous is not None and previous.buffer is not None and previous.buffer_config == buffer_config:
                buffer = previous.buffer  # same settings: keep the traces it holds
            else:
                buffer = TraceBuffer(buffer_config, self.metrics, self._deliver, Policies(buffer_config, self.metrics))
        return Flow(config, named, chains, routers, buffer, buffer_config)

    async def start(self) -> None:
        started: list[SinkDriver] = []
        try:
            for driver in self.drivers.values():
                try:
                    await driver.start()
                except OSError as exc:  # name the sink: a bare errno line tells the user nothing
                    raise OSError(exc.errno, f"sinks.{driver.name}: cannot start: {exc.strerror or exc}"
                                  + (f": {exc.filename!r}" if exc.filename else "")) from exc
                started.append(driver)
        except BaseException:
            await asyncio.gather(*(d.drain(0) for d in started), return_exceptions=True)
            raise
        if self.flow.buffer is not None:
            self.flow.buffer.start()

    # -- data --------------------------------------------------------------------------------

    async def consume(self, batch: Batch) -> None:
        """Accept `batch` (into the sink queues, or the trace buffer), or raise `Refused` having accepted nothing."""
        if self._paused is not None:
            await self._paused.wait()
        if self._closing:
            raise Refused("otelgate is shutting down; retry later", retry_after=_RETRY_AFTER_S)
        flow = self.flow
        for process in flow.chains[batch.signal.name]:
            batch = process(batch)
        batch.settle()
        if batch.signal is TRACES and flow.buffer is not None and batch.items:
            flow.buffer.add(batch)  # reads the LLM calls' usage for the cost and token policies
            batch.llm_calls = None
            return
        # Sinks read spans, not the processors' notes; and live references to protobuf
        # sub-messages make every later protobuf access slower while the batch waits in queues.
        batch.llm_calls = None
        if not batch.items:
            return  # everything was sampled out (counted there)
        deliveries = flow.routers[batch.signal.name].route(batch)
        if not deliveries:
            return  # counted by the router
        if len(deliveries) == 1 and len(deliveries[0][1]) == 1 and not deliveries[0][1][0].durable:
            # One memory queue takes the whole batch (one sink, or one route): what the general
            # path below decides for it, without its lists and futures (a per-request cost).
            part, (driver,) = deliveries[0]
            if not driver.can_take(part):
                raise Refused(f"sink queue full ({_reasons([driver])}); retry later", retry_after=_RETRY_AFTER_S)
            driver.put(part)
            return
        self._serialize_for_disk(deliveries)
        fulls = []
        for part, targets in deliveries:
            full = [d for d in targets if not d.can_take(part)]
            if full and (len(full) == len(targets) or any(d.when_full == "refuse" for d in full)):
                raise Refused(f"sink queue full ({_reasons(full)}); retry later", retry_after=_RETRY_AFTER_S)
            fulls.append(full)
        appends = [(i, d, f) for i, (part, targets) in enumerate(deliveries) for d in targets
                   if d not in fulls[i] and (f := d.put(part)) is not None]
        if appends:
            # Answer only once the batch is in every disk queue's write-ahead log. A failed append
            # is that sink's refusal: the request is refused if no target of a part took it (or the
            # sink says `when_full: refuse`); otherwise that sink counts its copy as dropped.
            # Shielded: a client that goes away must not cancel an append its disk thread is doing
            # (the record would be in the log while its queue entry counted it as failed).
            await asyncio.gather(*(asyncio.shield(f) for _, _, f in appends), return_exceptions=True)
            failed = [(i, d, reason) for i, d, f in appends if (reason := d.append_failure(f)) is not None]
            if failed:
                for i, (part, targets) in enumerate(deliveries):
                    mine = [d for j, d, _ in failed if j == i]
                    if mine and (len(mine) + len(fulls[i]) == len(targets) or any(d.when_full == "refuse" for d in mine)):
                        raise Refused(f"sink queue cannot write ({_reasons(mine)}); retry later", retry_after=_RETRY_AFTER_S)
                for i, d, reason in failed:
                    d.drop(deliveries[i][0].items, reason, d.last_error)
        for (part, _), full in zip(deliveries, fulls):
            for d in full:  # they drop (their copy, or their oldest data) and count it
                d.put(part)

    def refusal_before_decode(self, signal: Signal) -> Refused | None:
        """The refusal `consume` would certainly raise for any request of `signal` now, if any: when
        every queue the signal can reach is still full (`SinkDriver.still_full`), each part of
        any batch has only full targets. Receivers ask before reading a body, so under
        backpressure a request costs no read, decode or validation: at 3x overload that work,
        done only to be refused, took the CPU the sinks needed and goodput fell to a third.
        (A request that would have been routed nowhere or sampled out is refused too while every
        queue is full: it is retried later, nothing is lost.)"""
        if self._closing:
            return Refused("otelgate is shutting down; retry later", retry_after=_RETRY_AFTER_S)
        flow = self.flow
        if self._paused is not None or (signal is TRACES and flow.buffer is not None):
            return None  # a reload's pause waits; the trace buffer takes batches while sinks are full
        drivers = flow.routers[signal.name].drivers
        if not drivers or not all(d.still_full() for d in drivers):
            return None
        return Refused(f"sink queue full ({_reasons(drivers)}); retry later", retry_after=_RETRY_AFTER_S)

    def _deliver(self, batch: Batch) -> None:
        """Hand on what the trace buffer decided to keep: no client to refuse, so full queues drop."""
        if self._paused is not None:
            self._held.append(batch)
            return
        deliveries = self.flow.routers["traces"].route(batch)
        self._serialize_for_disk(deliveries)
        for part, targets in deliveries:
            for driver in targets:
                appended = driver.put(part)
                if appended is not None:
                    appended.add_done_callback(partial(_count_failed_append, driver, part.items))

    @staticmethod
    def _serialize_for_disk(deliveries: list[Delivery]) -> None:
        for part, targets in deliveries:
            if part.raw is None and any(d.durable for d in targets):
                part.raw = part.serialized()  # once (touched spans spliced in), for every disk queue and sinks after them

    # -- reload ------------------------------------------------------------------------------

    async def reload(self, config: Config, grace: float) -> None:
        """Switch to `config`: new data sees only the new flow; nothing accepted is lost.

        Raises (keeping the running flow) if a new sink cannot start.
        """
        old = self.flow
        drivers: dict[str, SinkDriver] = {}
        fresh: list[SinkDriver] = []
        for name, cfg, signal in _needed(config):
            key = driver_key(name, signal)
            current = self.drivers.get(key)
            if current is not None and current.config == cfg:
                drivers[key] = current
            else:
                drivers[key] = self._driver(name, cfg, signal)
                fresh.append(drivers[key])
        retired = [d for key, d in self.drivers.items() if drivers.get(key) is not d]
        for d in fresh:
            _log.info("sink changed; restarting it" if d.key in self.drivers else "sink added", sink=d.key)
        for d in retired:
            if d.key not in drivers:
                _log.info("sink removed; draining its queue", sink=d.key, queued=d.depth)
        # A changed sink with a disk queue hands its log to its successor: stop taking data for
        # the moment it takes to close the old one (what it could not send stays in the log and
        # the new one sends it).
        handover = [d for d in retired if d.durable and d.key in drivers and drivers[d.key].durable]
        if handover:
            self._paused = asyncio.Event()
        try:
            for d in handover:
                await d.drain(min(grace, 5.0))
            started: list[SinkDriver] = []
            try:
                for d in fresh:
                    await d.start()
                    started.append(d)
            except BaseException:
                await asyncio.gather(*(d.drain(0) for d in started), return_exceptions=True)
                for d in handover:  # its log is intact: bring the old settings back
                    revived = self.drivers[d.key] = self._driver(d.name, d.config, d.signal)
                    await revived.start()
                raise
            flow = self._build(config, drivers, old)
            self.drivers, self.flow = drivers, flow  # the switch: one assignment for the data path
        finally:
            if self._paused is not None:
                self._paused.set()
                self._paused = None
            held, self._held = self._held, []
            for batch in held:
                self._deliver(batch)
        if flow.buffer is not old.buffer:
            if old.buffer is not None:
                await old.buffer.stop("reload")  # decides what it holds; kept traces take the new routes
            if flow.buffer is not None:
                flow.buffer.start()
        kept = {id(p) for p in flow.chains["traces"]}
        for process in old.chains["traces"]:
            if id(process) not in kept:
                _close(process)
        for d in retired:
            if d not in handover:
                task = asyncio.create_task(d.drain(grace), name=f"drain-{d.key}")
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)

    # -- shutdown ----------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Decide buffered traces, deliver what the queues hold within `timeout` (all sinks in
        parallel), then close them."""
        self._closing = True
        if self.flow.buffer is not None:
            await self.flow.buffer.stop("shutdown")
        await asyncio.gather(*(d.drain(timeout) for d in self.drivers.values()), *self._draining)
        for process in self.flow.chains["traces"]:
            _close(process)

    def health(self) -> dict[str, dict[str, object]]:
        return {key: d.health() for key, d in self.drivers.items()}


def _needed(config: Config) -> list[tuple[str, object, Signal]]:
    """(sink, its config, signal) for each driver the config needs: traces for every sink that
    carries them (used or not, as before routes existed), other signals where a route sends them."""
    routed = {(sink, sig) for route in config.route_list() for sig in route.signals for sink in route.sinks}
    out = []
    for name, cfg in config.sinks.items():
        carried = SINKS[cfg.type].SIGNALS
        for signal in SIGNALS.values():
            if signal.name in carried and (signal is TRACES or (name, signal.name) in routed):
                out.append((name, cfg, signal))
    return out


def build_processors(config: Config, metrics: Metrics, usage: object = None) -> list[Processor]:
    """The chain a trace batch goes through for `config` (processors and head sampling)."""
    return _with_head_sampling(config, _named_processors(config, metrics, None, usage), metrics)


def _with_head_sampling(config: Config, named: dict[str, tuple[object, Processor]], metrics: Metrics) -> list[Processor]:
    """Head sampling goes after the processors that must see every span (the LLM metrics count
    every call) and before those marked `AFTER_SAMPLING` (redaction: no work on dropped spans)."""
    before = [p for name, (_, p) in named.items() if not getattr(PROCESSORS[name], "AFTER_SAMPLING", False)]
    after = [p for name, (_, p) in named.items() if getattr(PROCESSORS[name], "AFTER_SAMPLING", False)]
    head = [HeadSampler(config.sampling.head, metrics)] if config.sampling.head is not None else []
    return [*before, *head, *after]


def _named_processors(config: Config, metrics: Metrics, previous: dict[str, tuple[object, Processor]] | None = None,
                      usage: object = None) -> dict[str, tuple[object, Processor]]:
    """The enabled processors of `pipeline:`, in registry order, by name with their settings.

    A processor whose settings equal those in `previous` is reused (a reload keeps its caches
    and background work). Head sampling is not among them: it runs after them, so the LLM
    metrics count every call, sampled or not.
    """
    context = ProcessorContext(metrics, config, usage)
    previous = previous or {}
    chain: dict[str, tuple[object, Processor]] = {}
    for name, module in PROCESSORS.items():
        settings = getattr(config.pipeline, name)
        if not settings.enabled:
            continue
        # What it is built from: its settings, and the top-level keys it also reads (attribution).
        key = module.settings(config) if hasattr(module, "settings") else settings
        before = previous.get(name)
        chain[name] = before if before is not None and before[0] == key else (key, module.create(settings, context))
    return chain


def _module_of(process: Processor, named: dict[str, tuple[object, Processor]]) -> object:
    """The module a processor of the chain came from (head sampling's own module for it)."""
    if isinstance(process, HeadSampler):
        return head
    for name, (_, p) in named.items():
        if p is process:
            return PROCESSORS[name]
    return None


def _close(process: Processor) -> None:
    close = getattr(process, "close", None)  # processors with background work (price refresh)
    if close is not None:
        close()


def _count_failed_append(driver: SinkDriver, items: int, future: "asyncio.Future[int]") -> None:
    """A batch the trace buffer released has no client to refuse: a failed append is a counted drop."""
    reason = driver.append_failure(future)
    if reason is not None:
        driver.drop(items, reason, driver.last_error)


def _reasons(drivers: Sequence[SinkDriver]) -> str:
    return ", ".join(f"{d.name}: {d.full_reason}" if d.full_reason else d.name for d in drivers)
