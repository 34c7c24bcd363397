"""The write-ahead log behind the durable sink queues: append-only segment files plus an ack log.

Format (version 1)
==================

A WAL is one directory that holds:

``segment-<first sequence, 20 decimal digits>.wal``
    Append-only segment files. A segment is a sequence of framed records::

        length : uint32 big-endian   -- number of bytes in body
        crc32  : uint32 big-endian   -- zlib.crc32(body)
        body   : `length` bytes      -- a serialized otelgate.queue.v1.QueueRecord

    (``proto/otelgate/queue/v1/queue.proto``) with ``format_version = 1``, ``sequence``, ``spans``,
    ``request`` (a serialized ExportTraceServiceRequest) and ``appended_unix_nano``.
    The name carries the sequence that was about to be appended when the segment was created.
    A new segment is started when appending to the current one would take it past
    ``segment_bytes`` (a record is always written to an empty segment, however large).

``acks.log``
    Appended ``uint64`` big-endian sequence numbers of records that are done (delivered, or
    dropped and counted). Acks may be in any order. A trailing partial entry (torn write) is
    ignored. On ``open`` it is compacted: rewritten (``acks.log.tmp`` + rename) with only the acks
    of records still on disk; it is also compacted at run time when it has grown far beyond that.

Invariants
==========

* Sequences strictly increase across the whole directory and across restarts: within a segment
  they are consecutive (each record is the previous one + 1); every record of a segment is >= the
  sequence in its name and < the sequence in the next segment's name. On open the next sequence
  is ``max(last record + 1, name of the last segment)``. The last segment is never deleted
  while the WAL is in use, so the high-water mark survives even when every record is acked.
* A record that breaks any of the above, or whose frame runs past end of file, whose CRC does not
  match, whose body does not parse or whose ``format_version`` is not 1, ends its segment: the
  rest of that segment is skipped with one warning (segment, offset, skipped bytes). If it is the
  last segment the file is truncated there so that appends continue after the last good record;
  an earlier segment is left as is and the following segments are still replayed.
* A failed write is cut back (``ftruncate``) to the last good record before the error is raised,
  so a segment never holds a partial record followed by good ones (short of a crash, which can
  only tear the tail).
* A segment is deleted once every record in it is acked. When that is the segment being written
  to, an empty segment named after the next sequence replaces it first (so the high-water mark
  survives), and ``acks.log`` is emptied once no record is pending: a fully delivered log holds
  no data, at run time and after a restart (``open`` does the same for a fully acked log).
* Room is the byte budget and the filesystem's real free space (``statvfs``) less a reserve
  (``min_free_bytes``): an append that would break either raises ``WalFull`` before writing.
* Delivery is at-least-once: an ack that was not on disk at a crash means the record is
  replayed again. A record whose ``append`` returned with fsync "always"/"batch" survives a crash.

Durability (``fsync``): "always" and "batch" fsync the segment after each ``append`` and the
directory when a segment is created; "always" also fsyncs ``acks.log`` after each ``ack``.
"never" leaves all of it to the OS. ``close`` fsyncs per policy.

Memory: per segment only (first/last sequence, unacked count, size), plus the set of acked
sequences of records still on disk. ``open`` returns the unacked records, which the caller holds.
"""

from __future__ import annotations

import bisect
import errno
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.logs import get_logger
from gateway.sinks.queue_pb2 import QueueRecord

__all__ = ["WalFull", "WalRecord", "WriteAheadLog", "disk_free", "is_disk_full"]

FORMAT_VERSION = 1
_HEADER = struct.Struct(">II")
_ACK = struct.Struct(">Q")
_SEGMENT_RE = re.compile(r"^segment-(\d{20})\.wal$")
_ACKS = "acks.log"
_ACKS_TMP = "acks.log.tmp"
_COMPACT_MIN_BYTES = 1 << 20

log = get_logger("sink.wal")


class WalFull(Exception):
    """The append would take the WAL past its byte budget, or its filesystem below the reserve."""


def disk_free(directory: str | Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `directory`."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def is_disk_full(exc: BaseException) -> bool:
    """Whether a failed append means "no room" (budget, reserve, ENOSPC, quota), not a broken disk."""
    return isinstance(exc, WalFull) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))


@dataclass(frozen=True, slots=True)
class WalRecord:
    sequence: int
    spans: int
    request: bytes  # serialized ExportTraceServiceRequest


@dataclass(slots=True)
class _Segment:
    start: int  # the sequence in the file name
    path: Path
    size: int = 0
    first: int = -1  # first record's sequence, -1 while empty
    last: int = -1
    unacked: int = 0

    @property
    def count(self) -> int:
        return 0 if self.first < 0 else self.last - self.first + 1


def _segment_name(start: int) -> str:
    return f"segment-{start:020d}.wal"


class WriteAheadLog:
    def __init__(self, directory: str | Path, *, max_bytes: int, fsync: Literal["always", "batch", "never"] = "batch",
                 segment_bytes: int = 16 * 1024 * 1024, min_free_bytes: int = 0) -> None:
        if fsync not in ("always", "batch", "never"):
            raise ValueError(f"fsync must be always, batch or never, not {fsync!r}")
        self._dir = Path(directory)
        self._max_bytes = max_bytes
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._min_free = min_free_bytes
        self._segments: list[_Segment] = []
        self._starts: list[int] = []  # _segments[i].start, for bisect
        self._acked: set[int] = set()  # acked sequences of records still on disk
        self._seg_fd = -1
        self._acks_fd = -1
        self._acks_size = 0
        self._next_seq = 0
        self._size = 0
        self._pending = 0
        self._open = False

    # ------------------------------------------------------------------ open / replay

    def open(self) -> list[WalRecord]:
        """Create the directory, replay it, and return the records not yet acknowledged, in order."""
        self.close()
        self._segments, self._starts, self._acked = [], [], set()
        self._size = self._pending = self._next_seq = 0
        self._dir.mkdir(parents=True, exist_ok=True)
        try:
            (self._dir / _ACKS_TMP).unlink()
        except FileNotFoundError:
            pass
        acks = self._read_acks()
        names = sorted((int(m.group(1)), name) for name in os.listdir(self._dir) if (m := _SEGMENT_RE.match(name)))
        out: list[WalRecord] = []
        high = -1  # highest sequence seen in a record
        for i, (start, name) in enumerate(names):
            limit = names[i + 1][0] if i + 1 < len(names) else None
            seg = _Segment(start, self._dir / name)
            high = self._replay_segment(seg, acks, out, high, limit, is_last=limit is None)
            self._segments.append(seg)
            self._starts.append(start)
            self._size += seg.size
            self._pending += seg.unacked
        self._next_seq = max(high + 1, self._segments[-1].start if self._segments else 0)
        # Fully acked segments other than the last one go; then the ack log keeps only what is still on disk.
        deleted = False
        for seg in list(self._segments[:-1]):
            if seg.unacked == 0:
                self._delete_segment(seg)
                deleted = True
        if deleted:
            self._fsync_dir()
        self._compact_acks()
        if self._segments:
            self._seg_fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._open = True
        self._reclaim_active()  # a fully acked log starts empty
        return out

    def _read_acks(self) -> set[int]:
        try:
            data = (self._dir / _ACKS).read_bytes()
        except FileNotFoundError:
            return set()
        n = len(data) // _ACK.size
        return set(struct.unpack_from(f">{n}Q", data)) if n else set()

    def _replay_segment(self, seg: _Segment, acks: set[int], out: list[WalRecord], high: int,
                        limit: int | None, is_last: bool) -> int:
        with open(seg.path, "rb") as f:
            data = f.read()
        view = memoryview(data)
        end, pos, reason = len(data), 0, None
        while pos < end:
            if end - pos < _HEADER.size:
                reason = "truncated header"
                break
            length, crc = _HEADER.unpack_from(view, pos)
            body_end = pos + _HEADER.size + length
            if body_end > end:
                reason = "length past end of file"
                break
            body = view[pos + _HEADER.size:body_end]
            if zlib.crc32(body) != crc:
                reason = "crc mismatch"
                break
            rec = QueueRecord()
            try:
                rec.ParseFromString(body)
            except Exception:  # noqa: BLE001 - any parse failure is bad data, never an error
                reason = "unparsable body"
                break
            seq = rec.sequence
            if rec.format_version != FORMAT_VERSION:
                reason = "unknown format version"
                break
            if (seq <= high or seq < seg.start or (limit is not None and seq >= limit)
                    or (seg.first >= 0 and seq != seg.last + 1)):
                reason = "sequence out of order"
                break
            if seg.first < 0:
                seg.first = seq
            seg.last = high = seq
            if seq in acks:
                self._acked.add(seq)
            else:
                seg.unacked += 1
                out.append(WalRecord(seq, rec.spans, rec.request))
            pos = body_end
        seg.size = end
        if reason is not None:
            log.warning("wal corrupt record", segment=seg.path.name, offset=pos, skipped_bytes=end - pos,
                        reason=reason, truncated=is_last)
            if is_last:
                os.truncate(seg.path, pos)
                seg.size = pos
                if self._fsync != "never":
                    fd = os.open(seg.path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        return high

    # ------------------------------------------------------------------ append / ack

    def append(self, request: bytes, spans: int) -> int:
        """Write one record and return its sequence; raises WalFull when it does not fit the budget."""
        self._check_open()
        seq = self._next_seq
        body = QueueRecord(format_version=FORMAT_VERSION, sequence=seq, spans=spans, request=request,
                           appended_unix_nano=time.time_ns()).SerializeToString()
        header = _HEADER.pack(len(body), zlib.crc32(body))
        need = len(header) + len(body)
        if self._min_free >= 0:
            free = disk_free(self._dir)
            if need + self._min_free > free:
                raise WalFull(f"filesystem of {self._dir} has {free} bytes free; {need} more would leave less "
                              f"than queue.min_free_bytes ({self._min_free})")
        active = self._segments[-1] if self._segments else None
        reclaim = active is not None and active.size > 0 and active.unacked == 0
        if self._size + need > self._max_bytes:
            reclaimable = active.size if (active is not None and reclaim) else 0
            if self._pending > 0 and self._size - reclaimable + need > self._max_bytes:
                raise WalFull(f"{self._size} bytes on disk + {need} > max_bytes {self._max_bytes}")
            if reclaim:
                self._rotate(seq)
                active = self._segments[-1]
        if active is None or (active.size > 0 and active.size + need > self._segment_bytes):
            self._rotate(seq)
            active = self._segments[-1]
        fd = self._seg_fd
        try:
            written = os.writev(fd, (header, body))
            if written < need:
                rest = memoryview(header + body)[written:]
                while rest:
                    rest = rest[os.write(fd, rest):]
        except OSError:
            try:
                os.ftruncate(fd, active.size)  # never leave a partial record before later good ones
            except OSError:
                pass
            raise
        active.size += need
        if active.first < 0:
            active.first = seq
        active.last = seq
        active.unacked += 1
        self._size += need
        self._pending += 1
        self._next_seq = seq + 1
        if self._fsync != "never":
            os.fsync(fd)
        return seq

    def _rotate(self, start: int) -> None:
        """Start a new active segment named `start`; the old one goes if it is fully acked."""
        old = self._segments[-1] if self._segments else None
        seg = _Segment(start, self._dir / _segment_name(start))
        fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)  # may fail: disk full
        if self._seg_fd >= 0:
            os.close(self._seg_fd)  # already fsynced after its last append, per policy
        self._seg_fd = fd
        self._segments.append(seg)
        self._starts.append(start)
        if self._fsync != "never":
            self._fsync_dir()
        if old is not None and old.unacked == 0:
            self._delete_segment(old)
            self._maybe_compact_acks()

    def ack(self, sequence: int) -> None:
        """Mark a record done; a segment whose records are all done (and not being written) is deleted."""
        self._check_open()
        i = bisect.bisect_right(self._starts, sequence) - 1
        if i < 0:
            return
        seg = self._segments[i]
        if seg.first < 0 or not (seg.first <= sequence <= seg.last) or sequence in self._acked:
            return  # unknown, already deleted or already acked: acks are idempotent
        if self._acks_fd < 0:
            self._acks_fd = os.open(self._dir / _ACKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._acks_fd, _ACK.pack(sequence))
        self._acks_size += _ACK.size
        if self._fsync == "always":
            os.fsync(self._acks_fd)
        self._acked.add(sequence)
        seg.unacked -= 1
        self._pending -= 1
        if seg.unacked == 0:
            if i != len(self._segments) - 1:
                self._delete_segment(seg)
                self._maybe_compact_acks()
            else:
                self._reclaim_active()
        if self._pending == 0 and self._acks_size and len(self._segments) == 1 and self._segments[0].size == 0:
            self._empty_acks()

    def _reclaim_active(self) -> None:
        """Replace a fully acked active segment by an empty one named after the next sequence (which
        keeps the high-water mark), so delivered data leaves the disk at once, not at the next rotation."""
        active = self._segments[-1] if self._segments else None
        if active is None or active.size == 0 or active.unacked != 0:
            return
        try:
            self._rotate(self._next_seq)
        except OSError as exc:  # no room even for an empty file: the next append or ack tries again
            log.warning("cannot reclaim the delivered segment yet", segment=active.path.name, error=str(exc))
            return
        if self._pending == 0:
            self._empty_acks()

    def _empty_acks(self) -> None:
        """Nothing is pending and no acked record is left on disk: acks.log has nothing to say."""
        if self._acks_fd < 0 or self._acked:
            return
        if self._fsync != "never":
            self._fsync_dir()  # the segment deletions are durable before their acks go
        os.ftruncate(self._acks_fd, 0)
        self._acks_size = 0

    def drop_oldest(self, needed_bytes: int) -> list[WalRecord]:
        raise NotImplementedError("drop_oldest is not implemented yet")

    # ------------------------------------------------------------------ state

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        """Fsync per policy and close the files; idempotent."""
        seg_fd, acks_fd = self._seg_fd, self._acks_fd
        self._seg_fd = self._acks_fd = -1
        self._open = False
        try:
            if seg_fd >= 0:
                try:
                    if self._fsync != "never":
                        os.fsync(seg_fd)
                finally:
                    os.close(seg_fd)
        finally:
            if acks_fd >= 0:
                try:
                    if self._fsync != "never":
                        os.fsync(acks_fd)
                finally:
                    os.close(acks_fd)

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("WriteAheadLog is not open")

    def _delete_segment(self, seg: _Segment) -> None:
        i = self._segments.index(seg)
        del self._segments[i]
        del self._starts[i]
        self._size -= seg.size
        if seg.first >= 0:
            self._acked.difference_update(range(seg.first, seg.last + 1))
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass

    def _maybe_compact_acks(self) -> None:
        if self._acks_size > _COMPACT_MIN_BYTES and self._acks_size > 4 * _ACK.size * len(self._acked):
            if self._fsync != "never":
                self._fsync_dir()  # the deletions are durable before their acks are forgotten
            self._compact_acks()

    def _compact_acks(self) -> None:
        """Rewrite acks.log with only the acks of records still on disk (tmp file + rename)."""
        if self._acks_fd >= 0:
            os.close(self._acks_fd)
            self._acks_fd = -1
        tmp = self._dir / _ACKS_TMP
        acked = sorted(self._acked)
        data = struct.pack(f">{len(acked)}Q", *acked)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self._fsync != "never":
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._dir / _ACKS)
        if self._fsync != "never":
            self._fsync_dir()
        self._acks_size = len(data)
        self._acks_fd = os.open(self._dir / _ACKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _fsync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
