"""What the HTTP receiver does with a connection before aiohttp sees a request: time limits, a
connection cap, and the one wrong protocol it can recognise.

aiohttp has no header-read timeout and keeps idle connections for an hour, so a client that opens
connections and sends nothing (or drips a header a byte at a time) holds a file descriptor each
until the process runs out ("Too many open files": then /health and reloads fail too). Each
accepted connection is wrapped in a `_Guard` protocol that passes bytes through to aiohttp's
own handler and adds, as Go's `http.Server` and nginx do:

- `read_header_timeout`: a request's headers must be complete this long after its first byte
  (for a new connection: after it was accepted). Past it: `408` and close.
- `idle_timeout`: a keep-alive connection with no request for this long is closed.
- `max_connections`: past it a new connection gets `503` with `Retry-After` and is closed at
  once, so what is open keeps working.
- An HTTP/2 connection preface (a gRPC exporter pointed at the HTTP port) gets its first call
  answered with gRPC status FAILED_PRECONDITION and a message naming the fix, so the client fails
  at once with that message instead of hanging or retrying; one log line
  (rate-limited) and `otelgate_receiver_requests_total{outcome="wrong_protocol"}`.
"""

from __future__ import annotations

import asyncio
import resource
import struct
import time
from urllib.parse import quote
from collections.abc import Callable
from typing import Any

from gateway.logs import get_logger
from gateway.telemetry import Metrics

_log = get_logger("receiver.http")
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_MAX_SNIFF = 64 * 1024
_LOG_EVERY_S = 60.0
_FD_RESERVE = 128  # descriptors kept for the gRPC receiver, sinks' files and sockets, admin, config


def default_max_connections() -> int:
    """Half of what the open-files limit leaves after a reserve: the other half is the gRPC
    receiver's, and /health, sinks and reloads keep working when HTTP clients take all of theirs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - _FD_RESERVE) // 2)


def default_backlog() -> int:
    """The kernel's cap on a listen queue (`net.core.somaxconn`), as Go and nginx use, rather than
    aiohttp's 128, which overflows (connections reset) under a burst long before the gateway is slow."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return max(128, int(f.read().strip()))
    except (OSError, ValueError):
        return 4096


def _response(status: str, extra: str = "") -> bytes:
    body = f"{status}\n".encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n{extra}"
            "Connection: close\r\n\r\n").encode() + body


_TOO_MANY = _response("503 Service Unavailable", "Retry-After: 1\r\n")
_HEADER_TIMEOUT = _response("408 Request Timeout")


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int = 7) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def _hpack_literal(name: str, value: str) -> bytes:
    """A literal header field without indexing, new name, no Huffman coding (RFC 7541 6.2.2)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(n)) + n + _hpack_int(len(v)) + v


def _grpc_refusal(stream: int, message: str) -> bytes:
    """A trailers-only gRPC answer on `stream` with status FAILED_PRECONDITION and `message` (not
    retryable: a retry reaches the same wrong port), then GOAWAY."""
    block = (_hpack_literal(":status", "200") + _hpack_literal("content-type", "application/grpc")
             + _hpack_literal("grpc-status", "9") + _hpack_literal("grpc-message", quote(message, safe=" ()/:=,.'")))
    return _frame(0x1, 0x5, stream, block) + _frame(0x7, 0, 0, struct.pack(">II", stream, 0))


def _first_stream(data: bytes) -> int | None:
    """The stream id of the first HEADERS frame after the connection preface, once it has arrived."""
    pos = len(_H2_PREFACE)
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == 0x1:
            return int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        pos += 9 + length
    return None


class ConnectionGuard:
    """Wraps each connection's aiohttp protocol; one per HTTP listener."""

    def __init__(self, endpoint: Callable[[], str], metrics: Metrics, *, read_header_timeout: float,
                 idle_timeout: float, max_connections: int, protocol: str = "http") -> None:
        self._endpoint = endpoint
        self.read_header_timeout = read_header_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.open = 0
        self._by_transport: dict[Any, _Guard] = {}
        self._protocol = protocol
        self._closed = metrics.receiver_connections_closed
        self._requests = metrics.receiver_requests
        metrics.receiver_open_connections.labels(protocol).set_function(lambda: self.open)
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guard(self, factory)

    def request_started(self, transport: Any) -> None:
        guard = self._by_transport.get(transport)
        if guard is not None:
            guard.busy()

    def request_done(self, transport: Any) -> None:
        guard = self._by_transport.get(transport)
        if guard is not None:
            guard.idle()

    def closed(self, reason: str) -> None:
        self._closed.labels(self._protocol, reason).inc()

    def wrong_protocol(self) -> str:
        self._requests.labels(self._protocol, "wrong_protocol").inc()
        message = (f"this is otelgate's OTLP/HTTP port ({self._endpoint()}) and the client speaks HTTP/2 (gRPC): "
                   "point gRPC exporters at the OTLP/gRPC port (4317 by default), or set "
                   "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf to export over HTTP to this port")
        self.warn_once("wrong_protocol", "request refused: wrong protocol for this port", detail=message)
        return message

    def warn_once(self, key: str, event: str, **fields: str) -> None:
        """At most one log line per `_LOG_EVERY_S` per kind: a misconfigured client retries forever."""
        now = time.monotonic()
        if now - self._logged_at.get(key, float("-inf")) < _LOG_EVERY_S:
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
            return
        if self._unlogged.get(key):
            fields["not_logged_since"] = str(self._unlogged[key])
        _log.warning(event, endpoint=self._endpoint(), **fields)
        self._logged_at[key], self._unlogged[key] = now, 0


class _Guard(asyncio.Protocol):
    """Passes everything to aiohttp's protocol (`inner`) and enforces the guard's limits."""

    __slots__ = ("_owner", "_factory", "_inner", "_transport", "_timer", "_state", "_first", "_h2")

    def __init__(self, owner: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._owner = owner
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = "header"  # header (a request's headers are due), busy (a request runs), idle
        self._first = True
        self._h2: bytes | None = None  # what an HTTP/2 client sent so far

    def connection_made(self, transport: Any) -> None:
        owner = self._owner
        self._transport = transport
        if owner.open >= owner.max_connections:
            owner.closed("too_many_connections")
            owner.warn_once("too_many", "connection refused: receivers.http.max_connections reached",
                            max_connections=str(owner.max_connections))
            transport.write(_TOO_MANY)
            transport.close()
            return
        owner.open += 1
        owner._by_transport[transport] = self
        self._inner = self._factory()
        self._inner.connection_made(transport)
        self._arm(owner.read_header_timeout, "header_timeout")

    def _arm(self, delay: float, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire, reason) if delay > 0 else None

    def _expire(self, reason: str) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._owner.closed(reason)
        if reason == "header_timeout":
            transport.write(_HEADER_TIMEOUT)
        transport.close()

    def busy(self) -> None:
        self._state = "busy"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def idle(self) -> None:
        self._state = "idle"
        self._arm(self._owner.idle_timeout, "idle_timeout")

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._h2 is not None:
            self._h2_received(data)
            return
        if self._first:
            self._first = False
            if data[:3] == b"PRI" and _H2_PREFACE.startswith(data[:len(_H2_PREFACE)]):
                self._h2 = b""
                # Server SETTINGS and an ACK of the client's: a gRPC client sends its call only then.
                self._transport.write(_frame(0x4, 0, 0) + _frame(0x4, 0x1, 0))
                self._h2_received(data)
                return
        if self._state == "idle":  # the first byte of the next request on a kept-alive connection
            self._state = "header"
            self._arm(self._owner.read_header_timeout, "header_timeout")
        self._inner.data_received(data)

    def _h2_received(self, data: bytes) -> None:
        """An HTTP/2 client (gRPC) on the HTTP port: answer its first call with the fix, and close."""
        self._h2 = (self._h2 or b"") + data
        stream = _first_stream(self._h2)
        if stream is None and len(self._h2) < _H2_MAX_SNIFF:
            return
        message = self._owner.wrong_protocol()
        if stream is not None:
            self._transport.write(_grpc_refusal(stream, message))
        self._transport.close()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inner is not None:
            self._owner.open -= 1
            self._owner._by_transport.pop(self._transport, None)
            self._inner.connection_lost(exc)
            self._inner = None
        self._transport = None
