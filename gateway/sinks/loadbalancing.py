"""`type: loadbalancing`: each trace (or service, or resource) to one of a set of OTLP backends.

The first tier of a two-tier fleet, as the Collector's load-balancing exporter: a consistent-hash
ring with virtual nodes over the backends sends every span of a trace (and log records carrying
its trace id) to the same backend, so a second tier can tail-sample whole traces. The ring depends
only on the sorted backend list: replicas that see the same list route identically, and each
shows the list's hash (`/health`, `otelgate_loadbalancer_ring_info`) so disagreement is visible.
When a backend joins or leaves, only about 1/N of the keys move.

```yaml
sinks:
  tier2:
    type: loadbalancing
    routing_key: traceID          # traceID | service | resource:<attribute>
    protocol: grpc                # grpc | http
    resolver:
      dns: {hostname: otelgate-tier2-headless, port: 4317, interval: 5s}   # or static: {endpoints: [h:p, ...]}
    queue: {type: disk, dir: /var/lib/otelgate/queue}   # per backend: <dir>/<sink>.backends/<host_port>/
    failover_after: 3             # consecutive failed exports before a backend's keys move on; 0: never
```

Each backend is an `otlp` sink with its own driver (queue, batching, retries, optional disk log),
so a slow or dead backend holds back only its share. After `failover_after` consecutive failed
exports a backend is `down`: new data for its keys goes to the next live backend on the ring
(the Collector instead keeps failing that share), and a connect probe every second brings it
back. Trade-off: a trace whose spans arrive on both sides of such a switch is split between two
backends (each decides on its part); what was already queued for the dead backend stays queued
(on disk with `queue.type: disk`) and is delivered to it when it is back. `failover_after: 0`
keeps every key on its owner, as the Collector does.

The `dns` resolver re-resolves A and AAAA records every `interval` (sooner when the records' TTL
is shorter); with `nameserver` it asks that server (host:port) instead of the system's. A failed
or empty answer keeps the last known list (a DNS hiccup must not empty the ring). A backend that
leaves the list stops getting new data; its queue is delivered to it within `shutdown_grace`-like
bounds (its retry settings) and then counted as dropped if it cannot be.

Metrics and logs route by trace id where they carry one; otherwise (and with `routing_key:
service`) by `service.name`, or the given resource attribute. Requests are split only when their
items go to different backends; a request that goes to one backend whole is forwarded as received.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.batch import Batch
from gateway.configtypes import Duration, StrictModel
from gateway.logs import get_logger
from gateway.otlp.signals import TRACES, Signal
from gateway.sinks import otlp
from gateway.sinks.base import Rejected, SinkConfig
from gateway.sinks.driver import SinkDriver, driver_key
from gateway.telemetry import Metrics

_log = get_logger("sink.loadbalancing")

SIGNALS = ("traces", "logs", "metrics")
VIRTUAL_NODES = 128  # points per backend: keys spread within a few % of even for 2+ backends
_PROBE_INTERVAL = 1.0
_STATUS_ORDER = ("ok", "retrying", "failing")


class StaticResolverConfig(StrictModel):
    endpoints: list[str] = Field(min_length=1, description="host:port of each backend.")


class DnsResolverConfig(StrictModel):
    hostname: str = Field(min_length=1, description="A name whose A/AAAA records are the backends (a headless Service).")
    port: int = Field(4317, ge=1, le=65535)
    interval: Duration = Field(5.0, gt=0, description="Re-resolve this often (sooner if the records' TTL is shorter).")
    timeout: Duration = Field(2.0, gt=0, description="Per DNS query.")
    nameserver: str | None = Field(None, description="host:port of the DNS server to ask; omitted: the system's.")


class ResolverConfig(StrictModel):
    static: StaticResolverConfig | None = None
    dns: DnsResolverConfig | None = None

    @model_validator(mode="after")
    def _one(self) -> "ResolverConfig":
        if (self.static is None) == (self.dns is None):
            raise ValueError("give exactly one resolver: static or dns")
        return self


class Config(SinkConfig):
    type: Literal["loadbalancing"]
    routing_key: str = Field("traceID", description="traceID | service | resource:<attribute>.")
    resolver: ResolverConfig
    protocol: Literal["grpc", "http"] = "grpc"
    compression: Literal["gzip", "none"] = "gzip"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = Field(10.0, gt=0, description="Per export attempt.")
    failover_after: int = Field(
        3, ge=0, description="Consecutive failed exports before a backend's keys move to the next one; 0: never.")

    @model_validator(mode="after")
    def _key(self) -> "Config":
        key = self.routing_key
        if key not in ("traceID", "service") and not (key.startswith("resource:") and len(key) > len("resource:")):
            raise ValueError(f"routing_key: expected traceID, service or resource:<attribute>, got {key!r}")
        if self.resolver.static is not None:
            for endpoint in self.resolver.static.endpoints:
                otlp._grpc_target(endpoint)  # host:port, raises ValueError
        return self


# -- the ring (pure) ----------------------------------------------------------------------------


def _hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


class Ring:
    """Consistent hashing over `endpoints`; the same set gives the same ring in every replica."""

    def __init__(self, endpoints: Iterable[str], vnodes: int = VIRTUAL_NODES) -> None:
        self.endpoints = sorted(set(endpoints))
        points = sorted((_hash(f"{e}#{i}".encode()), e) for e in self.endpoints for i in range(vnodes))
        self._points = [p for p, _ in points]
        self._owners = [e for _, e in points]
        self.digest = hashlib.sha256("\n".join(self.endpoints).encode()).hexdigest()[:16]

    def owner(self, key: bytes, alive: Callable[[str], bool] = lambda e: True) -> str | None:
        """The first live backend at or after the key's point; the key's own owner if none is live."""
        n = len(self._points)
        if not n:
            return None
        i = bisect.bisect(self._points, _hash(key)) % n
        first = self._owners[i]
        tried: set[str] = set()
        while len(tried) < len(self.endpoints):
            endpoint = self._owners[i]
            if endpoint not in tried:
                if alive(endpoint):
                    return endpoint
                tried.add(endpoint)
            i = (i + 1) % n
        return first


# -- splitting a request by key (pure) ----------------------------------------------------------


def _resource_key(resource: Any, attribute: str) -> bytes:
    for kv in resource.attributes:
        if kv.key == attribute:
            return kv.value.SerializeToString()
    return b""


def split_by_owner(batch: Batch, routing_key: str, owner: Callable[[bytes], str | None]) -> dict[str, Batch]:
    """`batch` in parts per backend; one part (the batch itself, bytes as received) when all agree."""
    signal = batch.signal
    attribute = "service.name" if routing_key in ("service", "traceID") else routing_key[len("resource:"):]
    by_item = routing_key == "traceID" and signal.name in ("traces", "logs")
    placed: list[tuple[int, int, int, str]] = []  # (resource, scope, item, backend)
    owners: set[str] = set()
    cache: dict[bytes, str | None] = {}
    for r, rs in enumerate(getattr(batch.request, signal.resources_field)):
        resource_owner = None
        if not by_item:
            resource_owner = owner(_resource_key(rs.resource, attribute))
        for s, scope in enumerate(getattr(rs, signal.scopes_field)):
            for k, item in enumerate(getattr(scope, signal.items_field)):
                if by_item:
                    key = item.trace_id or _resource_key(rs.resource, attribute)
                    found = cache.get(key, ...)
                    if found is ...:
                        found = cache[key] = owner(key)
                    target = found
                else:
                    target = resource_owner
                if target is None:
                    continue
                owners.add(target)
                placed.append((r, s, k, target))
    if len(owners) <= 1:
        return {owners.pop(): batch} if owners else {}
    return _rebuild(batch, placed)


def _rebuild(batch: Batch, placed: list[tuple[int, int, int, str]]) -> dict[str, Batch]:
    signal = batch.signal
    requests: dict[str, Any] = {}
    current: dict[tuple[str, int, int], Any] = {}  # (backend, resource, scope) -> the new scope message
    resources: dict[tuple[str, int], Any] = {}
    source = getattr(batch.request, signal.resources_field)
    for r, s, k, target in placed:
        scope_msg = current.get((target, r, s))
        if scope_msg is None:
            res_msg = resources.get((target, r))
            if res_msg is None:
                request = requests.get(target)
                if request is None:
                    request = requests[target] = signal.request()
                rs = source[r]
                res_msg = resources[(target, r)] = getattr(request, signal.resources_field).add()
                res_msg.resource.CopyFrom(rs.resource)
                res_msg.schema_url = rs.schema_url
            ss = getattr(source[r], signal.scopes_field)[s]
            scope_msg = current[(target, r, s)] = getattr(res_msg, signal.scopes_field).add()
            scope_msg.scope.CopyFrom(ss.scope)
            scope_msg.schema_url = ss.schema_url
        getattr(scope_msg, signal.items_field).add().CopyFrom(getattr(getattr(source[r], signal.scopes_field)[s], signal.items_field)[k])
    return {target: Batch(request, signal.count(request), batch.context, signal=signal) for target, request in requests.items()}


# -- resolvers ------------------------------------------------------------------------------------


async def resolve_dns(config: DnsResolverConfig) -> tuple[list[str], float]:
    """(backends as host:port, seconds until the answer expires); raises OSError when nothing answered."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    resolver = dns.asyncresolver.Resolver(configure=config.nameserver is None)
    if config.nameserver is not None:
        host, _, port = config.nameserver.rpartition(":")
        resolver.nameservers = [host.strip("[]") or "127.0.0.1"]
        resolver.port = int(port or 53)
    resolver.lifetime = config.timeout
    addresses: list[str] = []
    ttl = config.interval
    answered = False
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(config.hostname, rdtype, search=True)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            answered = True
            continue
        except dns.exception.DNSException as exc:
            raise OSError(f"DNS {rdtype} {config.hostname}: {exc}") from None
        answered = True
        if answer.rrset is not None:
            ttl = min(ttl, float(answer.rrset.ttl))
            addresses.extend(rd.address for rd in answer)
    if not answered:
        raise OSError(f"DNS {config.hostname}: no answer")
    return [f"[{a}]:{config.port}" if ":" in a else f"{a}:{config.port}" for a in addresses], max(0.5, ttl)


# -- the composite driver -------------------------------------------------------------------------


class _Backend:
    def __init__(self, endpoint: str, driver: SinkDriver) -> None:
        self.endpoint = endpoint
        self.driver = driver
        self.failures = 0
        self.down = False
        self.removed = False


class _CountingSink:
    """The backend's `otlp` sink, counting consecutive failed exports for failover."""

    def __init__(self, inner: otlp.OtlpSink, on_result: Callable[[bool], None]) -> None:
        self._inner = inner
        self._on_result = on_result

    async def start(self) -> None:
        await self._inner.start()

    async def send(self, batches: Sequence[Batch]) -> Rejected | None:
        try:
            result = await self._inner.send(batches)
        except Exception:
            self._on_result(False)
            raise
        self._on_result(True)
        return result

    async def shutdown(self) -> None:
        await self._inner.shutdown()


class LoadBalancer:
    """Stands where a `SinkDriver` stands in the pipeline; queues nothing itself: each backend's
    own driver does, so admission, durability and accounting are the drivers' as for any sink."""

    def __init__(self, name: str, config: Config, metrics: Metrics, signal: Signal = TRACES) -> None:
        self.name = name
        self.config = config
        self.signal = signal
        self.key = driver_key(name, signal)
        self.when_full = config.queue.when_full
        self.durable = config.queue.type == "disk"
        self.last_error: str | None = None
        self._metrics = metrics
        self._backends: dict[str, _Backend] = {}
        self._ring = Ring(())
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resolver_task: asyncio.Task[None] | None = None
        self._log = get_logger(f"sink.{self.key}")

    # -- what the pipeline reads -----------------------------------------------------------------

    @property
    def depth(self) -> int:
        return sum(b.driver.depth for b in self._backends.values())

    @property
    def capacity(self) -> int:
        return self.config.queue.max_spans * max(1, len(self._live()))

    def _live(self) -> list[_Backend]:
        return [b for b in self._backends.values() if not b.removed]

    def can_take(self, batch: Batch) -> bool:
        live = self._live()
        return bool(live) and not self._closing and all(b.driver.can_take(batch) for b in live if not b.down)

    def has_room(self, batch: Batch) -> bool:
        return self.can_take(batch)

    def still_full(self) -> bool:
        """As a driver's (`SinkDriver.still_full`): a batch is taken only when every live backend
        takes its part, so one backend still full is enough to refuse before decoding."""
        return not self._closing and any(b.driver.still_full() for b in self._live() if not b.down)

    def put(self, batch: Batch) -> "asyncio.Future[Any] | None":
        if self._closing or not self._ring.endpoints:
            self._drop(batch.items, "shutdown" if self._closing else "no_backend")
            return None
        parts = split_by_owner(batch, self.config.routing_key, self._owner)
        futures = [f for endpoint, part in parts.items() if (f := self._backends[endpoint].driver.put(part)) is not None]
        if not futures:
            return None
        return futures[0] if len(futures) == 1 else asyncio.gather(*futures)

    def _owner(self, key: bytes) -> str | None:
        return self._ring.owner(key, self._alive)

    def _alive(self, endpoint: str) -> bool:
        backend = self._backends.get(endpoint)
        return backend is not None and not backend.down

    def _drop(self, items: int, reason: str) -> None:
        self.drop(items, reason)

    def drop(self, items: int, reason: str, detail: str | None = None) -> None:
        if items <= 0:
            return
        self._metrics.signals[self.signal.name].sink_dropped.labels(self.name, reason).inc(items)
        self._log.warning(f"{self.signal.items.replace('_', ' ')} dropped", sink=self.key, count=items, reason=reason,
                          **({"error": detail} if detail else {}))

    def append_failure(self, future: "asyncio.Future[Any]") -> str | None:
        """As a driver's: the drop reason when an append to a backend's disk log failed."""
        return SinkDriver.append_failure(self, future)  # type: ignore[arg-type]  # reads only the future

    @property
    def full_reason(self) -> str | None:
        full = [b.endpoint for b in self._live() if not b.down and b.driver.full_reason]
        return f"backend {', '.join(full)} full" if full else None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        _collector(self._metrics).sinks[self.key] = self  # replaces the instance a reload retired
        resolver = self.config.resolver
        if resolver.static is not None:
            await self._set_backends(resolver.static.endpoints)
        else:
            assert resolver.dns is not None
            try:
                endpoints, _ = await resolve_dns(resolver.dns)
                if endpoints:
                    await self._set_backends(endpoints)
            except OSError as exc:
                self.last_error = str(exc)
                self._log.warning("DNS resolution failed; retrying", sink=self.key, error=str(exc))
            self._resolver_task = asyncio.create_task(self._resolve_loop(resolver.dns), name=f"resolve-{self.key}")

    async def _resolve_loop(self, config: DnsResolverConfig) -> None:
        delay = config.interval
        while True:
            await asyncio.sleep(delay)
            try:
                endpoints, ttl = await resolve_dns(config)
            except OSError as exc:
                self.last_error = str(exc)
                self._log.warning("DNS resolution failed; keeping the last known backends", sink=self.key,
                                  error=str(exc), backends=len(self._ring.endpoints))
                delay = config.interval
                continue
            delay = min(config.interval, ttl)
            if not endpoints:
                self._log.warning("DNS answered no address; keeping the last known backends", sink=self.key,
                                  hostname=config.hostname)
                continue
            try:
                await self._set_backends(endpoints)
            except Exception as exc:  # a backend that cannot start (TLS files...): keep the old ring
                self.last_error = str(exc)
                self._log.error("cannot apply the new backend list", sink=self.key, error=str(exc))

    async def _set_backends(self, endpoints: Sequence[str]) -> None:
        wanted = sorted(set(endpoints))
        if wanted == self._ring.endpoints:
            return
        added = [e for e in wanted if e not in self._backends or self._backends[e].removed]
        removed = [e for e in self._ring.endpoints if e not in wanted]
        for endpoint in added:
            backend = self._backends.get(endpoint)
            if backend is None or backend.removed:
                if backend is not None:  # came back before its old driver finished: let that one finish
                    self._track(backend.driver.drain(self.config.retry.max_elapsed))
                backend = self._backends[endpoint] = self._backend(endpoint)
                await backend.driver.start()
        self._ring = Ring(wanted)
        for endpoint in removed:
            backend = self._backends[endpoint]
            backend.removed = True
            self._track(self._retire(backend))
        self._log.info("backends", sink=self.key, backends=",".join(wanted), ring=self._ring.digest,
                       added=",".join(added) or "-", removed=",".join(removed) or "-")

    async def _retire(self, backend: _Backend) -> None:
        """A backend that left the list: deliver what it holds (within its retry bounds), then forget it."""
        await backend.driver.drain(self.config.retry.max_elapsed)
        if self._backends.get(backend.endpoint) is backend:
            del self._backends[backend.endpoint]

    def _backend(self, endpoint: str) -> _Backend:
        config = self.config
        queue = config.queue
        if queue.type == "disk":
            safe = endpoint.replace(":", "_").replace("[", "").replace("]", "")
            queue = queue.model_copy(update={"dir": str(Path(queue.dir) / f"{self.name}.backends" / safe)})
        inner_config = otlp.Config(
            type="otlp", endpoint=endpoint if config.protocol == "grpc" else f"http://{endpoint}",
            protocol=config.protocol, compression=config.compression, headers=config.headers, timeout=config.timeout,
            queue=queue, batch=config.batch, retry=config.retry)
        holder: list[_Backend] = []
        sink = _CountingSink(otlp.create(self.name, inner_config, self.signal), lambda ok: self._result(holder[0], ok))
        backend = _Backend(endpoint, SinkDriver(self.name, sink, inner_config, self._metrics, self.signal, backend=endpoint))
        holder.append(backend)
        return backend

    def _result(self, backend: _Backend, ok: bool) -> None:
        if ok:
            if backend.down:
                self._log.info("backend back; its keys return to it", sink=self.key, backend=backend.endpoint)
            backend.failures, backend.down = 0, False
            return
        backend.failures += 1
        after = self.config.failover_after
        if after and backend.failures >= after and not backend.down:
            backend.down = True
            self._log.warning("backend down; its keys move to the next backend on the ring", sink=self.key,
                              backend=backend.endpoint, failures=backend.failures)
            self._track(self._probe(backend))

    async def _probe(self, backend: _Backend) -> None:
        """Bring a down backend back as soon as it accepts connections again."""
        host, _, port = backend.endpoint.rpartition(":")
        while backend.down and not backend.removed and not self._closing:
            await asyncio.sleep(_PROBE_INTERVAL)
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 2.0)
            except (OSError, asyncio.TimeoutError):
                continue
            writer.close()
            if backend.down:
                backend.down, backend.failures = False, 0
                self._log.info("backend accepts connections again; its keys return to it", sink=self.key,
                               backend=backend.endpoint)

    def _track(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        self._closing = True
        gauges = _collector(self._metrics).sinks
        if gauges.get(self.key) is self:
            del gauges[self.key]
        if self._resolver_task is not None:
            self._resolver_task.cancel()
            await asyncio.gather(self._resolver_task, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(b.driver.drain(timeout) for b in self._backends.values()))

    def health(self) -> dict[str, object]:
        backends = {}
        worst = "ok"
        for endpoint, b in sorted(self._backends.items()):
            h = b.driver.health()
            status = "removed" if b.removed else "down" if b.down else str(h["status"])
            backends[endpoint] = {**h, "status": status}
            if not b.removed and h["status"] in _STATUS_ORDER:
                worst = max(worst, str(h["status"]), key=_STATUS_ORDER.index)
        if not self._ring.endpoints:
            worst = "failing"
        return {"status": worst, "queue_depth": self.depth, "queue_capacity": self.capacity,
                "last_error": self.last_error, "ring": self._ring.digest, "backends": backends}


class _Gauges(Collector):
    """`otelgate_loadbalancer_backends{sink, status}` and `otelgate_loadbalancer_ring_info{sink, ring}`."""

    def __init__(self) -> None:
        self.sinks: dict[str, LoadBalancer] = {}

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily("otelgate_loadbalancer_backends", ""),
                GaugeMetricFamily("otelgate_loadbalancer_ring_info", "")]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        backends = GaugeMetricFamily("otelgate_loadbalancer_backends", "Backends of a loadbalancing sink, by state",
                                     labels=["sink", "status"])
        ring = GaugeMetricFamily("otelgate_loadbalancer_ring_info", "The hash of a loadbalancing sink's sorted backend "
                                 "list (replicas that agree show the same), valued with the number of backends",
                                 labels=["sink", "ring"])
        for key, lb in list(self.sinks.items()):
            live = lb._live()
            down = sum(b.down for b in live)
            backends.add_metric([key, "up"], len(live) - down)
            backends.add_metric([key, "down"], down)
            ring.add_metric([key, lb._ring.digest], len(lb._ring.endpoints))
        yield backends
        yield ring


def _collector(metrics: Metrics) -> _Gauges:
    collector = getattr(metrics, "_loadbalancer_gauges", None)
    if collector is None:
        collector = _Gauges()
        metrics.registry.register(collector)
        metrics._loadbalancer_gauges = collector  # type: ignore[attr-defined]
    return collector


def create_driver(name: str, config: Config, metrics: Metrics, signal: Signal = TRACES) -> LoadBalancer:
    """The pipeline uses this instead of `create` + `SinkDriver`: the backends' drivers queue."""
    return LoadBalancer(name, config, metrics, signal)


def create(name: str, config: Config, signal: Signal = TRACES) -> Any:  # pragma: no cover - registry contract
    raise TypeError("the loadbalancing sink is built with create_driver (it queues per backend)")
