#!/usr/bin/env python
"""Trace affinity's own cost per span, old way against new way, side by side in one process.

    .venv/bin/python tests/bench/bench_affinity.py [--workers 2] [--laps 20] [--llm-share 0.1] [--trace-spans 2]

What a worker spends on a request before its pipeline when `service.workers` > 1 and the config
needs whole traces, for `bench_gateway.py`'s request pool (100 spans per request):

- `parsed` (the way before 2026-12-02): group the parsed spans by owner (`split_by_owner`),
  build one request per owner by copying spans (`CopyFrom`), encode every share (its own
  share loses the received bytes, so a protobuf sink encodes it again: counted here), and the
  owner parses what it is handed;
- `bytes`: `split_traces` slices the received bytes per owner (framing and trace ids only), the
  own share is the parsed request less the others' spans (`_keep_only`), and the owner parses
  what it is handed; with the Python walker (`_split_bytes`) and with the compiled one
  (`_affinity_split.c`, where it was built).

CPU time (`time.process_time`) per span, alternating the two ways lap by lap.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import bench_gateway  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from gateway.batch import Batch, RequestContext  # noqa: E402
from gateway.service.affinity import _COMPILED_SPLIT, _keep_only, _split, _split_bytes, split_traces  # noqa: E402


def parsed_way(pool: list[bytes], workers: int) -> int:
    spans = 0
    for raw in pool:
        request = ExportTraceServiceRequest.FromString(raw)  # the receiver's parse (both ways)
        batch = Batch(request, bench_gateway.count_spans(request), RequestContext("http"), raw=raw)
        for owner, part in _split(batch, workers).items():
            body = part.serialized()  # handed on, or (own share, raw lost) encoded by the sink
            if owner != 0:
                ExportTraceServiceRequest.FromString(body)  # the owner's parse
        spans += batch.items
    return spans


def bytes_way(pool: list[bytes], workers: int, split_bytes: Any = split_traces) -> int:
    spans = 0
    for raw in pool:
        request = ExportTraceServiceRequest.FromString(raw)
        split = split_bytes(raw, 0, workers)
        assert split is not None
        shares, foreign = split
        _keep_only(request, foreign)
        for owner, (body, count) in shares.items():
            if owner != 0:
                ExportTraceServiceRequest.FromString(body)
            spans += count
    return spans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--laps", type=int, default=20)
    parser.add_argument("--llm-share", type=float, default=0.1)
    parser.add_argument("--trace-spans", type=int, default=2)
    args = parser.parse_args()
    pool = bench_gateway.build_pool(50, 100, 1, args.llm_share, args.trace_spans)
    receive = {"parse only": lambda p, w: sum(bench_gateway.count_spans(ExportTraceServiceRequest.FromString(r)) for r in p)}
    ways = {**receive, "parsed": parsed_way, "bytes (Python)": lambda p, w: bytes_way(p, w, _split_bytes)}
    if _COMPILED_SPLIT is not None:
        ways["bytes (compiled)"] = bytes_way
    cpu = dict.fromkeys(ways, 0.0)
    spans = dict.fromkeys(ways, 0)
    for _ in range(args.laps):
        for name, way in ways.items():
            t0 = time.process_time()
            spans[name] += way(pool, args.workers)
            cpu[name] += time.process_time() - t0
    base = cpu["parse only"] / spans["parse only"]
    print(f"{len(pool)} requests x 100 spans (llm share {args.llm_share}, {args.trace_spans} spans per trace), "
          f"{args.workers} workers, {args.laps} laps")
    print("| way | CPU us per span | affinity's own us per span (less the receiver's parse) |")
    print("|---|---|---|")
    for name in ways:
        per = cpu[name] / spans[name]
        print(f"| {name} | {1e6 * per:.2f} | {1e6 * (per - base):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
