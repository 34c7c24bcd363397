"""The gateway's own Prometheus metrics, one registry per gateway instance.

No module-global registry: tests run several gateways in one process, and a later
multi-process mode gives each worker its own. Names follow the Collector's
(`otelcol_receiver_accepted_spans` -> `otelgate_receiver_accepted_spans_total`).
Counters count outcomes, never attempts: a span is `sent` only after its sink said so,
and `dropped` always carries a short, fixed `reason` (never raw error text).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# `*_created` series double the output and no dashboard reads them (the Collector has none).
disable_created_metrics()

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


_LLM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)


class _QueueGauges(Collector):
    """Reads queue depth and capacity at scrape time instead of updating gauges per batch."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("otelgate_sink_queue_size", "Spans waiting in (or being sent from) a sink queue", labels=["sink"])
        capacity = GaugeMetricFamily("otelgate_sink_queue_capacity", "Capacity of a sink queue in spans", labels=["sink"])
        for name, size, cap in self._source():
            depth.add_metric([name], size)
            capacity.add_metric([name], cap)
        yield depth
        yield capacity


class Metrics:
    """Every metric family of one gateway, registered on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.receiver_accepted_spans = Counter(
            "otelgate_receiver_accepted_spans", "Spans accepted by a receiver and handed to the pipeline", ["protocol"], registry=r)
        self.receiver_refused_spans = Counter(
            "otelgate_receiver_refused_spans", "Spans refused as a whole request (the client may retry)", ["protocol", "reason"], registry=r)
        self.receiver_rejected_spans = Counter(
            "otelgate_receiver_rejected_spans", "Spans rejected as invalid (reported in partial_success) or over a limit (the whole request; not retryable)",
            ["protocol", "reason"], registry=r)
        self.receiver_truncated_spans = Counter(
            "otelgate_receiver_truncated_spans", "Spans accepted after cutting them to a limit", ["protocol", "limit"], registry=r)
        self.receiver_requests = Counter(
            "otelgate_receiver_requests", "Export requests by outcome", ["protocol", "outcome"], registry=r)
        self.receiver_request_duration = Histogram(
            "otelgate_receiver_request_duration_seconds", "Time from request received to response, per protocol",
            ["protocol"], buckets=_LATENCY_BUCKETS, registry=r)
        self.sink_sent_spans = Counter(
            "otelgate_sink_sent_spans", "Spans a sink delivered", ["sink"], registry=r)
        self.sink_failed_spans = Counter(
            "otelgate_sink_failed_spans", "Spans in send attempts that failed (they may be retried)", ["sink"], registry=r)
        self.sink_dropped_spans = Counter(
            "otelgate_sink_dropped_spans", "Spans a sink will never deliver, by reason", ["sink", "reason"], registry=r)
        self.router_dropped_spans = Counter(
            "otelgate_router_dropped_spans", "Spans that no route took", ["reason"], registry=r)
        self.sampled_spans = Counter(
            "otelgate_sampled_spans", "Sampling decisions by policy (dropped is intentional, never an error)",
            ["policy", "decision"], registry=r)
        # LLM calls, one per provider call (never aggregates or duplicates); see processors/llm_metrics.py.
        self.llm_requests = Counter(
            "otelgate_llm_requests", "LLM provider calls", ["service", "provider", "model", "operation", "status"], registry=r)
        self.llm_tokens = Counter(
            "otelgate_llm_tokens", "Tokens of LLM calls by type (input includes cache; output includes reasoning)",
            ["service", "provider", "model", "type"], registry=r)
        self.llm_cost = Counter(
            "otelgate_llm_cost_usd", "Cost of LLM calls in USD, by where the figure came from",
            ["service", "provider", "model", "source"], registry=r)
        self.llm_duration = Histogram(
            "otelgate_llm_request_duration_seconds", "Duration of LLM call spans", ["service", "provider", "model"],
            buckets=_LLM_BUCKETS, registry=r)
        self.llm_unpriced = Counter(
            "otelgate_llm_unpriced_spans", "LLM calls with usage but no known price", ["provider", "model"], registry=r)

    def watch_queues(self, source: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        """Expose `(sink, depth, capacity)` rows from `source` as gauges at each scrape."""
        self.registry.register(_QueueGauges(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)
