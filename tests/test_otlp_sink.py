"""The OTLP sink (`type: otlp` / `type: jaeger`) against real servers on 127.0.0.1.

- otelgate -> otelgate over gRPC and HTTP: B's file holds exactly the spans sent to A.
- `Receiver`: an OTLP trace service written here (the official gRPC servicer; aiohttp for
  HTTP) that records what it got and can be scripted to fail, driven through a real gateway
  subprocess whose sink points at it; the outcome is read from the gateway's /metrics and /health.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import requests
from aiohttp import web
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import Batch, RequestContext, count_spans
from gateway.config import ConfigError, parse
from gateway.errors import PermanentError, RetryableError
from gateway.otlp.json_codec import encode_traces
from gateway.sinks import otlp
from gateway.sinks.base import Rejected
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric

PROTO = {"Content-Type": "application/x-protobuf"}
FAST_RETRY = {"initial": "100ms", "max": "500ms", "max_elapsed": "10s"}
SHORT_RETRY = {"initial": "100ms", "max": "200ms", "max_elapsed": "1s"}
REQUESTS = [r for name in TRACE_FIXTURES for r in read_records(FIXTURES / f"{name}.otlp.bin")]
TOTAL_SPANS = sum(count_spans(ExportTraceServiceRequest.FromString(r)) for r in REQUESTS)


def span_ids(requests_: list[ExportTraceServiceRequest]) -> list[tuple[bytes, bytes]]:
    return sorted((s.trace_id, s.span_id) for r in requests_ for rs in r.resource_spans
                  for ss in rs.scope_spans for s in ss.spans)


def expected_ids() -> list[tuple[bytes, bytes]]:
    return span_ids([ExportTraceServiceRequest.FromString(r) for r in REQUESTS])


def post(gw: GatewayProcess, body: bytes) -> None:
    response = requests.post(f"{gw.http}/v1/traces", data=body, headers=PROTO, timeout=10)
    assert response.status_code == 200, response.text


def send_all(gw: GatewayProcess) -> None:
    for body in REQUESTS:
        post(gw, body)


def sink_health(gw: GatewayProcess, sink: str = "up") -> dict[str, Any]:
    return requests.get(f"{gw.admin}/health", timeout=5).json()["sinks"][sink]


def reserve_port() -> socket.socket:
    """A loopback port that refuses connections while the returned socket stays open (bound, never
    listening): no gateway started meanwhile can be given it. Close it just before serving on it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


# -- the scripted receiver ---------------------------------------------------------------------


@dataclass
class Answer:
    """How the receiver answers one export; the default is a plain success."""

    http: int = 200
    grpc_code: grpc.StatusCode = grpc.StatusCode.OK
    retry_after: float | None = None  # HTTP Retry-After (seconds) / gRPC RetryInfo
    rejected: int = 0  # partial_success.rejected_spans on success
    message: str = ""
    hang: float = 0.0  # wait this long before answering


@dataclass
class Received:
    at: float
    protocol: str
    headers: dict[str, str]
    size: int  # uncompressed protobuf bytes
    request: ExportTraceServiceRequest
    answered: str


@dataclass
class Receiver:
    """An OTLP trace receiver (gRPC + HTTP) on its own event loop thread."""

    tls: tuple[bytes, bytes] | None = None  # (cert PEM, key PEM)
    script: list[Answer] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    grpc_port: int = 0
    http_port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    # -- control, from the test thread

    def start(self, grpc_port: int = 0, http_port: int = 0) -> "Receiver":
        asyncio.run_coroutine_threadsafe(self._start(grpc_port, http_port), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def then(self, *answers: Answer) -> "Receiver":
        with self._lock:
            self.script.extend(answers)
        return self

    def ok(self) -> list[Received]:
        with self._lock:
            return [r for r in self.got if r.answered == "ok"]

    def delivered_ids(self) -> list[tuple[bytes, bytes]]:
        return span_ids([r.request for r in self.ok()])

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    # -- on the receiver's loop

    def _next(self) -> Answer:
        with self._lock:
            return self.script.pop(0) if self.script else Answer()

    def _record(self, protocol: str, headers: dict[str, str], body: bytes, answered: str) -> None:
        with self._lock:
            self.got.append(Received(time.monotonic(), protocol, headers, len(body),
                                     ExportTraceServiceRequest.FromString(body), answered))

    async def _start(self, grpc_port: int, http_port: int) -> None:
        self._grpc = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), self._grpc)
        if self.tls:
            creds = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
            self.grpc_port = self._grpc.add_secure_port(f"127.0.0.1:{grpc_port}", creds)
        else:
            self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{grpc_port}")
        await self._grpc.start()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._http)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        ssl_context = None
        if self.tls:
            import ssl
            import tempfile

            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            with tempfile.TemporaryDirectory() as d:
                Path(d, "c.pem").write_bytes(self.tls[0])
                Path(d, "k.pem").write_bytes(self.tls[1])
                ssl_context.load_cert_chain(Path(d, "c.pem"), Path(d, "k.pem"))
        site = web.TCPSite(self._runner, "127.0.0.1", http_port, ssl_context=ssl_context)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        await self._grpc.stop(0)
        await self._runner.cleanup()

    async def _http(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp undoes Content-Encoding itself
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert headers["content-type"] == "application/x-protobuf"
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        headers["wire-bytes"] = str(request.content_length)
        answer = self._next()
        if answer.hang:  # the client has given up by then (aiohttp does not cancel the handler)
            await asyncio.sleep(answer.hang)
            self._record("http", headers, body, "hung")
            return web.Response(status=504)
        if answer.http != 200:
            self._record("http", headers, body, str(answer.http))
            extra = {} if answer.retry_after is None else {"Retry-After": str(int(answer.retry_after))}
            status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=answer.message or "scripted failure")
            return web.Response(status=answer.http, body=status.SerializeToString(),
                                headers={**PROTO, **extra})
        self._record("http", headers, body, "ok")
        return web.Response(body=_response(answer).SerializeToString(), headers=PROTO)


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def Export(self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        headers = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        answer = self.receiver._next()
        body = request.SerializeToString()
        if answer.hang:  # grpc cancels this at the client's deadline
            self.receiver._record("grpc", headers, body, "hung")
            await asyncio.sleep(answer.hang)
        if answer.grpc_code != grpc.StatusCode.OK:
            self.receiver._record("grpc", headers, body, answer.grpc_code.name)
            trailing = ()
            if answer.retry_after is not None:
                status = status_pb2.Status(code=answer.grpc_code.value[0], message=answer.message)
                status.details.add().Pack(error_details_pb2.RetryInfo(
                    retry_delay=Duration(seconds=int(answer.retry_after), nanos=int(answer.retry_after % 1 * 1e9))))
                trailing = (("grpc-status-details-bin", status.SerializeToString()),)
            await context.abort(answer.grpc_code, answer.message or "scripted failure", trailing_metadata=trailing)
        self.receiver._record("grpc", headers, body, "ok")
        return _response(answer)


def _response(answer: Answer) -> trace_service_pb2.ExportTraceServiceResponse:
    response = trace_service_pb2.ExportTraceServiceResponse()
    if answer.rejected:
        response.partial_success.rejected_spans = answer.rejected
        response.partial_success.error_message = answer.message
    return response


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.close()


def _sink(receiver: Receiver, protocol: str, **extra: Any) -> dict[str, Any]:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    return {"type": "otlp", "endpoint": endpoint, "protocol": protocol, "retry": FAST_RETRY,
            "batch": {"max_delay": "20ms"}, **extra}


def _gateway(tmp_path: Path, sinks: dict[str, dict[str, Any]]) -> GatewayProcess:
    config = gateway_config(tmp_path)
    config["sinks"] = sinks
    return GatewayProcess(config, tmp_path).wait_ready()


@pytest.fixture
def run_gateway(tmp_path: Path) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def run(sinks: dict[str, dict[str, Any]], workdir: Path | None = None) -> GatewayProcess:
        wd = workdir or tmp_path / f"gw{len(started)}"
        wd.mkdir(exist_ok=True)
        gw = _gateway(wd, sinks)
        started.append(gw)
        return gw

    yield run
    for gw in started:
        gw.stop()


# -- otelgate -> otelgate ---------------------------------------------------------------------


def _canonical(lines: list[dict[str, Any]]) -> list[bytes]:
    """Every span with its resource and scope, as sortable canonical JSON."""
    out = []
    for line in lines:
        for rs in line.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    out.append(orjson.dumps({"resource": rs.get("resource"), "schema": rs.get("schemaUrl"),
                                             "scope": ss.get("scope"), "span": span}, option=orjson.OPT_SORT_KEYS))
    return sorted(out)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_otelgate_to_otelgate(tmp_path: Path, run_gateway: Any, protocol: str) -> None:
    b = run_gateway({"out": {"type": "file", "path": str(tmp_path / "b.jsonl"), "batch": {"max_delay": "20ms"}}})
    endpoint = b.grpc if protocol == "grpc" else b.http
    a = run_gateway({"up": {"type": "otlp", "endpoint": endpoint, "protocol": protocol, "compression": "gzip",
                            "retry": FAST_RETRY, "batch": {"max_delay": "20ms"}}})
    send_all(a)
    expected = _canonical([orjson.loads(encode_traces([ExportTraceServiceRequest.FromString(r)])) for r in REQUESTS])
    got = wait_for(lambda: (lines := read_json_lines(tmp_path / "b.jsonl"))
                   and len(spans_in(lines)) >= TOTAL_SPANS and lines)
    assert _canonical(got) == expected
    wait_for(lambda: metric(a.admin, "otelgate_sink_sent_spans_total", sink="up") == TOTAL_SPANS)
    assert metric(a.admin, "otelgate_sink_failed_spans_total", sink="up") == 0
    assert metric(b.admin, "otelgate_receiver_accepted_spans_total", protocol=protocol) == TOTAL_SPANS
    assert sink_health(a) == {"status": "ok", "queue_depth": 0, "queue_capacity": 100_000, "last_error": None}


# -- against the scripted receiver ------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_delivers_with_gzip_and_custom_headers(receiver: Receiver, run_gateway: Any, protocol: str) -> None:
    gw = run_gateway({"up": _sink(receiver, protocol, headers={"Authorization": "Bearer x", "x-tenant": "t1"})})
    send_all(gw)
    wait_for(lambda: len(receiver.delivered_ids()) >= TOTAL_SPANS)
    assert receiver.delivered_ids() == expected_ids()
    for got in receiver.got:
        assert got.headers["authorization"] == "Bearer x"
        assert got.headers["x-tenant"] == "t1"
        assert got.headers["user-agent"].startswith("otelgate/")
        assert len(got.headers["x-otelgate-via"]) == 16  # the loop guard's mark: this instance's id
        if protocol == "http":  # compressed on the wire
            assert got.headers["content-encoding"] == "gzip"
            assert int(got.headers["wire-bytes"]) < got.size / 2
    wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total", sink="up") == TOTAL_SPANS)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_compression_none(receiver: Receiver, run_gateway: Any, protocol: str) -> None:
    gw = run_gateway({"up": _sink(receiver, protocol, compression="none")})
    post(gw, REQUESTS[0])
    wait_for(lambda: receiver.ok())
    if protocol == "http":
        assert "content-encoding" not in receiver.got[0].headers
    assert receiver.got[0].size == len(REQUESTS[0])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_retryable_failures_honour_the_server_hint(receiver: Receiver, run_gateway: Any, protocol: str) -> None:
    if protocol == "http":
        receiver.then(Answer(http=503, retry_after=1), Answer(http=429, retry_after=1))
    else:  # UNAVAILABLE with RetryInfo, then RESOURCE_EXHAUSTED with RetryInfo (retryable because of it)
        receiver.then(Answer(grpc_code=grpc.StatusCode.UNAVAILABLE, retry_after=1.0),
                      Answer(grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=1.0))
    gw = run_gateway({"up": _sink(receiver, protocol)})
    post(gw, REQUESTS[0])
    wait_for(lambda: len(receiver.got) >= 1)
    health = wait_for(lambda: (h := sink_health(gw))["status"] == "retrying" and h)
    assert health["last_error"].startswith("HTTP 503" if protocol == "http" else "gRPC UNAVAILABLE")
    wait_for(lambda: receiver.ok(), timeout=10)
    attempts = [r.at for r in receiver.got]
    assert len(attempts) == 3
    # The hint is 1 s; the configured backoff is at most 500 ms, so only the hint explains the waits.
    assert attempts[1] - attempts[0] >= 0.95 and attempts[2] - attempts[1] >= 0.95
    assert receiver.delivered_ids() == span_ids([ExportTraceServiceRequest.FromString(REQUESTS[0])])
    spans = count_spans(receiver.got[0].request)
    wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total", sink="up") == spans)
    assert metric(gw.admin, "otelgate_sink_failed_spans_total", sink="up") == 2 * spans
    assert metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="up") == 0
    assert sink_health(gw)["status"] == "ok"


def test_grpc_unavailable_without_hint_is_retried(receiver: Receiver, run_gateway: Any) -> None:
    receiver.then(Answer(grpc_code=grpc.StatusCode.UNAVAILABLE), Answer(grpc_code=grpc.StatusCode.UNAVAILABLE))
    gw = run_gateway({"up": _sink(receiver, "grpc")})
    send_all(gw)
    wait_for(lambda: len(receiver.delivered_ids()) >= TOTAL_SPANS)
    assert receiver.delivered_ids() == expected_ids()
    wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total", sink="up") == TOTAL_SPANS)
    assert metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="up") == 0


@pytest.mark.parametrize(("protocol", "answer", "error"), [
    ("http", Answer(http=400, message="bad span: trace id is empty"), "HTTP 400: bad span: trace id is empty"),
    ("http", Answer(http=401, message="no token"), "HTTP 401: no token"),
    ("grpc", Answer(grpc_code=grpc.StatusCode.INVALID_ARGUMENT, message="bad span"), "gRPC INVALID_ARGUMENT: bad span"),
    ("grpc", Answer(grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, message="too big"), "gRPC RESOURCE_EXHAUSTED: too big"),
])
def test_permanent_failures_are_not_retried(receiver: Receiver, run_gateway: Any, protocol: str,
                                            answer: Answer, error: str) -> None:
    receiver.then(answer)
    gw = run_gateway({"up": _sink(receiver, protocol)})
    post(gw, REQUESTS[0])
    spans = count_spans(ExportTraceServiceRequest.FromString(REQUESTS[0]))
    wait_for(lambda: metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="up", reason="permanent") == spans)
    health = sink_health(gw)
    assert health["status"] == "failing" and health["last_error"] == error
    time.sleep(0.6)  # longer than the whole retry schedule's first steps: no second attempt
    assert len(receiver.got) == 1
    assert metric(gw.admin, "otelgate_sink_sent_spans_total", sink="up") == 0
    post(gw, REQUESTS[1])  # the next batch goes through and the sink is healthy again
    wait_for(lambda: receiver.ok())
    wait_for(lambda: sink_health(gw)["status"] == "ok")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_partial_success_counts_rejected_spans(receiver: Receiver, run_gateway: Any, protocol: str) -> None:
    receiver.then(Answer(rejected=2, message="2 spans had no name"))
    gw = run_gateway({"up": _sink(receiver, protocol)})
    post(gw, REQUESTS[0])
    spans = count_spans(ExportTraceServiceRequest.FromString(REQUESTS[0]))
    wait_for(lambda: metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="up", reason="rejected") == 2)
    wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total", sink="up") == spans - 2)
    assert sink_health(gw)["last_error"] == "2 spans had no name"
    assert len(receiver.got) == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_connection_refused_until_the_server_comes_up(tmp_path: Path, run_gateway: Any, protocol: str) -> None:
    reserved = reserve_port()
    port = reserved.getsockname()[1]
    endpoint = f"127.0.0.1:{port}" if protocol == "grpc" else f"http://127.0.0.1:{port}"
    gw = run_gateway({"up": {"type": "otlp", "endpoint": endpoint, "protocol": protocol, "retry": FAST_RETRY,
                             "batch": {"max_delay": "20ms"}}})
    send_all(gw)
    wait_for(lambda: sink_health(gw)["status"] == "failing")  # after 3 refused attempts
    assert sink_health(gw)["last_error"]
    reserved.close()
    receiver = Receiver().start(grpc_port=port if protocol == "grpc" else 0, http_port=port if protocol == "http" else 0)
    try:
        wait_for(lambda: len(receiver.delivered_ids()) >= TOTAL_SPANS, timeout=15)
        assert receiver.delivered_ids() == expected_ids()
        wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total", sink="up") == TOTAL_SPANS)
        assert metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="up") == 0
        assert sink_health(gw)["status"] == "ok"
    finally:
        receiver.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_max_batch_bytes_splits_exports(receiver: Receiver, run_gateway: Any, protocol: str) -> None:
    limit = 20_000
    gw = run_gateway({"up": _sink(receiver, protocol, max_batch_bytes=limit, batch={"max_delay": "500ms"})})
    send_all(gw)  # within one batch delay: one send of 7 requests, 63915 bytes the largest
    wait_for(lambda: len(receiver.delivered_ids()) >= TOTAL_SPANS)
    assert receiver.delivered_ids() == expected_ids()
    sizes = [r.size for r in receiver.got]
    assert len(sizes) >= 4
    for size in sizes:
        assert size <= limit or size in {len(r) for r in REQUESTS if len(r) > limit}  # alone when over the limit
    assert max(len(r) for r in REQUESTS) in sizes


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_hung_sink_does_not_delay_another_sink(tmp_path: Path, receiver: Receiver, run_gateway: Any, protocol: str) -> None:
    receiver.then(*[Answer(hang=2)] * 3)  # accepts, then answers only after the sink's timeout
    out = tmp_path / "iso.jsonl"
    gw = run_gateway({
        "up": _sink(receiver, protocol, timeout="500ms"),
        "out": {"type": "file", "path": str(out), "batch": {"max_delay": "20ms"}},
    })
    started = time.monotonic()
    for body in REQUESTS:
        post(gw, body)
        wait_for(lambda: len(spans_in(read_json_lines(out))) >= 1, timeout=2)
    wait_for(lambda: len(spans_in(read_json_lines(out))) >= TOTAL_SPANS, timeout=2)
    assert time.monotonic() - started < 2.0
    health = wait_for(lambda: (h := sink_health(gw))["last_error"] and h)
    assert health["status"] in ("retrying", "failing")
    assert ("DEADLINE_EXCEEDED" if protocol == "grpc" else "Timeout") in health["last_error"]
    assert sink_health(gw, "out")["status"] == "ok"
    # After the scripted hangs the receiver answers, and everything gets there.
    wait_for(lambda: len(receiver.delivered_ids()) >= TOTAL_SPANS, timeout=15)
    assert receiver.delivered_ids() == expected_ids()


# -- TLS ----------------------------------------------------------------------------------------


def _make_ca(tmp_path: Path) -> tuple[Path, tuple[bytes, bytes]]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otelgate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca_file, (cert.public_bytes(serialization.Encoding.PEM), key_pem)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_with_a_private_ca(tmp_path: Path, run_gateway: Any, protocol: str) -> None:
    ca_file, server_pair = _make_ca(tmp_path)
    receiver = Receiver(tls=server_pair).start()
    try:
        plain = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint.replace("https://", "http://")
        gw = run_gateway({
            "up": _sink(receiver, protocol, tls={"ca_file": str(ca_file)}),
            # Plain text to the TLS server, and TLS with the system's CAs only: neither gets through.
            "plain": {**_sink(receiver, protocol), "endpoint": plain, "retry": SHORT_RETRY},
            "untrusted": {**_sink(receiver, protocol), "endpoint": "https://" + plain.removeprefix("http://"),
                          "retry": SHORT_RETRY},
        })
        post(gw, REQUESTS[0])
        spans = count_spans(ExportTraceServiceRequest.FromString(REQUESTS[0]))
        wait_for(lambda: receiver.ok())
        wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total", sink="up") == spans)
        for sink in ("plain", "untrusted"):
            wait_for(lambda: metric(gw.admin, "otelgate_sink_dropped_spans_total", sink=sink, reason="retry_exhausted") == spans)
            assert metric(gw.admin, "otelgate_sink_sent_spans_total", sink=sink) == 0
        assert len(receiver.ok()) == 1
        assert "CERTIFICATE_VERIFY_FAILED" in sink_health(gw, "untrusted")["last_error"]
    finally:
        receiver.close()


# -- config and the pure parts ----------------------------------------------------------------


def test_config_defaults_and_jaeger() -> None:
    config = parse("""
receivers: {grpc: {endpoint: "127.0.0.1:14317"}, http: {endpoint: "127.0.0.1:14318"}}  # the defaults would loop
sinks:
  j: {type: jaeger}
  jh: {type: jaeger, protocol: http}
  o: {type: otlp, endpoint: "http://tempo:4318/v1/traces", protocol: http, timeout: 2s, max_batch_bytes: 1MiB}
  s: {type: otlp, endpoint: "https://collector:4317"}
""")
    j, jh, o, s = (config.sinks[k] for k in ("j", "jh", "o", "s"))
    assert (j.endpoint, j.protocol, j.compression, j.timeout) == ("localhost:4317", "grpc", "gzip", 10.0)
    assert j.max_batch_bytes < 4 * 1024 * 1024 and j.max_batch_spans == 0 and j.tls is None
    assert jh.url() == "http://localhost:4318/v1/traces"
    assert o.url() == "http://tempo:4318/v1/traces" and o.timeout == 2.0 and o.max_batch_bytes == 1024 * 1024
    assert s.uses_tls() and not j.uses_tls()
    assert otlp._grpc_target(s.endpoint) == "collector:4317"
    base = parse('sinks: {h: {type: otlp, endpoint: "http://h:4318/prefix/", protocol: http}}').sinks["h"]
    assert base.url() == "http://h:4318/prefix/v1/traces"


@pytest.mark.parametrize(("sink", "error"), [
    ("{type: otlp}", "endpoint is required"),
    ("{type: otlp, endpoint: 'h:4318', protocol: http}", "expected a URL"),
    ("{type: otlp, endpoint: 'http://h:4318/v1/traces'}", "expected host:port"),
    ("{type: otlp, endpoint: 'h:1', tls: {insecure_skip_verify: true}}", "not supported with protocol grpc"),
    ("{type: otlp, endpoint: 'h:1', tls: {cert_file: c.pem}}", "go together"),
    ("{type: otlp, endpoint: 'h:1', compression: zstd}", "compression"),
    ("{type: otlp, endpoint: 'h:1', headers: {'a b': x}}", "invalid header name"),
])
def test_config_errors(sink: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse(f"sinks: {{s: {sink}}}")


def _batch(size: int, spans: int) -> Batch:
    return Batch(ExportTraceServiceRequest(), spans, RequestContext("http"), raw=b"x" * size)


def test_split() -> None:
    batches = [_batch(10, 1), _batch(10, 1), _batch(30, 5), _batch(5, 1), _batch(5, 1)]
    assert otlp.split(batches, 0, 0) == [[0, 1, 2, 3, 4]]
    assert otlp.split(batches, 20, 0) == [[0, 1], [2], [3, 4]]
    assert otlp.split(batches, 0, 5) == [[0, 1], [2], [3, 4]]
    assert otlp.split(batches, 25, 2) == [[0, 1], [2], [3, 4]]


def test_retry_after_parsing() -> None:
    assert otlp.parse_retry_after("7") == 7.0
    assert otlp.parse_retry_after(None) is None and otlp.parse_retry_after("soon") is None
    now = time.time()
    date = datetime.datetime.fromtimestamp(now + 30, datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 28 <= otlp.parse_retry_after(date, now) <= 30  # type: ignore[operator]
    past = datetime.datetime.fromtimestamp(now - 30, datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert otlp.parse_retry_after(past, now) == 0.0


def test_classification() -> None:
    status = status_pb2.Status(code=8, message="slow down")
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=Duration(seconds=2, nanos=500_000_000)))
    with_info = (("grpc-status-details-bin", status.SerializeToString()),)
    err = otlp.classify_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", with_info)
    assert isinstance(err, RetryableError) and err.retry_after == 2.5
    assert isinstance(otlp.classify_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", ()), PermanentError)
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
        assert isinstance(otlp.classify_grpc(code, "x", None), RetryableError)
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED):
        assert isinstance(otlp.classify_grpc(code, "x", None), PermanentError)
    for code in (429, 502, 503, 504):
        err = otlp.classify_http(code, b"", "", "3")
        assert isinstance(err, RetryableError) and err.retry_after == 3.0
    body = status_pb2.Status(code=3, message="bad").SerializeToString()
    err = otlp.classify_http(400, body, "application/x-protobuf", None)
    assert isinstance(err, PermanentError) and str(err) == "HTTP 400: bad"
    assert str(otlp.classify_http(404, b"x" * 5000, "text/plain", None)).endswith("...")
    assert str(otlp.classify_http(500, b'{"code":13,"message":"boom"}', "application/json", None)) == "HTTP 500: boom"


class _FakeSink(otlp.OtlpSink):
    """The sink's splitting and progress logic with a scripted transport."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__("t", parse("sinks: {t: {type: otlp, endpoint: 'h:1', max_batch_bytes: 20}}").sinks["t"])
        self.answers = answers
        self.bodies: list[bytes] = []
        self._session = None

    async def _send_grpc(self, body: bytes, via: str) -> tuple[int, str]:
        self.bodies.append(body)
        answer = self.answers.pop(0) if self.answers else (0, "")
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_retry_after_partial_progress_does_not_resend() -> None:
    batches = [Batch(ExportTraceServiceRequest(), 1, RequestContext("http"), raw=bytes([65 + i]) * 10) for i in range(4)]
    sink = _FakeSink([(0, ""), RetryableError("down")])
    with pytest.raises(RetryableError):
        await sink.send(batches)
    assert sink.bodies == [b"A" * 10 + b"B" * 10, b"C" * 10 + b"D" * 10]
    assert await sink.send(batches) is None  # the driver's retry: only the missing export
    assert sink.bodies[2:] == [b"C" * 10 + b"D" * 10]
    sink.answers = [PermanentError("HTTP 400: bad"), (1, "one bad")]
    result = await sink.send(batches)  # a new send: from the start
    assert result == Rejected(3, "HTTP 400: bad; one bad")
    sink.answers = [PermanentError("HTTP 400: a"), PermanentError("HTTP 400: b")]
    with pytest.raises(PermanentError, match="a; HTTP 400: b"):
        await sink.send(batches)


def test_http_insecure_skip_verify(tmp_path: Path, run_gateway: Any) -> None:
    _, server_pair = _make_ca(tmp_path)
    receiver = Receiver(tls=server_pair).start()
    try:
        gw = run_gateway({"up": _sink(receiver, "http", tls={"insecure_skip_verify": True})})
        post(gw, REQUESTS[0])
        wait_for(lambda: receiver.ok())
    finally:
        receiver.close()
