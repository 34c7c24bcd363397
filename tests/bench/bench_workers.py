#!/usr/bin/env python
"""`service.workers`: 1 against 2 workers, side by side in one run, on the plain and the LLM pipeline.

    .venv/bin/python tests/bench/bench_workers.py [--duration 5] [--rounds 3] [--clients 2] [--concurrency 8]

Each scenario runs `bench_gateway.py`'s `run` (OTLP/HTTP load from `--clients` client processes,
file sink to /dev/null, delivery checked by the `sent` metric) with `--workers 1`, then at once
with `--workers 2`, `--rounds` times alternately, so that both see the same machine load; the
table has the median of each and the median of the per-round ratios. The gateway's CPU is the
supervisor's plus every worker's.

Two ratios, because the clients run on the same cores as the gateway:
- **throughput** (client spans/s, 2 workers / 1): what this machine delivers; bounded by the
  cores the clients take (and by anything else running);
- **CPU** (spans per gateway CPU-second, 2 workers / 1, times 2): what 2 workers deliver with two
  cores of their own, i.e. the scaling the workers themselves allow (1.0 per worker is linear;
  what the supervisor and trace affinity cost shows as less).
`clients cores` is what the load clients used (they need about 11 us of CPU per span sent). With
tail sampling, 2 workers hand about half of each request to the worker that owns its traces
(trace affinity): that cost is in both figures.
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


def _per_core(r: dict) -> float:
    """Spans accepted per gateway CPU-second (supervisor and workers together), from the load's start
    until the sink wrote the last one: with tail sampling the last traces are decided after the load."""
    return float(r["gateway"]["spans_per_s_per_core"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
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
                         median(r["http"]["client_cpu_s"] / r["http"]["elapsed_s"] for r in rs),
                         median(_per_core(r) for r in rs), all(r["delivered"]["ok"] for r in rs)))
        ratios = [b["http"]["spans_per_s"] / max(1.0, a["http"]["spans_per_s"]) for a, b in zip(runs[1], runs[2])]
        cpu_ratios = [2 * _per_core(b) / _per_core(a) for a, b in zip(runs[1], runs[2])]
        rows.append((scenario, "2/1", (median(ratios), min(ratios), max(ratios)),
                     (median(cpu_ratios), min(cpu_ratios), max(cpu_ratios)), None, None, None, None, None))
    print("| pipeline | workers | client spans/s | p50 / p99 ms | gateway cores busy | clients cores | "
          "spans per gateway CPU-s | delivered = acked |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario, workers, rate, p50, p99, cores, clients, per_core, delivered in rows:
        if workers == "2/1":
            (t, t0, t1), (c, c0, c1) = rate, p50
            print(f"| {scenario} | **2 / 1** | throughput **{t:.2f}x** (rounds {t0:.2f}-{t1:.2f}) | | | | "
                  f"CPU **{c:.2f}x** (rounds {c0:.2f}-{c1:.2f}) | |")
        else:
            print(f"| {scenario} | {workers} | {rate:,.0f} | {p50:.1f} / {p99:.1f} | {cores:.2f} | {clients:.2f} | "
                  f"{per_core:,.0f} | {delivered} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
