"""Head sampling through the real gateway: the share kept, the same decisions on two replicas,
the tracestate threshold, and `sampling.priority`."""

from __future__ import annotations

import os
import random
from pathlib import Path

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import Batch, RequestContext, count_spans
from gateway.sampling.consistent import keep, threshold
from gateway.sampling.head import HeadConfig, HeadSampler
from gateway.telemetry import Metrics
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric

PROTO = {"Content-Type": "application/x-protobuf"}


def _requests(traces: int, seed: int) -> list[tuple[bytes, list[bytes]]]:
    """Requests of 100 traces, each trace a root and a child span; returns bodies and trace ids."""
    rng = random.Random(seed)
    out = []
    for start in range(0, traces, 100):
        req = ExportTraceServiceRequest()
        scope = req.resource_spans.add().scope_spans.add()
        ids = []
        for _ in range(100):
            trace_id = rng.randbytes(16)
            ids.append(trace_id)
            root = rng.randbytes(8)
            scope.spans.add(trace_id=trace_id, span_id=root, name="root")
            scope.spans.add(trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=root, name="child")
        out.append((req.SerializeToString(), ids))
    return out


def _run(workdir: Path, bodies: list[bytes], percentage: float) -> list[dict]:
    workdir.mkdir(exist_ok=True)
    config = gateway_config(workdir)
    config["sampling"] = {"head": {"percentage": percentage}}
    gw = GatewayProcess(config, workdir).wait_ready()
    try:
        for body in bodies:
            assert requests.post(f"{gw.http}/v1/traces", data=body, headers=PROTO, timeout=5).status_code == 200
        total = sum(count_spans(ExportTraceServiceRequest.FromString(b)) for b in bodies)
        wait_for(lambda: metric(gw.admin, "otelgate_sampled_spans_total") == total)
        kept = metric(gw.admin, "otelgate_sampled_spans_total", decision="kept")
        wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total", sink="out") == kept)
        assert metric(gw.admin, "otelgate_receiver_accepted_spans_total") == total
    finally:
        assert gw.stop() == 0
    return spans_in(read_json_lines(workdir / "out.jsonl"))


def test_share_kept_whole_traces_and_tracestate(tmp_path: Path) -> None:
    batches = _requests(10_000, seed=3)
    spans = _run(tmp_path / "a", [b for b, _ in batches], 25)
    traces: dict[str, set[str]] = {}
    for span in spans:
        traces.setdefault(span["traceId"], set()).add(span["name"])
        assert span["traceState"] == "ot=th:c"
    assert all(names == {"root", "child"} for names in traces.values())  # whole traces, never halves
    sigma = (10_000 * 0.25 * 0.75) ** 0.5
    assert abs(len(traces) - 2500) < 4 * sigma
    # Exactly the traces the specification's rule keeps (R = the 56 low bits >= th).
    expected = {t.hex() for _, ids in batches for t in ids if keep(t, "", threshold(0.25))}
    assert set(traces) == expected


def test_two_replicas_keep_the_same_traces(tmp_path: Path) -> None:
    bodies = [b for b, _ in _requests(2_000, seed=11)]
    a = {s["spanId"] for s in _run(tmp_path / "a", bodies, 40)}
    b = {s["spanId"] for s in _run(tmp_path / "b", bodies, 40)}
    assert a == b and 0 < len(a) < 4_000


def test_sampling_priority_overrides(tmp_path: Path) -> None:
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    low = os.urandom(9) + bytes(7)  # R = 0: dropped at any percentage below 100
    scope.spans.add(trace_id=low, span_id=os.urandom(8), name="forced",
                    attributes=[{"key": "sampling.priority", "value": {"int_value": 1}}])
    scope.spans.add(trace_id=low, span_id=os.urandom(8), name="plain")
    high = os.urandom(9) + b"\xff" * 7
    scope.spans.add(trace_id=high, span_id=os.urandom(8), name="vetoed",
                    attributes=[{"key": "sampling.priority", "value": {"int_value": 0}}])
    spans = _run(tmp_path, [req.SerializeToString()], 50)
    assert sorted(s["name"] for s in spans) == ["forced"]
    assert "traceState" not in spans[0]  # kept by priority, not by probability: no threshold claimed


def test_marked_spans_are_spliced_into_the_received_bytes() -> None:
    """Nothing dropped: the kept spans' tracestate edits are touches, and the bytes a sink writes
    are the edited request's; something dropped: the whole request is serialized."""
    sampler = HeadSampler(HeadConfig(percentage=50), Metrics())
    rng = random.Random(7)
    for _ in range(20):
        request = ExportTraceServiceRequest()
        for _ in range(3):
            spans = request.resource_spans.add().scope_spans.add().spans
            for _ in range(rng.randrange(0, 4)):
                spans.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name="s",
                          trace_state=rng.choice(["", "a=b", "ot=th:8"]))
        body = request.SerializeToString()
        batch = sampler(Batch(request, count_spans(request), RequestContext("test"), raw=body))
        assert (batch.received is None) == (batch.items < count_spans(ExportTraceServiceRequest.FromString(body)))
        assert batch.serialized() == request.SerializeToString()
