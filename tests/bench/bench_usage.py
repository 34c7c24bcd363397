#!/usr/bin/env python
"""Usage store at scale: one simulated day of LLM calls from 10^5 users on 10^3 models.

    .venv/bin/python tests/bench/bench_usage.py [--calls 200000] [--users 100000] [--models 1000]
        [--apps 100] [--flush-every 60] [--json]

Calls are spread evenly over one UTC day, every user calling in turn (each with one app and
its sessions), each call on a uniformly random model (the worst case for the number of
rollup rows) and recorded with the real `Recorder`; every `--flush-every`
simulated seconds what it holds is written to a real SQLite usage store (`SqliteStore`, WAL) in
a temp dir, as the gateway's flush does. Then the day is compacted to hours (as it is once it is
`compact_after` old). Reported: rows per table, database bytes per day before and after
compaction, the most rows held in memory between two flushes, the process's peak RSS, and the
CPU microseconds per call of recording and of writing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.llm.call import LlmCall
from gateway.usage.recorder import Recorder
from gateway.usage.sqlite import SqliteStore


def calls_for(args: argparse.Namespace, day: int, rng: random.Random) -> list[tuple[int, int, int, int, int]]:
    """(start second, user, model, app, trace) per call, in time order."""
    step = 86400 / args.calls
    out = []
    for i in range(args.calls):
        user = i % args.users  # every user calls; each user uses one app, any model
        out.append((day + int(i * step), user, rng.randrange(args.models), user % args.apps, i // 3))
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(1)
    day = (int(time.time()) // 86400 - 1) * 86400
    plan = calls_for(args, day, rng)
    workdir = Path(tempfile.mkdtemp(prefix="otelgate-bench-usage-"))
    store = SqliteStore(str(workdir / "usage.db"))
    await store.open()
    recorder = Recorder(200_000)
    record_cpu = write_cpu = 0.0
    most_rows = 0
    next_flush = day + args.flush_every
    batch: list[LlmCall] = []
    users = [f"user-{u}" for u in range(args.users)]
    models = [f"model-{m}" for m in range(args.models)]
    apps = [f"app-{a}" for a in range(args.apps)]

    async def flush() -> None:
        nonlocal write_cpu, most_rows
        rows = recorder.take()
        most_rows = max(most_rows, rows.rows())
        t0 = time.process_time()
        await store.write(rows)
        write_cpu += time.process_time() - t0  # this thread's share; the writer thread's is in the total below

    cpu0 = time.process_time()
    for start, u, m, a, trace in plan:
        if start >= next_flush:
            t0 = time.process_time()
            recorder.record(batch)
            record_cpu += time.process_time() - t0
            batch = []
            await flush()
            next_flush += args.flush_every
        span_t = Span(trace_id=trace.to_bytes(16, "big"))  # three calls per trace
        call = LlmCall(span_t, "svc", "chat", "openai", False, models[m], models[m], 800, 120, 100, None, None, None,
                       None, None, start * 10**9, start * 10**9 + 2 * 10**9, False, cost_usd=0.002, tenant=f"t{a % 10}",
                       app=apps[a], user=users[u], session=f"{users[u]}-s{trace % 2}", environment="prod")
        batch.append(call)
    t0 = time.process_time()
    recorder.record(batch)
    record_cpu += time.process_time() - t0
    await flush()
    total_cpu = time.process_time() - cpu0

    async def count(table: str) -> int:
        return int((await store.fetch(f"SELECT COUNT(*) FROM {table}"))[0][0])

    def db_bytes() -> int:
        return sum(p.stat().st_size for p in workdir.glob("usage.db*"))

    await store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = {"rollup": await count("usage_rollup"), "user_day": await count("usage_user_day"),
              "session_day": await count("usage_session_day")}
    bytes_before = db_bytes()
    await store.maintain(retain_before=day - 30 * 86400, compact_before=day + 86400)
    await store.execute("VACUUM")
    await store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after_rollup = await count("usage_rollup")
    bytes_after = db_bytes()
    await store.close()
    result = {
        "calls": args.calls, "users": args.users, "models": args.models, "apps": args.apps,
        "flush_every_s": args.flush_every,
        "rows_per_day": before, "db_bytes_per_day": bytes_before,
        "rollup_rows_per_day_compacted": after_rollup, "db_bytes_per_day_compacted": bytes_after,
        "most_rows_in_memory": most_rows,
        "record_us_per_call": 1e6 * record_cpu / args.calls,
        "total_cpu_us_per_call_incl_writes": 1e6 * total_cpu / args.calls,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workdir": str(workdir),
    }
    for p in workdir.glob("usage.db*"):
        p.unlink()
    os.rmdir(workdir)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--flush-every", type=int, default=60, help="simulated seconds between flushes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
