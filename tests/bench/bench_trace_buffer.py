#!/usr/bin/env python
"""The tail sampling trace buffer alone (`gateway/sampling/tail.py`), on one core, in steady state.

    .venv/bin/python tests/bench/bench_trace_buffer.py [--in-flight 100000] [--requests 8000]

Feeds `TraceBuffer.add` the requests of `bench_gateway.py` (same pool, new trace ids every pass
over it, normalize and price run first as in the gateway, outside the timer), on a virtual clock
that advances so that about `--in-flight` traces are held at `decision_wait`, and calls
`decide_due` every tick as the gateway's ticker does. The decision cache is filled before the
timed part (the gateway's state after the first `decision_cache` traces). Prints microseconds per
span for `add` and for `decide_due` (deciding and writing the kept traces out, as one request),
and the memory held per trace in flight (the process's RSS growth / traces held).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

import gateway.sampling.tail as tail  # noqa: E402
from gateway.batch import Batch, RequestContext  # noqa: E402
from gateway.config import parse  # noqa: E402
from gateway.processors import ProcessorContext, normalize, price  # noqa: E402
from gateway.telemetry import Metrics  # noqa: E402
from tests.bench.bench_gateway import (  # noqa: E402
    build_pool, lap_key, proc_status_kib, retraceable, traces_in, with_trace_ids_xored)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, default=100_000, help="traces held at decision time (about)")
    parser.add_argument("--requests", type=int, default=8000, help="requests timed, after the warm-up")
    parser.add_argument("--wait", type=float, default=5.0, help="decision_wait and idle, s")
    parser.add_argument("--llm-share", type=float, default=0.1)
    parser.add_argument("--trace-spans", type=int, default=3)
    parser.add_argument("--tail-keep", type=float, default=10.0)
    parser.add_argument("--tail-cost", type=float, default=0.01)
    parser.add_argument("--tick", type=float, help="call decide_due this often (virtual s); default: the buffer's own")
    args = parser.parse_args()

    pool = build_pool(50, 100, 1, args.llm_share, args.trace_spans)
    traces_per_request = traces_in(pool) / len(pool)
    requests = [retraceable(body) for body in pool]
    config = parse(f"""
sinks: {{a: {{type: file}}}}
sampling:
  tail:
    decision_wait: {args.wait}s
    idle: {args.wait}s
    max_traces: 1000000
    max_bytes: 4GiB
    policies: [{{type: error}}, {{type: cost, threshold_usd: {args.tail_cost}}},
               {{type: probabilistic, percentage: {args.tail_keep}}}]
""", environ={}).sampling.tail
    assert config is not None
    metrics = Metrics()
    context = ProcessorContext(metrics)
    processors = [normalize.create(normalize.Config(), context), price.create(price.Config(), context)]
    written = [0]

    def emit(batch: Batch) -> None:
        written[0] += batch.spans

    clock = [1000.0]
    tail.time = types.SimpleNamespace(monotonic=lambda: clock[0])  # the buffer's clock is ours
    buffer = tail.TraceBuffer(config, metrics, emit, tail.Policies(config, metrics))
    request_s = args.wait / (args.in_flight / traces_per_request)  # virtual seconds between requests
    tick = args.tick or buffer._tick
    warmup = int(config.decision_cache / traces_per_request) + int(args.in_flight / traces_per_request) + 1

    def batch(n: int) -> Batch:
        lap, i = divmod(n, len(requests))
        request = ExportTraceServiceRequest.FromString(with_trace_ids_xored(requests[i], lap_key(lap, 0)))
        b = Batch(request, 100, RequestContext("bench"))
        for process in processors:
            b = process(b)
        return b

    add_s = decide_s = 0.0
    spans = decided = peak = 0
    longest = 0.0  # the longest decide_due call: the event loop's pause in the gateway
    next_tick = clock[0] + tick
    batch(0)  # loads the price tables
    rss0 = proc_status_kib(os.getpid(), "VmRSS")
    for n in range(warmup + args.requests):
        timed = n >= warmup
        if n == warmup:
            written[0] = 0
        b = batch(n)
        t0 = time.process_time()
        buffer.add(b)
        if timed:
            add_s += time.process_time() - t0
            spans += 100
        clock[0] += request_s
        if clock[0] >= next_tick:
            next_tick += tick
            peak = max(peak, buffer.traces)
            t0 = time.process_time()
            count = buffer.decide_due()
            if timed:
                took = time.process_time() - t0
                decide_s += took
                decided += count
                longest = max(longest, took)
    rss1 = proc_status_kib(os.getpid(), "VmRSS")
    print(f"trace buffer: {args.llm_share:.0%} LLM spans, ordinary traces of {args.trace_spans} spans, "
          f"{traces_per_request:.1f} traces per request of 100 spans; decision_wait {args.wait:g} s, tick {tick:g} s")
    print(f"held: {buffer.traces:,} traces now, peak {peak:,} at a tick; decision cache full "
          f"({len(buffer._decided):,})")
    print(f"add:    {1e6 * add_s / spans:.2f} us per span ({spans:,} spans)")
    print(f"decide: {1e6 * decide_s / spans:.2f} us per span added, {1e6 * decide_s / max(decided, 1):.1f} us per "
          f"trace decided ({decided:,} traces, {written[0]:,} spans written); longest call {1e3 * longest:.0f} ms")
    print(f"total:  {1e6 * (add_s + decide_s) / spans:.2f} us per span -> {spans / (add_s + decide_s):,.0f} spans/s "
          f"through the buffer on one core")
    print(f"memory: RSS grew {(rss1 - rss0) / 1024:,.0f} MiB with {buffer.traces:,} traces held and "
          f"{len(buffer._decided):,} decisions cached = {1024 * (rss1 - rss0) / max(buffer.traces, 1):,.0f} bytes "
          f"per trace held; the bytes gauge counts {buffer._bytes / max(buffer.traces, 1):,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
