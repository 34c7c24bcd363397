"""Throughput of gateway.otlp.json_codec on realistic LLM spans (a plain script, ~20 s).

    .venv/bin/python tests/bench/bench_json_codec.py

The spans are those of tests/fixtures/*.otlp.bin (six LLM instrumentation libraries,
~16 attributes and ~1.9 kB per span), replicated with their resources and scopes into
requests of 100 spans. Each figure is the best of several timed rounds, on one core.
json_format (protobuf's own JSON mapping, not valid OTLP/JSON: base64 ids) is timed on
the same requests for comparison.
"""

from __future__ import annotations

import glob
import os
import platform
import struct
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import google.protobuf  # noqa: E402
import orjson  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from google.protobuf.internal import api_implementation  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)

from gateway.otlp.json_codec import decode_traces, encode_traces  # noqa: E402

SPANS_PER_REQUEST = 100
REQUESTS = 20


def fixture_resource_spans() -> list:
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/*.otlp.bin"))):
        if path.endswith(".logs.otlp.bin"):
            continue
        data, pos = open(path, "rb").read(), 0
        while pos < len(data):
            (size,) = struct.unpack_from(">I", data, pos)
            req = ExportTraceServiceRequest.FromString(data[pos + 4 : pos + 4 + size])
            out.extend(req.resource_spans)
            pos += 4 + size
    return out


def build_requests(n_requests: int, per_request: int) -> list[ExportTraceServiceRequest]:
    """Cycle through the fixtures' ResourceSpans until each request holds per_request spans."""
    source, i, out = fixture_resource_spans(), 0, []
    for _ in range(n_requests):
        req, count = ExportTraceServiceRequest(), 0
        while count < per_request:
            rs = req.resource_spans.add()
            rs.CopyFrom(source[i % len(source)])
            i += 1
            for ss in rs.scope_spans:
                del ss.spans[max(0, per_request - count) :]
                count += len(ss.spans)
        out.append(req)
    return out


def best_rate(work: Callable[[], object], items: int, budget_s: float, min_rounds: int = 3) -> float:
    """Items per second of the fastest round; rounds repeat until the time budget is spent."""
    best, start, rounds = float("inf"), time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t0)
        rounds += 1
    return items / best


def main() -> None:
    requests = build_requests(REQUESTS, SPANS_PER_REQUEST)
    n_spans = REQUESTS * SPANS_PER_REQUEST
    bodies = [encode_traces([r]) for r in requests]
    for body, req in zip(bodies, requests):  # a benchmark of a wrong codec is worthless
        assert decode_traces(body) == req
    mean_bytes = sum(map(len, bodies)) / n_spans
    spans = [s for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    attrs = sum(len(s.attributes) for s in spans)

    print(
        f"python {platform.python_version()}, protobuf {google.protobuf.__version__} "
        f"({api_implementation.Type()}), orjson {orjson.__version__}, {platform.machine()}"
    )
    print(
        f"{REQUESTS} requests x {SPANS_PER_REQUEST} spans from the fixtures: "
        f"{attrs / n_spans:.1f} attributes and {mean_bytes:.0f} bytes of OTLP/JSON per span"
    )

    def encode_each() -> None:
        for r in requests:
            encode_traces([r])

    def decode_each() -> None:
        for b in bodies:
            decode_traces(b)

    rows = [
        ("encode_traces, one request per call", best_rate(encode_each, n_spans, 4)),
        (
            f"encode_traces, {REQUESTS} requests merged in one call",
            best_rate(lambda: encode_traces(requests), n_spans, 3),
        ),
        ("decode_traces, one request per call", best_rate(decode_each, n_spans, 5)),
    ]
    # json_format is an order of magnitude slower: time a few requests only.
    few = requests[:3]
    pb_json = [json_format.MessageToJson(r) for r in few]
    n_few = len(few) * SPANS_PER_REQUEST
    rows += [
        (
            "json_format.MessageToJson (comparison)",
            best_rate(lambda: [json_format.MessageToJson(r) for r in few], n_few, 2, 2),
        ),
        (
            "json_format.Parse (comparison)",
            best_rate(lambda: [json_format.Parse(j, ExportTraceServiceRequest()) for j in pb_json], n_few, 2, 2),
        ),
    ]
    for label, rate in rows:
        print(f"{label:48s} {rate:>10,.0f} spans/s  {rate * mean_bytes / 1e6:6.1f} MB/s")


if __name__ == "__main__":
    main()
