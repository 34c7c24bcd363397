#!/usr/bin/env python
"""Throughput benchmark: OTLP/gRPC and OTLP/HTTP load -> otelgate -> file sink (proto format).

Run from the repository root (see tests/bench/README.md):

    .venv/bin/python tests/bench/bench_gateway.py [--protocol grpc|http|both] [--clients N]
        [--concurrency C] [--duration S] [--max-requests N] [--llm-share F] [--trace-spans N]
        [--tail WAIT [--tail-keep PCT] [--tail-cost USD]] [--usage off|attribution|on] [--json]

What it does, in one bounded run (about duration + 15 s):

1. Builds a pool of distinct export requests of exactly 100 spans each from the real LLM spans
   of the fixtures (every fixture span in turn, each copy with fresh random trace/span ids, parent
   and link ids remapped consistently, one ResourceSpans per fixture resource and one ScopeSpans
   per fixture scope), serialized before any clock starts. With `--llm-share` < 1, ordinary
   HTTP/DB spans in traces of `--trace-spans` fill the rest. Each client XORs the low 8 bytes of
   every trace id with a key per (pass over the pool, client), so every trace of the run is new
   and whole (about 0.1 us per span, the offsets found when the pool is built).
2. Starts the gateway (`python -m gateway run`, file sink `format: proto`, no rotation) in a
   temporary directory on ephemeral loopback ports.
3. Measures the ceiling in this process while the gateway sits idle: protobuf
   `ExportTraceServiceRequest.FromString` + `SerializeToString` over the pool, spans/s on one core.
4. Starts the client processes (`--clients` per protocol); each keeps `--concurrency` requests in
   flight (grpc.aio; for HTTP a plain HTTP/1.1 keep-alive client, or aiohttp's with
   `--http-client aiohttp`), records each request's latency and outcome, and stops by itself
   after `--duration` seconds or `--max-requests` requests. A 503/UNAVAILABLE (backpressure) is
   counted as refused, and the request is retried after the server's Retry-After/RetryInfo.
5. Reads the gateway's CPU time (utime + stime of every thread, /proc/PID/stat) when the load
   starts and once the file sink has written everything accepted in the window, and its peak RSS
   (VmHWM). `spans/s per gateway core` = spans accepted in the window / gateway CPU seconds: the
   figure that does not depend on how much CPU the clients take from the gateway.
6. Stops the gateway with SIGTERM and checks that the spans in the output file == the spans the
   clients had acknowledged (200 / OK, minus any partial_success rejections).

Options worth knowing: `--usage attribution|on` turns attribution (and with `on` the usage
store) on (off otherwise, although both are on by default in otelgate, so the figures of other
options compare with earlier runs), `--discard` points the file sink at /dev/null (everything the gateway
does but the page-cache write; delivery is then checked with the sink's `sent` metric only),
`--profile FILE` samples the gateway with py-spy during the load and prints where its time goes,
`--json` prints every figure as one JSON object.

`--tail WAIT` turns on tail sampling (`decision_wait` WAIT s, `idle` WAIT s unless `--tail-idle`;
policies error, cost > `--tail-cost` USD, probabilistic `--tail-keep` %). The buffer's gauges
(traces and bytes held) are read every 0.2 s (in every run, so the scrapes cost the same); the
gateway's CPU is also reported for the load window alone, since the last WAIT s of traces are
decided after it. After the load it waits until the buffer is empty and the sink has written
everything kept, and checks: spans in the file == `otelgate_sampled_spans_total{policy="tail",
decision="kept"}`, and kept + dropped == accepted == acknowledged.

The goal (issue): gateway spans/s per core >= 0.5 x the parse+serialize ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span  # noqa: E402

from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records  # noqa: E402
from tests.gateway_process import GatewayProcess  # noqa: E402

GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SINK = "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the requests -------------------------------------------------------------------------------


def fixture_spans() -> list[tuple[tuple[Any, ...], Any, tuple[Any, ...], Any, Any]]:
    """Every fixture span, in fixture order, with the resource and scope it came with."""
    out = []
    for name in TRACE_FIXTURES:
        for ri, body in enumerate(read_records(FIXTURES / f"{name}.otlp.bin")):
            request = ExportTraceServiceRequest.FromString(body)
            for rsi, rs in enumerate(request.resource_spans):
                for ssi, ss in enumerate(rs.scope_spans):
                    for span in ss.spans:
                        out.append(((name, ri, rsi), rs, (name, ri, rsi, ssi), ss, span))
    return out


def plain_spans(count: int, spans_per_trace: int) -> list[tuple[tuple[Any, ...], Any, tuple[Any, ...], Any, Any]]:
    """Ordinary spans of a web service, no LLM attributes, in traces of `spans_per_trace` spans.

    Each trace is an HTTP server span (the root), then database and outgoing HTTP calls as its
    children, in turn. Every 100th trace failed: its root answered HTTP 500 (status ERROR).
    """
    rs = ResourceSpans(resource={"attributes": [
        {"key": "service.name", "value": {"string_value": "checkout"}},
        {"key": "service.version", "value": {"string_value": "1.4.2"}},
        {"key": "deployment.environment.name", "value": {"string_value": "prod"}},
        {"key": "telemetry.sdk.language", "value": {"string_value": "python"}}]})
    ss = ScopeSpans(scope={"name": "opentelemetry.instrumentation.flask", "version": "0.50b0"})
    out = []
    for i in range(count):
        trace, position = divmod(i, spans_per_trace)
        failed = position == 0 and trace % 100 == 99
        kind = 0 if position == 0 else 2 - position % 2
        if kind == 0:
            attrs = {"http.request.method": "POST", "url.path": f"/api/orders/{i}", "url.scheme": "https",
                     "http.route": "/api/orders/<id>", "http.response.status_code": 500 if failed else 200,
                     "server.address": "shop.example", "server.port": 443, "client.address": "10.1.2.3",
                     "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64)", "network.protocol.version": "1.1"}
            name = "POST /api/orders/<id>"
        elif kind == 1:
            attrs = {"db.system.name": "postgresql", "db.namespace": "shop", "db.operation.name": "SELECT",
                     "db.collection.name": "orders", "db.query.text": "SELECT id, total, status FROM orders WHERE customer_id = $1",
                     "server.address": "db.internal", "server.port": 5432}
            name = "SELECT orders"
        else:
            attrs = {"http.request.method": "GET", "url.full": f"https://inventory.internal/items/{i}",
                     "http.response.status_code": 200, "server.address": "inventory.internal", "server.port": 443,
                     "network.peer.address": "10.4.5.6"}
            name = "GET"
        span = Span(trace_id=(trace + 1).to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"), name=name,
                    kind=2 + (kind > 0), start_time_unix_nano=1_795_328_849_000_000_000 + i,
                    end_time_unix_nano=1_795_328_849_004_000_000 + i,
                    attributes=[{"key": k, "value": {"int_value": v} if isinstance(v, int) else {"string_value": v}}
                                for k, v in attrs.items()])
        if position:
            span.parent_span_id = (i - position + 1).to_bytes(8, "big")
        if failed:
            span.status.code = 2  # STATUS_CODE_ERROR
        out.append((("plain",), rs, ("plain", 0), ss, span))
    return out


def build_pool(count: int, spans_per_request: int, seed: int, llm_share: float = 1.0,
               trace_spans: int = 3) -> list[bytes]:
    """`count` distinct serialized requests of exactly `spans_per_request` spans.

    The fixture spans are taken in turn, cycling; each pass over them gets fresh random ids
    (trace, span, parent and link ids remapped consistently, so traces stay well formed).
    With `llm_share` < 1, that share of the spans is fixture (LLM) spans and the rest ordinary
    HTTP and database spans in traces of `trace_spans`, interleaved (`llm_share` 0: ordinary
    spans only).
    """
    rng = random.Random(seed)
    llm = fixture_spans()
    if llm_share >= 1.0:
        source = llm
    else:
        plain_count = round(len(llm) * (1 - llm_share) / llm_share) if llm_share > 0 else 20 * len(llm)
        plain = plain_spans(max(1, plain_count), trace_spans)
        if llm_share <= 0:
            llm = []
        source = []
        for i in range(max(len(llm), len(plain))):
            if i < len(llm):
                source.append(llm[i])
            if i < len(plain):
                source.append(plain[i])
    ids: dict[tuple[str, bytes], bytes] = {}

    def fresh(kind: str, old: bytes, size: int) -> bytes:
        new = ids.get((kind, old))
        if new is None:
            # Never all zero; random low bytes, as an SDK's: they pick a trace's worker (affinity)
            # and its sampling randomness, so a constant last byte would give every trace of a
            # request (the clients XOR one key into all of them) the same worker.
            new = ids[(kind, old)] = b"\x01" + rng.randbytes(size - 1)
        return new

    pos = 0
    pool = []
    for _ in range(count):
        request = ExportTraceServiceRequest()
        resources: dict[tuple[Any, ...], Any] = {}
        scopes: dict[tuple[Any, ...], Any] = {}
        for _ in range(spans_per_request):
            if pos % len(source) == 0:
                ids = {}
            rkey, rs, skey, ss, span = source[pos % len(source)]
            pos += 1
            out_rs = resources.get(rkey)
            if out_rs is None:
                out_rs = resources[rkey] = request.resource_spans.add()
                out_rs.resource.CopyFrom(rs.resource)
                out_rs.schema_url = rs.schema_url
            out_ss = scopes.get(skey)
            if out_ss is None:
                out_ss = scopes[skey] = out_rs.scope_spans.add()
                out_ss.scope.CopyFrom(ss.scope)
                out_ss.schema_url = ss.schema_url
            copy = out_ss.spans.add()
            copy.CopyFrom(span)
            copy.trace_id = fresh("t", span.trace_id, 16)
            copy.span_id = fresh("s", span.span_id, 8)
            if span.parent_span_id:
                copy.parent_span_id = fresh("s", span.parent_span_id, 8)
            for link in copy.links:
                link.trace_id = fresh("t", link.trace_id, 16)
                link.span_id = fresh("s", link.span_id, 8)
        pool.append(request.SerializeToString())
    return pool


# Span.trace_id and Link.trace_id are both field 1, length-delimited, 16 bytes: tag 0x0a, length 0x10.
TRACE_ID_FIELD = b"\x0a\x10"


def trace_id_offsets(body: bytes) -> list[int]:
    """Where the low 8 bytes of every trace id in the serialized request start (spans' and links')."""
    request = ExportTraceServiceRequest.FromString(body)
    expected: dict[bytes, int] = {}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                for tid in (span.trace_id, *(link.trace_id for link in span.links)):
                    expected[tid] = expected.get(tid, 0) + 1
    offsets = []
    for tid, count in expected.items():
        needle = TRACE_ID_FIELD + tid
        found = []
        at = body.find(needle)
        while at >= 0:
            found.append(at + len(TRACE_ID_FIELD) + 8)
            at = body.find(needle, at + 1)
        if len(found) != count:  # a chance match elsewhere in the body: never rewrite blindly
            raise RuntimeError(f"trace id {tid.hex()} found {len(found)} times in a request, expected {count}")
        offsets += found
    return sorted(offsets)


def lap_key(lap: int, client: int) -> int:
    """The 64-bit XOR key of one client's `lap`-th pass over the pool (distinct for every pair)."""
    return int.from_bytes(hashlib.blake2b(f"{client}/{lap}".encode(), digest_size=8).digest(), "little")


Retraceable = tuple[list[Any], list[int]]  # the body cut around its trace ids' low halves, and those halves


def retraceable(body: bytes) -> Retraceable:
    """`body` cut at the low 8 bytes of each of its trace ids, for `with_trace_ids_xored`."""
    pieces: list[Any] = []
    lows = []
    prev = 0
    for at in trace_id_offsets(body):
        pieces += [body[prev:at], None]  # None: where the rewritten 8 bytes go
        lows.append(int.from_bytes(body[at:at + 8], "little"))
        prev = at + 8
    pieces.append(body[prev:])
    return pieces, lows


def with_trace_ids_xored(request: Retraceable, key: int) -> bytes:
    """The request's body with the low 8 bytes of each of its trace ids XORed with `key`.

    The pool is cycled, so without this trace ids would repeat every pass over it; with one key
    per (pass, client) the spans of a trace stay together and every trace of the run is new
    (the high 8 bytes still tell pool traces apart, so two keys never make the same id).
    One join of precut pieces: about 0.1 us per span.
    """
    pieces, lows = request
    pieces[1::2] = [(low ^ key).to_bytes(8, "little") for low in lows]
    return b"".join(pieces)


def count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def measure_ceiling(pool: list[bytes], spans_per_request: int, seconds: float) -> dict[str, float]:
    """Protobuf parse + serialize of the pool on this core, for about `seconds`."""
    parse = ExportTraceServiceRequest.FromString
    for body in pool[:5]:  # warm up
        parse(body).SerializeToString()
    requests = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while True:
        for body in pool:
            parse(body).SerializeToString()
        requests += len(pool)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    cpu = time.process_time() - cpu0
    spans = requests * spans_per_request
    return {"spans_per_s": spans / elapsed, "spans_per_cpu_s": spans / cpu, "seconds": elapsed,
            "mb_per_s": sum(map(len, pool)) * requests / len(pool) / elapsed / 1e6}


# -- the clients (each in its own process) ----------------------------------------------------


def client_main(protocol: str, target: str, pool: list[Retraceable], spans_per_request: int, concurrency: int,
                duration: float, max_requests: int, offset: int, client: int, start: Any, results: Any,
                http_client: str = "raw") -> None:
    try:
        if protocol == "http":
            try:
                import uvloop
                runner = uvloop.run
            except ImportError:  # pragma: no cover
                runner = asyncio.run
        else:
            runner = asyncio.run  # grpc.aio wants the default loop
        result = runner(_client(protocol, target, pool, spans_per_request, concurrency, duration,
                                max_requests, offset, client, start, results, http_client))
    except BaseException as exc:  # report, never hang the parent
        results.put(("error", protocol, f"{type(exc).__name__}: {exc}"))
        return
    results.put(("done", protocol, result))


async def _client(protocol: str, target: str, pool: list[Retraceable], spans_per_request: int, concurrency: int,
                  duration: float, max_requests: int, offset: int, client: int, start: Any,
                  results: Any, http_client: str = "raw") -> dict[str, Any]:
    stats: dict[str, Any] = {"ok": 0, "refused": 0, "errors": 0, "gave_up": 0, "acked_spans": 0,
                             "rejected_spans": 0, "warmup_acked_spans": 0, "latencies": [], "error_samples": []}
    send, close = await _sender(protocol, target, concurrency, http_client)
    loop = asyncio.get_running_loop()
    state = {"next": offset, "issued": 0}
    keys: dict[int, int] = {}

    def body() -> bytes:
        lap, i = divmod(state["next"], len(pool))
        state["next"] += 1
        key = keys.get(lap)
        if key is None:
            key = keys[lap] = lap_key(lap, client)
        return with_trace_ids_xored(pool[i], key)

    def acked(payload: bytes) -> int:
        rejected = ExportTraceServiceResponse.FromString(payload).partial_success.rejected_spans if payload else 0
        stats["rejected_spans"] += rejected
        return spans_per_request - rejected

    try:
        # Warm-up (not timed): open the connections, one request per in-flight slot.
        warm = await asyncio.gather(*(send(body()) for _ in range(concurrency)))
        for outcome, payload, _ in warm:
            if outcome == "ok":
                stats["warmup_acked_spans"] += acked(payload)
            else:
                raise RuntimeError(f"warm-up request failed: {outcome} {payload!r}")
        results.put(("ready", protocol, os.getpid()))
        await loop.run_in_executor(None, start.wait)

        t0, cpu0 = time.perf_counter(), time.process_time()
        deadline = t0 + duration

        async def worker() -> None:
            while time.perf_counter() < deadline and (not max_requests or state["issued"] < max_requests):
                state["issued"] += 1
                data = body()
                while True:
                    sent = time.perf_counter()
                    outcome, payload, retry_after = await send(data)
                    latency = time.perf_counter() - sent
                    if outcome == "ok":
                        stats["ok"] += 1
                        stats["acked_spans"] += acked(payload)
                        stats["latencies"].append(latency)
                        break
                    if outcome == "refused":
                        stats["refused"] += 1
                        wait = min(retry_after, deadline - time.perf_counter())
                        if wait <= 0:
                            stats["gave_up"] += 1
                            break
                        await asyncio.sleep(wait)
                        continue
                    stats["errors"] += 1
                    if len(stats["error_samples"]) < 5:
                        stats["error_samples"].append(str(payload)[:300])
                    break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        stats["elapsed"] = time.perf_counter() - t0
        stats["cpu_s"] = time.process_time() - cpu0
    finally:
        await close()
    return stats


async def _sender(protocol: str, target: str, concurrency: int, http_client: str = "raw") -> tuple[Any, Any]:
    """(send(body) -> (outcome, payload, retry_after_s), close()); outcome ok|refused|error."""
    if protocol == "http" and http_client == "raw":
        return await raw_http_sender(target, "/v1/traces")
    if protocol == "http":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                        timeout=aiohttp.ClientTimeout(total=60))
        url = f"{target}/v1/traces"
        headers = {"Content-Type": "application/x-protobuf"}

        async def send_http(data: bytes) -> tuple[str, Any, float]:
            try:
                async with session.post(url, data=data, headers=headers) as resp:
                    payload = await resp.read()
                    if resp.status == 200:
                        return "ok", payload, 0.0
                    if resp.status in (429, 503):
                        return "refused", payload, float(resp.headers.get("Retry-After", "1"))
                    return "error", f"HTTP {resp.status}: {payload[:200]!r}", 0.0
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return "error", f"{type(exc).__name__}: {exc}", 0.0

        return send_http, session.close

    import grpc
    from google.rpc import error_details_pb2, status_pb2

    channel = grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20),
                                                         ("grpc.max_receive_message_length", 64 << 20)])
    export = channel.unary_unary(GRPC_METHOD)  # no (de)serializers: bytes in, bytes out

    def retry_delay(err: grpc.aio.AioRpcError) -> float:
        for key, value in err.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    info = error_details_pb2.RetryInfo()
                    if detail.Unpack(info):
                        return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        return 1.0

    async def send_grpc(data: bytes) -> tuple[str, Any, float]:
        try:
            return "ok", await export(data, timeout=60), 0.0
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                return "refused", err.details(), retry_delay(err)
            return "error", f"{err.code().name}: {err.details()}", 0.0

    return send_grpc, channel.close


async def raw_http_sender(target: str, path: str) -> tuple[Any, Any]:
    """An OTLP/HTTP sender that is plain HTTP/1.1 over keep-alive connections (one per request in
    flight), for `send` in `_sender`.

    The clients share the machine's cores with the gateway, so every microsecond a client spends
    per request is taken from the gateway: aiohttp's client costs about 2.3x this per request
    (tests/bench/RESULTS.md). It speaks only what the benchmark needs (a POST with
    Content-Length, a response with Content-Length), and is checked against a real aiohttp server
    in tests/test_bench_http_client.py."""
    host_port = target.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/x-protobuf\r\n"
            "Content-Length: ").encode()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[asyncio.StreamWriter] = []

    async def exchange(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        if idle:
            reader, writer = idle.pop()
        else:
            reader, writer = await asyncio.open_connection(host, int(port))
            opened.append(writer)
        writer.write(b"%s%d\r\n\r\n" % (head, len(data)))
        writer.write(data)
        status_and_headers = await reader.readuntil(b"\r\n\r\n")
        lines = status_and_headers.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        length = headers.get(b"content-length")
        if length is None:  # the gateway always sends one; anything else is an error of the benchmark
            raise ConnectionError(f"HTTP {status} without Content-Length")
        payload = await reader.readexactly(int(length)) if int(length) else b""
        if headers.get(b"connection", b"").lower() == b"close":
            writer.close()
        else:
            idle.append((reader, writer))
        return status, headers, payload

    async def send_http(data: bytes) -> tuple[str, Any, float]:
        try:
            status, headers, payload = await asyncio.wait_for(exchange(data), 60)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ValueError, IndexError) as exc:
            return "error", f"{type(exc).__name__}: {exc}", 0.0
        if status == 200:
            return "ok", payload, 0.0
        if status in (429, 503):
            return "refused", payload, float(headers.get(b"retry-after", b"1"))
        return "error", f"HTTP {status}: {payload[:200]!r}", 0.0

    async def close() -> None:
        for writer in opened:
            writer.close()

    return send_http, close


# -- the gateway ------------------------------------------------------------------------------


def _stat_fields(path: str) -> tuple[str, list[str]]:
    stat = Path(path).read_text()
    return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()


def gateway_cpu(pid: int) -> dict[str, Any]:
    """CPU seconds (user, sys) of the gateway and of each thread, and its minor page faults; with
    `--workers`, the supervisor's and every worker's (its child processes) together.
    """
    out = _process_cpu(pid)
    for child in _children(pid):
        try:
            c = _process_cpu(child)
        except OSError:  # the worker ended
            continue
        for key in ("user", "sys", "minflt"):
            out[key] += c[key]
        out["threads"].update({f"{k}@{child}": v for k, v in c["threads"].items()})
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _process_cpu(pid: int) -> dict[str, Any]:
    """Fields 10 (minflt), 14 (utime) and 15 (stime) of proc(5), counted from field 3 after the name."""
    _, f = _stat_fields(f"/proc/{pid}/stat")
    out: dict[str, Any] = {"user": int(f[11]) / CLK_TCK, "sys": int(f[12]) / CLK_TCK, "minflt": int(f[7]), "threads": {}}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, tf = _stat_fields(f"{task}/stat")
        except OSError:  # the thread ended
            continue
        label = "main" if task.name == str(pid) else name  # Python threads are all named "python"
        out["threads"][f"{label}/{task.name}"] = (int(tf[11]) / CLK_TCK, int(tf[12]) / CLK_TCK)
    return out


def cpu_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What happened between two `gateway_cpu` readings, in total and per thread (`name tid`, busiest first).

    Before Python 3.14 every Python thread is named `python`; the file sink's writer thread is
    usually the busiest one after `main` (`--profile` names threads with their ids).
    """
    threads: dict[str, list[float]] = {}
    for key, (user, sys_) in b["threads"].items():
        user0, sys0 = a["threads"].get(key, (0.0, 0.0))
        row = threads.setdefault(key.replace("/", " "), [0.0, 0.0])
        row[0] += user - user0
        row[1] += sys_ - sys0
    busy = {name: {"user": u, "sys": s} for name, (u, s) in sorted(threads.items(), key=lambda kv: -sum(kv[1]))
            if u + s > 0}
    return {"cpu_s": b["user"] + b["sys"] - a["user"] - a["sys"], "user_s": b["user"] - a["user"],
            "sys_s": b["sys"] - a["sys"], "minor_faults": b["minflt"] - a["minflt"], "threads": busy}


def gateway_cpu_s(pid: int) -> float:
    c = gateway_cpu(pid)
    return c["user"] + c["sys"]


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


_SAMPLE = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(admin: str) -> dict[str, Any]:
    """The figures the benchmark reads from /metrics.

    'accepted' (all protocols), 'refused', 'sent' (by the sink) and 'dropped' (by any sink), in
    spans; with a trace buffer also 'tail_traces' and 'tail_bytes' (held now), 'tail_kept' and
    'tail_dropped' (spans decided), 'tail_early' (traces decided early), 'tail_late' (late spans)
    and 'tail_policies' ({policy: {decision: traces}}).
    """
    text = urllib.request.urlopen(f"{admin}/metrics", timeout=10).read().decode()
    out: dict[str, Any] = dict.fromkeys(("sent", "accepted", "dropped", "refused", "tail_traces", "tail_bytes",
                                         "tail_kept", "tail_dropped", "tail_early", "tail_late"), 0.0)
    out["tail_policies"] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))
        if name == "otelgate_sink_sent_spans_total" and labels.get("sink") == SINK:
            out["sent"] += value
        elif name == "otelgate_receiver_accepted_spans_total":
            out["accepted"] += value
        elif name == "otelgate_sink_dropped_spans_total":
            out["dropped"] += value
        elif name == "otelgate_receiver_refused_spans_total":
            out["refused"] += value
        elif name == "otelgate_tail_traces":
            out["tail_traces"] = value
        elif name == "otelgate_tail_buffer_bytes":
            out["tail_bytes"] = value
        elif name == "otelgate_sampled_spans_total" and labels.get("policy") == "tail":
            out["tail_" + labels["decision"]] += value
        elif name == "otelgate_tail_decided_early_total":
            out["tail_early"] += value
        elif name == "otelgate_tail_late_spans_total":
            out["tail_late"] += value
        elif name == "otelgate_tail_policy_traces_total":
            out["tail_policies"].setdefault(labels["policy"], {})[labels["decision"]] = value
    return out


def wait_written(admin: str, timeout: float, tail: bool = False, interval: float = 0.05) -> dict[str, Any]:
    """Poll /metrics (every `interval` s) until the sink has written (or dropped) everything accepted.

    With tail sampling: until the trace buffer is empty and the sink has written (or dropped)
    every span the buffer kept.
    """
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(admin)
        if tail:
            done = m["tail_traces"] == 0 and m["sent"] + m["dropped"] >= m["tail_kept"]
        else:
            done = m["sent"] + m["dropped"] >= m["accepted"]
        if done or time.monotonic() > deadline:
            return m
        time.sleep(interval)


class BufferPoller:
    """Reads the trace buffer's gauges (traces and bytes held) every `interval` s, in a thread."""

    def __init__(self, admin: str, interval: float = 0.2) -> None:
        self.admin = admin
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (s since start, traces, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="buffer-poller", daemon=True)
        self._t0 = time.perf_counter()

    def start(self) -> "BufferPoller":
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            m = scrape(self.admin)
            self.samples.append((time.perf_counter() - self._t0, m["tail_traces"], m["tail_bytes"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def summary(self, since: float = 0.0) -> dict[str, float]:
        """Peak and mean of traces and bytes held, over the samples taken `since` s after start or later."""
        rows = [r for r in self.samples if r[0] >= since]
        if not rows:
            return {"samples": 0, "peak_traces": 0, "mean_traces": 0, "peak_bytes": 0, "mean_bytes": 0}
        return {"samples": len(rows), "peak_traces": max(r[1] for r in rows), "mean_traces": sum(r[1] for r in rows) / len(rows),
                "peak_bytes": max(r[2] for r in rows), "mean_bytes": sum(r[2] for r in rows) / len(rows)}


def spans_in_file(path: Path) -> tuple[int, int]:
    """(records, spans) in a file of 4-byte big-endian length + ExportTraceServiceRequest records."""
    records = spans = 0
    if not path.exists():
        return 0, 0
    with open(path, "rb") as f:
        while header := f.read(4):
            (size,) = struct.unpack(">I", header)
            spans += count_spans(ExportTraceServiceRequest.FromString(f.read(size)))
            records += 1
    return records, spans


# -- optional profile of the gateway ----------------------------------------------------------


def start_profile(pid: int, path: str, seconds: float, workers: int = 1) -> Any:
    """py-spy (pip install py-spy) sampling the gateway's threads, non-blocking, in raw (collapsed) format;
    with workers, the supervisor's children too (their samples summed with its own)."""
    import subprocess

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [exe, "record", "--format", "raw", "--threads", "--nonblocking", "-r", "100",
           "-d", str(max(1, int(seconds))), "-o", path, "-p", str(pid)] + (["--subprocesses"] if workers > 1 else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize_profile(path: str, top: int = 15) -> dict[str, Any]:
    """Share of samples per thread, the top lines by self samples and functions by inclusive samples."""
    threads: dict[str, int] = {}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        threads[thread] = threads.get(thread, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in {re.sub(r":\d+\)$", ")", f) for f in frames[1:]}:  # per function, any line
            inclusive[frame] = inclusive.get(frame, 0) + count

    def share(d: dict[str, int], skip: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        rows = [(k, 100 * v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if not k.startswith(skip)]
        return rows[:top]

    boring = ("Thread.", "_bootstrap", "_run_module_as_main", "_run_code", "<module>", "main (gateway/cli",
              "_run (gateway/cli", "run (uvloop", "Runner.run", "_worker (concurrent", "thread_run", "0x")
    return {"samples": total, "threads": share(threads), "self": share(own, ("thread (",)),
            "inclusive": share(inclusive, boring)}


# -- the run ----------------------------------------------------------------------------------


def next_message(results: Any, procs: list[Any], timeout: float) -> tuple[str, str, Any]:
    """The next message of a client process; raise if none comes in `timeout` or every client died."""
    import queue

    deadline = time.monotonic() + timeout
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no word from the client processes in {timeout:.0f} s") from None
            if not any(p.is_alive() for p in procs):
                try:
                    return results.get(timeout=1)
                except queue.Empty:
                    codes = [p.exitcode for p in procs]
                    raise RuntimeError(f"client processes exited without a result (exit codes {codes})") from None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def tail_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """The gateway's `sampling.tail` for `--tail` (None without): memory bounds far above the load's."""
    if not args.tail:
        return None
    idle = args.tail if args.tail_idle is None else args.tail_idle
    return {"decision_wait": f"{args.tail:g}s", "idle": f"{idle:g}s",
            "max_traces": 1_000_000, "max_bytes": "4GiB",
            "policies": [{"type": "error"}, {"type": "cost", "threshold_usd": args.tail_cost},
                         {"type": "probabilistic", "percentage": args.tail_keep}]}


def traces_in(pool: list[bytes]) -> int:
    """Distinct trace ids over the pool (each pass of each client sends as many new traces)."""
    return len({span.trace_id for body in pool for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                for ss in rs.scope_spans for span in ss.spans})


def measure_rewrite(pool: list[Retraceable], laps: int = 20) -> float:
    """CPU microseconds a client spends per request giving it fresh trace ids (`with_trace_ids_xored`)."""
    t0 = time.process_time()
    for lap in range(laps):
        key = lap_key(lap, 0)
        for request in pool:
            with_trace_ids_xored(request, key)
    return 1e6 * (time.process_time() - t0) / (laps * len(pool))


def run(args: argparse.Namespace) -> dict[str, Any]:
    spans_per_request = args.spans_per_request
    protocols = ["grpc", "http"] if args.protocol == "both" else [args.protocol]
    result: dict[str, Any] = {
        "config": {"protocol": args.protocol, "clients_per_protocol": args.clients, "concurrency": args.concurrency,
                   "duration_s": args.duration, "max_requests_per_client": args.max_requests,
                   "spans_per_request": spans_per_request, "pool": args.pool, "sink_format": args.format,
                   "llm_share": args.llm_share, "trace_spans": args.trace_spans, "processors": not args.no_processors,
                   "usage": args.usage, "http_client": args.http_client,
                   "redact": args.redact,
                   "sink": args.sink, "queue": args.queue, "fsync": args.fsync if args.queue == "disk" else None,
                   "sink_path": "/dev/null" if args.discard else "file in a temp dir",
                   "limits": json.loads(args.limits) if args.limits else None, "tail": tail_settings(args),
                   "workers": args.workers},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": "client processes share the machine's cores with the gateway: spans_per_s is bounded by the "
                "clients' CPU too; gateway.spans_per_s_per_core (gateway CPU time only) is not",
    }

    pool = build_pool(args.pool, spans_per_request, args.seed, args.llm_share, args.trace_spans)
    result["request_bytes_avg"] = sum(map(len, pool)) / len(pool)
    result["traces_per_request"] = traces_in(pool) / len(pool)
    retraceables = [retraceable(body) for body in pool]
    result["trace_id_rewrite_us_per_request"] = measure_rewrite(retraceables)

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="otelgate-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.discard:
        out_path = Path(os.devnull)
    else:
        out_path = workdir / ("out.pb" if args.format == "proto" else "out.jsonl")
        out_path.unlink(missing_ok=True)
    config = {
        "receivers": {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}},
        "admin": {"endpoint": "127.0.0.1:0"},
        "sinks": {SINK: {"type": "file", "path": str(out_path), "format": args.format, "rotate_bytes": 0}},
        "service": {"shutdown_grace": "30s", "workers": args.workers},
    }
    if args.no_processors:
        config["pipeline"] = {name: {"enabled": False} for name in ("normalize", "price", "llm_metrics")}
    # Attribution and usage accounting (on by default in otelgate) only with --usage, so the other
    # figures keep the meaning they had before them.
    config["usage"] = {"enabled": True, "path": str(workdir / "usage.db")} if args.usage == "on" else {"enabled": False}
    if args.usage == "off":
        config.setdefault("pipeline", {})["account"] = {"enabled": False}
    if args.redact:
        config.setdefault("pipeline", {})["redact"] = {
            "enabled": True, "content": args.redact, "hash_secret": "bench-secret-0123456789"}
    if args.limits:
        config["limits"] = json.loads(args.limits)
    if args.tail:
        config["sampling"] = {"tail": tail_settings(args)}
    receiver = None
    if args.sink == "otlp":
        # A trivial receiver: another otelgate with no processors, writing to /dev/null.
        (workdir / "receiver").mkdir(exist_ok=True)
        receiver = GatewayProcess({
            "receivers": {"grpc": {"endpoint": "127.0.0.1:0", "max_message_bytes": "64MiB"}},
            "admin": {"endpoint": "127.0.0.1:0"},
            "sinks": {"null": {"type": "file", "path": os.devnull, "format": "proto", "rotate_bytes": 0}},
            "pipeline": {name: {"enabled": False} for name in ("normalize", "price", "llm_metrics")},
        }, workdir / "receiver").wait_ready()
        config["sinks"][SINK] = {"type": "otlp", "protocol": "grpc", "endpoint": receiver.grpc, "compression": "none"}
    if args.queue == "disk":
        config["sinks"][SINK]["queue"] = {"type": "disk", "dir": str(workdir / "queue"), "fsync": args.fsync,
                                          "max_bytes": "8GiB"}
    gw = GatewayProcess(config, workdir).wait_ready(60)
    procs: list[mp.Process] = []
    try:
        pid = gw.pid
        # The ceiling, measured while the gateway sits idle (its idle CPU is measured meanwhile).
        idle0 = gateway_cpu_s(pid)
        ceiling = measure_ceiling(pool, spans_per_request, args.ceiling_seconds)
        idle_cpu = gateway_cpu_s(pid) - idle0
        result["ceiling"] = ceiling
        result["gateway_idle_cpu_percent"] = 100 * idle_cpu / ceiling["seconds"]

        ctx = mp.get_context("spawn")
        start, results = ctx.Event(), ctx.Queue()
        targets = {"grpc": gw.grpc, "http": gw.http}
        for protocol in protocols:
            for k in range(args.clients):
                offset = (len(procs) * len(pool)) // max(1, len(protocols) * args.clients)
                p = ctx.Process(target=client_main, daemon=True, name=f"bench-{protocol}-{k}",
                                args=(protocol, targets[protocol], retraceables, spans_per_request, args.concurrency,
                                      args.duration, args.max_requests, offset, len(procs), start, results,
                                      args.http_client))
                p.start()
                procs.append(p)

        per_client: list[tuple[str, dict[str, Any]]] = []
        errors: list[str] = []
        ready = 0
        while ready < len(procs):
            kind, protocol, payload = next_message(results, procs, 60)
            if kind == "ready":
                ready += 1
            elif kind == "error":
                raise RuntimeError(f"{protocol} client failed before the load started: {payload}")
        # The warm-up requests' traces wait in the buffer with tail sampling: count them, do not wait.
        before = scrape(gw.admin) if args.tail else wait_written(gw.admin, 10)
        profiler = start_profile(pid, args.profile, args.duration, args.workers) if args.profile else None
        # In every run, so that its scrapes cost the same (but each worker renders /metrics for
        # every scrape: bench_workers polls less often, as a Prometheus would, so that the
        # figures are the spans' cost and not the scrapes').
        poller = BufferPoller(gw.admin, args.poll_interval).start()
        cpu0 = gateway_cpu(pid)
        window0 = time.perf_counter()
        start.set()
        while len(per_client) + len(errors) < len(procs):
            kind, protocol, payload = next_message(results, procs, args.duration + 120)
            if kind == "done":
                per_client.append((protocol, payload))
            elif kind == "error":
                errors.append(f"{protocol}: {payload}")
        cpu_load = gateway_cpu(pid)
        load_wall = time.perf_counter() - window0
        after = wait_written(gw.admin, 60 + (args.tail or 0), tail=bool(args.tail),
                             interval=min(0.1, args.poll_interval / 2))
        cpu1 = gateway_cpu(pid)
        drain_wall = time.perf_counter() - window0 - load_wall
        poller.stop()
        vm_hwm = proc_status_kib(pid, "VmHWM")
        for p in procs:
            p.join(10)
        if errors:
            result["client_errors"] = errors
        if profiler is not None:
            _, err = profiler.communicate(timeout=60)
            if profiler.returncode == 0 and Path(args.profile).exists():
                result["profile"] = {"path": args.profile, **summarize_profile(args.profile)}
            else:
                result["profile"] = {"path": args.profile, "error": err.decode(errors="replace")[-500:]}

        # Per protocol and total, as the clients saw it.
        acked_total = 0
        for protocol in protocols:
            runs = [s for proto, s in per_client if proto == protocol]
            lat = [x for s in runs for x in s["latencies"]]
            elapsed = max((s["elapsed"] for s in runs), default=0.0)
            spans = sum(s["acked_spans"] for s in runs)
            acked_total += spans + sum(s["warmup_acked_spans"] for s in runs)
            result[protocol] = {
                "clients": len(runs), "requests_ok": sum(s["ok"] for s in runs),
                "refused": sum(s["refused"] for s in runs), "gave_up": sum(s["gave_up"] for s in runs),
                "errors": sum(s["errors"] for s in runs), "acked_spans": spans,
                "rejected_spans": sum(s["rejected_spans"] for s in runs),
                "elapsed_s": elapsed, "spans_per_s": spans / elapsed if elapsed else 0.0,
                "latency_ms": {"p50": 1e3 * percentile(lat, 0.50), "p90": 1e3 * percentile(lat, 0.90),
                               "p99": 1e3 * percentile(lat, 0.99), "max": 1e3 * max(lat, default=float("nan"))},
                "client_cpu_s": sum(s["cpu_s"] for s in runs),
                "error_samples": [e for s in runs for e in s["error_samples"]][:5],
            }
        window_spans = sum(result[p]["acked_spans"] for p in protocols)
        window_s = max(result[p]["elapsed_s"] for p in protocols)
        gw_accepted = after["accepted"] - before["accepted"]
        cpu = cpu_delta(cpu0, cpu1)
        gw_cpu = cpu["cpu_s"]
        per_core = gw_accepted / gw_cpu if gw_cpu > 0 else float("inf")
        load_cpu = cpu_delta(cpu0, cpu_load)["cpu_s"]
        result["total"] = {"acked_spans": window_spans, "elapsed_s": window_s,
                           "spans_per_s": window_spans / window_s if window_s else 0.0}
        result["gateway"] = {
            "accepted_spans_in_window": gw_accepted,
            "cpu_s": gw_cpu,
            "user_s": cpu["user_s"],
            "sys_s": cpu["sys_s"],
            "cpu_s_by_thread": cpu["threads"],
            "minor_faults_per_request": cpu["minor_faults"] * spans_per_request / gw_accepted if gw_accepted else 0,
            "cpu_s_per_100k_spans": 1e5 * gw_cpu / gw_accepted if gw_accepted else float("nan"),
            "spans_per_s_per_core": per_core,
            "ratio_to_ceiling": per_core / ceiling["spans_per_s"],
            "cpu_utilisation_cores": gw_cpu / (load_wall + drain_wall),
            "drain_after_load_s": drain_wall,
            "peak_rss_mib": vm_hwm / 1024,
            "refused_spans_metric": after["refused"],
            # The load window alone (start -> the clients' last answer): with tail sampling the
            # traces of the last `decision_wait` s are decided and written after it.
            "load_window": {"wall_s": load_wall, "cpu_s": load_cpu,
                            "spans_per_s_per_core": gw_accepted / load_cpu if load_cpu > 0 else float("inf"),
                            "cpu_utilisation_cores": load_cpu / load_wall if load_wall else 0.0},
        }
        if args.tail:
            result["tail"] = {
                "load": poller.summary(),
                "steady": poller.summary(since=args.tail),  # after the first wait: traces now leave as fast as they come
                "after_load": poller.summary(since=load_wall),
                "series": [(round(t, 2), int(traces), int(held)) for t, traces, held in poller.samples],
                "policies_traces": after["tail_policies"],
                "decided_early_traces": after["tail_early"],
                "late_spans": after["tail_late"],
                "kept_spans": after["tail_kept"],
                "dropped_spans": after["tail_dropped"],
            }

        # Delivery: stop the gateway (SIGTERM drains) and count what the file holds.
        sent_metric = after["sent"]
        exit_code = gw.stop(60)
        counted = args.sink == "file" and args.format == "proto" and not args.discard
        records = file_spans = None
        if counted:  # with workers, each writes its own file (out.worker-<id>.pb)
            files = [out_path] if args.workers == 1 else sorted(workdir.glob("out.worker-*.pb"))
            records, file_spans = map(sum, zip(*(spans_in_file(f) for f in files))) if files else (0, 0)
        if args.tail:  # the sink gets what the buffer kept; every accepted span was decided
            expected = after["tail_kept"]
            accounted = after["tail_kept"] + after["tail_dropped"] == after["accepted"] == acked_total
        else:
            expected, accounted = acked_total, True
        result["delivered"] = {
            "acknowledged_spans": acked_total,
            "sink_sent_metric": sent_metric,
            "file_records": records,
            "file_spans": file_spans,
            "file_bytes": out_path.stat().st_size if out_path.is_file() else 0,
            "sink_dropped_metric": after["dropped"],
            "gateway_exit_code": exit_code,
            "expected_spans": expected,
            "accepted_metric": after["accepted"],
            "ok": exit_code == 0 and accounted and sent_metric == expected and (file_spans is None or file_spans == expected),
        }
        return result
    except BaseException:
        if gw.proc.poll() is not None:
            sys.stderr.write("gateway log:\n" + gw.log_text()[-5000:] + "\n")
        raise
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        if gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait()
        if receiver is not None:
            receiver.stop()
        if args.keep or args.workdir:
            (workdir / "gateway.log").write_text(gw.log_text() + "\n")
            result["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def report(r: dict[str, Any]) -> str:
    c = r["config"]
    ceiling = r["ceiling"]["spans_per_s"]
    tail = c["tail"]
    lines = [
        f"otelgate throughput: {c['protocol']}, {c['clients_per_protocol']} client process(es) per protocol x "
        f"{c['concurrency']} in flight, {c['duration_s']:g} s, {c['spans_per_request']} spans/request "
        f"({r['request_bytes_avg'] / 1024:.0f} KiB avg), file sink format {c['sink_format']} -> {c['sink_path']}",
        f"spans: {c['llm_share']:.0%} LLM (fixtures), the rest ordinary HTTP/DB in traces of {c['trace_spans']}; "
        f"{r['traces_per_request']:.1f} traces per request, new ids every pass over the pool "
        f"({r['trace_id_rewrite_us_per_request']:.1f} us per request in the client); processors "
        f"{'normalize, price, llm_metrics' if c['processors'] else 'off'}; sink {c['sink']}, "
        f"{c['queue']} queue" + (f" (fsync {c['fsync']})" if c['fsync'] else "")
        + (f"; redact, content {c['redact']}" if c.get("redact") else ""),
        f"machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}. The client processes share these "
        f"cores with the gateway,",
        "  so spans/s below is bounded by the clients too; the per-core figure (gateway CPU only) is not.",
        f"ceiling (parse+serialize, 1 core): {ceiling:,.0f} spans/s ({r['ceiling']['mb_per_s']:,.0f} MB/s)",
    ]
    if tail:
        policies = ", ".join(f"{p['type']}" + (f" > {p['threshold_usd']:g} USD" if p["type"] == "cost" else "")
                             + (f" {p['percentage']:g}%" if p["type"] == "probabilistic" else "") for p in tail["policies"])
        lines.append(f"tail sampling: decision_wait {tail['decision_wait']}, idle {tail['idle']}; policies {policies}")
    for protocol in ("grpc", "http"):
        p = r.get(protocol)
        if not p:
            continue
        lat = p["latency_ms"]
        lines.append(
            f"{protocol + ':':6s} requests {p['requests_ok']:,} ok, {p['refused']:,} refused, {p['errors']:,} errors; "
            f"spans/s {p['spans_per_s']:,.0f}; latency p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms "
            f"(max {lat['max']:.1f}); client CPU {p['client_cpu_s']:.1f} s")
        for sample in p["error_samples"]:
            lines.append(f"        error: {sample}")
    if len([p for p in ("grpc", "http") if p in r]) > 1:
        lines.append(f"total:  spans/s {r['total']['spans_per_s']:,.0f}")
    g = r["gateway"]
    lines.append(
        f"gateway: {g['cpu_s_per_100k_spans']:.2f} CPU s per 100k spans -> {g['spans_per_s_per_core']:,.0f} spans/s "
        f"per core = {g['ratio_to_ceiling']:.2f} of ceiling (goal >= 0.5); peak RSS {g['peak_rss_mib']:.0f} MiB")
    lines.append(
        f"         {g['cpu_s']:.2f} CPU s for {g['accepted_spans_in_window']:,.0f} spans, "
        f"{g['cpu_utilisation_cores']:.2f} cores busy on average, sink caught up {g['drain_after_load_s']:.2f} s "
        f"after the load; idle CPU {r['gateway_idle_cpu_percent']:.1f}%")
    w = g["load_window"]
    lines.append(
        f"         load window only ({w['wall_s']:.1f} s): {w['cpu_s']:.2f} CPU s -> {w['spans_per_s_per_core']:,.0f} "
        f"spans/s per core, {w['cpu_utilisation_cores']:.2f} cores busy")
    threads = ", ".join(f"{name} {t['user'] + t['sys']:.2f}" for name, t in list(g["cpu_s_by_thread"].items())[:4])
    lines.append(
        f"         CPU s: user {g['user_s']:.2f} + sys {g['sys_s']:.2f}; by thread: {threads}; "
        f"{g['minor_faults_per_request']:,.0f} page faults per request")
    if t := r.get("tail"):
        load, steady = t["load"], t["steady"]
        lines.append(
            f"buffer: peak {load['peak_traces']:,.0f} traces in flight, {load['peak_bytes'] / 2**20:,.0f} MiB held "
            f"(gauges every 0.2 s); mean over the load {load['mean_traces']:,.0f} traces, after the first wait "
            f"{steady['mean_traces']:,.0f} traces / {steady['mean_bytes'] / 2**20:,.0f} MiB")
        votes = ", ".join(f"{name} {v.get('kept', 0):,.0f}/{v.get('kept', 0) + v.get('dropped', 0):,.0f}"
                          for name, v in t["policies_traces"].items())
        lines.append(
            f"decided: {t['kept_spans']:,.0f} spans kept, {t['dropped_spans']:,.0f} dropped; traces kept per policy "
            f"{votes}; decided early {t['decided_early_traces']:,.0f} traces, late spans {t['late_spans']:,.0f}")
    d = r["delivered"]
    file_part = f", file {d['file_spans']:,} spans in {d['file_records']:,} records" if d["file_spans"] is not None else ""
    if tail:
        lines.append(
            f"accepted {d['accepted_metric']:,.0f} spans = acknowledged {d['acknowledged_spans']:,} = kept + dropped "
            f"{r['tail']['kept_spans'] + r['tail']['dropped_spans']:,.0f}")
    lines.append(
        f"delivered: {d['sink_sent_metric']:,.0f} of {d['expected_spans']:,.0f} {'kept' if tail else 'acknowledged'} spans "
        f"(sink sent metric{file_part}; {d['file_bytes'] / 1e6:,.0f} MB); gateway exit {d['gateway_exit_code']} "
        f"-> {'OK' if d['ok'] else 'MISMATCH'}")
    if prof := r.get("profile"):
        if "error" in prof:
            lines.append(f"profile: py-spy failed: {prof['error']}")
        else:
            lines.append(f"profile ({prof['samples']} py-spy samples of active threads, raw stacks in {prof['path']}):")
            lines.append("  threads: " + ", ".join(f"{name} {pct:.0f}%" for name, pct in prof["threads"]))
            lines.append("  self (by line):")
            lines.extend(f"    {pct:5.1f}%  {name}" for name, pct in prof["self"])
            lines.append("  inclusive (by function):")
            lines.extend(f"    {pct:5.1f}%  {name}" for name, pct in prof["inclusive"])
    for e in r.get("client_errors", ()):
        lines.append(f"client error: {e}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--protocol", choices=("grpc", "http", "both"), default="both",
                        help="both: --clients gRPC and --clients HTTP processes at once")
    parser.add_argument("--clients", type=int, default=1, help="client processes per protocol")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per client process")
    parser.add_argument("--http-client", choices=("raw", "aiohttp"), default="raw",
                        help="the OTLP/HTTP load client: plain HTTP/1.1 keep-alive (less client CPU per request, "
                        "so more of the machine for the gateway) or aiohttp's client (as before 2026-12-03)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (each client stops by itself)")
    parser.add_argument("--max-requests", type=int, default=0,
                        help="stop each client process after this many requests (0: duration only)")
    parser.add_argument("--spans-per-request", type=int, default=100, help="spans in every request")
    parser.add_argument("--pool", type=int, default=50, help="distinct pre-serialized requests")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0, help="how long to measure the ceiling")
    parser.add_argument("--llm-share", type=float, default=1.0,
                        help="share of LLM (fixture) spans; the rest are ordinary HTTP/DB spans (0.5 = the issue's mix)")
    parser.add_argument("--trace-spans", type=int, default=3,
                        help="spans per trace of the ordinary spans (an HTTP server root and its children)")
    parser.add_argument("--tail", type=float, metavar="WAIT",
                        help="tail sampling with decision_wait WAIT s (policies: error, cost, probabilistic)")
    parser.add_argument("--tail-idle", type=float, metavar="S",
                        help="tail sampling's idle (decide S after the last span once the root came); default WAIT")
    parser.add_argument("--tail-keep", type=float, default=10.0, help="the probabilistic policy's percentage")
    parser.add_argument("--tail-cost", type=float, default=0.01, help="the cost policy's threshold, USD per trace")
    parser.add_argument("--sink", choices=("file", "otlp"), default="file",
                        help="file sink, or an OTLP/gRPC sink (no compression) to a second otelgate writing to /dev/null")
    parser.add_argument("--queue", choices=("memory", "disk"), default="memory", help="the sink's queue")
    parser.add_argument("--fsync", choices=("always", "batch", "never"), default="batch", help="disk queue fsync")
    parser.add_argument("--no-processors", action="store_true",
                        help="disable normalize, price and llm_metrics (receive -> sink only)")
    parser.add_argument("--redact", choices=("keep", "drop", "hash", "truncate"),
                        help="enable pipeline.redact (all detectors) with this content mode")
    parser.add_argument("--format", choices=("proto", "json"), default="proto", help="file sink format")
    parser.add_argument("--limits", metavar="JSON",
                        help='the gateway\'s `limits:` as JSON, e.g. \'{"max_attributes_per_span": 128}\'')
    parser.add_argument("--usage", choices=("off", "attribution", "on"), default="off",
                        help="attribution: the account processor attributes calls; on: and usage rollups to SQLite "
                             "in the temp dir (default off, so the figures compare with runs before them)")
    parser.add_argument("--discard", action="store_true",
                        help="file sink path /dev/null: everything but the page-cache write (delivery checked by metric)")
    parser.add_argument("--workers", type=int, default=1, help="service.workers (the gateway's CPU counts every worker's)")
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="s between scrapes of /metrics during the load (the trace buffer's gauges); while "
                        "waiting for the sink after it, half that, at most 0.1 s. Every scrape renders every series "
                        "(in every worker): 5 a second, the default before 2026-12-03, inflated the cost of "
                        "anything that adds series")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random trace/span ids")
    parser.add_argument("--workdir",
                        help="keep the gateway's config, log and output here (otherwise a temp dir, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="do not remove the temp dir (its path is in the JSON)")
    parser.add_argument("--profile", metavar="FILE",
                        help="sample the gateway with py-spy during the load (raw stacks to FILE) and summarize")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clients < 1 or args.concurrency < 1 or args.duration <= 0 or args.trace_spans < 1:
        parser.error("--clients, --concurrency and --trace-spans must be >= 1 and --duration > 0")
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0 if result["delivered"]["ok"] and not result.get("client_errors") else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
