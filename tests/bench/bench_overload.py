"""Overload benchmark: open-loop load at a multiple of what the gateway can take, per protocol.

    .venv/bin/python tests/bench/bench_overload.py                       # both protocols, 3x, ~20 s each
    .venv/bin/python tests/bench/bench_overload.py --protocol http --factor 3 --duration 12
    .venv/bin/python tests/bench/bench_overload.py --json

For each protocol it starts the real gateway (file sink to /dev/null, so the gateway's own work
is measured, not this VM's page cache; `format: json` by default, which makes the sink's encoding
the bottleneck, `--sink-format proto` leaves the receivers' own work) and:
1. after a 4 s closed-loop warm-up (so a sink queue that fills is full, as under overload),
   measures the maximum: closed loops of 4, 8 and 16 requests in flight, `--calibrate` s each;
   the best accepted requests/s is the maximum goodput (one closed loop of 8 was not enough to
   saturate the gRPC receiver: its 3x open-loop goodput came out at 1.9x that "maximum");
2. offers `--factor` times that, open loop (requests start on schedule whether or not earlier
   ones were answered, as independent clients do), for `--duration` s, each with a 10 s timeout;
3. reports goodput (requests accepted *within* the `--duration` s window, per second: what the
   drain after the window answers is not counted, as it is no longer under overload) as a share
   of the maximum; the same share per second of the gateway's CPU (accepted requests per
   gateway CPU-second under overload / at the maximum: the wall-clock share moves with what
   other processes take from these cores in either phase, this one much less); the p50/p99
   latency of accepted requests (from when each was due) and the client's own lateness in
   starting them; how many were refused (503 / UNAVAILABLE, with their retry hint), timed out or
   failed otherwise, as the client saw them and as the gateway counted them; the gateway's peak RSS.

The client is a separate process on the same (shared) cores, so figures are ratios of one run.
To compare with another tree's gateway, run this file with `PYTHONPATH=<that tree>`: the gateway
child process imports from there, the client and the measurement stay the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from tests.gateway_process import GatewayProcess, gateway_config  # noqa: E402

GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TIMEOUT_S = 10.0


def build_pool(count: int = 20, spans: int = 500) -> list[bytes]:
    pool = []
    for r in range(count):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = "bench"
        scope = rs.scope_spans.add()
        for i in range(spans):
            s = scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"op-{i % 7}",
                                start_time_unix_nano=1, end_time_unix_nano=2)
            for k in range(8):
                s.attributes.add(key=f"attr.{k}").value.string_value = f"value-{r}-{i}-{k}" * 4
        pool.append(req.SerializeToString())
    return pool


async def _sender(protocol: str, target: str) -> tuple[Any, Any]:
    """(send(body) -> outcome, close()); outcome ok | refused | timeout | error:<what>."""
    if protocol == "http":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        url = f"{target}/v1/traces"
        headers = {"Content-Type": "application/x-protobuf"}

        async def send_http(data: bytes) -> str:
            try:
                async with session.post(url, data=data, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return "ok"
                    if resp.status == 503 and resp.headers.get("Retry-After"):
                        return "refused"
                    return f"error:HTTP {resp.status}"
            except asyncio.TimeoutError:
                return "timeout"
            except aiohttp.ClientError as exc:
                return f"error:{type(exc).__name__}"

        return send_http, session.close

    import grpc

    channel = grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
    export = channel.unary_unary(GRPC_METHOD)

    async def send_grpc(data: bytes) -> str:
        try:
            await export(data, timeout=TIMEOUT_S)
            return "ok"
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE and any(
                    k == "grpc-status-details-bin" for k, _ in (err.trailing_metadata() or ())):
                return "refused"  # with RetryInfo
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "timeout"
            return f"error:{err.code().name}"

    return send_grpc, channel.close


async def _closed_loop(protocol: str, target: str, pool: list[bytes], seconds: float, concurrency: int = 8) -> float:
    send, close = await _sender(protocol, target)
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while time.monotonic() < deadline:
            if await send(pool[i % len(pool)]) == "ok":
                done += 1
            i += concurrency

    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    rate = done / (time.monotonic() - started)
    await close()
    return rate


async def _open_loop(protocol: str, target: str, pool: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    send, close = await _sender(protocol, target)
    outcomes: dict[str, int] = {}
    latencies: list[float] = []
    in_window = 0
    tasks = []
    started = time.monotonic()
    n = int(rate * seconds)

    lags: list[float] = []

    async def one(i: int, due: float) -> None:
        nonlocal in_window
        lags.append(time.monotonic() - due)  # the client's own lateness (it shares the cores)
        outcome = await send(pool[i % len(pool)])
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "ok":
            now = time.monotonic()
            latencies.append(now - due)
            in_window += now - started <= seconds

    for i in range(n):
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    await close()
    latencies.sort()
    lags.sort()

    def pct(q: float, values: list[float] = latencies) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else 0.0

    return {"offered_per_s": round(rate, 1), "sent": n, "elapsed_s": round(elapsed, 2),
            "goodput_per_s": round(in_window / seconds, 1), "_ok_in_window": in_window, "outcomes": outcomes,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "client_lag_p99_ms": pct(0.99, lags)}


def _client(protocol: str, target: str, factor: float, calibrate: float, duration: float, out: Any, pid: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    pool = build_pool()

    async def run() -> dict[str, Any]:
        # Warm up long enough for the sink's queue to reach its steady state: a queue still
        # filling answers faster than the sink drains, which inflated the "maximum" by up to 2x.
        await _closed_loop(protocol, target, pool, 4.0, 16)
        closed, per_cpu = {}, {}
        for c in (4, 8, 16):
            cpu = _cpu_s(pid)
            rate = await _closed_loop(protocol, target, pool, calibrate, c)
            closed[c] = round(rate, 1)
            per_cpu[c] = rate * calibrate / max(_cpu_s(pid) - cpu, 0.01)
        maximum = max(closed.values())
        cpu = _cpu_s(pid)

        async def cpu_at_window_end() -> float:
            await asyncio.sleep(duration)
            return _cpu_s(pid)

        window_end = asyncio.create_task(cpu_at_window_end())
        result = await _open_loop(protocol, target, pool, maximum * factor, duration)
        # Accepted requests per second of the gateway's CPU, under overload vs at the maximum: the
        # share of its CPU that still does useful work, whatever the other processes on these
        # cores took from it in either phase (the wall-clock ratio moves with that).
        overload_per_cpu = result.pop("_ok_in_window") / max(await window_end - cpu, 0.01)
        return {"max_per_s": maximum, "closed_loop_per_s": closed, **result,
                "accepted_per_cpu_s": {"max": round(max(per_cpu.values()), 1), "overload": round(overload_per_cpu, 1)},
                "goodput_per_cpu_share": round(overload_per_cpu / max(per_cpu.values()), 3)}

    out.put(asyncio.run(run()))


def _rss_peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gateway_outcomes(admin: str, protocol: str) -> dict[str, int]:
    """The gateway's own count of requests by outcome, and of spans refused by reason (from /metrics)."""
    import urllib.request

    text = urllib.request.urlopen(f"{admin}/metrics", timeout=10).read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("otelgate_receiver_requests_total{") and f'protocol="{protocol}"' in line:
            key = line.split('outcome="', 1)[1].split('"', 1)[0]
        elif line.startswith("otelgate_receiver_refused_spans_total{") and f'protocol="{protocol}"' in line:
            key = "refused_spans:" + line.split('reason="', 1)[1].split('"', 1)[0]
        else:
            continue
        counts[key] = counts.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def run_protocol(protocol: str, factor: float, calibrate: float, duration: float, extra: dict[str, Any],
                 sink_format: str = "json") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = gateway_config(workdir, path="/dev/null", logs_path="/dev/null", metrics_path="/dev/null", format=sink_format)
        for receiver in ("grpc", "http"):
            config["receivers"][receiver].update(extra)
        gw = GatewayProcess(config, workdir).wait_ready()
        try:
            target = gw.http if protocol == "http" else gw.grpc
            out: Any = mp.get_context("spawn").Queue()
            client = mp.get_context("spawn").Process(target=_client, args=(protocol, target, factor, calibrate, duration, out, gw.pid))
            client.start()
            result = out.get(timeout=3 * calibrate + duration + 130)
            client.join(30)
            result["gateway_outcomes"] = _gateway_outcomes(gw.admin, protocol)
            result["gateway_peak_rss_mib"] = round(_rss_peak_kib(gw.pid) / 1024, 1)
            result["gateway_cpu_s"] = round(_cpu_s(gw.pid), 1)
        finally:
            gw.stop()
    result["goodput_share_of_max"] = round(result["goodput_per_s"] / result["max_per_s"], 3) if result["max_per_s"] else 0.0
    return {"protocol": protocol, "factor": factor, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=("http", "grpc", "both"), default="both")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load as a multiple of the measured maximum")
    parser.add_argument("--calibrate", type=float, default=3.0, help="seconds of each closed loop (4, 8, 16 in flight) that measures the maximum")
    parser.add_argument("--duration", type=float, default=14.0, help="seconds of open-loop overload")
    parser.add_argument("--max-in-flight", type=int, default=None, help="receivers' max_in_flight_requests (default: theirs)")
    parser.add_argument("--sink-format", choices=("json", "proto"), default="json",
                        help="the file sink's format: json makes the sink's encoding the bottleneck (overload "
                        "fills its queue); proto leaves the receivers' own work (read, decode, validate)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    extra = {} if args.max_in_flight is None else {"max_in_flight_requests": args.max_in_flight}
    results = [run_protocol(p, args.factor, args.calibrate, args.duration, extra, args.sink_format)
               for p in (("http", "grpc") if args.protocol == "both" else (args.protocol,))]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['protocol']}: max {r['max_per_s']} req/s; offered {r['offered_per_s']} req/s ({r['factor']}x) for "
                  f"{args.duration} s (closed loops {r['closed_loop_per_s']}): goodput {r['goodput_per_s']} req/s = {r['goodput_share_of_max']:.0%} of max; "
                  f"per gateway CPU-s {r['accepted_per_cpu_s']} = {r['goodput_per_cpu_share']:.0%}; accepted p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms (client's own lag p99 {r['client_lag_p99_ms']} ms); outcomes {r['outcomes']}; "
                  f"gateway's count {r['gateway_outcomes']}; gateway peak RSS {r['gateway_peak_rss_mib']} MiB, CPU {r['gateway_cpu_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
