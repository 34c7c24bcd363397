#!/usr/bin/env python
"""`service.workers`: 1 against 2 workers, side by side in one run, on the plain and the LLM pipeline.

    .venv/bin/python tests/bench/bench_workers.py [--duration 5] [--rounds 3] [--clients 1] [--concurrency 16]

Each scenario runs `bench_gateway.py`'s `run` (OTLP/HTTP load from `--clients` client processes,
file sink to /dev/null, delivery checked by the `sent` metric) with `--workers 1`, then at once
with `--workers 2`, `--rounds` times alternately, so that both see the same machine load; the
table has the median of each and the median of the per-round ratios. The
gateway's CPU is the supervisor's plus every worker's. The clients run on the same cores, so
client spans/s is bounded by them too. With tail sampling, 2 workers hand about half of each
request to the worker that owns its traces (trace affinity): that cost is in the figure.
"""

from __future__ import annotations

import argparse
import sys
from statistics import median
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gateway  # noqa: E402

SCENARIOS = {"plain": ["--no-processors"], "llm": [],
             # tail sampling (traces of 2 spans, 10% LLM): with 2 workers, about half of every request is
             # handed to the other worker (trace affinity)
             "tail": ["--llm-share", "0.1", "--trace-spans", "2", "--tail", "2"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--scenarios", default="plain,llm,tail")
    args = parser.parse_args()
    rows, ok = [], True
    for scenario in args.scenarios.split(","):
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for workers in (1, 2):
                argv = ["--protocol", "http", "--clients", str(args.clients), "--concurrency", str(args.concurrency),
                        "--duration", str(args.duration), "--discard", "--ceiling-seconds", "0.5",
                        "--workers", str(workers), *SCENARIOS[scenario]]
                r = bench_gateway.run(bench_gateway.build_parser().parse_args(argv))
                ok = ok and r["delivered"]["ok"] and not r.get("client_errors")
                runs[workers].append(r)
                print(f"{scenario} workers={workers}: {r['http']['spans_per_s']:,.0f} spans/s", file=sys.stderr, flush=True)
        for workers in (1, 2):
            rs = runs[workers]
            rows.append((scenario, workers, median(r["http"]["spans_per_s"] for r in rs),
                         median(r["http"]["latency_ms"]["p50"] for r in rs), median(r["http"]["latency_ms"]["p99"] for r in rs),
                         median(r["gateway"]["load_window"]["cpu_utilisation_cores"] for r in rs),
                         median(r["gateway"]["spans_per_s_per_core"] for r in rs), all(r["delivered"]["ok"] for r in rs)))
        ratios = [b["http"]["spans_per_s"] / max(1.0, a["http"]["spans_per_s"]) for a, b in zip(runs[1], runs[2])]
        rows.append((scenario, "2/1", median(ratios), min(ratios), max(ratios), None, None, None))
    print("| pipeline | workers | client spans/s | p50 / p99 ms | gateway cores busy | spans/s per gateway core | delivered = acked |")
    print("|---|---|---|---|---|---|---|")
    for scenario, workers, rate, p50, p99, cores, per_core, delivered in rows:
        if workers == "2/1":
            print(f"| {scenario} | **2 / 1** | **{rate:.2f}x** (rounds {p50:.2f}-{p99:.2f}) | | | | |")
        else:
            print(f"| {scenario} | {workers} | {rate:,.0f} | {p50:.1f} / {p99:.1f} | {cores:.2f} | {per_core:,.0f} | {delivered} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
