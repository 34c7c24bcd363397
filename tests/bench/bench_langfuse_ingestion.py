"""Throughput of the Langfuse ingestion intake: JSON event batches -> spans -> normalize, price,
LLM metrics -> file sink (proto), against the OTel path's OTLP/JSON for the same calls.

Each request is what the Langfuse SDK v2 sends for `--traces` Dify messages: a trace-create and a
generation-create (model, usage, totalCost) per message. The same calls as OTLP/JSON spans
(Langfuse's OTel dialect) go to `POST /v1/traces` for the comparison, so the ratio is the cost of
the conversion; the figure to compare is the gateway's CPU time per span (the clients share
the cores). Stops by itself after `--duration` seconds per side.

    .venv/bin/python tests/bench/bench_langfuse_ingestion.py --duration 10
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.gateway_process import GatewayProcess, gateway_config


def _batch(traces: int) -> dict[str, Any]:
    events = []
    for _ in range(traces):
        tid = str(uuid.uuid4())
        events.append({"id": str(uuid.uuid4()), "type": "trace-create", "timestamp": "2026-03-01T12:00:00Z",
                       "body": {"id": tid, "name": "message", "userId": "u", "sessionId": "s",
                                "metadata": {"app_id": "a", "tenant_id": "t"}, "tags": ["message", "chat"]}})
        events.append({"id": str(uuid.uuid4()), "type": "generation-create", "timestamp": "2026-03-01T12:00:00Z",
                       "body": {"id": str(uuid.uuid4()), "traceId": tid, "name": "llm", "model": "gpt-4o-mini",
                                "startTime": "2026-03-01T12:00:00Z", "endTime": "2026-03-01T12:00:01Z",
                                "input": "hi", "output": "hello", "metadata": {"app_id": "a"},
                                "usage": {"input": 120, "output": 30, "total": 150, "unit": "TOKENS",
                                          "totalCost": 0.000036}}})
    return {"batch": events, "metadata": {"sdk_name": "python", "sdk_version": "2.60.10"}}


def _otlp(traces: int) -> dict[str, Any]:
    spans = []
    for _ in range(traces):
        tid = uuid.uuid4().hex
        root = uuid.uuid4().hex[:16]
        spans.append({"traceId": tid, "spanId": root, "name": "message", "kind": 1,
                      "startTimeUnixNano": "1772366400000000000", "endTimeUnixNano": "1772366400000000000",
                      "attributes": [{"key": "langfuse.trace.name", "value": {"stringValue": "message"}},
                                     {"key": "user.id", "value": {"stringValue": "u"}}]})
        spans.append({"traceId": tid, "spanId": uuid.uuid4().hex[:16], "parentSpanId": root, "name": "llm", "kind": 1,
                      "startTimeUnixNano": "1772366400000000000", "endTimeUnixNano": "1772366401000000000",
                      "attributes": [
                          {"key": "langfuse.observation.type", "value": {"stringValue": "generation"}},
                          {"key": "langfuse.observation.model.name", "value": {"stringValue": "gpt-4o-mini"}},
                          {"key": "langfuse.observation.usage_details",
                           "value": {"stringValue": '{"input":120,"output":30,"total":150}'}},
                          {"key": "langfuse.observation.cost_details", "value": {"stringValue": '{"total":3.6e-05}'}},
                          {"key": "langfuse.observation.input", "value": {"stringValue": "hi"}},
                          {"key": "langfuse.observation.output", "value": {"stringValue": "hello"}}]})
    return {"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {"name": "bench"}, "spans": spans}]}]}


def _run(url: str, body: bytes, headers: dict[str, str], duration: float, concurrency: int) -> tuple[int, float]:
    deadline = time.monotonic() + duration

    def worker() -> int:
        session, n = requests.Session(), 0
        while time.monotonic() < deadline:
            r = session.post(url, data=body, headers=headers, timeout=30)
            assert r.status_code in (200, 207), r.text[:200]
            n += 1
        return n

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(lambda _: worker(), range(concurrency)))
    return done, time.monotonic() - started


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--traces", type=int, default=50, help="Dify messages per request (2 events / 2 spans each)")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="otelgate-bench-lf-"))
    config = gateway_config(workdir, llm=True, format="proto")
    config["sinks"]["out"].update(path="/dev/null", logs_path="/dev/null", metrics_path="/dev/null", rotate_bytes=0)
    gw = GatewayProcess(config, workdir).wait_ready()
    out: dict[str, Any] = {"traces_per_request": args.traces, "concurrency": args.concurrency,
                           "note": "client threads share the machine's cores with the gateway"}
    try:
        auth = {"Authorization": "Basic cGstbGYtYmVuY2g6c2stbGYtYmVuY2g=", "Content-Type": "application/json"}
        for name, url, body in (("ingestion", f"{gw.http}/api/public/ingestion", json.dumps(_batch(args.traces))),
                                ("otlp_json", f"{gw.http}/v1/traces", json.dumps(_otlp(args.traces)))):
            cpu = _cpu_s(gw.pid)
            requests_done, elapsed = _run(url, body.encode(), auth, args.duration, args.concurrency)
            spans = requests_done * 2 * args.traces
            out[name] = {"requests": requests_done, "spans_per_s": round(spans / elapsed),
                         "gateway_cpu_us_per_span": round((_cpu_s(gw.pid) - cpu) / spans * 1e6, 1)}
        out["cpu_ratio_ingestion_to_otlp_json"] = round(
            out["ingestion"]["gateway_cpu_us_per_span"] / out["otlp_json"]["gateway_cpu_us_per_span"], 2)
    finally:
        gw.stop()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
