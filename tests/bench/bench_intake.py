"""CPU per request of otelgate's own intake path, in one process, without sockets.

    .venv/bin/python tests/bench/bench_intake.py [--requests 20000] [--llm-share 1] [--no-processors]

Builds the bench config's pipeline (normalize, price, llm_metrics; a file sink to /dev/null) and
calls `Intake.accept` (parse done beforehand, as the receivers do) with one-span requests from
`bench_gateway.py`'s pool, on one event loop, and prints `time.process_time()` per request: the
fixed per-request cost of our code that both receivers pay on top of aiohttp / grpc.aio
(`bench_floor.py` measures those). Run it from two trees to compare (PYTHONPATH=<tree>).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gateway as bg  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from gateway.batch import RequestContext  # noqa: E402
from gateway.config import Config  # noqa: E402
from gateway.pipeline import Pipeline  # noqa: E402
from gateway.receivers.intake import Intake  # noqa: E402
from gateway.telemetry import Metrics  # noqa: E402


async def measure(requests: int, llm_share: float, processors: bool) -> float:
    pipeline_cfg = {"account": {"enabled": False}}
    if not processors:
        pipeline_cfg.update({name: {"enabled": False} for name in ("normalize", "price", "llm_metrics")})
    config = Config.model_validate({
        "pipeline": pipeline_cfg, "usage": {"enabled": False},
        "sinks": {"out": {"type": "file", "format": "proto", "path": "/dev/null", "rotate_bytes": 0}}})
    metrics = Metrics()
    pipeline = Pipeline(config, metrics)
    await pipeline.start()
    intake = Intake(pipeline, metrics)
    intake.configure(config)
    pool = bg.build_pool(50, 1, 1, llm_share)
    parsed = [(ExportTraceServiceRequest.FromString(b), b) for b in pool]
    for i in range(500):  # warm-up
        request, raw = parsed[i % len(parsed)]
        await intake.accept(ExportTraceServiceRequest.FromString(raw), intake.identify("http", {}.get), raw)
    headers: dict[str, str] = {}
    cpu0 = time.process_time()
    for i in range(requests):
        raw = pool[i % len(pool)]
        context = intake.identify("http", headers.get)
        started = time.perf_counter()
        await intake.accept(ExportTraceServiceRequest.FromString(raw), context, raw)
        intake.observe_latency("http", time.perf_counter() - started)
        if i % 256 == 0:
            await asyncio.sleep(0)  # let the sink worker run, as the event loop would
    cpu = time.process_time() - cpu0
    await pipeline.drain(5)
    return 1e6 * cpu / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--llm-share", type=float, default=1.0)
    parser.add_argument("--no-processors", action="store_true")
    args = parser.parse_args()
    us = asyncio.run(measure(args.requests, args.llm_share, not args.no_processors))
    import gateway
    print(f"intake ({Path(gateway.__file__).parent.parent}): {us:.1f} us CPU per one-span request "
          f"(llm_share {args.llm_share}, processors {'off' if args.no_processors else 'on'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
