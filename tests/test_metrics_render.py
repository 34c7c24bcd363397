"""`telemetry.render`, the gateway's /metrics text, held byte for byte to prometheus-client's
`generate_latest` over the same registry: any family mix, any label text, any order of
registration and updates, and scraped again after more updates (each series' formatted labels
are kept between scrapes)."""

from __future__ import annotations

import math

from hypothesis import given, settings, strategies as st
from prometheus_client import Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.llm.call import LlmCall
from gateway.processors.llm_metrics import Config, LlmMetrics
from gateway.telemetry import Metrics, PlainCounter, PlainHistogram, Registry, render
from tests.test_llm_metrics_bulk import _calls

_LABEL_NAMES = st.lists(st.sampled_from(["service", "model", "app", "tenant", "a", "z", "le_not", "b_2"]),
                        unique=True, max_size=4)
_VALUE = st.one_of(st.sampled_from(["", "gpt-4o", 'q"uote', "back\\slash", "new\nline", "ünï", "a,b=c}"]),
                   st.text(max_size=8))
_AMOUNT = st.one_of(st.integers(0, 10**7), st.floats(0, 1e12, allow_nan=False), st.sampled_from([0.1, 1e-9, 3e6]))
_OBSERVED = st.one_of(st.floats(-10, 1e7, allow_nan=False), st.integers(0, 2 * 10**6),
                      st.sampled_from([0.1, 0.25, 1.0, math.inf, math.nan]))
_BUCKETS = st.sampled_from([(0.1, 0.25, 0.5, 1.0), (100, 1000, 1e6), (-1.0, 0.0, 1.0), (5.0,)])
_DOC = st.sampled_from(["Things", "Back\\slash and\nnew line", 'Quote " kept'])


class _Rows(Collector):
    """A collector of the gateway's other kind (a family built at each scrape, like the queue gauges)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[tuple[str, float]] = []

    def collect(self):  # type: ignore[no-untyped-def]
        family = GaugeMetricFamily(self.name, "Rows", labels=["name"])
        for name, value in self.rows:
            family.add_metric([name], value)
        yield family


@st.composite
def _registry_and_updates(draw):  # type: ignore[no-untyped-def]
    registry = Registry()
    families: list[tuple[str, object, int]] = []
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["plain_counter", "plain_histogram", "counter", "gauge", "histogram", "rows"]))
        names = draw(_LABEL_NAMES)
        name, doc = f"test_family_{i}", draw(_DOC)
        if kind == "plain_counter":
            family: object = PlainCounter(name, doc, names, registry)
        elif kind == "plain_histogram":
            family = PlainHistogram(name, doc, names, registry, draw(_BUCKETS))
        elif kind == "counter":
            family = Counter(name, doc, names, registry=registry)
        elif kind == "gauge":
            family = Gauge(name, doc, names, registry=registry)
        elif kind == "histogram":
            family = Histogram(name, doc, names, buckets=draw(_BUCKETS), registry=registry)
        else:
            family = _Rows(name)
            registry.register(family)  # type: ignore[arg-type]
            names = ["name"]
        families.append((kind, family, len(names)))
    if draw(st.booleans()):
        Info("test_build", "The build", registry=registry).info({"version": draw(_VALUE)})
    updates = draw(st.lists(st.tuples(st.integers(0, len(families) - 1), st.lists(_VALUE, min_size=4, max_size=4),
                                      _AMOUNT, _OBSERVED), max_size=30))
    return registry, families, updates


def _apply(families: list[tuple[str, object, int]], updates: list) -> None:  # type: ignore[type-arg]
    for index, values, amount, observed in updates:
        kind, family, width = families[index]
        labels = values[:width]
        if kind == "rows":
            family.rows.append((labels[0], float(amount)))  # type: ignore[attr-defined]
            continue
        series = family.labels(*labels) if width or kind.startswith("plain") else family  # type: ignore[attr-defined]
        if kind in ("plain_histogram", "histogram"):
            series.observe(observed)
        elif kind == "gauge":
            series.set(-float(amount))
        else:
            series.inc(amount)


@settings(max_examples=150, deadline=None)
@given(_registry_and_updates(), st.integers(0, 30))
def test_render_writes_what_generate_latest_writes(drawn, first) -> None:  # type: ignore[no-untyped-def]
    registry, families, updates = drawn
    _apply(families, updates[:first])
    assert render(registry) == generate_latest(registry)
    _apply(families, updates[first:])  # new series and new values after a scrape: the kept labels stay right
    assert render(registry) == generate_latest(registry)


def test_order_follows_registration_after_unregister() -> None:
    registry = Registry()
    a = PlainCounter("test_a", "A", ["x"], registry)
    b = Counter("test_b", "B", ["x"], registry=registry)
    a.labels("1").inc()
    b.labels("2").inc()
    registry.unregister(a)
    registry.register(a)  # now last, in collect() and in render alike
    assert render(registry) == generate_latest(registry)
    assert render(registry).index(b"test_b_total") < render(registry).index(b"test_a_total")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_calls(), max_size=12), min_size=1, max_size=4))
def test_the_gateways_metrics_after_llm_calls(batches: list[list[LlmCall]]) -> None:
    metrics = Metrics()
    process = LlmMetrics(Config(max_models=3, max_services=2, max_tenants=2, max_apps=2, max_environments=2), metrics)
    for calls in batches:
        class _Batch:
            llm_calls = calls
        process(_Batch)  # type: ignore[arg-type]
        metrics.receiver_request_duration.labels("http").observe(0.002)
        ours, theirs = metrics.render(), generate_latest(metrics.registry)
        # The process collector reads /proc at each call: its lines may differ between two scrapes.
        assert _without_process(ours) == _without_process(theirs)
    assert any(batches) <= (b"otelgate_llm_requests_total{" in ours)


def _without_process(text: bytes) -> list[bytes]:
    return [line for line in text.splitlines() if not line.startswith(b"process_")]


class _Unusual(Collector):
    """Samples `render` leaves to prometheus-client whole: a timestamp, an exemplar, `_created`."""

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import CounterMetricFamily
        from prometheus_client.samples import Exemplar

        stamped = GaugeMetricFamily("test_stamped", "Stamped", labels=["k"])
        stamped.add_metric(["v"], 1.5, timestamp=1_795_328_849.25)
        yield stamped
        created = CounterMetricFamily("test_created", "With _created", labels=["k"], created=1_795_328_000.0)
        created.add_metric(["v"], 3, created=1_795_328_000.0)
        yield created
        family = CounterMetricFamily("test_exemplar", "With an exemplar", labels=["k"])
        family.add_metric(["v"], 2)
        family.samples[0] = family.samples[0]._replace(exemplar=Exemplar({"trace_id": "abc"}, 1.0))
        yield family


def test_samples_it_does_not_write_itself_are_left_to_prometheus_client() -> None:
    registry = Registry()
    PlainCounter("test_plain", "Plain", ["x"], registry).labels("1").inc()
    registry.register(_Unusual())
    Gauge("test_after", "After", registry=registry).set(7)
    assert render(registry) == generate_latest(registry)
    assert b"test_created_created" in render(registry) and b" 1795328849250\n" in render(registry)
