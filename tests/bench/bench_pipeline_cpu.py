"""CPU per span of the processor chain plus the sink's encoding, in one process, no sockets.

    .venv/bin/python tests/bench/bench_pipeline_cpu.py [--llm-share F] [--seconds S] [--redact MODE]

For each request of bench_gateway.py's pool: parse (as a receiver does), run the default processor
chain (normalize, price, account, llm_metrics, feedback; `--redact` adds redaction), then
`batch.serialized()` (what a protobuf sink writes). Prints process CPU us per span for parse alone
and for the whole. Run it twice alternately with PYTHONPATH pointing at two trees to compare
them on a shared machine: CPU time is much steadier than the gateway's wall clock figures.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gateway  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from gateway.batch import Batch, RequestContext  # noqa: E402
from gateway.config import parse  # noqa: E402
from gateway.pipeline import build_processors  # noqa: E402
from gateway.telemetry import Metrics  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm-share", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--redact", default=None)
    args = ap.parse_args()
    pool = bench_gateway.build_pool(50, 100, 1, args.llm_share, 3)
    spans = sum(bench_gateway.count_spans(ExportTraceServiceRequest.FromString(p)) for p in pool)
    text = "sinks: {a: {type: file}}"
    if args.redact:
        text += f"\npipeline: {{redact: {{enabled: true, content: {args.redact}, hash_secret: 0123456789abcdef}}}}"
    chain = build_processors(parse(text, environ={}), Metrics())
    gc.freeze()
    gc.set_threshold(700, 10, 100)  # as the gateway (gateway/app.py)

    def parse_only() -> None:
        for raw in pool:
            ExportTraceServiceRequest.FromString(raw)

    def whole() -> None:
        for raw in pool:
            request = ExportTraceServiceRequest.FromString(raw)
            batch = Batch(request, 100, RequestContext("http"), raw=raw)
            for process in chain:
                batch = process(batch)
            batch.serialized()

    out = {}
    for name, fn in (("parse", parse_only), ("whole", whole)):
        fn()  # warm (caches, price table)
        laps = 0
        t0 = time.process_time()
        while time.process_time() - t0 < args.seconds:
            fn()
            laps += 1
        out[name] = (time.process_time() - t0) / (laps * spans) * 1e6
    import gateway
    print(Path(gateway.__file__).parent.parent.name, end=" ")
    print(f"llm_share {args.llm_share}: parse {out['parse']:.2f} us/span, parse+chain+serialized {out['whole']:.2f} us/span "
          f"-> {1e6 / out['whole']:,.0f} spans per CPU-second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
