"""The gateway's own Prometheus metrics, one registry per gateway instance.

No module-global registry: tests run several gateways in one process, and a later
multi-process mode gives each worker its own. Names follow the Collector's
(`otelcol_receiver_accepted_spans` -> `otelgate_receiver_accepted_spans_total`).
Counters count outcomes, never attempts: a span is `sent` only after its sink said so,
and `dropped` always carries a short, fixed `reason` (never raw error text).
"""

from __future__ import annotations

import math
import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import UNDERSCORES, escape_label_name, escape_metric_name
from prometheus_client.samples import Sample
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# `*_created` series double the output and no dashboard reads them (the Collector has none).
disable_created_metrics()

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


_SCORE_BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 100.0)  # 0..1, 1-5 stars, 0-10; no negative bound, or prometheus-client hides _sum (-1 counts in le=0)
_LLM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
# Input tokens per call: fine enough around the "large prompt" thresholds (2k, 5k, 10k) alert rules use.
_INPUT_TOKEN_BUCKETS = (100, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1000000)
# Who an LLM call belongs to (gateway/usage/attribution.py), capped like `model`; users never become labels.
_OWNER = ["tenant", "app", "environment"]


class _QueueGauges(Collector):
    """Reads queue depth and capacity at scrape time instead of updating gauges per batch."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, str, int, int]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("otelgate_sink_queue_size", "Items (spans, log records, metric points) waiting in "
                                  "(or being sent from) a sink queue", labels=["sink", "signal"])
        capacity = GaugeMetricFamily("otelgate_sink_queue_capacity", "Capacity of a sink queue in items", labels=["sink", "signal"])
        for name, signal, size, cap in self._source():
            depth.add_metric([name, signal], size)
            capacity.add_metric([name, signal], cap)
        yield depth
        yield capacity


class PlainValue:
    """One series of a plain counter: a float, no lock. Its writers are on one thread (the event
    loop), so a lock per increment (prometheus-client's) would buy nothing; the hot paths add
    to `value` directly."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class PlainBuckets:
    """One series of a plain histogram: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("counts", "sum", "_bounds")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        if amount == amount:  # NaN is in no bucket (as in prometheus-client), only in the sum
            self.counts[bisect_left(self._bounds, amount)] += 1


class Registry(CollectorRegistry):
    """prometheus-client's registry that also keeps its collectors in registration order (the
    order `collect` yields them in), each with the formatted sample names and labels `render`
    has seen it yield."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self._in_order: dict[Collector, dict[Any, str]] = {}

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self._in_order[collector] = {}

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        del self._in_order[collector]

    def collectors(self) -> list[tuple[Collector, dict[Any, str]]]:
        return list(self._in_order.items())


def render(registry: CollectorRegistry) -> bytes:
    """`generate_latest(registry)`, byte for byte, at a fraction of its cost.

    prometheus-client formats every sample from scratch (label names checked, values escaped,
    sorted), about 20 us per sample here: with a few hundred LLM series a scrape took 20-50 ms of
    the event loop per worker, time no request was served. Here each series' `name{labels} `
    is formatted once and kept; a scrape writes the numbers. The plain families write
    themselves from their series; every other collector's samples go through `_exposition`.
    tests/test_metrics_render.py holds the result to `generate_latest`'s."""
    if not isinstance(registry, Registry) or registry.get_target_info():
        return generate_latest(registry)
    parts: list[bytes] = []
    for collector, prefixes in registry.collectors():
        if isinstance(collector, _PlainFamily):
            parts.append(collector.exposition())
        else:
            parts.append(_exposition(collector, prefixes))
    return b"".join(parts)


_SHOWN_TYPE = {"counter": ("_total", "counter"), "info": ("_info", "gauge"), "stateset": ("", "gauge"),
               "gaugehistogram": ("", "histogram"), "unknown": ("", "untyped")}
_MAX_KEPT = 10_000  # formatted series kept per collector (more: forgotten and formatted again)


def _exposition(collector: Collector, prefixes: dict[Any, str]) -> bytes:
    """A collector's text as `generate_latest` writes it, with each series' formatted name and
    labels looked up in `prefixes`. Samples of the kinds it writes apart (timestamps, exemplars,
    native histograms, OpenMetrics `_created` / `_gsum` / `_gcount`) are left to it, whole."""
    out: list[str] = []
    get = prefixes.get
    for metric in collector.collect():
        name, kind, documentation = metric.name, metric.type, metric.documentation
        header = get((name, kind, documentation))
        if header is None:
            suffix, shown_type = _SHOWN_TYPE.get(kind, ("", kind))
            header = prefixes[(name, kind, documentation)] = _header(name + suffix, documentation, shown_type)
        out.append(header)
        apart = (name + "_created", name + "_gsum", name + "_gcount")
        for sample in metric.samples:
            if sample.timestamp is not None or sample.exemplar is not None or sample.native_histogram is not None \
                    or sample.name in apart:
                return generate_latest(collector)  # type: ignore[arg-type]  # anything with collect()
            labels = sample.labels
            key = (sample.name, tuple(labels.items()))
            prefix = get(key)
            if prefix is None:
                if len(prefixes) >= _MAX_KEPT:
                    prefixes.clear()
                prefix = prefixes[key] = f"{escape_metric_name(sample.name, UNDERSCORES)}{_label_text(labels, labels.values())} "
            out.append(f"{prefix}{floatToGoString(sample.value)}\n")
    return "".join(out).encode()


def _header(name: str, documentation: str, kind: str) -> str:
    """A family's HELP and TYPE lines as prometheus-client writes them."""
    shown = escape_metric_name(name, UNDERSCORES)
    help_text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {shown} {help_text}\n# TYPE {shown} {kind}\n"


def _label_text(names: Iterable[str], values: Iterable[str]) -> str:
    """`{a="x",b="y"}` as prometheus-client writes it: sorted by name, values escaped ('' for none)."""
    pairs = sorted(zip(names, values))
    if not pairs:
        return ""
    return "{" + ",".join(f'{escape_label_name(k, UNDERSCORES)}="{_escape_value(v)}"' for k, v in pairs) + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


class _PlainFamily(Collector):
    """A labelled metric family whose series are plain Python numbers (`PlainCounter`,
    `PlainHistogram`). Exposed sample for sample like prometheus-client's Counter and Histogram
    (name, HELP, TYPE, label names and order, `_total` / `_bucket{le}` / `_count` / `_sum`), so
    dashboards, rules and the workers' /metrics merge see no difference."""

    _type = ""
    _suffix = ""  # prometheus-client's name for the family in HELP and TYPE: counters end in _total

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        self._prefixes: dict[tuple[str, ...], Any] = {}  # each series' formatted sample names and labels
        self._header = _header(name + self._suffix, documentation, self._type)
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return [Metric(self._name, self._documentation, self._type)]

    def _new(self) -> object:
        raise NotImplementedError

    def _labels(self, values: tuple[str, ...]) -> object:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name}: {len(self._labelnames)} label values expected, got {values!r}")
            key = tuple(str(v) for v in values)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new()
        return child

    def collect(self) -> Iterable[Metric]:
        family = Metric(self._name, self._documentation, self._type)
        names = self._labelnames
        for values, child in list(self._children.items()):
            self._samples(family, dict(zip(names, values)), child)
        yield family

    def _samples(self, family: Metric, labels: dict[str, str], child: object) -> None:
        raise NotImplementedError

    def exposition(self) -> bytes:
        """This family in the text format, exactly as `generate_latest` writes its `collect()`."""
        out = [self._header]
        prefixes = self._prefixes
        for values, child in list(self._children.items()):
            prefix = prefixes.get(values)
            if prefix is None:
                prefix = prefixes[values] = self._prefix(values)
            self._write(out, prefix, child)
        return "".join(out).encode()

    def _prefix(self, values: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def _write(self, out: list[str], prefix: Any, child: Any) -> None:
        raise NotImplementedError


class PlainCounter(_PlainFamily):
    """A counter family of `PlainValue` series (see `_PlainFamily`)."""

    _type = "counter"
    _suffix = "_total"

    def _new(self) -> PlainValue:
        return PlainValue()

    def labels(self, *values: str) -> PlainValue:
        return self._labels(values)  # type: ignore[return-value]

    def _samples(self, family: Metric, labels: dict[str, str], child: object) -> None:
        family.samples.append(Sample(self._name + "_total", labels, child.value))  # type: ignore[attr-defined]

    def _prefix(self, values: tuple[str, ...]) -> str:
        return f"{escape_metric_name(self._name + '_total', UNDERSCORES)}{_label_text(self._labelnames, values)} "

    def _write(self, out: list[str], prefix: str, child: PlainValue) -> None:
        out.append(f"{prefix}{floatToGoString(child.value)}\n")


# Bucket counts repeat (most buckets of most series hold the same few numbers): their text is
# kept, up to a bound, instead of formatted again for every line of every scrape.
_COUNT_TEXT: dict[float, str] = {}


def _count_text(count: float) -> str:
    text = floatToGoString(count)
    if len(_COUNT_TEXT) < 65536:
        _COUNT_TEXT[count] = text
    return text


class PlainHistogram(_PlainFamily):
    """A histogram family of `PlainBuckets` series (see `_PlainFamily`); `buckets` are the finite
    upper bounds, +Inf is added."""

    _type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry,
                 buckets: Sequence[float]) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds) or not bounds:
            raise ValueError(f"{name}: buckets must be sorted and not empty")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        self._le = tuple(floatToGoString(b) for b in bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> PlainBuckets:
        return PlainBuckets(self._bounds)

    def labels(self, *values: str) -> PlainBuckets:
        return self._labels(values)  # type: ignore[return-value]

    def _samples(self, family: Metric, labels: dict[str, str], child: object) -> None:
        assert isinstance(child, PlainBuckets)
        name, add, acc = self._name, family.samples.append, 0.0
        for le, count in zip(self._le, child.counts):
            acc += count
            add(Sample(name + "_bucket", {**labels, "le": le}, acc))
        add(Sample(name + "_count", labels, acc))
        if self._bounds[0] >= 0:  # as prometheus-client: no _sum when a bound is negative
            add(Sample(name + "_sum", labels, child.sum))

    def _prefix(self, values: tuple[str, ...]) -> tuple[tuple[str, ...], str, str]:
        names, name = self._labelnames, self._name
        bucket = escape_metric_name(name + "_bucket", UNDERSCORES)
        buckets = tuple(f"{bucket}{_label_text((*names, 'le'), (*values, le))} " for le in self._le)
        labels = _label_text(names, values)
        return (buckets, f"{escape_metric_name(name + '_count', UNDERSCORES)}{labels} ",
                f"{escape_metric_name(name + '_sum', UNDERSCORES)}{labels} ")

    def _write(self, out: list[str], prefix: tuple[tuple[str, ...], str, str], child: PlainBuckets) -> None:
        buckets, count, total = prefix
        add, acc, known = out.append, 0.0, _COUNT_TEXT.get
        for bucket, n in zip(buckets, child.counts):
            acc += n
            add(f"{bucket}{known(acc) or _count_text(acc)}\n")
        add(f"{count}{known(acc) or _count_text(acc)}\n")
        if self._bounds[0] >= 0:
            add(f"{total}{floatToGoString(child.sum)}\n")


class SentCounter(Collector):
    """`otelgate_sink_sent_*_total{sink}`, and `{sink, backend}` for the backends of a
    loadbalancing sink: one family whose series carry a `backend` label only where there is one
    (prometheus-client's Counter needs one label set per family)."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._children: dict[tuple[str, str | None], PlainValue] = {}
        registry.register(self)

    def labels(self, sink: str, backend: str | None = None) -> PlainValue:
        key = (sink, backend)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = PlainValue()
        return child

    def describe(self) -> Iterable[CounterMetricFamily]:
        return [CounterMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation)
        for (sink, backend), child in list(self._children.items()):
            labels = {"sink": sink} if backend is None else {"sink": sink, "backend": backend}
            family.samples.append(Sample(self._name + "_total", labels, child.value))
        yield family


ITEMS = {"traces": "spans", "logs": "log_records", "metrics": "metric_points"}


class SignalCounters:
    """The counters that exist once per signal, named by what the signal carries."""

    def __init__(self, items: str, r: CollectorRegistry) -> None:
        what = items.replace("_", " ").capitalize()  # "Spans", "Log records", "Metric points"
        self.receiver_accepted = Counter(
            f"otelgate_receiver_accepted_{items}", f"{what} accepted by a receiver and handed to the pipeline", ["protocol"], registry=r)
        self.receiver_refused = Counter(
            f"otelgate_receiver_refused_{items}", f"{what} refused as a whole request (the client may retry)",
            ["protocol", "reason"], registry=r)
        self.receiver_rejected = Counter(
            f"otelgate_receiver_rejected_{items}", f"{what} rejected as invalid (reported in partial_success) or over a limit "
            "(the whole request); not retryable",
            ["protocol", "reason"], registry=r)
        self.sink_sent = SentCounter(f"otelgate_sink_sent_{items}", f"{what} a sink delivered", r)
        self.sink_failed = Counter(
            f"otelgate_sink_failed_{items}", f"{what} in send attempts that failed (they may be retried)", ["sink"], registry=r)
        self.sink_dropped = Counter(
            f"otelgate_sink_dropped_{items}", f"{what} a sink will never deliver, by reason", ["sink", "reason"], registry=r)
        self.router_dropped = Counter(
            f"otelgate_router_dropped_{items}", f"{what} that no route took", ["reason"], registry=r)


class Metrics:
    """Every metric family of one gateway, registered on its own registry."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        from gateway import __version__

        Info("otelgate_build", "The otelgate build running", registry=r).info(
            {"version": __version__, "python": platform.python_version()})
        # Per signal, as the Collector names them: ..._spans, ..._log_records, ..._metric_points.
        self.signals = {signal: SignalCounters(items, r) for signal, items in ITEMS.items()}
        traces = self.signals["traces"]
        self.receiver_accepted_spans = traces.receiver_accepted
        self.receiver_refused_spans = traces.receiver_refused
        self.receiver_rejected_spans = traces.receiver_rejected
        self.sink_sent_spans = traces.sink_sent
        self.sink_failed_spans = traces.sink_failed
        self.sink_dropped_spans = traces.sink_dropped
        self.router_dropped_spans = traces.router_dropped
        self.receiver_truncated_spans = Counter(
            "otelgate_receiver_truncated_spans", "Spans accepted after cutting them to a limit", ["protocol", "limit"], registry=r)
        self.receiver_requests = Counter(
            "otelgate_receiver_requests", "Export requests by outcome", ["protocol", "outcome"], registry=r)
        self.receiver_connections_closed = Counter(
            "otelgate_receiver_connections_closed", "Connections the gateway closed or refused: header_timeout, "
            "idle_timeout, too_many_connections", ["protocol", "reason"], registry=r)
        self.receiver_open_connections = Gauge(
            "otelgate_receiver_open_connections", "Connections open on a receiver", ["protocol"], registry=r)
        self.receiver_in_flight = Gauge(
            "otelgate_receiver_in_flight_requests", "Export requests being processed (admission control's count)",
            ["protocol"], registry=r)
        # process_open_fds, process_max_fds, process_resident_memory_bytes, process_cpu_seconds_total
        ProcessCollector(registry=r)
        self.receiver_request_duration = Histogram(
            "otelgate_receiver_request_duration_seconds", "Time from request received to response, per protocol",
            ["protocol"], buckets=_LATENCY_BUCKETS, registry=r)
        self.sampled_log_records = Counter(
            "otelgate_sampled_log_records", "Log records kept or dropped with their trace by head sampling",
            ["policy", "decision"], registry=r)
        self.sampled_spans = Counter(
            "otelgate_sampled_spans", "Sampling decisions by policy (dropped is intentional, never an error)",
            ["policy", "decision"], registry=r)
        # Tail sampling and the trace buffer (gateway/sampling/tail.py).
        self.tail_policy_traces = Counter(
            "otelgate_tail_policy_traces", "Tail sampling: traces each policy voted to keep or drop", ["policy", "decision"], registry=r)
        self.tail_decided_early = Counter(
            "otelgate_tail_decided_early", "Traces decided before their wait was over, by reason", ["reason"], registry=r)
        self.tail_late_spans = Counter(
            "otelgate_tail_late_spans", "Spans that arrived after their trace was decided, and followed the decision",
            ["decision"], registry=r)
        self.tail_traces = Gauge("otelgate_tail_traces", "Traces held in the trace buffer", registry=r)
        self.tail_bytes = Gauge("otelgate_tail_buffer_bytes", "Bytes held in the trace buffer (serialized spans)", registry=r)
        self.config_reloads = Counter(
            "otelgate_config_reloads", "Config reloads by outcome", ["outcome"], registry=r)
        # LLM calls, one per provider call (never aggregates or duplicates); see processors/llm_metrics.py.
        # Plain families (no lock per increment): they are written once or more per LLM call.
        self.llm_requests = PlainCounter(
            "otelgate_llm_requests", "LLM provider calls; model: the requested model, response_model: the one that answered "
            "(empty when none did)", ["service", "provider", "model", "response_model", "operation", "status", *_OWNER],
            r)
        self.llm_tokens = PlainCounter(
            "otelgate_llm_tokens", "Tokens of LLM calls by type (input includes cache; output includes reasoning)",
            ["service", "provider", "model", "type", *_OWNER], r)
        self.llm_cost = PlainCounter(
            "otelgate_llm_cost_usd", "Cost of LLM calls in USD, by where the figure came from",
            ["service", "provider", "model", "source", *_OWNER], r)
        self.llm_duration = PlainHistogram(
            "otelgate_llm_request_duration_seconds", "Duration of LLM call spans",
            ["service", "provider", "model", *_OWNER], r, _LLM_BUCKETS)
        self.llm_input_tokens_per_call = PlainHistogram(
            "otelgate_llm_input_tokens_per_call", "Input tokens (cache included) of each LLM call that reported them",
            ["app", "model"], r, _INPUT_TOKEN_BUCKETS)
        self.llm_unpriced = PlainCounter(
            "otelgate_llm_unpriced_spans", "LLM calls with usage but no known price", ["provider", "model"], r)

        # User feedback and evaluation scores (gen_ai.evaluation.result log records); processors/feedback.py.
        self.llm_feedback = PlainCounter(
            "otelgate_llm_feedback", "Feedback and evaluation results by app, evaluation name and label",
            ["app", "name", "label"], r)
        self.llm_feedback_score = PlainHistogram(
            "otelgate_llm_feedback_score", "Scores of feedback and evaluation results (gen_ai.evaluation.score.value)",
            ["app", "name"], r, _SCORE_BUCKETS)

        self.redactions = Counter(
            "otelgate_redactions", "Values redacted, by detector kind or content action (content_drop, content_hash, "
            "content_truncate)", ["kind"], registry=r)

    def watch_queues(self, source: Callable[[], Iterable[tuple[str, str, int, int]]]) -> None:
        """Expose `(sink, signal, depth, capacity)` rows from `source` as gauges at each scrape."""
        self.registry.register(_QueueGauges(source))

    def render(self) -> bytes:
        return render(self.registry)
