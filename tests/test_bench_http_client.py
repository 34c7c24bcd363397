"""The benchmarks' plain HTTP/1.1 load client (`bench_gateway.raw_http_sender`), against a real
aiohttp server and the real gateway: its figures are only as good as what it sends and reads."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))

from bench_gateway import raw_http_sender  # noqa: E402
from tests.gateway_process import GatewayProcess  # noqa: E402


async def _serve(handler: web.RequestHandler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/traces", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_requests_are_exact_and_connections_are_kept_alive() -> None:
    seen: list[tuple[str, str | None, int | None, bytes, object]] = []
    answers = [web.Response(body=b"first", content_type="application/x-protobuf"),
               web.Response(status=503, body=b"busy", headers={"Retry-After": "0.25"}),
               web.Response(status=400, body=b"bad request"),
               web.Response(body=b"")]

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.content_type, request.content_length, await request.read(),
                     request.transport.get_extra_info("peername") if request.transport else None))
        return answers[len(seen) - 1]

    runner, url = await _serve(handler)
    send, close = await raw_http_sender(url, "/v1/traces")
    try:
        assert await send(b"\x0a\x00") == ("ok", b"first", 0.0)
        assert await send(b"x" * 70000) == ("refused", b"busy", 0.25)
        outcome, message, _ = await send(b"")
        assert outcome == "error" and "HTTP 400" in message and "bad request" in message
        assert await send(b"last") == ("ok", b"", 0.0)
    finally:
        await close()
        await runner.cleanup()
    assert [(p, t, n, b) for p, t, n, b, _ in seen] == [
        ("/v1/traces", "application/x-protobuf", 2, b"\x0a\x00"),
        ("/v1/traces", "application/x-protobuf", 70000, b"x" * 70000),
        ("/v1/traces", "application/x-protobuf", 0, b""),
        ("/v1/traces", "application/x-protobuf", 4, b"last")]
    assert len({peer for *_, peer in seen}) == 1  # one connection, kept alive, for requests one after another


async def test_a_closed_connection_is_an_error_and_the_next_request_opens_another() -> None:
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        await request.read()
        if calls == 1:
            assert request.transport is not None
            request.transport.close()  # the server goes away mid-exchange
        return web.Response(body=b"ok")

    runner, url = await _serve(handler)
    send, close = await raw_http_sender(url, "/v1/traces")
    try:
        outcome, message, _ = await send(b"a")
        assert outcome == "error"
        assert await send(b"b") == ("ok", b"ok", 0.0)
    finally:
        await close()
        await runner.cleanup()


def test_against_the_gateway_an_export_is_acknowledged(tmp_path: Path) -> None:
    config = {"sinks": {"out": {"type": "file", "path": str(tmp_path / "out.pb"), "format": "proto"}},
              "routes": [{"name": "all", "sinks": ["out"]}]}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add().CopyFrom(
        Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="one"))

    async def export() -> tuple[str, object, float]:
        send, close = await raw_http_sender(gw.http, "/v1/traces")
        try:
            return await send(request.SerializeToString())
        finally:
            await close()

    try:
        outcome, payload, _ = asyncio.run(export())
        assert outcome == "ok"
        assert not ExportTraceServiceResponse.FromString(payload).HasField("partial_success")
    finally:
        assert gw.stop() == 0
