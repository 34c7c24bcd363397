#!/usr/bin/env python
"""`service.workers`: 1 against 2 workers, side by side in one run, on the plain and the LLM pipeline.

    .venv/bin/python tests/bench/bench_workers.py [--duration 5] [--rounds 3] [--clients 2] [--concurrency 8] [--before DIR]

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
`clients cores` is what the load clients used (they need CPU for every span they send). With
tail sampling, 2 workers hand about half of each request to the worker that owns its traces
(trace affinity): that cost is in both figures.
"""

from __future__ import annotations

import argparse
import os
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


def _run(argv: list[str], code: str | None) -> dict:
    """One bench_gateway run; with `code`, the gateway (supervisor and workers) imports that checkout."""
    saved = os.environ.get("PYTHONPATH")
    if code is not None:
        os.environ["PYTHONPATH"] = str(Path(code).resolve())
    try:
        return bench_gateway.run(bench_gateway.build_parser().parse_args(argv))
    finally:
        if code is not None:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--scenarios", default="plain,llm,tail")
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="bench_gateway's scrapes of /metrics: every worker renders its metrics for each, "
                        "a cost a Prometheus scraping every 15 s does not make")
    parser.add_argument("--before", metavar="DIR", help="a checkout of an earlier commit: its gateway also runs "
                        "with 2 workers in every round (the code under test for before/after, side by side)")
    args = parser.parse_args()
    # (label, workers, gateway code): with --before, 2 workers of that checkout run in each round too
    setups = [("1", 1, None), ("2", 2, None)] + ([("2 (before)", 2, args.before)] if args.before else [])
    rows, ok = [], True
    for scenario in args.scenarios.split(","):
        runs: dict[str, list[dict]] = {label: [] for label, _, _ in setups}
        for _ in range(args.rounds):
            for label, workers, code in setups:
                argv = ["--protocol", "http", "--clients", str(args.clients), "--concurrency", str(args.concurrency),
                        "--duration", str(args.duration), "--discard", "--ceiling-seconds", "0.5",
                        "--workers", str(workers), "--poll-interval", str(args.poll_interval), *SCENARIOS[scenario]]
                r = _run(argv, code)
                ok = ok and r["delivered"]["ok"] and not r.get("client_errors")
                runs[label].append(r)
                print(f"{scenario} workers={label}: {r['http']['spans_per_s']:,.0f} spans/s", file=sys.stderr, flush=True)
        for label, _, _ in setups:
            rs = runs[label]
            rows.append((scenario, label, median(r["http"]["spans_per_s"] for r in rs),
                         median(r["http"]["latency_ms"]["p50"] for r in rs), median(r["http"]["latency_ms"]["p99"] for r in rs),
                         median(r["gateway"]["load_window"]["cpu_utilisation_cores"] for r in rs),
                         median(r["http"]["client_cpu_s"] / r["http"]["elapsed_s"] for r in rs),
                         median(_per_core(r) for r in rs), all(r["delivered"]["ok"] for r in rs)))
        for label, _, _ in setups[1:]:
            ratios = [b["http"]["spans_per_s"] / max(1.0, a["http"]["spans_per_s"]) for a, b in zip(runs["1"], runs[label])]
            cpu_ratios = [2 * _per_core(b) / _per_core(a) for a, b in zip(runs["1"], runs[label])]
            rows.append((scenario, f"{label} / 1", (median(ratios), min(ratios), max(ratios)),
                         (median(cpu_ratios), min(cpu_ratios), max(cpu_ratios)), None, None, None, None, None))
    print("| pipeline | workers | client spans/s | p50 / p99 ms | gateway cores busy | clients cores | "
          "spans per gateway CPU-s | delivered = acked |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario, workers, rate, p50, p99, cores, clients, per_core, delivered in rows:
        if workers.endswith(" / 1"):
            (t, t0, t1), (c, c0, c1) = rate, p50
            print(f"| {scenario} | **{workers}** | throughput **{t:.2f}x** (rounds {t0:.2f}-{t1:.2f}) | | | | "
                  f"CPU **{c:.2f}x** (rounds {c0:.2f}-{c1:.2f}) | |")
        else:
            print(f"| {scenario} | {workers} | {rate:,.0f} | {p50:.1f} / {p99:.1f} | {cores:.2f} | {clients:.2f} | "
                  f"{per_core:,.0f} | {delivered} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
