"""`type: otlp` (and `type: jaeger`): export to another OTLP receiver over gRPC or HTTP/protobuf.

For Jaeger, Tempo, Phoenix, an OpenTelemetry Collector or another otelgate. Requests are sent as
they were received: the serialized requests of a batch are concatenated (the serialization of
their merge), never decoded and encoded again.

- gRPC: a `grpc.aio` channel, unary `opentelemetry.proto.collector.trace.v1.TraceService/Export`
  with raw bytes, gzip by grpc, headers as (lower-case) metadata.
- HTTP: an aiohttp session, `POST <endpoint>/v1/traces` with `application/x-protobuf`, gzip
  done here (on a thread above `_GZIP_INLINE_MAX`, ~8 ms per MiB at level 6).

A send is split into several exports so that none exceeds `max_batch_bytes` / `max_batch_spans`
(only between received requests: one request larger than the limit is sent alone). If an export
fails with a retryable error after others went through, the driver's retry of the same batches
sends only the exports still missing, so nothing is delivered twice.

Failures are classified with the Collector's rules (the driver does the retrying):
- HTTP 429, 502, 503, 504, connection errors and timeouts are retryable, honouring `Retry-After`
  (seconds or an HTTP date); anything else is permanent, with the server's message (a
  `google.rpc.Status` body, or text).
- gRPC CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are
  retryable, RESOURCE_EXHAUSTED only with a `RetryInfo` detail (its delay is the retry hint);
  anything else is permanent.
- A success with `partial_success.rejected_spans > 0` returns `Rejected` (counted, never retried).

Logs and metrics go the same way (`LogsService/Export`, `/v1/logs`; `MetricsService/Export`,
`/v1/metrics`), one sink instance per signal. Jaeger takes traces only.

`type: jaeger` is the same sink with Jaeger's defaults: gRPC to `localhost:4317` (or HTTP to
`http://localhost:4318`), exports kept under Jaeger's 4 MiB gRPC message limit.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import ssl
import time
from collections.abc import Sequence
from datetime import timezone
from types import ModuleType
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import grpc
import orjson
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from pydantic import Field, model_validator

from gateway import __version__
from gateway.batch import INSTANCE_ID, VIA_HEADER, Batch
from gateway.configtypes import ByteSize, Duration, StrictModel
from gateway.errors import PermanentError, RetryableError
from gateway.logs import get_logger
from gateway.otlp.signals import SIGNALS as ALL_SIGNALS
from gateway.otlp.signals import TRACES, Signal
from gateway.sinks.base import Rejected, SinkConfig, is_retry_of

_log = get_logger("sink.otlp")

SIGNALS = ("traces", "logs", "metrics")
_SIGNAL_PATHS = tuple(s.http_path for s in ALL_SIGNALS.values())
USER_AGENT = f"otelgate/{__version__}"
DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024 - 64 * 1024  # under the 4 MiB gRPC default (Jaeger, otelgate, Collector)
_GZIP_INLINE_MAX = 64 * 1024  # ~0.5 ms at level 6; larger bodies are compressed on a thread
_MESSAGE_MAX = 512  # characters of a server's error message kept in errors and /health

_HTTP_RETRYABLE = frozenset({429, 502, 503, 504})
_GRPC_RETRYABLE = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})


class TlsConfig(StrictModel):
    ca_file: str | None = Field(None, description="PEM CA bundle to verify the server with (default: the system's).")
    cert_file: str | None = Field(None, description="PEM client certificate, for mutual TLS (with key_file).")
    key_file: str | None = None
    insecure_skip_verify: bool = Field(False, description="Do not verify the server's certificate (HTTP only).")

    @model_validator(mode="after")
    def _pair(self) -> "TlsConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together")
        return self


class _BaseConfig(SinkConfig):
    endpoint: str = Field(
        "", description="gRPC: host:port (an http:// or https:// prefix is accepted). "
        "HTTP: a base URL such as http://host:4318, to which /v1/traces is appended unless the path already ends with it.")
    protocol: Literal["grpc", "http"] = "grpc"
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every export (gRPC metadata keys lower-cased).")
    compression: Literal["gzip", "none"] = "gzip"
    timeout: Duration = Field(10.0, gt=0, description="Per export attempt.")
    tls: TlsConfig | None = Field(
        None, description="Omitted: plain text, except for an https:// endpoint (verified with the system's CAs).")
    max_batch_spans: int = Field(0, ge=0, description="Split a send into exports of at most this many spans; 0: no limit.")
    max_batch_bytes: ByteSize = Field(
        DEFAULT_MAX_BATCH_BYTES, ge=0,
        description="Split a send into exports of at most this many (uncompressed) bytes; 0: no limit. "
        "A single received request larger than this is sent alone.")

    @model_validator(mode="after")
    def _check(self) -> "_BaseConfig":
        if not self.endpoint:
            raise ValueError("endpoint is required")
        if self.protocol == "http":
            url = urlsplit(self.endpoint)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(f"endpoint: expected a URL such as http://host:4318 for protocol http, got {self.endpoint!r}")
        else:
            _grpc_target(self.endpoint)  # raises ValueError
            if self.tls is not None and self.tls.insecure_skip_verify:
                raise ValueError("tls.insecure_skip_verify is not supported with protocol grpc; give tls.ca_file instead")
        for key in self.headers:
            if not key or key != key.strip() or any(c in key for c in ":\r\n "):
                raise ValueError(f"headers: invalid header name {key!r}")
        return self

    def url(self, signal: Signal = TRACES) -> str:
        """The full HTTP URL: the signal's path (`/v1/traces`...) appended to the base URL; an
        endpoint that already ends with a signal's path has it replaced."""
        base = self.endpoint.rstrip("/")
        for path in _SIGNAL_PATHS:
            if urlsplit(base).path.endswith(path):
                base = base[: -len(path)]
                break
        return base + signal.http_path

    def uses_tls(self) -> bool:
        return self.tls is not None or self.endpoint.lower().startswith("https://")


class Config(_BaseConfig):
    type: Literal["otlp"]


class JaegerConfig(_BaseConfig):
    """`type: jaeger`: `otlp` with Jaeger's defaults (its OTLP receiver on 4317/4318)."""

    type: Literal["jaeger"]

    @model_validator(mode="before")
    @classmethod
    def _default_endpoint(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("endpoint"):
            http = data.get("protocol") == "http"
            data = {**data, "endpoint": "http://localhost:4318" if http else "localhost:4317"}
        return data


def _grpc_target(endpoint: str) -> str:
    """`host:port` from `host:port`, `http://host:port` or `https://host:port`."""
    target = endpoint
    for scheme in ("http://", "https://"):
        if target.lower().startswith(scheme):
            target = target[len(scheme):]
    target = target.rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in target:
        raise ValueError(f"endpoint: expected host:port for protocol grpc, got {endpoint!r}")
    return target


# -- splitting and failure classification (pure, unit-tested) ---------------------------------


def split(batches: Sequence[Batch], max_bytes: int, max_spans: int) -> list[list[int]]:
    """Indices of `batches` grouped into exports, in order, each within both limits (0: none);
    a batch over a limit on its own makes an export of one. Batches that passed through different
    otelgate instances (`context.via`) go in different exports: each export's `x-otelgate-via`
    header is true of all it carries, so a loop guard downstream drops only what looped."""
    groups: list[list[int]] = []
    size = spans = 0
    for i, batch in enumerate(batches):
        n = len(batch.serialized())
        if (groups and (not max_bytes or size + n <= max_bytes) and (not max_spans or spans + batch.items <= max_spans)
                and batch.context.via == batches[groups[-1][0]].context.via):  # one loop-guard header per export
            groups[-1].append(i)
            size += n
            spans += batch.items
        else:
            groups.append([i])
            size, spans = n, batch.items
    return groups


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delay-seconds or an HTTP date; None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _truncate(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_MAX else text[:_MESSAGE_MAX] + "..."


def http_error_message(body: bytes, content_type: str) -> str:
    """The server's message: a `google.rpc.Status` (protobuf or JSON) when it sent one, else text."""
    content_type = content_type.split(";")[0].strip().lower()
    if content_type == "application/x-protobuf" and body:
        try:
            status = status_pb2.Status.FromString(body)
            if status.message:
                return _truncate(status.message)
        except DecodeError:
            pass
    if content_type == "application/json" and body:
        try:
            parsed = orjson.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
                return _truncate(parsed["message"])
        except orjson.JSONDecodeError:
            pass
    return _truncate(body.decode("utf-8", errors="replace")) if body else ""


def grpc_retry_info(trailing_metadata: Any) -> float | None:
    """The delay of a `RetryInfo` in `grpc-status-details-bin`, or None if there is none."""
    for key, value in trailing_metadata or ():
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except (DecodeError, TypeError):
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def classify_grpc(code: grpc.StatusCode, details: str | None, trailing_metadata: Any) -> Exception:
    message = f"gRPC {code.name}: {_truncate(details or '')}".rstrip(": ")
    retry_after = grpc_retry_info(trailing_metadata)
    if code in _GRPC_RETRYABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None):
        return RetryableError(message, retry_after)
    return PermanentError(message)


def classify_http(status: int, body: bytes, content_type: str, retry_after: str | None) -> Exception:
    detail = http_error_message(body, content_type)
    message = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status in _HTTP_RETRYABLE:
        return RetryableError(message, parse_retry_after(retry_after))
    return PermanentError(message)


def _rejected(body: bytes, signal: Signal = TRACES) -> tuple[int, str]:
    """`partial_success` of an export response (an unreadable body counts as full success)."""
    if not body:
        return 0, ""
    try:
        response: Any = signal.response.FromString(body)
    except DecodeError:
        return 0, ""
    return getattr(response.partial_success, signal.rejected_field), response.partial_success.error_message


def _ssl_context(tls: TlsConfig | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
    if tls is not None:
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return context


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


# -- the sink -----------------------------------------------------------------------------------


class OtlpSink:
    def __init__(self, name: str, config: _BaseConfig, signal: Signal = TRACES) -> None:
        self.name = name
        self.config = config
        self.signal = signal
        self._session: aiohttp.ClientSession | None = None
        self._channel: grpc.aio.Channel | None = None
        self._export: Any = None
        # Progress of a send that failed part-way, so the driver's retry skips what was delivered.
        self._pending: list[Batch] | None = None
        self._done: set[int] = set()  # exports (indices into `split`) already answered
        self._refused: list[tuple[int, str]] = []  # spans rejected or refused so far, with the reason
        self._delivered = False

    async def start(self) -> None:
        try:
            self._open()
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"sink {self.name}: cannot load its TLS files: {exc}") from exc
        config = self.config
        _log.info("otlp sink configured", sink=self.name, signal=self.signal.name, protocol=config.protocol,
                  endpoint=config.url(self.signal) if config.protocol == "http" else config.endpoint)

    def _open(self) -> None:
        config = self.config
        if config.protocol == "http":
            connector = aiohttp.TCPConnector(ssl=_ssl_context(config.tls) if config.uses_tls() else False)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=config.timeout),
                auto_decompress=True, skip_auto_headers=("Content-Type",))
        else:
            target = _grpc_target(config.endpoint)
            # grpc reconnects on its own schedule (up to 120 s apart by default): keep it within the
            # sink's retry pace, or a receiver that came back would wait for the channel, not the driver.
            reconnect_max_ms = int(max(1.0, min(config.retry.max, 5.0)) * 1000)
            options = [("grpc.primary_user_agent", USER_AGENT), ("grpc.max_send_message_length", -1),
                       ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                       ("grpc.initial_reconnect_backoff_ms", min(1000, reconnect_max_ms)),
                       ("grpc.min_reconnect_backoff_ms", min(1000, reconnect_max_ms)),
                       ("grpc.max_reconnect_backoff_ms", reconnect_max_ms)]
            compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression
            if config.uses_tls():
                tls = config.tls
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=_read(tls.ca_file) if tls else None,
                    private_key=_read(tls.key_file) if tls else None,
                    certificate_chain=_read(tls.cert_file) if tls else None)
                self._channel = grpc.aio.secure_channel(target, credentials, options=options, compression=compression)
            else:
                self._channel = grpc.aio.insecure_channel(target, options=options, compression=compression)
            # No serializers: the request is the concatenated received bytes, the response raw bytes.
            self._export = self._channel.unary_unary(self.signal.grpc_method)

    async def _reconnect_if_failed(self) -> None:
        """A retry is the driver's decision (its backoff, the server's RetryInfo): a channel still in
        gRPC's own reconnect backoff would fail it at once, so a failed channel is replaced by a
        fresh one, which connects now."""
        assert self._channel is not None
        if self._channel.get_state(try_to_connect=False) is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            old = self._channel
            self._open()
            await old.close()

    async def shutdown(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def send(self, batches: Sequence[Batch]) -> Rejected | None:
        if not is_retry_of(self._pending, batches):
            self._pending, self._done, self._refused, self._delivered = list(batches), set(), [], False
        elif self._channel is not None:
            await self._reconnect_if_failed()
        groups = split(batches, self.config.max_batch_bytes, self.config.max_batch_spans)
        permanent: PermanentError | None = None
        for g, group in enumerate(groups):
            if g in self._done:
                continue
            spans = sum(batches[i].items for i in group)
            body = b"".join(batches[i].serialized() for i in group)
            via = ",".join((*batches[group[0]].context.via, INSTANCE_ID))
            try:
                rejected = await (self._send_http(body, via) if self._session is not None else self._send_grpc(body, via))
            except PermanentError as exc:
                # The other exports of this send may be fine: send them, and count this one's spans refused.
                permanent = permanent or exc
                self._refused.append((spans, str(exc)))
            else:
                self._delivered = True
                if rejected[0] > 0:
                    self._refused.append((min(spans, rejected[0]), rejected[1] or "spans rejected by the server"))
            # A RetryableError propagates instead: the driver retries, and only missing exports go again.
            self._done.add(g)
        refused, delivered = self._refused, self._delivered
        self._pending, self._done, self._refused, self._delivered = None, set(), [], False
        if refused and not delivered:  # every export failed permanently
            raise permanent if permanent is not None and len(groups) == 1 else PermanentError(
                "; ".join(dict.fromkeys(m for _, m in refused)))
        if refused:
            return Rejected(sum(n for n, _ in refused), "; ".join(dict.fromkeys(m for _, m in refused)))
        return None

    async def _send_http(self, body: bytes, via: str) -> tuple[int, str]:
        assert self._session is not None
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT, **self.config.headers,
                   VIA_HEADER: via}
        if self.config.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
            if len(body) > _GZIP_INLINE_MAX:
                body = await asyncio.to_thread(gzip.compress, body, 6)
            else:
                body = gzip.compress(body, 6)
        try:
            async with self._session.post(self.config.url(self.signal), data=body, headers=headers, allow_redirects=False) as response:
                payload = await response.read()
                if 200 <= response.status < 300:
                    protobuf = response.headers.get("Content-Type", "application/x-protobuf").startswith("application/x-protobuf")
                    return _rejected(payload, self.signal) if protobuf else (0, "")
                raise classify_http(response.status, payload, response.headers.get("Content-Type", ""),
                                    response.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise RetryableError(f"HTTP export to {self.config.url(self.signal)} failed: {type(exc).__name__}: {exc}".rstrip(": ")) from exc

    async def _send_grpc(self, body: bytes, via: str) -> tuple[int, str]:
        metadata = (*((k.lower(), v) for k, v in self.config.headers.items()), (VIA_HEADER, via))
        try:
            response = await self._export(body, timeout=self.config.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise classify_grpc(exc.code(), exc.details(), exc.trailing_metadata()) from exc
        return _rejected(response, self.signal)


def create(name: str, config: _BaseConfig, signal: Signal = TRACES) -> OtlpSink:
    return OtlpSink(name, config, signal)


jaeger = ModuleType(f"{__name__}.jaeger", "`type: jaeger`: the OTLP sink with Jaeger's defaults.")
jaeger.Config = JaegerConfig  # type: ignore[attr-defined]
jaeger.create = create  # type: ignore[attr-defined]
jaeger.SIGNALS = ("traces",)  # type: ignore[attr-defined]  # Jaeger ingests traces only
