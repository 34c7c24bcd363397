#!/usr/bin/env python
"""/metrics rendering: prometheus-client's `generate_latest` against `telemetry.render`, side by side.

    .venv/bin/python tests/bench/bench_metrics_render.py [--models 20,200,2000] [--rounds 5]
    .venv/bin/python tests/bench/bench_metrics_render.py --gateway [--before DIR] [--rounds 2]

A gateway's registry (`telemetry.Metrics`) gets LLM calls through the real `LlmMetrics`
processor: `--models` distinct models (each over 3 services, 2 tenants, 2 apps: a model's calls
spread over 12 label sets), every call with tokens, cost and a duration. For each size, the two
renderers run alternately `--rounds` times (each round: 10 scrapes of each, the same registry)
and the medians are printed: milliseconds of CPU per scrape, the lines of the exposition, and the
ratio. A scrape runs on the event loop: its time is time no request is served, in every worker.

`--gateway`: a real gateway (one process, tail sampling, file sink to /dev/null) gets 60 requests
of `bench_gateway.py`'s 10%-LLM pool, then 50 scrapes of `GET /metrics`; prints the gateway's CPU
(utime+stime from /proc) per scrape, HTTP handling included. With `--before DIR` (a checkout of
an earlier commit) its gateway runs too, alternately, `--rounds` times each.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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


_GATEWAY_CONFIG = """\
admin: {endpoint: 127.0.0.1:0}
pipeline: {account: {enabled: false}}
receivers: {grpc: {endpoint: 127.0.0.1:0}, http: {endpoint: 127.0.0.1:0}}
sampling:
  tail: {decision_wait: 2s, policies: [{type: error}, {type: cost, threshold_usd: 0.01}, {type: probabilistic, percentage: 10}]}
sinks: {out: {type: file, path: /dev/null, format: proto, rotate_bytes: 0}}
usage: {enabled: false}
"""


def gateway_scrape_ms(tree: Path, scrapes: int = 50) -> tuple[int, float]:
    """(lines of /metrics, the gateway's CPU milliseconds per scrape) for the gateway of `tree`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_gateway

    with tempfile.TemporaryDirectory(prefix="otelgate-scrape-") as work:
        Path(work, "otelgate.yaml").write_text(_GATEWAY_CONFIG)
        log = Path(work, "gateway.log")
        with log.open("w") as out:
            gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", "otelgate.yaml"], cwd=work,
                                       stdout=out, stderr=out, env={**os.environ, "PYTHONPATH": str(tree)})
        try:
            deadline = time.monotonic() + 30
            while not re.search(r"admin listening endpoint=(\S+)", log.read_text()) or \
                    not re.search(r"OTLP/HTTP listening endpoint=(\S+)", log.read_text()):
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise SystemExit(f"{tree}: the gateway did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)
            text = log.read_text()
            http = re.search(r"OTLP/HTTP listening endpoint=(\S+)", text).group(1)  # type: ignore[union-attr]
            admin = re.search(r"admin listening endpoint=(\S+)", text).group(1)  # type: ignore[union-attr]
            for body in bench_gateway.build_pool(20, 100, 1, 0.1, 2) * 3:
                urllib.request.urlopen(urllib.request.Request(
                    f"http://{http}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"})).read()
            time.sleep(3)  # the traces decided (tail sampling), the sink idle

            def cpu_s() -> float:
                fields = Path(f"/proc/{gateway.pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            start = cpu_s()
            for _ in range(scrapes):
                body = urllib.request.urlopen(f"http://{admin}/metrics").read()
            return len(body.splitlines()), (cpu_s() - start) * 1000 / scrapes
        finally:
            gateway.terminate()
            gateway.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="20,200,2000", help="comma-separated distinct models per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gateway", action="store_true", help="scrape a real gateway instead")
    parser.add_argument("--before", metavar="DIR", help="with --gateway: an earlier checkout's gateway too, alternately")
    args = parser.parse_args()
    if args.gateway:
        trees = [Path(__file__).resolve().parents[2]] + ([Path(args.before).resolve()] if args.before else [])
        figures: dict[Path, list[float]] = {tree: [] for tree in trees}
        for _ in range(args.rounds):
            for tree in trees:
                lines, ms = gateway_scrape_ms(tree)
                figures[tree].append(ms)
                print(f"{tree}: {lines} lines, {ms:.2f} ms of gateway CPU per scrape", flush=True)
        for tree, values in figures.items():
            print(f"median {statistics.median(values):.2f} ms per scrape: {tree}")
        return
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
