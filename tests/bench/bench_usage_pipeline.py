#!/usr/bin/env python
"""The CPU cost of attribution and usage accounting on the LLM pipeline, in one process.

    .venv/bin/python tests/bench/bench_usage_pipeline.py [LLM_SHARE] [ROUNDS]

For each request of the benchmark pool (tests/bench/bench_gateway.py's `build_pool`: real
fixture LLM spans, fresh ids; LLM_SHARE of the spans, default 1.0, the rest ordinary spans):
decode, run the processor chain, serialize; with the account processor off ("off"), on without
a usage store ("attribution") and on with the usage recorder ("on"). Rounds alternate the three;
the best round of each is kept (CPU time of this process), so load from other processes on a
shared machine disturbs the comparison less than a whole-gateway run.
"""

import sys, time
sys.path.insert(0, "tests/bench")
sys.path.insert(0, ".")
from bench_gateway import build_pool
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from gateway.batch import Batch, RequestContext, count_spans
from gateway.config import parse
from gateway.pipeline import build_processors
from gateway.telemetry import Metrics
from gateway.usage.recorder import Recorder
share = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
pool = build_pool(50, 100, 1, share, 3)
setups = []
for label, extra, rec in [("off", "pipeline: {account: {enabled: false}}", None), ("attribution", "", None), ("on", "", Recorder(200000))]:
    cfg = parse("sinks: {a: {type: file}}\n" + extra, environ={})
    setups.append((label, build_processors(cfg, Metrics(), rec), rec))
best = {l: 1e9 for l, _, _ in setups}
for rnd in range(rounds):
    for label, chain, rec in setups:
        t0 = time.process_time(); spans = 0
        for body in pool:
            req = ExportTraceServiceRequest.FromString(body)
            b = Batch(req, count_spans(req), RequestContext("x"), raw=body)
            for p in chain: b = p(b)
            b.serialized()
            spans += b.items
        dt = time.process_time() - t0
        if rec is not None: rec.take()
        best[label] = min(best[label], 1e6 * dt / spans)
print(f"llm_share {share}: " + ", ".join(f"{l} {v:.1f} us/span" for l, v in best.items()),
      f"| on/off throughput {best['off']/best['on']:.3f}, attribution/off {best['off']/best['attribution']:.3f}")
