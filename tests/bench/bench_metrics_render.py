#!/usr/bin/env python
"""/metrics rendering: prometheus-client's `generate_latest` against `telemetry.render`, side by side.

    .venv/bin/python tests/bench/bench_metrics_render.py [--models 20,200,2000] [--rounds 5]

A gateway's registry (`telemetry.Metrics`) gets LLM calls through the real `LlmMetrics`
processor: `--models` distinct models (each over 3 services, 2 tenants, 2 apps: a model's calls
spread over 12 label sets), every call with tokens, cost and a duration. For each size, the two
renderers run alternately `--rounds` times (each round: 10 scrapes of each, the same registry)
and the medians are printed: milliseconds of CPU per scrape, the lines of the exposition, and the
ratio. A scrape runs on the event loop: its time is time no request is served, in every worker.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from opentelemetry.proto.trace.v1.trace_pb2 import Span  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402

from gateway.llm.call import LlmCall  # noqa: E402
from gateway.processors.llm_metrics import Config, LlmMetrics  # noqa: E402
from gateway.telemetry import Metrics, render  # noqa: E402


def registry_with(models: int) -> Metrics:
    metrics = Metrics()
    process = LlmMetrics(Config(), metrics)
    calls = []
    for m in range(models):
        for service in ("chat-api", "search", "agent"):
            for tenant in ("acme", "globex"):
                for app in ("support", "docs"):
                    start = 1_795_328_849_000_000_000 + m
                    calls.append(LlmCall(
                        span=Span(), service=service, operation="chat", provider="openai", provider_inferred=False,
                        request_model=f"model-{m}", response_model=f"model-{m}-2025-01-01", input_tokens=1200 + m,
                        output_tokens=300, cache_read_tokens=100, cache_write_tokens=None, reasoning_tokens=None,
                        service_tier=None, reported_cost=None, reported_cost_key=None, start_time_unix_nano=start,
                        end_time_unix_nano=start + 1_300_000_000, error=False, cost_usd=0.0042,
                        cost_source="computed", tenant=tenant, app=app, environment="prod"))

    class _Batch:
        llm_calls = calls
    for _ in range(3):
        process(_Batch)  # type: ignore[arg-type]
    return metrics


def cpu_ms_per_scrape(fn, registry, scrapes: int = 10) -> float:  # type: ignore[no-untyped-def]
    start = time.process_time()
    for _ in range(scrapes):
        fn(registry)
    return (time.process_time() - start) * 1000 / scrapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="20,200,2000", help="comma-separated distinct models per run")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'models':>7} {'lines':>7} {'generate_latest ms':>19} {'render ms':>10} {'ratio':>6}")
    for models in (int(m) for m in args.models.split(",")):
        metrics = registry_with(models)
        registry = metrics.registry
        ours = metrics.render()
        theirs = generate_latest(registry)
        same = [x for x in ours.splitlines() if not x.startswith(b"process_")] == \
            [x for x in theirs.splitlines() if not x.startswith(b"process_")]
        if not same:
            raise SystemExit("render and generate_latest differ: the figures would mean nothing")
        old, new = [], []
        for _ in range(args.rounds):
            old.append(cpu_ms_per_scrape(generate_latest, registry))
            new.append(cpu_ms_per_scrape(render, registry))
        o, n = statistics.median(old), statistics.median(new)
        lines = len(ours.splitlines())
        print(f"{models:>7} {lines:>7} {o:>19.2f} {n:>10.2f} {o / n:>5.1f}x")


if __name__ == "__main__":
    main()
