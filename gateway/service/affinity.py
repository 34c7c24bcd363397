"""Trace affinity between workers: every span of a trace is processed by the worker that owns it.

Tail sampling and `by: trace` routes decide on whole traces; with `service.workers` > 1 the
kernel spreads connections, not traces, over the workers. So, when the config needs whole
traces, each worker stands this in front of its pipeline: the spans of a request are grouped by
owner (`trace id mod workers`, over the random low half of the id), the worker's own share goes
to its pipeline, and every other share is handed to its owner over a Unix socket, where it
enters that worker's pipeline as if received there.

The split works on the received bytes (`split_traces`): only the framing and each span's trace
id are read, every share is cut from slices of them (each span's encoding as it arrived, each
resource's and scope's other fields copied into every share that has spans under them), and the
worker's own share is the parsed request less the others' spans, with its bytes kept for the
sinks. A request owned whole by another worker is handed on as it arrived. The owner parses
what it is handed and nothing more: the receiving worker already validated it, applied the
limits and stamped the tenant, and a Unix socket between the workers is trusted. (Grouping the
parsed spans and encoding each share, as before, cost 8.7 us per span; the byte split 1.26 us
with the Python walker and 0.35 us compiled, the owner's parse included:
tests/bench/bench_affinity.py.)

The client is answered only once every owner accepted its share (for a disk queue: once it is in
that worker's log), so an acknowledged span is as durable as without workers. If an owner
refuses (backpressure, or it is restarting), the request is refused (retryable); shares other
owners already accepted are then delivered again when the client retries (at-least-once, as any
retried export).

Frame, both directions over a connection that serves one request at a time:
request  = uint32 header length, JSON header {tenant, tenant_attribute, protocol, items}, uint32 body
length, body (a serialized ExportTraceServiceRequest); reply = one byte (0 accepted, 1 refused),
then for 1: uint32 length and a UTF-8 message.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from gateway.batch import Batch, RequestContext
from gateway.errors import Refused
from gateway.logs import get_logger
from gateway.native import compiled
from gateway.otlp.signals import TRACES, Signal
from gateway.otlp.wire import encode_varint, read_varint

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
                  workers=self.workers, split="compiled" if _COMPILED_SPLIT is not None else "python")

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
        raw = batch.serialized()  # the received bytes; encoded once if the receiver changed the request
        split = split_traces(raw, self.worker, self.workers)
        if split is None:  # framing this walker does not read (never from an OTLP SDK): parse per owner
            return await self._consume_parsed(batch)
        shares, foreign = split
        if not foreign:
            return await self._pipeline.consume(batch)
        own = shares.pop(self.worker, None)
        if own is not None and not own[1]:  # only resources or scopes without spans stayed here: nothing to do
            own = None
        if own is None and len(shares) == 1:  # one other owner for all of it: the bytes as they are
            shares = {owner: (raw, count) for owner, (_, count) in shares.items()}
        jobs = [self._forward(owner, body, count, batch.context) for owner, (body, count) in shares.items()]
        if own is not None:
            _keep_only(batch.request, foreign)
            batch.raw, batch.items = own[0], own[1]
            jobs.append(self._pipeline.consume(batch))
        await _all(jobs)

    async def _consume_parsed(self, batch: Batch) -> None:
        """The slow path: group the parsed spans by owner, encoding every share."""
        parts = _split(batch, self.workers)
        if len(parts) == 1 and self.worker in parts:
            return await self._pipeline.consume(batch)
        await _all([self._pipeline.consume(part) if owner == self.worker
                    else self._forward(owner, part.serialized(), part.items, part.context)
                    for owner, part in parts.items()])

    async def _forward(self, owner: int, body: bytes, items: int, context: RequestContext) -> None:
        header = orjson.dumps({"tenant": context.tenant, "tenant_attribute": context.tenant_attribute,
                               "protocol": context.protocol, "items": items})
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
        self._forwarded.inc(items)

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
                # Validated, limited and tenant-stamped by the worker that received it: only parsed here.
                request = TRACES.request.FromString(body)
                items = header.get("items")
                context = RequestContext(header.get("protocol") or "forwarded", tenant=header.get("tenant"),
                                         tenant_attribute=header.get("tenant_attribute"))
                try:
                    await self._pipeline.consume(Batch(request, items if items is not None else TRACES.count(request),
                                                       context, raw=body))
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


async def _all(jobs: list[Any]) -> None:
    """Run every share's hand-over at once; the first failure is the request's (after all finished)."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


# -- splitting the received bytes by owner --------------------------------------------------------
#
# ExportTraceServiceRequest: 1 resource_spans; ResourceSpans: 2 scope_spans (1 resource, 3 schema_url);
# ScopeSpans: 2 spans (1 scope, 3 schema_url); Span: 1 trace_id (upb and every SDK write it first).
# A share is assembled from slices of the received bytes: each resource's and scope's other fields
# copied once into every share that has spans under them, each span's encoding as it arrived.

_RESOURCE_SPANS_TAG = 0x0A  # field 1, length-delimited
_CHILD_TAG = 0x12  # field 2, length-delimited: ResourceSpans.scope_spans and ScopeSpans.spans
_TRACE_ID_PREFIX = b"\x0a\x10"  # Span.trace_id, 16 bytes


_native = compiled("gateway.service._affinity_split")  # gateway/service/_affinity_split.c, if built
_COMPILED_SPLIT: Callable[[bytes, int, int], Any] | None = _native.split if _native is not None else None


class _Unreadable(Exception):
    """Framing the splitter does not read (a group, a truncated field): the caller parses instead."""


def split_traces(raw: bytes, me: int, workers: int) -> tuple[dict[int, tuple[bytes, int]], dict[tuple[int, int], list[int]]] | None:
    """`raw` (an ExportTraceServiceRequest) in one encoded request per owning worker, with its span count,
    and, for the parsed request, where the spans owned by others sit: {(resource, scope): [span indexes]}.

    Nothing is decoded but the framing and each span's trace id. The share of `me` keeps the
    resources and scopes that have no spans at all (there is no trace to own them), and the parsed
    request, with `_keep_only(request, foreign)`, becomes exactly what `me`'s share encodes.
    None: something unusual in the framing; the caller groups the parsed spans instead.

    The compiled split (`_affinity_split.c`) gives exactly what `_split_bytes` gives; with it,
    trace affinity costs 0.35 instead of 1.26 us per span (tests/bench/bench_affinity.py, the
    owner's parse included). The Python one runs where it was not built."""
    if _COMPILED_SPLIT is not None:
        return _COMPILED_SPLIT(raw, me, workers)
    try:
        return _split_bytes(raw, me, workers)
    except (_Unreadable, IndexError):
        return None


def _split_bytes(raw: bytes, me: int, workers: int) -> tuple[dict[int, tuple[bytes, int]], dict[tuple[int, int], list[int]]]:
    parts: dict[int, list[bytes]] = {}
    counts: dict[int, int] = {}
    foreign: dict[tuple[int, int], list[int]] = {}
    from_bytes = int.from_bytes
    r = 0
    for field, tag_start, start, end in _walk(raw, 0, len(raw)):
        if field != _RESOURCE_SPANS_TAG:
            raise _Unreadable()
        header: list[bytes] = []
        scopes: dict[int, list[bytes]] = {}
        s = 0
        for field2, tag_start2, start2, end2 in _walk(raw, start, end):
            if field2 != _CHILD_TAG:
                header.append(raw[tag_start2:end2])
                continue
            scope_header: list[bytes] = []
            spans: dict[int, list[bytes]] = {}
            k = 0
            for field3, tag_start3, start3, end3 in _walk(raw, start2, end2):
                if field3 != _CHILD_TAG:
                    scope_header.append(raw[tag_start3:end3])
                    continue
                if end3 - start3 >= 18 and raw[start3:start3 + 2] == _TRACE_ID_PREFIX:  # not past a short span's end
                    owner = from_bytes(raw[start3 + 10:start3 + 18], "big") % workers
                else:
                    owner = owner_of(_trace_id(raw, start3, end3), workers)
                spans.setdefault(owner, []).append(raw[tag_start3:end3])
                if owner != me:
                    foreign.setdefault((r, s), []).append(k)
                k += 1
            if not spans:
                spans[me] = []  # a scope without spans stays where it arrived
            for owner, encoded in spans.items():
                counts[owner] = counts.get(owner, 0) + len(encoded)
                scopes.setdefault(owner, []).append(_framed(_CHILD_TAG, scope_header + encoded))
            s += 1
        if not scopes:
            scopes[me] = []
        for owner, encoded in scopes.items():
            parts.setdefault(owner, []).append(_framed(_RESOURCE_SPANS_TAG, header + encoded))
        r += 1
    return {owner: (b"".join(p), counts.get(owner, 0)) for owner, p in parts.items()}, foreign


def _framed(tag: int, pieces: list[bytes]) -> bytes:
    body = b"".join(pieces)
    size = len(body)
    return bytes((tag, size)) + body if size < 0x80 else bytes((tag,)) + encode_varint(size) + body


def _walk(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(tag, tag start, value start, end) of each field in buf[pos:end]; tags of one byte only
    (fields 1-15: all that ResourceSpans, ScopeSpans and the request have), unknown ones included."""
    while pos < end:
        tag_start = pos
        tag = buf[pos]
        if tag >= 0x80:
            raise _Unreadable()
        pos += 1
        wire_type = tag & 7
        if wire_type == 2:
            length, pos = read_varint(buf, pos)
            value_start, pos = pos, pos + length
        elif wire_type == 0:
            value_start = pos
            _, pos = read_varint(buf, pos)
        elif wire_type == 1:
            value_start, pos = pos, pos + 8
        elif wire_type == 5:
            value_start, pos = pos, pos + 4
        else:
            raise _Unreadable()
        if pos > end:
            raise _Unreadable()
        yield tag, tag_start, value_start, pos


def _trace_id(raw: bytes, start: int, end: int) -> bytes:
    """A span's trace id where it is not the span's first field (the last one wins, as when parsing)."""
    trace_id = b""
    for tag, _, value_start, value_end in _walk(raw, start, end):
        if tag == _RESOURCE_SPANS_TAG:  # field 1, length-delimited: Span.trace_id
            trace_id = raw[value_start:value_end]
    return trace_id


def _keep_only(request: Any, foreign: dict[tuple[int, int], list[int]]) -> None:
    """Remove from the parsed request the spans others own, and the scopes and resources left
    without spans by that (as `split_traces` leaves them out of this worker's share)."""
    resources = request.resource_spans
    emptied: dict[int, list[int]] = {}
    for (r, s), indexes in foreign.items():
        spans = resources[r].scope_spans[s].spans
        for k in reversed(indexes):
            del spans[k]
        if not spans:
            emptied.setdefault(r, []).append(s)
    for r in sorted(emptied, reverse=True):
        scopes = resources[r].scope_spans
        for s in reversed(emptied[r]):
            del scopes[s]
        if not scopes:
            del resources[r]


def _split(batch: Batch, workers: int) -> dict[int, Batch]:
    from gateway.sinks.loadbalancing import split_by_owner

    owner: Callable[[bytes], str | None] = lambda tid: str(owner_of(tid, workers))  # noqa: E731
    return {int(k): v for k, v in split_by_owner(batch, "traceID", owner).items()}


def needs_affinity(config: Any) -> bool:
    """Whether the config decides on whole traces (tail sampling, `by: trace` routes).

    Nothing else needs the spans of a trace in one process: the normalizer resolves wrappers and
    duplicates within one request (a single process does not join requests either), and without
    affinity a request is never split, so it sees what a single process would."""
    return config.sampling.tail is not None or any(r.by == "trace" for r in config.routes or ())
