"""The per-request floor of the frameworks the receivers stand on: a bare aiohttp / grpc.aio server.

    .venv/bin/python tests/bench/bench_floor.py --protocol http|grpc [--duration 6] [--concurrency 8]
    .venv/bin/python tests/bench/bench_floor.py --protocol http --rounds 3 --gateway [--no-processors]
    .venv/bin/python tests/bench/bench_floor.py --protocol grpc --rounds 3 --grpc-server both

The server answers `POST /v1/traces` (aiohttp, same `AppRunner` settings as the receiver:
`access_log=None`, `auto_decompress=False`) or `TraceService/Export` (grpc.aio generic handler,
bytes in, bytes out) with an empty `ExportTraceServiceResponse`, without parsing the body. The
load is `bench_gateway.py`'s own client (the same processes, requests and concurrency), so the
server's CPU per request here is what aiohttp or grpc.aio cost before any line of otelgate runs:
the floor the gateway's per-request figure can approach, never pass. Prints the server's CPU
seconds per request (utime+stime, /proc) and requests per server-core-second.

`--gateway` alternates (`--rounds` times) the bare server with the gateway itself (the same
config as `bench_gateway.py --discard`, no /metrics poller), under the same client, so the
difference is what otelgate adds per request at the same request rate (CPU per request rises
as the rate falls: fewer requests share each wake-up of the event loop).

`--grpc-server both` alternates the bare grpc.aio server with grpcio's synchronous server
(`grpc.server` with a pool of 8 threads, the same generic handler): whether leaving grpc.aio
would lower the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gateway as bg  # noqa: E402  (also puts the repository root on sys.path)

GRPC_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(protocol: str, port: int, ready: "mp.synchronize.Event", grpc_server: str = "aio") -> None:
    """Run the bare server until killed."""
    import uvloop

    if protocol == "http":
        from aiohttp import web

        async def export(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=b"", content_type="application/x-protobuf")

        async def main_http() -> None:
            app = web.Application()
            app.router.add_post("/v1/traces", export)
            runner = web.AppRunner(app, auto_decompress=False, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            ready.set()
            await asyncio.Event().wait()

        uvloop.run(main_http())
        return

    import grpc

    if grpc_server == "sync":
        from concurrent.futures import ThreadPoolExecutor

        server = grpc.server(ThreadPoolExecutor(8))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            GRPC_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(lambda body, context: b"")}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        ready.set()
        server.wait_for_termination()
        return

    async def export_grpc(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b""

    async def main_grpc() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            GRPC_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export_grpc)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    uvloop.run(main_grpc())  # the gateway's loop (gateway/cli.py)


def _gateway(protocol: str, processors: bool, workdir: Path) -> tuple[Any, str]:
    from tests.gateway_process import GatewayProcess

    config: dict[str, Any] = {
        "receivers": {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}},
        "admin": {"endpoint": "127.0.0.1:0"},
        "sinks": {"out": {"type": "file", "path": os.devnull, "format": "proto", "rotate_bytes": 0}},
        "usage": {"enabled": False}, "pipeline": {"account": {"enabled": False}},
    }
    if not processors:
        config["pipeline"].update({name: {"enabled": False} for name in ("normalize", "price", "llm_metrics")})
    gw = GatewayProcess(config, workdir).wait_ready(60)
    return gw, gw.http if protocol == "http" else gw.grpc


def run(protocol: str, duration: float, concurrency: int, spans: int, llm_share: float,
        gateway: bool = False, processors: bool = True, grpc_server: str = "aio") -> dict[str, float]:
    pool = [bg.retraceable(b) for b in bg.build_pool(20, spans, 1, llm_share)]
    ctx = mp.get_context("spawn")
    if gateway:
        workdir = Path(tempfile.mkdtemp(prefix="otelgate-floor-"))
        server, target = _gateway(protocol, processors, workdir)
    else:
        port = _free_port()
        ready = ctx.Event()
        server = ctx.Process(target=serve, args=(protocol, port, ready, grpc_server), daemon=True)
        server.start()
        if not ready.wait(30):
            raise RuntimeError("server did not start")
        target = f"http://127.0.0.1:{port}" if protocol == "http" else f"127.0.0.1:{port}"
    start, results = ctx.Event(), ctx.Queue()
    client = ctx.Process(target=bg.client_main, daemon=True,
                         args=(protocol, target, pool, spans, concurrency, duration, 0, 0, 0, start, results))
    client.start()
    kind, _, payload = bg.next_message(results, [client], 60)
    if kind != "ready":
        raise RuntimeError(f"client: {payload}")
    cpu0 = bg.gateway_cpu_s(server.pid)
    start.set()
    kind, _, stats = bg.next_message(results, [client], duration + 60)
    cpu = bg.gateway_cpu_s(server.pid) - cpu0
    client.join(10)
    if gateway:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        server.kill()
    if kind != "done":
        raise RuntimeError(f"client: {stats}")
    requests = stats["ok"]
    return {"requests": requests, "server_cpu_s": cpu, "us_per_request": 1e6 * cpu / requests,
            "requests_per_core_s": requests / cpu, "client_requests_per_s": requests / stats["elapsed"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--spans-per-request", type=int, default=1)
    parser.add_argument("--llm-share", type=float, default=1.0)
    parser.add_argument("--gateway", action="store_true", help="alternate the bare server with the gateway")
    parser.add_argument("--no-processors", action="store_true", help="with --gateway: normalize, price, llm_metrics off")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--grpc-server", choices=("aio", "sync", "both"), default="aio",
                        help="the bare gRPC server: grpc.aio (as the receiver), grpcio's threaded one, or both alternately")
    args = parser.parse_args()
    import gateway

    kinds = ["bare", "gateway"] if args.gateway else ["bare"]
    if args.protocol == "grpc" and args.grpc_server != "aio":
        kinds = (["bare"] if args.grpc_server == "both" else []) + ["bare-sync"] + kinds[1:]
    for _ in range(args.rounds):
        for kind in kinds:
            r = run(args.protocol, args.duration, args.concurrency, args.spans_per_request, args.llm_share,
                    kind == "gateway", not args.no_processors, "sync" if kind == "bare-sync" else "aio")
            tree = os.environ.get("PYTHONPATH") or Path(gateway.__file__).parent.parent  # the gateway process imports from it
            name = (f"otelgate ({tree}, processors "
                    f"{'off' if args.no_processors else 'on'})" if kind == "gateway"
                    else "bare (grpc.server, 8 threads)" if kind == "bare-sync" else "bare")
            print(f"{args.protocol} {name}: {r['requests']:,} requests, {r['server_cpu_s']:.2f} server CPU s -> "
                  f"{r['us_per_request']:.0f} us per request = {r['requests_per_core_s']:,.0f} requests/s per "
                  f"server core (client saw {r['client_requests_per_s']:,.0f}/s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
