"""Cost per LLM call of `pipeline.llm_metrics`, now (with tenant/app/environment labels and the
input-tokens histogram) against the version before them (git fffac65), side by side in one run.

    .venv/bin/python tests/bench/bench_llm_metrics.py [calls]
"""

from __future__ import annotations

import subprocess
import sys
import time
import types
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry, Counter, Histogram

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.llm.call import LlmCall  # noqa: E402
from gateway.processors.llm_metrics import Config, LlmMetrics  # noqa: E402
from gateway.telemetry import _LLM_BUCKETS, Metrics  # noqa: E402


def _old() -> object:
    source = subprocess.run(["git", "show", "fffac65:gateway/processors/llm_metrics.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("old_llm_metrics")
    exec(compile(source, "old_llm_metrics.py", "exec"), module.__dict__)
    r = CollectorRegistry()
    m = types.SimpleNamespace(
        llm_requests=Counter("a", "", ["service", "provider", "model", "operation", "status"], registry=r),
        llm_tokens=Counter("b", "", ["service", "provider", "model", "type"], registry=r),
        llm_cost=Counter("c", "", ["service", "provider", "model", "source"], registry=r),
        llm_duration=Histogram("d", "", ["service", "provider", "model"], buckets=_LLM_BUCKETS, registry=r),
        llm_unpriced=Counter("e", "", ["provider", "model"], registry=r))
    return module.LlmMetrics(module.Config(), m)


def _calls(n: int) -> list[LlmCall]:
    return [LlmCall(span=Span(), service=f"svc-{i % 5}", operation="chat", provider="openai", provider_inferred=False,
                    request_model=f"model-{i % 20}", response_model=None, input_tokens=1000 + i % 7, output_tokens=100,
                    cache_read_tokens=200, cache_write_tokens=None, reasoning_tokens=None, service_tier=None,
                    reported_cost=None, reported_cost_key=None, start_time_unix_nano=1, end_time_unix_nano=2_000_000_001,
                    error=i % 50 == 0, cost_usd=0.001, cost_source="computed", tenant=f"t{i % 3}", app=f"app-{i % 10}",
                    environment="prod" if i % 4 else "staging", user=f"u{i}")
            for i in range(n)]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    calls = _calls(n)
    new, old = LlmMetrics(Config(), Metrics()), _old()
    results: dict[str, list[float]] = {"before (fffac65)": [], "now": []}
    for _ in range(3):  # interleaved rounds: the machine is shared
        for name, metrics in (("before (fffac65)", old), ("now", new)):
            record = metrics._record  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            for call in calls:
                record(call)
            results[name].append((time.perf_counter() - t0) / n * 1e6)
    base = min(results["before (fffac65)"])
    for name, times in results.items():
        print(f"{name:18} {min(times):6.2f} us/call  (x{min(times) / base:.2f})")


if __name__ == "__main__":
    main()
