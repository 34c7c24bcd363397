"""OTLP/gRPC receiver: `TraceService/Export`, `LogsService/Export` and `MetricsService/Export`
(`opentelemetry.proto.collector.*.v1`) on grpc.aio.

The handler takes raw bytes and parses them itself, so a malformed message gets
INVALID_ARGUMENT with a message (grpc's own deserializer would answer a bare INTERNAL). Messages
over `max_message_bytes` get RESOURCE_EXHAUSTED from grpc itself; gzip is handled by grpc.
Backpressure answers UNAVAILABLE (rate limits RESOURCE_EXHAUSTED) with a `RetryInfo` detail,
which the OTLP spec and the SDK exporters read as "retry after this delay". With `auth:`, the key
in the metadata is checked before the message is parsed (UNAUTHENTICATED); `limits:` refusals
are INVALID_ARGUMENT, or RESOURCE_EXHAUSTED without `RetryInfo` (not retryable) for too many spans.

Connections: `max_connection_idle` and `max_connection_age` are gRPC's own GOAWAY settings.
Admission control (`max_in_flight_requests`, `_bytes`) and a backpressure refusal (every sink
queue full) answer UNAVAILABLE + RetryInfo when the RPC arrives, before its message is read (the
methods are registered stream-unary for that); an RPC the client has cancelled by the time its
message is decoded is not handed on.
"""

from __future__ import annotations

import time
from functools import partial

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from gateway.batch import RequestContext
from gateway.config import GrpcReceiverConfig
from gateway.configtypes import split_endpoint
from gateway.errors import RateLimited, Refused
from gateway.otlp.signals import SIGNALS, Signal
from gateway.receivers.auth import Unauthenticated
from gateway.receivers.intake import ALL_ACCEPTED, Admission, Intake, describe_decode_error
from gateway.receivers.limits import LimitExceeded
from gateway.receivers.tls import grpc_server_credentials
from gateway.service import worker_id

PROTOCOL = "grpc"


def _status_details(code: grpc.StatusCode, message: str, retry_after: float) -> bytes:
    info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=int(retry_after), nanos=int(retry_after % 1 * 1e9)))
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    return status.SerializeToString()


class OtlpGrpcReceiver:
    def __init__(self, config: GrpcReceiverConfig, intake: Intake) -> None:
        self.config = config
        self._intake = intake
        self._server: grpc.aio.Server | None = None
        self.endpoint = config.endpoint
        self.tls_mode = "off" if config.tls is None else "mtls" if config.tls.mutual else "tls"
        self.admission = Admission(config.max_in_flight_requests, config.max_in_flight_bytes,
                                   intake.metrics.receiver_in_flight.labels(PROTOCOL))

    async def start(self) -> None:
        config = self.config
        limit = config.max_message_bytes
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0 if worker_id() is None else 1),  # workers share the port
        ]
        if config.max_connection_idle:
            options.append(("grpc.max_connection_idle_ms", int(config.max_connection_idle * 1000)))
        if config.max_connection_age:
            options.append(("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)))
            options.append(("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace * 1000)))
        # grpc.aio queues every RPC it receives (message and all) until its handler runs: past a
        # multiple of the admission bound, grpc itself answers RESOURCE_EXHAUSTED, so memory stays
        # bounded even when the event loop is too busy to run handlers that would refuse them.
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max(64, 4 * self.admission.max_requests))
        server.add_generic_rpc_handlers(tuple(
            grpc.method_handlers_generic_handler(signal.grpc_method[1:].rsplit("/", 1)[0], {  # the service's full name
                "Export": grpc.stream_unary_rpc_method_handler(partial(self._export, signal))})  # bytes in, bytes out
            for signal in SIGNALS.values()))
        host, port = split_endpoint(self.config.endpoint)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if self.config.tls is not None:
                bound = server.add_secure_port(address, grpc_server_credentials(self.config.tls))
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.config.endpoint}: {exc}") from None
        await server.start()
        self._server = server
        self.endpoint = f"{host}:{bound}"

    async def shutdown(self, grace: float = 5.0) -> None:
        """Refuse new RPCs at once; let those in flight finish within `grace`."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)

    async def _export(self, signal: Signal, messages: object, context: grpc.aio.ServicerContext) -> bytes:
        """Registered as stream-unary (the wire is the same as unary's: one message each way), so
        this runs when the RPC arrives, before its message is read: admission control counts the
        RPC from then, and a refusal costs neither the message's transfer nor its decode. As
        unary, grpc.aio read every message first: RPCs waiting for that were in no bound, and
        under 3x overload accepted ones waited 2-10 s behind them."""
        started = time.perf_counter()
        try:
            metadata = _metadata(context)
            try:
                request_context = self._intake.identify(PROTOCOL, metadata.get)
            except Unauthenticated as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            if (refusal := self._intake.backpressure(PROTOCOL, signal)) is not None:
                await self._unavailable(context, str(refusal), refusal.retry_after)
            admission = self.admission
            if not admission.enter(0):
                await self._overloaded(context)
            size = 0
            try:
                body = await context.read()
                if body is grpc.aio.EOF:
                    self._intake.malformed(PROTOCOL, "malformed")
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
                size = len(body)
                if not admission.take_bytes(size):
                    size = 0
                    await self._overloaded(context)
                return await self._accept(signal, body, context, request_context)
            finally:
                admission.leave(size)
        finally:
            self._intake.observe_latency(PROTOCOL, time.perf_counter() - started)

    async def _overloaded(self, context: grpc.aio.ServicerContext) -> None:
        self._intake.overloaded(PROTOCOL)
        admission = self.admission
        await self._unavailable(context, f"otelgate is at its limit of RPCs in progress (receivers.grpc.max_in_flight_requests "
                                f"{admission.max_requests}, max_in_flight_bytes {admission.max_bytes}); retry later", 1.0)

    @staticmethod
    async def _unavailable(context: grpc.aio.ServicerContext, message: str, retry_after: float) -> None:
        code = grpc.StatusCode.UNAVAILABLE
        await context.abort(code, message, trailing_metadata=(
            ("grpc-status-details-bin", _status_details(code, message, retry_after)),))

    async def _accept(self, signal: Signal, body: bytes, context: grpc.aio.ServicerContext, request_context: RequestContext) -> bytes:
        try:
            export = signal.request.FromString(body)
        except DecodeError as exc:
            self._intake.malformed(PROTOCOL, "malformed")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, describe_decode_error(exc, "message", signal))
        if context.cancelled():  # the client gave up (deadline, cancel): a retry brings it again
            self._intake.malformed(PROTOCOL, "client_gone")
            await context.abort(grpc.StatusCode.CANCELLED, "client went away")
        try:
            accepted = await self._intake.accept(export, request_context, body, signal)
        except Refused as exc:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(exc, RateLimited) else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, str(exc), trailing_metadata=(
                ("grpc-status-details-bin", _status_details(code, str(exc), exc.retry_after)),))
        except LimitExceeded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED if exc.too_large else grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if accepted is ALL_ACCEPTED:
            return b""  # an empty Export*ServiceResponse: the answer to a request accepted whole
        return signal.response_for(accepted.rejected, accepted.error_message).SerializeToString()


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The request's text metadata (keys are lower case in gRPC); the first value of a repeated key."""
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            metadata.setdefault(key, value)
    return metadata
