"""The router: `routes:` compiled once per config into a function from a batch to its deliveries.

Routes are tried in order; each route whose `match` holds takes the data, and the first one
without `continue: true` ends the search. Data no route took goes to the `default: true` route,
or is dropped and counted (`otelgate_router_dropped_spans_total{reason="no_route"}`).

The unit routed is a span, but conditions are evaluated at the coarsest level the routes need
(request, resource, scope, span), and when every span goes to the same sinks the batch is handed
on as it is, without a copy. Otherwise the spans are grouped by where they go, and each group
becomes one request (copied once) shared by the sinks of the group.

`by: trace` routes take a whole trace when any of its spans matches. They see whole traces
because the pipeline puts a trace buffer in front of the router when such a route exists; the
router also remembers (bounded) which traces matched, so a late span follows its trace.

Each signal has its own router, built from the routes that carry it (`signals:`). Logs and
metrics are routed by resource, scope and tenant (spans conditions are for traces: config
validation sees to it), whole scopes at a time.

A route's own `redact` settings apply to a copy sent to that route's sinks, so one sink can get
prompts hashed while another gets them as they were.

A route's own `sampling.head` keeps a consistent share of what the route takes (as the global
head sampler, by trace id, writing `ot=th:` on the copies it sends).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.batch import Batch
from gateway.otlp.signals import METRICS, TRACES, Signal
from gateway.processors.redact import Redactor
from gateway.config import RouteConfig
from gateway.routing.match import REQUEST, SPAN, Match, Subject, attribute_values, compile_match
from gateway.sampling.consistent import threshold, with_threshold
from gateway.sampling.head import decide
from gateway.sinks.driver import SinkDriver
from gateway.telemetry import Metrics

TRACE_MEMORY = 100_000  # traces whose by-trace route matches are remembered for late spans

Delivery = tuple[Batch, tuple[SinkDriver, ...]]


@dataclass(frozen=True, slots=True)
class _Route:
    index: int
    name: str
    match: Match | None
    sinks: tuple[str, ...]
    stop: bool  # no `continue`
    by_trace: bool
    reject_below: int  # route head sampling threshold; 0 keeps all

    def holds(self, subject: Subject) -> bool:
        return self.match is None or self.match.holds(subject)


class Router:
    def __init__(self, routes: Sequence[RouteConfig], drivers: Mapping[str, SinkDriver], metrics: Metrics,
                 signal: Signal = TRACES) -> None:
        """`drivers`: sink name -> the driver carrying `signal` to it."""
        self.signal = signal
        routes = [r for r in routes if signal.name in r.signals]
        compiled = [
            _Route(i, r.name, compile_match(r.match, f"routes[{i}].match") if r.match else None, tuple(r.sinks),
                   not r.continue_, r.by == "trace",
                   threshold(r.sampling.head.percentage / 100.0, r.sampling.head.precision)
                   if r.sampling and r.sampling.head and signal is TRACES else 0)
            for i, r in enumerate(routes)
        ]
        self._routes = tuple(r for r in compiled if not routes[r.index].default)
        self._default = next((r for r in compiled if routes[r.index].default), None)
        self._by_index = {r.index: r for r in compiled}
        self._drivers = drivers
        self.drivers = tuple(drivers.values())  # every queue this signal can reach
        self._trace_routes = tuple(r for r in self._routes if r.by_trace)
        self._sampled = any(r.reject_below for r in compiled)
        matches = [r.match for r in self._routes if r.match is not None]
        self._level = max((m.level for m in matches), default=REQUEST)
        self._resource_keys = frozenset(k for m in matches for k in m.keys("resource"))
        self._span_keys = frozenset(k for m in matches for k in m.keys("span"))
        self._trace_memory: OrderedDict[bytes, frozenset[int]] = OrderedDict()  # oldest first
        self._no_route = metrics.signals[signal.name].router_dropped.labels("no_route")
        self._sampled_spans = metrics.sampled_spans
        self._targets_cache: dict[tuple[int, ...], tuple[SinkDriver, ...]] = {}
        self._redactors = {i: Redactor(r.redact, metrics) for i, r in enumerate(routes)
                           if r.redact is not None and r.redact.enabled and signal is not METRICS}
        for route in compiled:
            for sink in route.sinks:
                if sink not in drivers:
                    raise KeyError(f"route {route.name!r}: no sink {sink!r}")

    @property
    def by_trace(self) -> bool:
        """Whether some route needs whole traces (the pipeline then buffers traces before routing)."""
        return bool(self._trace_routes)

    def route(self, batch: Batch) -> list[Delivery]:
        """Where the batch goes: (batch or a part of it, its sinks) pairs; what no route took is counted."""
        if self._level == REQUEST and not self._trace_routes and not self._sampled:
            taken = self._select(Subject(tenant=batch.context.tenant), frozenset())
            if not taken:
                self._no_route.inc(batch.items)
                return []
            return self._redacted(batch, taken, self._targets(taken))
        if self.signal is not TRACES:
            return self._route_scopes(batch)
        return self._route_spans(batch)

    # -- per scope (logs, metrics) ------------------------------------------------------------

    def _route_scopes(self, batch: Batch) -> list[Delivery]:
        signal, tenant = self.signal, batch.context.tenant
        groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        items: dict[tuple[int, ...], int] = {}
        for ri, rs in enumerate(getattr(batch.request, signal.resources_field)):
            resource = attribute_values(rs.resource.attributes, self._resource_keys) if self._resource_keys else None
            for si, scope in enumerate(getattr(rs, signal.scopes_field)):
                taken = self._select(Subject(tenant, resource, scope.scope.name, scope.scope.version), frozenset())
                groups.setdefault(taken, []).append((ri, si))
                items[taken] = items.get(taken, 0) + signal.count_scope(scope)
        lost = groups.pop((), None)
        if lost:
            self._no_route.inc(items[()])
        if len(groups) == 1 and not lost:
            (taken,) = groups
            return self._redacted(batch, taken, self._targets(taken))
        return [d for taken, scopes in groups.items()
                for d in self._redacted(_scope_subset(batch, scopes, items[taken]), taken, self._targets(taken))]

    # -- per span ---------------------------------------------------------------------------

    def _select(self, subject: Subject, trace_matched: frozenset[int]) -> tuple[int, ...]:
        taken: list[int] = []
        for route in self._routes:
            if (route.index in trace_matched) if route.by_trace else route.holds(subject):
                taken.append(route.index)
                if route.stop:
                    break
        if not taken and self._default is not None:
            taken.append(self._default.index)
        return tuple(taken)

    def _route_spans(self, batch: Batch) -> list[Delivery]:
        tenant = batch.context.tenant
        trace_matches, span_attributes = self._match_traces(batch) if self._trace_routes else ({}, None)
        attributes_in_order = iter(span_attributes) if span_attributes is not None else None
        none: frozenset[int] = frozenset()
        per_span = self._level == SPAN or bool(self._trace_routes)
        by_route = self._by_index
        # destination (route indices) -> [(resource index, scope index, span)]
        groups: dict[tuple[int, ...], list[tuple[int, int, Span]]] = {}
        sampled_out: dict[str, int] = {}
        for ri, rs in enumerate(batch.request.resource_spans):
            resource = attribute_values(rs.resource.attributes, self._resource_keys) if self._resource_keys else None
            for si, ss in enumerate(rs.scope_spans):
                subject = Subject(tenant, resource, ss.scope.name, ss.scope.version)
                taken = None if per_span else self._select(subject, none)
                for span in ss.spans:
                    if per_span:
                        subject.span = span
                        if attributes_in_order is not None:  # read once already, by _match_traces
                            subject.span_attributes = next(attributes_in_order)
                        elif self._span_keys:
                            subject.span_attributes = attribute_values(span.attributes, self._span_keys)
                        taken = self._select(subject, trace_matches.get(span.trace_id, none))
                    assert taken is not None
                    if self._sampled and taken:
                        kept = tuple(i for i in taken if not by_route[i].reject_below
                                     or decide(span, by_route[i].reject_below, mark=False))
                        for i in taken:
                            if i not in kept:
                                sampled_out[by_route[i].name] = sampled_out.get(by_route[i].name, 0) + 1
                        dest = kept
                    else:
                        dest = taken
                    groups.setdefault(dest, []).append((ri, si, span))
        for name, count in sampled_out.items():
            self._sampled_spans.labels(f"route:{name}", "dropped").inc(count)
        lost = groups.pop((), None)
        if lost:
            self._no_route.inc(len(lost))
        deliveries: list[Delivery] = []
        whole = len(groups) == 1 and not lost
        for dest, spans in groups.items():
            for reject_below, drivers in self._split_by_threshold(dest).items():
                if reject_below:
                    for name in {by_route[i].name for i in dest if by_route[i].reject_below}:
                        self._sampled_spans.labels(f"route:{name}", "kept").inc(len(spans))
                part = batch if whole and not reject_below else _subset(batch, spans, reject_below)
                deliveries.extend(self._redacted(part, dest, drivers))
        return deliveries

    def _redacted(self, part: Batch, taken: tuple[int, ...], drivers: tuple[SinkDriver, ...]) -> list[Delivery]:
        """Sinks reached through a route with `redact` get a redacted copy (one per redactor);
        a sink gets the treatment of the first route that took the data to it."""
        if not self._redactors or not any(i in self._redactors for i in taken):
            return [(part, drivers)]
        first: dict[str, int] = {}
        for i in taken:
            for sink in self._by_index[i].sinks:
                first.setdefault(sink, i)
        groups: dict[int | None, list[SinkDriver]] = {}
        for driver in drivers:
            i = first.get(driver.name)
            groups.setdefault(i if i in self._redactors else None, []).append(driver)
        out: list[Delivery] = []
        for i, group in groups.items():
            if i is None:
                out.append((part, tuple(group)))
                continue
            request = part.signal.request()
            request.CopyFrom(part.request)
            copy = Batch(request, part.items, part.context, signal=part.signal)
            out.append((self._redactors[i](copy), tuple(group)))
        return out

    def _split_by_threshold(self, dest: tuple[int, ...]) -> dict[int, tuple[SinkDriver, ...]]:
        """Sinks of `dest` grouped by the sampling threshold their copy carries (0: unsampled).

        A sink reached by several routes gets the lowest threshold among them (kept unsampled
        by one of them means a count of one)."""
        if not self._sampled:
            return {0: self._targets(dest)}
        per_sink: dict[str, int] = {}
        for i in dest:
            for sink in self._by_index[i].sinks:
                th = self._by_index[i].reject_below
                per_sink[sink] = min(per_sink.get(sink, th), th)
        out: dict[int, list[SinkDriver]] = {}
        for sink, th in per_sink.items():
            out.setdefault(th, []).append(self._drivers[sink])
        return {th: tuple(drivers) for th, drivers in out.items()}

    def _targets(self, taken: tuple[int, ...]) -> tuple[SinkDriver, ...]:
        targets = self._targets_cache.get(taken)
        if targets is None:
            names = dict.fromkeys(s for i in taken for s in self._by_index[i].sinks)  # ordered, each sink once
            targets = self._targets_cache[taken] = tuple(self._drivers[n] for n in names)
        return targets

    def _match_traces(self, batch: Batch) -> tuple[dict[bytes, frozenset[int]], list[dict[str, Any] | None]]:
        """Trace id -> the by-trace routes that one of its spans (now or earlier) matched; and
        each span's attributes as read for the conditions, in request order (read once)."""
        found: dict[bytes, set[int]] = {}
        attributes: list[dict[str, Any] | None] = []
        tenant = batch.context.tenant
        for rs in batch.request.resource_spans:
            resource = attribute_values(rs.resource.attributes, self._resource_keys) if self._resource_keys else None
            for ss in rs.scope_spans:
                subject = Subject(tenant, resource, ss.scope.name, ss.scope.version)
                for span in ss.spans:
                    subject.span = span
                    subject.span_attributes = attribute_values(span.attributes, self._span_keys) if self._span_keys else None
                    attributes.append(subject.span_attributes)
                    matched = found.setdefault(span.trace_id, set())
                    for route in self._trace_routes:
                        if route.holds(subject):
                            matched.add(route.index)
        memory = self._trace_memory
        out: dict[bytes, frozenset[int]] = {}
        for tid, matched in found.items():
            remembered = memory.get(tid, frozenset())
            out[tid] = both = remembered | matched
            if both != remembered:
                memory[tid] = both
                memory.move_to_end(tid)
                if len(memory) > TRACE_MEMORY:
                    memory.popitem(last=False)
        return out, attributes


def _scope_subset(batch: Batch, scopes: list[tuple[int, int]], count: int) -> Batch:
    """A new request holding copies of the given (resource index, scope index) scopes."""
    signal = batch.signal
    source = getattr(batch.request, signal.resources_field)
    request = signal.request()
    target_rs: Any = None
    last_ri = -1
    for ri, si in scopes:
        if ri != last_ri:
            target_rs = getattr(request, signal.resources_field).add()
            target_rs.resource.CopyFrom(source[ri].resource)
            target_rs.schema_url = source[ri].schema_url
            last_ri = ri
        getattr(target_rs, signal.scopes_field).add().CopyFrom(getattr(source[ri], signal.scopes_field)[si])
    return Batch(request, count, batch.context, signal=signal)


def _subset(batch: Batch, spans: list[tuple[int, int, Span]], reject_below: int) -> Batch:
    """A new request holding copies of `spans` (with their resources and scopes)."""
    source = batch.request.resource_spans
    request = ExportTraceServiceRequest()
    last: tuple[int, int] | None = None
    last_ri = -1
    target_rs = target_ss = None
    for ri, si, span in spans:
        if ri != last_ri:
            target_rs = request.resource_spans.add()
            target_rs.resource.CopyFrom(source[ri].resource)
            target_rs.schema_url = source[ri].schema_url
            last_ri = ri
            last = None
        if (ri, si) != last:
            assert target_rs is not None
            target_ss = target_rs.scope_spans.add()
            target_ss.scope.CopyFrom(source[ri].scope_spans[si].scope)
            target_ss.schema_url = source[ri].scope_spans[si].schema_url
            last = (ri, si)
        assert target_ss is not None
        copy = target_ss.spans.add()
        copy.CopyFrom(span)
        if reject_below:
            copy.trace_state = with_threshold(copy.trace_state, reject_below)
    return Batch(request, len(spans), batch.context)
