"""`type: file`: OTLP/JSON lines or length-prefixed protobuf, with size-based rotation.

Formats are the Collector file exporter's: `json` writes one OTLP/JSON
`ExportTraceServiceRequest` per line (a sent batch becomes one line); `proto` writes records of
a 4-byte big-endian length followed by a serialized `ExportTraceServiceRequest`. With
`compress: gzip` every write is one gzip member, so the file is always a valid gzip stream
(`zcat` reads it) even if the process dies between writes.

Each signal has its own file: `path` for traces, `logs_path` and `metrics_path` for the others
(by default `path` with `.logs` / `.metrics` before its suffixes: `out.jsonl` -> `out.logs.jsonl`),
so every file holds one kind of request, as the Collector's file exporter writes them.

Rotation: when a write would take the file past `rotate_bytes`, the file is renamed to
`<stem>-<UTC time><suffixes>` and a new one is started; only the `keep` newest rotated files are
kept. Only a regular file rotates: a device or a FIFO (`path: /dev/null`, a pipe to another
program) is written as it is, never renamed (renaming /dev/null would replace the machine's
null device with a plain file). Encoding and writing run on one thread of the sink's own, so a slow disk never blocks the
event loop and writes keep their order.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import stat
import struct
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.batch import Batch
from gateway.configtypes import ByteSize
from gateway.errors import RetryableError
from gateway.logs import get_logger
from gateway.otlp.signals import TRACES, Signal
from gateway.sinks.base import SinkConfig

_log = get_logger("sink.file")
_IOV_MAX = 512


class Config(SinkConfig):
    type: Literal["file"]
    path: str = "./otelgate-traces.jsonl"
    format: Literal["json", "proto"] = "json"
    rotate_bytes: ByteSize = Field(100 * 1024 * 1024, description="Rotate before the file passes this size; 0 never rotates.")
    keep: int = Field(10, ge=0, description="Rotated files to keep (oldest deleted first).")
    compress: Literal["none", "gzip"] = "none"
    logs_path: str | None = Field(None, description="Default: `path` with .logs before its suffixes.")
    metrics_path: str | None = Field(None, description="Default: `path` with .metrics before its suffixes.")

    def path_for(self, signal: Signal) -> str:
        if signal is TRACES:
            return self.path
        explicit = self.logs_path if signal.name == "logs" else self.metrics_path
        if explicit:
            return explicit
        path = Path(self.path)
        stem, suffixes = _split_name(path.name)
        return str(path.with_name(f"{stem}.{signal.name}{suffixes}"))


SIGNALS = ("traces", "logs", "metrics")


def encode(batches: Sequence[Batch], fmt: str, signal: Signal = TRACES) -> list[bytes]:
    """One record for the whole batch, as chunks to write in order: merging requests is free
    in both encodings, and chunks go to `writev` without being joined first."""
    if fmt == "json":
        return [signal.encode_json(b.request for b in batches), b"\n"]
    # Concatenated serializations of messages are the serialization of their merge.
    bodies = [b.serialized() for b in batches]
    return [struct.pack(">I", sum(map(len, bodies))), *bodies]


def _write_all(fd: int, chunks: list[bytes]) -> None:
    views = [memoryview(c) for c in chunks if c]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


class FileSink:
    def __init__(self, name: str, config: Config, signal: Signal = TRACES) -> None:
        self.name = name
        self.config = config
        self.signal = signal
        self.path = Path(config.path_for(signal))
        self._fd: int | None = None
        self._size = 0
        self._regular = True  # rotation renames the file: never a device or a FIFO
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{name}")

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    async def send(self, batches: Sequence[Batch]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._write, batches)
        except OSError as exc:
            raise RetryableError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return None

    async def shutdown(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    # -- on the sink's thread -------------------------------------------------------------------

    def _open(self) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            st = os.fstat(self._fd)
            self._size, self._regular = st.st_size, stat.S_ISREG(st.st_mode)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, batches: Sequence[Batch]) -> None:
        chunks = encode(batches, self.config.format, self.signal)
        if self.config.compress == "gzip":
            chunks = [gzip.compress(b"".join(chunks), compresslevel=6)]
        size = sum(map(len, chunks))
        limit = self.config.rotate_bytes
        if limit and self._size and self._size + size > limit and self._regular:
            self._rotate()
        self._open()
        assert self._fd is not None
        _write_all(self._fd, chunks)
        self._size += size

    def _rotate(self) -> None:
        self._close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        stem, suffixes = _split_name(self.path.name)
        target = self.path.with_name(f"{stem}-{stamp}{suffixes}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{stem}-{stamp}-{n}{suffixes}")
            n += 1
        self.path.rename(target)
        _log.info("file rotated", sink=self.name, rotated_to=str(target))
        self._prune(stem, suffixes)

    def _prune(self, stem: str, suffixes: str) -> None:
        pattern = re.compile(re.escape(stem) + r"-\d{8}T\d{6}\.\d{3}Z(-\d+)?" + re.escape(suffixes) + "$")
        rotated = sorted(p for p in self.path.parent.iterdir() if pattern.match(p.name))
        for old in rotated[: max(0, len(rotated) - self.config.keep)]:
            old.unlink(missing_ok=True)


def _split_name(name: str) -> tuple[str, str]:
    """`traces.jsonl.gz` -> (`traces`, `.jsonl.gz`): rotated files keep every suffix."""
    stem, dot, rest = name.partition(".")
    return (stem, dot + rest) if stem else (name, "")


def create(name: str, config: Config, signal: Signal = TRACES) -> FileSink:
    return FileSink(name, config, signal)
