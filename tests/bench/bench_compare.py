#!/usr/bin/env python
"""Issue 15's figures, side by side in one run: this tree against another checkout (`--base`).

    .venv/bin/python tests/bench/bench_compare.py --base /path/to/old/checkout [--rounds 2] [--duration 8]

For each case below it runs `tests/bench/bench_gateway.py --json` once from each tree per round,
alternating (base, new, base, new...), so both see the same machine; the gateway of each run is
the code of its tree (`PYTHONPATH` first on the path, same venv). It prints, per case, the
median over the rounds of: spans/s per gateway core (and the ratio to the parse+serialize
ceiling measured in that run), requests/s per gateway core, client-seen p99 latency, peak RSS;
and new / base.

Cases (HTTP and gRPC with 8 requests in flight, file sink to /dev/null):
- `llm`: 100% real LLM spans, 100 per request (normalize + price + llm_metrics)
- `mix`: 50/50 LLM and plain spans
- `plain-all`: plain spans, every processor on (redaction with every detector, usage accounting)
- `one-http`, `one-grpc`: one span per request (an LLM span), the fixed per-request cost
- `one-plain-http`, `one-plain-grpc`: one plain span per request
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMON = ["--discard", "--concurrency", "8"]
CASES = {
    "llm": ["--protocol", "http", "--llm-share", "1"],
    "mix": ["--protocol", "http", "--llm-share", "0.5"],
    "plain-all": ["--protocol", "http", "--llm-share", "0", "--redact", "keep", "--usage", "on"],
    "one-http": ["--protocol", "http", "--spans-per-request", "1"],
    "one-grpc": ["--protocol", "grpc", "--spans-per-request", "1"],
    "one-plain-http": ["--protocol", "http", "--spans-per-request", "1", "--llm-share", "0"],
    "one-plain-grpc": ["--protocol", "grpc", "--spans-per-request", "1", "--llm-share", "0"],
}


def run(tree: Path, case: list[str], duration: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    script = tree / "tests" / "bench" / "bench_gateway.py"
    out = subprocess.run([sys.executable, str(script), *COMMON, "--duration", str(duration), *case, "--json"],
                         env=env, cwd=tree, capture_output=True, text=True, timeout=duration + 180)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(case)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout)
    protocol = case[case.index("--protocol") + 1]
    spans_per_request = int(case[case.index("--spans-per-request") + 1]) if "--spans-per-request" in case else 100
    per_core = r["gateway"]["spans_per_s_per_core"]
    return {"per_core": per_core, "ratio": r["gateway"]["ratio_to_ceiling"],
            "requests_per_core": per_core / spans_per_request, "p99_ms": r[protocol]["latency_ms"]["p99"],
            "rss_mib": r["gateway"]["peak_rss_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    args = parser.parse_args()
    trees = {"base": args.base.resolve(), "new": HERE.parent.parent}
    rows = []
    for name in args.cases.split(","):
        results: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
        for _ in range(args.rounds):
            for label, tree in trees.items():
                results[label].append(run(tree, CASES[name], args.duration))
        med = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in results.items()}
        rows.append((name, med))
        b, n = med["base"], med["new"]
        print(f"{name:15} per core {b['per_core']:>9,.0f} -> {n['per_core']:>9,.0f} spans/s (x{n['per_core'] / b['per_core']:.2f}; "
              f"ceiling ratio {b['ratio']:.3f} -> {n['ratio']:.3f}); requests/s per core {b['requests_per_core']:,.0f} -> "
              f"{n['requests_per_core']:,.0f}; p99 {b['p99_ms']:.1f} -> {n['p99_ms']:.1f} ms; "
              f"peak RSS {b['rss_mib']:.0f} -> {n['rss_mib']:.0f} MiB", flush=True)
    print(json.dumps({name: med for name, med in rows}))


if __name__ == "__main__":
    main()
