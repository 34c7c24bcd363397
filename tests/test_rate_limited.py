"""A rate-limit refusal from inside the pipeline reaches clients as the OTLP spec's 429 / RESOURCE_EXHAUSTED.

The gateway runs in process here so that a processor can refuse on command; the receivers,
sockets and clients are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from gateway.app import Gateway
from gateway.batch import Batch
from gateway.config import parse
from gateway.errors import RateLimited


def _refuse(batch: Batch) -> Batch:
    raise RateLimited("tenant over 1000 spans/s", retry_after=2.5)


def _body() -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="s")
    return req.SerializeToString()


@pytest.fixture
async def refusing_gateway(tmp_path: Path):
    config = parse(f"""
receivers: {{grpc: {{endpoint: 127.0.0.1:0}}, http: {{endpoint: 127.0.0.1:0}}}}
admin: {{endpoint: 127.0.0.1:0}}
sinks: {{out: {{type: file, path: {tmp_path / 'out.jsonl'}}}}}
""", environ={})
    gw = Gateway(config, processors=[_refuse])
    await gw.start()
    yield gw
    await gw.stop()


async def test_http_rate_limit_is_429_with_retry_after(refusing_gateway: Gateway) -> None:
    url = f"http://{refusing_gateway.receivers['OTLP/HTTP'].endpoint}/v1/traces"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=_body(), headers={"Content-Type": "application/x-protobuf"}) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "3"
            status = status_pb2.Status.FromString(await r.read())
    assert status.code == code_pb2.RESOURCE_EXHAUSTED and "1000 spans/s" in status.message
    assert refusing_gateway.metrics.registry.get_sample_value(
        "otelgate_receiver_refused_spans_total", {"protocol": "http", "reason": "rate_limited"}) == 1


async def test_grpc_rate_limit_is_resource_exhausted_with_retry_info(refusing_gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(refusing_gateway.receivers["OTLP/gRPC"].endpoint) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(_body(), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = dict(err.value.trailing_metadata())["grpc-status-details-bin"]
    info = error_details_pb2.RetryInfo()
    assert status_pb2.Status.FromString(details).details[0].Unpack(info)
    assert (info.retry_delay.seconds, info.retry_delay.nanos) == (2, 500_000_000)
