"""Trace affinity between workers: every span of a trace is processed by the worker that owns it.

Tail sampling and `by: trace` routes decide on whole traces; with `service.workers` > 1 the
kernel spreads connections, not traces, over the workers. So, when the config needs whole
traces, each worker stands this in front of its pipeline: the spans of a request are grouped by
owner (`trace id mod workers`, over the random low half of the id), the worker's own share goes
to its pipeline, and every other share is handed to its owner over a Unix socket, where it
enters that worker's pipeline as if received there. A request owned by one other worker whole is
handed on as the bytes it arrived as; a split one is encoded once per owner.

The client is answered only once every owner accepted its share (for a disk queue: once it is in
that worker's log), so an acknowledged span is as durable as without workers. If an owner
refuses (backpressure, or it is restarting), the request is refused (retryable); shares other
owners already accepted are then delivered again when the client retries (at-least-once, as any
retried export).

Frame, both directions over a connection that serves one request at a time:
request  = uint32 header length, JSON header {tenant, tenant_attribute, protocol}, uint32 body
length, body (a serialized ExportTraceServiceRequest); reply = one byte (0 accepted, 1 refused),
then for 1: uint32 length and a UTF-8 message.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from typing import Any

import orjson

from gateway.batch import Batch, RequestContext
from gateway.errors import Refused
from gateway.logs import get_logger
from gateway.otlp.signals import TRACES, Signal

_log = get_logger("affinity")
_LEN = struct.Struct(">I")
_RETRY_AFTER = 1.0


def owner_of(trace_id: bytes, workers: int) -> int:
    """The worker that owns a trace: the same in every worker, for every span of the trace."""
    return int.from_bytes(trace_id[8:16], "big") % workers


def socket_path(directory: str, worker: int) -> str:
    return os.path.join(directory, f"affinity-{worker}.sock")


class AffinityPipeline:
    """Stands where the pipeline stands for the receivers (`consume`) in a worker."""

    def __init__(self, pipeline: Any, worker: int, workers: int, directory: str) -> None:
        self._pipeline = pipeline
        self.worker = worker
        self.workers = workers
        self._directory = directory
        self._server: asyncio.AbstractServer | None = None
        self._idle: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        from prometheus_client import Counter

        self._forwarded = Counter("otelgate_affinity_forwarded_spans", "Spans handed to the worker owning their trace",
                                  registry=pipeline.metrics.registry)

    async def start(self) -> None:
        path = socket_path(self._directory, self.worker)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._server = await asyncio.start_unix_server(self._serve, path=path)
        _log.info("trace affinity on: spans go to the worker owning their trace", worker=self.worker,
                  workers=self.workers)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()
        for connections in self._idle.values():
            for _, writer in connections:
                writer.close()
        self._idle.clear()

    # -- receiving side ------------------------------------------------------------------------

    def refusal_before_decode(self, signal: Signal) -> Refused | None:
        """As `Pipeline.refusal_before_decode`, for what stays in this worker: spans may belong to
        another worker's traces, whose queues this one cannot see, so traces are never refused early."""
        return None if signal is TRACES else self._pipeline.refusal_before_decode(signal)

    async def consume(self, batch: Batch) -> None:
        if batch.signal is not TRACES:
            return await self._pipeline.consume(batch)
        parts = _split(batch, self.workers)
        if len(parts) == 1 and self.worker in parts:
            return await self._pipeline.consume(batch)
        results = await asyncio.gather(*(
            self._pipeline.consume(part) if owner == self.worker else self._forward(owner, part)
            for owner, part in parts.items()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _forward(self, owner: int, batch: Batch) -> None:
        header = orjson.dumps({"tenant": batch.context.tenant, "tenant_attribute": batch.context.tenant_attribute,
                               "protocol": batch.context.protocol})
        body = batch.serialized()
        try:
            reader, writer = await self._connection(owner)
            writer.write(b"".join((_LEN.pack(len(header)), header, _LEN.pack(len(body)))))
            writer.write(body)
            await writer.drain()
            status = await reader.readexactly(1)
            if status != b"\x00":
                (size,) = _LEN.unpack(await reader.readexactly(4))
                message = (await reader.readexactly(size)).decode()
                self._idle.setdefault(owner, []).append((reader, writer))
                raise Refused(message, retry_after=_RETRY_AFTER)
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise Refused(f"worker {owner} (owner of some of these traces) is not answering: {exc}; retry later",
                          retry_after=_RETRY_AFTER) from None
        self._idle.setdefault(owner, []).append((reader, writer))
        self._forwarded.inc(batch.items)

    async def _connection(self, owner: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        idle = self._idle.get(owner)
        while idle:
            reader, writer = idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
        return await asyncio.open_unix_connection(socket_path(self._directory, owner))

    # -- owning side -----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    (size,) = _LEN.unpack(await reader.readexactly(4))
                except asyncio.IncompleteReadError:
                    return
                header = orjson.loads(await reader.readexactly(size))
                (size,) = _LEN.unpack(await reader.readexactly(4))
                body = await reader.readexactly(size)
                request = TRACES.request.FromString(body)
                context = RequestContext(header.get("protocol") or "forwarded", tenant=header.get("tenant"),
                                         tenant_attribute=header.get("tenant_attribute"))
                try:
                    await self._pipeline.consume(Batch(request, TRACES.count(request), context, raw=body))
                except Refused as exc:
                    message = str(exc).encode()
                    writer.write(b"\x01" + _LEN.pack(len(message)) + message)
                else:
                    writer.write(b"\x00")
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            _log.warning("affinity connection closed", worker=self.worker, error=str(exc))
        finally:
            writer.close()


def _split(batch: Batch, workers: int) -> dict[int, Batch]:
    from gateway.sinks.loadbalancing import split_by_owner

    owner: Callable[[bytes], str | None] = lambda tid: str(owner_of(tid, workers))  # noqa: E731
    return {int(k): v for k, v in split_by_owner(batch, "traceID", owner).items()}


def needs_affinity(config: Any) -> bool:
    """Whether the config decides on whole traces (tail sampling, `by: trace` routes)."""
    return config.sampling.tail is not None or any(r.by == "trace" for r in config.routes or ())
