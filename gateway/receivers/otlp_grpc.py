"""OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on grpc.aio.

The handler takes raw bytes and parses them itself, so a malformed message gets
INVALID_ARGUMENT with a message (grpc's own deserializer would answer a bare INTERNAL). Messages
over `max_message_bytes` get RESOURCE_EXHAUSTED from grpc itself; gzip is handled by grpc.
Backpressure answers UNAVAILABLE (rate limits RESOURCE_EXHAUSTED) with a `RetryInfo` detail,
which the OTLP spec and the SDK exporters read as "retry after this delay".
"""

from __future__ import annotations

import time

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from gateway.batch import RequestContext
from gateway.config import GrpcReceiverConfig
from gateway.configtypes import split_endpoint
from gateway.errors import RateLimited, Refused
from gateway.receivers.intake import TENANT_HEADER, Intake

PROTOCOL = "grpc"
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


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

    async def start(self) -> None:
        limit = self.config.max_message_bytes
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0),
        ])
        handler = grpc.unary_unary_rpc_method_handler(self._export_traces)  # bytes in, bytes out
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": handler}),))
        host, port = split_endpoint(self.config.endpoint)
        try:
            bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
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

    async def _export_traces(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        try:
            try:
                export = ExportTraceServiceRequest.FromString(body)
            except DecodeError:
                self._intake.malformed(PROTOCOL, "malformed")
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "invalid protobuf: the message is not an ExportTraceServiceRequest")
            try:
                accepted = await self._intake.accept(export, RequestContext(PROTOCOL, tenant=_tenant(context)), body)
            except Refused as exc:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(exc, RateLimited) else grpc.StatusCode.UNAVAILABLE
                await context.abort(code, str(exc), trailing_metadata=(
                    ("grpc-status-details-bin", _status_details(code, str(exc), exc.retry_after)),))
            response = ExportTraceServiceResponse()
            if accepted.rejected:
                response.partial_success.rejected_spans = accepted.rejected
                response.partial_success.error_message = accepted.error_message
            return response.SerializeToString()
        finally:
            self._intake.observe_latency(PROTOCOL, time.perf_counter() - started)


def _tenant(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_HEADER:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None
