"""OTLP/HTTP receiver: `POST /v1/traces`, `/v1/logs`, `/v1/metrics`, protobuf or JSON, as the
OTLP specification says; and `POST /api/public/otel/v1/traces`, the path the Langfuse SDK
exports to, authenticated with its Basic auth key pair (see `Intake.identify_langfuse`); and the
Langfuse SDK v2's `POST /api/public/ingestion` and `GET /api/public/projects`
(`langfuse_ingestion.py`, which answers as Langfuse does).

Answers: 200 with an `ExportTraceServiceResponse` (with `partial_success` when spans were
rejected), in the request's encoding; 400 malformed payload, 413 body too large (as sent or
decompressed), 415 unsupported content type or encoding, 429/503 with `Retry-After` under rate
limit/backpressure; 404/405 for other paths and methods; 401 (with `WWW-Authenticate`) when
`auth:` is on and the request carries no known key, checked before the body is read. Error
bodies are a `google.rpc.Status` whose message names the problem.

Connections: header-read and idle timeouts, a connection cap and the wrong-protocol answer are
`gateway.receivers.connections`'. Admission control (`max_in_flight_requests`, `_bytes`) refuses
with 503 + `Retry-After` before the body is read; a request whose client has gone by the time its
body is decoded is not handed on (`outcome="client_gone"`). `0.0.0.0` listens on IPv6 too (`::`,
dual stack), as the gRPC receiver does; `::` alone does the same.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2

from gateway.batch import RequestContext
from gateway.config import HttpReceiverConfig
from gateway.configtypes import split_endpoint
from gateway.errors import RateLimited, Refused
from gateway.otlp import compression
from gateway.otlp.json_codec import OtlpJsonError, encode_message
from gateway.otlp.signals import SIGNALS, TRACES, Signal
from gateway.receivers.auth import Unauthenticated
from gateway.receivers.connections import ConnectionGuard, default_backlog, default_max_connections
from gateway.receivers.intake import ALL_ACCEPTED, Admission, Intake, describe_decode_error
from gateway.receivers.langfuse_ingestion import LangfuseIngestion
from gateway.receivers.limits import LimitExceeded
from gateway.receivers.tls import server_ssl_context
from gateway.service import worker_id

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
PROTOCOL = "http"
LANGFUSE_PATH = "/api/public/otel/v1/traces"

Identify = Callable[[str, Callable[[str], "str | None"]], RequestContext]  # Intake.identify or identify_langfuse

_GRPC_CODE_FOR_HTTP = {
    400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 413: code_pb2.RESOURCE_EXHAUSTED, 415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED, 503: code_pb2.UNAVAILABLE,
}


def _encode(message: object, as_json: bool) -> bytes:
    return encode_message(message) if as_json else message.SerializeToString()  # type: ignore[attr-defined]


_ACCEPTED_BODIES: dict[tuple[str, bool], bytes] = {}


def _accepted_body(signal: Signal, as_json: bool) -> bytes:
    """The answer to a request accepted whole (an empty `Export*ServiceResponse`), encoded once
    per signal and encoding: most requests get it, and building it was a per-request cost."""
    key = (signal.name, as_json)
    body = _ACCEPTED_BODIES.get(key)
    if body is None:
        body = _ACCEPTED_BODIES[key] = _encode(signal.response_for(0, ""), as_json)
    return body


def _error(status: int, message: str, as_json: bool, headers: dict[str, str] | None = None) -> web.Response:
    body = status_pb2.Status(code=_GRPC_CODE_FOR_HTTP.get(status, code_pb2.UNKNOWN), message=message)
    return web.Response(status=status, body=_encode(body, as_json),
                        content_type=JSON if as_json else PROTOBUF, headers=headers)


class OtlpHttpReceiver:
    def __init__(self, config: HttpReceiverConfig, intake: Intake) -> None:
        self.config = config
        self._intake = intake
        self._runner: web.AppRunner | None = None
        self.endpoint = config.endpoint
        self.tls_mode = "off" if config.tls is None else "mtls" if config.tls.mutual else "tls"
        metrics = intake.metrics
        self.connections = ConnectionGuard(
            lambda: self.endpoint, metrics, read_header_timeout=config.read_header_timeout,
            idle_timeout=config.idle_timeout, max_connections=config.max_connections or default_max_connections())
        self.admission = Admission(config.max_in_flight_requests, config.max_in_flight_bytes,
                                   metrics.receiver_in_flight.labels(PROTOCOL))
        self._servers: list[asyncio.base_events.Server] = []
        self._langfuse = LangfuseIngestion(intake, config.max_body_bytes, config.langfuse_hold, self.admission)

    def _app(self) -> web.Application:
        # client_max_size bounds the body as sent; decompression is bounded separately below.
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._track])
        for signal in SIGNALS.values():
            app.router.add_post(signal.http_path, partial(self._export, signal, self._intake.identify))
        app.router.add_post(LANGFUSE_PATH, partial(self._export, TRACES, self._intake.identify_langfuse))
        self._langfuse.add_routes(app)  # the Langfuse SDK v2's ingestion API (langfuse_ingestion.py)
        return app

    @web.middleware
    async def _track(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Tell the connection guard a request runs (no header timer) and when it is done (idle timer)."""
        transport = request.transport
        self.connections.request_started(transport)
        try:
            return await handler(request)
        finally:
            self.connections.request_done(transport)

    async def start(self) -> None:
        config = self.config
        host, port = split_endpoint(config.endpoint)
        # auto_decompress=False: aiohttp would otherwise inflate bodies with no output bound.
        # The guard keeps the time limits (aiohttp's own keep-alive timer stays at its hour).
        runner = web.AppRunner(self._app(), auto_decompress=False, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            tls = config.tls
            loop = asyncio.get_running_loop()
            factory = self.connections.wrap(runner.server)
            backlog = config.backlog or default_backlog()
            ssl_context = server_ssl_context(tls) if tls is not None else None
            reuse_port = worker_id() is not None  # workers share the port (service.workers)
            # 0.0.0.0 means every address, IPv6 included (as gRPC and the Collector serve it):
            # None binds every family the host has, each with its own socket.
            bind_host = None if host in ("0.0.0.0", "::") else host
            server = await loop.create_server(factory, bind_host, port, backlog=backlog, reuse_address=True,
                                              reuse_port=reuse_port, ssl=ssl_context)
            self._servers.append(server)
            bound = server.sockets[0].getsockname()[1]
            if bind_host is None and port == 0 and len(server.sockets) > 1:
                # Each family chose its own ephemeral port: bind them all to the first one's.
                server.close()
                await server.wait_closed()
                self._servers.clear()
                server = await loop.create_server(factory, bind_host, bound, backlog=backlog, reuse_address=True,
                                                  reuse_port=reuse_port, ssl=ssl_context)
                self._servers.append(server)
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers.clear()
            await runner.cleanup()
            raise
        self._runner = runner
        self.families = sorted({("IPv6" if s.family == socket.AF_INET6 else "IPv4") for s in server.sockets})
        self.endpoint = f"{host}:{bound}"

    async def shutdown(self) -> None:
        """Close the listener, then wait (bounded) for requests already in flight."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self._langfuse.close()

    async def _export(self, signal: Signal, identify: Identify, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            return await self._handle(signal, identify, request)
        finally:
            self._intake.observe_latency(PROTOCOL, time.perf_counter() - started)

    async def _handle(self, signal: Signal, identify: Identify, request: web.Request) -> web.Response:
        content_type = request.content_type
        try:
            context = identify(PROTOCOL, request.headers.get)
        except Unauthenticated as exc:
            return _error(401, str(exc), content_type != PROTOBUF, {"WWW-Authenticate": exc.challenge})
        if content_type not in (PROTOBUF, JSON):
            self._intake.malformed(PROTOCOL, "unsupported_media_type")
            return _error(415, f"unsupported Content-Type {content_type!r}: use {PROTOBUF} or {JSON}", True)
        as_json = content_type == JSON
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
        if encoding not in compression.SUPPORTED:
            self._intake.malformed(PROTOCOL, "unsupported_media_type")
            return _error(415, f"unsupported Content-Encoding {encoding!r}: use gzip, deflate, zstd or none", as_json)
        limit = self.config.max_body_bytes
        size = request.content_length or 0
        if (refusal := self._intake.backpressure(PROTOCOL, signal)) is not None:
            return _error(503, str(refusal), as_json, {"Retry-After": str(max(1, math.ceil(refusal.retry_after)))})
        admission = self.admission
        if not admission.enter(size):
            self._intake.overloaded(PROTOCOL)
            return _error(503, f"otelgate is at its limit of requests in progress (receivers.http.max_in_flight_requests "
                          f"{admission.max_requests}, max_in_flight_bytes {admission.max_bytes}); retry later", as_json,
                          {"Retry-After": "1"})
        try:
            return await self._decode_and_accept(signal, request, context, as_json, encoding, limit)
        finally:
            admission.leave(size)

    async def _decode_and_accept(self, signal: Signal, request: web.Request, context: RequestContext, as_json: bool,
                                 encoding: str, limit: int) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._intake.malformed(PROTOCOL, "too_large")
            return _error(413, f"request body larger than {limit} bytes (receivers.http.max_body_bytes)", as_json)
        try:
            body = compression.decompress(body, encoding, limit)
        except compression.TooLarge:
            self._intake.malformed(PROTOCOL, "too_large")
            return _error(413, f"decompressed body larger than {limit} bytes (receivers.http.max_body_bytes)", as_json)
        except compression.CorruptBody as exc:
            self._intake.malformed(PROTOCOL, "malformed")
            return _error(400, f"cannot decompress {encoding} body: {exc}", as_json)
        try:
            export = signal.decode_json(body) if as_json else signal.request.FromString(body)
        except OtlpJsonError as exc:
            self._intake.malformed(PROTOCOL, "malformed")
            return _error(400, f"invalid OTLP/JSON: {exc}", True)
        except DecodeError as exc:
            self._intake.malformed(PROTOCOL, "malformed")
            return _error(400, describe_decode_error(exc, "body", signal), False)
        transport = request.transport
        if transport is None or transport.is_closing():
            self._intake.malformed(PROTOCOL, "client_gone")  # no one to answer: a retry will bring it again
            return _error(503, "client went away", as_json)
        try:
            accepted = await self._intake.accept(export, context, None if as_json else body, signal)
        except Refused as exc:
            status = 429 if isinstance(exc, RateLimited) else 503
            return _error(status, str(exc), as_json, {"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
        except LimitExceeded as exc:
            return _error(413 if exc.too_large else 400, str(exc), as_json)
        if accepted is ALL_ACCEPTED:
            body = _accepted_body(signal, as_json)
        else:
            body = _encode(signal.response_for(accepted.rejected, accepted.error_message), as_json)
        return web.Response(body=body, content_type=JSON if as_json else PROTOBUF)
