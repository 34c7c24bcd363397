"""Cost per LLM call of `pipeline.llm_metrics`: a git revision (its llm_metrics.py and its
telemetry.py's families, loaded side by side in this process) against the working tree.

    .venv/bin/python tests/bench/bench_llm_metrics.py [calls] [--rev REV] [--batch N]

REV defaults to 8063ab1 (prometheus-client Counter/Histogram children, one locked increment per
series per call). Calls go through the processor as the pipeline calls it: batches of `--batch`
calls (default 78: what a 100-span request of the fixtures carries). Rounds alternate the two
versions (the machine is shared); the best round of each is printed, with a check that both
produced the same /metrics text for the LLM families.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import generate_latest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.llm.call import LlmCall  # noqa: E402
from gateway.processors.llm_metrics import Config, LlmMetrics  # noqa: E402
from gateway.telemetry import Metrics  # noqa: E402


def _module(rev: str, path: str, name: str) -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses and pydantic look their module up
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)
    return module


def _old(rev: str) -> tuple[Any, Any]:
    telemetry = _module(rev, "gateway/telemetry.py", "old_telemetry")
    metrics = telemetry.Metrics()
    llm_metrics = _module(rev, "gateway/processors/llm_metrics.py", "old_llm_metrics")
    return llm_metrics.LlmMetrics(llm_metrics.Config(), metrics), metrics


def _calls(n: int) -> list[LlmCall]:
    return [LlmCall(span=Span(), service=f"svc-{i % 5}", operation="chat", provider="openai", provider_inferred=False,
                    request_model=f"model-{i % 20}", response_model=None, input_tokens=1000 + i % 7, output_tokens=100,
                    cache_read_tokens=200, cache_write_tokens=None, reasoning_tokens=None, service_tier=None,
                    reported_cost=None, reported_cost_key=None, start_time_unix_nano=1, end_time_unix_nano=2_000_000_001,
                    error=i % 50 == 0, cost_usd=0.001, cost_source="computed", tenant=f"t{i % 3}", app=f"app-{i % 10}",
                    environment="prod" if i % 4 else "staging", user=f"u{i}")
            for i in range(n)]


def _llm_text(metrics: Any) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return sorted(line for line in text.splitlines() if "otelgate_llm_" in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("calls", type=int, nargs="?", default=100_000)
    parser.add_argument("--rev", default="8063ab1")
    parser.add_argument("--batch", type=int, default=78)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    calls = _calls(args.calls)
    batches = [types.SimpleNamespace(llm_calls=calls[i:i + args.batch]) for i in range(0, len(calls), args.batch)]
    new_metrics = Metrics()
    old, old_metrics = _old(args.rev)
    new = LlmMetrics(Config(), new_metrics)
    before, now = f"before ({args.rev})", "now"
    results: dict[str, list[float]] = {before: [], now: []}
    for _ in range(args.rounds):  # interleaved rounds: the machine is shared
        for name, process in ((before, old), (now, new)):
            t0 = time.process_time()
            for batch in batches:
                process(batch)
            results[name].append((time.process_time() - t0) / len(calls) * 1e6)
    base = min(results[before])
    for name, times in results.items():
        print(f"{name:18} {min(times):6.2f} us/call  (x{min(times) / base:.2f})  rounds: "
              + " ".join(f"{t:.2f}" for t in times))
    same = _llm_text(old_metrics) == _llm_text(new_metrics)
    print(f"/metrics text of the otelgate_llm_* families identical: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
