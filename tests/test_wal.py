"""The write-ahead log behind the durable sink queues (gateway/sinks/wal.py)."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.sinks import wal as wal_module
from gateway.sinks.queue_pb2 import QueueRecord
from gateway.sinks.wal import WalFull, WalRecord, WriteAheadLog

LOGGER = "otelgate.sink.wal"
ROOT = Path(__file__).resolve().parent.parent


def payload(i: int, size: int = 100) -> bytes:
    return (f"req-{i}-".encode() * (size // 6 + 1))[:size]


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("segment-*.wal"))


def frame_offsets(path: Path) -> list[int]:
    """The byte offset of every framed record in a segment."""
    data, pos, out = path.read_bytes(), 0, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append(pos)
        pos += 8 + length
    return out


def fill(w: WriteAheadLog, n: int, size: int = 100) -> list[int]:
    return [w.append(payload(i, size), spans=i % 7) for i in range(n)]


def test_round_trip_across_segments_and_reopen(tmp_path: Path) -> None:
    w = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=1000)
    assert w.open() == []
    seqs = fill(w, 30)
    assert seqs == list(range(30))
    assert len(segments(tmp_path)) > 3
    assert all(p.name == f"segment-{int(p.name[8:28]):020d}.wal" for p in segments(tmp_path))
    assert w.pending == 30
    assert w.size_bytes == sum(p.stat().st_size for p in segments(tmp_path))
    w.close()
    w.close()  # idempotent

    w2 = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=1000)
    recs = w2.open()
    assert recs == [WalRecord(i, i % 7, payload(i)) for i in range(30)]
    assert w2.pending == 30
    assert w2.append(b"next", 1) == 30  # the sequence continues
    w2.close()
    assert [r.sequence for r in WriteAheadLog(tmp_path, max_bytes=1 << 30).open()] == list(range(31))


def test_record_body_is_a_queue_record(tmp_path: Path) -> None:
    w = WriteAheadLog(tmp_path, max_bytes=1 << 20)
    w.open()
    w.append(b"abc", 5)
    w.close()
    data = segments(tmp_path)[0].read_bytes()
    length, crc = struct.unpack_from(">II", data)
    body = data[8:8 + length]
    assert crc == zlib.crc32(body) and len(data) == 8 + length
    rec = QueueRecord.FromString(body)
    assert (rec.format_version, rec.sequence, rec.spans, rec.request) == (1, 0, 5, b"abc")
    assert rec.appended_unix_nano > 0
    assert segments(tmp_path)[0].name == "segment-00000000000000000000.wal"


def test_ack_deletes_only_fully_acked_inactive_segments(tmp_path: Path) -> None:
    w = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=600)  # ~4-5 records of ~130 bytes per segment
    w.open()
    seqs = fill(w, 20)
    segs = segments(tmp_path)
    first_of = [int(p.name[8:28]) for p in segs]
    assert len(segs) >= 4
    seg0 = range(first_of[0], first_of[1])
    # out of order: last record of segment 0 first; nothing deleted until all of it is acked
    for s in reversed(seg0[1:]):
        w.ack(s)
        assert segs[0].exists()
    w.ack(seg0[0])
    assert not segs[0].exists()
    w.ack(seg0[0])  # duplicate and unknown acks are ignored
    w.ack(10_000)
    assert w.pending == 20 - len(seg0)
    # ack everything else: every segment goes, the active one replaced by an empty one named
    # after the next sequence (delivered data leaves the disk at once), and acks.log is emptied
    for s in seqs[len(seg0):]:
        w.ack(s)
    assert w.pending == 0
    left = segments(tmp_path)
    assert [p.name for p in left] == ["segment-00000000000000000020.wal"] and left[0].stat().st_size == 0
    assert (tmp_path / "acks.log").stat().st_size == 0
    w.close()
    w2 = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=600)
    assert w2.open() == []
    assert w2.append(b"x", 1) == 20  # the high-water mark survived every ack
    w2.close()


def test_replay_skips_acked_records_and_compacts_acks(tmp_path: Path) -> None:
    w = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=600)
    w.open()
    fill(w, 20)
    acked = {0, 3, 7, 8, 19, 12}
    for s in acked:
        w.ack(s)
    w.close()
    w2 = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=600)
    assert [r.sequence for r in w2.open()] == [s for s in range(20) if s not in acked]
    assert w2.pending == 20 - len(acked)
    acks = (tmp_path / "acks.log").read_bytes()
    assert sorted(struct.unpack(f">{len(acks) // 8}Q", acks)) == sorted(acked)
    w2.close()


def test_torn_ack_entry_is_ignored(tmp_path: Path) -> None:
    w = WriteAheadLog(tmp_path, max_bytes=1 << 30)
    w.open()
    fill(w, 3)
    w.ack(1)
    w.close()
    with open(tmp_path / "acks.log", "ab") as f:
        f.write(b"\x00\x00\x00")
    assert [r.sequence for r in WriteAheadLog(tmp_path, max_bytes=1 << 30).open()] == [0, 2]


def _tear(path: Path, how: str) -> int:
    """Damage the last record of a segment; returns the offset where it starts."""
    last = frame_offsets(path)[-1]
    data = bytearray(path.read_bytes())
    if how == "truncate":
        del data[-3:]
    elif how == "flip":
        data[last + 8 + 5] ^= 0x40
    elif how == "garbage":
        last = len(data)
        data += b"\xde\xad\xbe\xef" * 5
    elif how == "zeros":
        last = len(data)
        data += b"\x00" * 12
    path.write_bytes(bytes(data))
    return last


@pytest.mark.parametrize("how", ["truncate", "flip", "garbage", "zeros"])
def test_torn_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str) -> None:
    w = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=600)
    w.open()
    fill(w, 10)
    w.close()
    last_seg = segments(tmp_path)[-1]
    size = last_seg.stat().st_size
    offset = _tear(last_seg, how)
    lost = 1 if how in ("truncate", "flip") else 0
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        w2 = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=600)
        recs = w2.open()
    assert [r.sequence for r in recs] == list(range(10 - lost))
    lines = [r for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1
    fields = lines[0].fields
    assert fields["segment"] == last_seg.name and fields["offset"] == offset
    assert fields["skipped_bytes"] == (size - offset - 3 if how == "truncate" else
                                       size - offset if how == "flip" else 20 if how == "garbage" else 12)
    assert last_seg.stat().st_size == offset  # truncated so appends continue cleanly
    new = [w2.append(b"after", 1) for _ in range(3)]
    assert new == list(range(10 - lost, 13 - lost))
    w2.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        recs = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=600).open()
    assert [r.sequence for r in recs] == list(range(13 - lost))
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_corrupt_middle_segment_following_segments_still_replay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=600)
    w.open()
    fill(w, 20)
    w.close()
    segs = segments(tmp_path)
    mid = segs[1]
    offsets = frame_offsets(mid)
    first = int(mid.name[8:28])
    data = bytearray(mid.read_bytes())
    data[offsets[1] + 8 + 2] ^= 0xFF  # second record of the middle segment
    mid.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        w2 = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=600)
        got = [r.sequence for r in w2.open()]
    lost = set(range(first + 1, first + len(offsets)))
    assert got == [s for s in range(20) if s not in lost]
    lines = [r for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and lines[0].fields["segment"] == mid.name and lines[0].fields["offset"] == offsets[1]
    assert mid.stat().st_size == len(data)  # a middle segment is not truncated
    # acking the surviving record of the damaged segment deletes it
    w2.ack(first)
    assert not mid.exists()
    w2.close()


def test_garbage_files_and_bad_sequences(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path).mkdir(exist_ok=True)
    (tmp_path / "notes.txt").write_text("hi")
    body = QueueRecord(format_version=2, sequence=0, spans=1, request=b"x").SerializeToString()
    (tmp_path / "segment-00000000000000000000.wal").write_bytes(struct.pack(">II", len(body), zlib.crc32(body)) + body)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        w = WriteAheadLog(tmp_path, max_bytes=1 << 30)
        assert w.open() == []
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1
    assert w.append(b"y", 1) == 0
    w.close()
    assert [r.request for r in WriteAheadLog(tmp_path, max_bytes=1 << 30).open()] == [b"y"]


def test_walfull_at_budget_and_freed_by_acks(tmp_path: Path) -> None:
    rec = 8 + len(QueueRecord(format_version=1, sequence=1, spans=1, request=payload(0),
                              appended_unix_nano=1 << 60).SerializeToString())
    w = WriteAheadLog(tmp_path, max_bytes=5 * rec, segment_bytes=2 * rec)
    w.open()
    for i in range(5):
        w.append(payload(i), 1)
    assert w.size_bytes == 5 * rec - 2  # sequence 0 is not on the wire
    with pytest.raises(WalFull):
        w.append(payload(5), 1)
    assert w.pending == 5
    w.ack(0)
    with pytest.raises(WalFull):  # segment 0 still holds record 1
        w.append(payload(5), 1)
    w.ack(1)
    assert w.size_bytes == 3 * rec
    w.append(payload(5), 1)
    w.append(payload(6), 1)
    with pytest.raises(WalFull):
        w.append(payload(7), 1)
    for s in range(2, 7):
        w.ack(s)
    assert w.pending == 0
    # a record larger than the whole budget is accepted when nothing is pending, and the fully acked
    # active segment is rotated out rather than blocking appends forever
    big = w.append(b"z" * (10 * rec), 1)
    assert w.size_bytes < 12 * rec
    with pytest.raises(WalFull):
        w.append(b"a", 1)
    w.ack(big)
    w.append(b"a", 1)
    w.close()


def test_walfull_on_empty_directory_accepts_oversized(tmp_path: Path) -> None:
    w = WriteAheadLog(tmp_path, max_bytes=10)
    w.open()
    assert w.append(b"x" * 100, 1) == 0
    with pytest.raises(WalFull):
        w.append(b"x", 1)
    w.close()


@pytest.mark.parametrize("mode", ["always", "batch", "never"])
def test_fsync_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(wal_module.os, "fsync", counting)
    w = WriteAheadLog(tmp_path, max_bytes=1 << 30, fsync=mode)  # type: ignore[arg-type]
    w.open()
    calls.clear()
    w.append(b"a", 1)  # creates the first segment: file + directory
    assert len(calls) == {"always": 2, "batch": 2, "never": 0}[mode]
    calls.clear()
    for _ in range(5):
        w.append(b"a", 1)
    assert len(calls) == {"always": 5, "batch": 5, "never": 0}[mode]
    calls.clear()
    for s in range(3):
        w.ack(s)
    assert len(calls) == {"always": 3, "batch": 0, "never": 0}[mode]
    calls.clear()
    w.close()
    assert len(calls) == {"always": 2, "batch": 2, "never": 0}[mode]
    calls.clear()
    w.close()
    assert calls == []


def test_use_before_open_raises(tmp_path: Path) -> None:
    w = WriteAheadLog(tmp_path, max_bytes=100)
    with pytest.raises(RuntimeError):
        w.append(b"x", 1)


def test_random_operations_match_model(tmp_path: Path) -> None:
    rng = random.Random(1234)
    for round_ in range(8):
        d = tmp_path / str(round_)
        seg_bytes = rng.choice([200, 500, 5000])
        w = WriteAheadLog(d, max_bytes=1 << 30, segment_bytes=seg_bytes, fsync="never")
        model: dict[int, bytes] = {}
        w.open()
        for _ in range(300):
            op = rng.random()
            if op < 0.5:
                data = rng.randbytes(rng.randrange(0, 300))
                model[w.append(data, len(data))] = data
            elif op < 0.9 and model:
                s = rng.choice(list(model))
                del model[s]
                w.ack(s)
            elif op < 0.95:
                w.close()
                w = WriteAheadLog(d, max_bytes=1 << 30, segment_bytes=seg_bytes, fsync="never")
                assert w.open() == [WalRecord(s, len(v), v) for s, v in sorted(model.items())]
            assert w.pending == len(model)
            assert w.size_bytes == sum(p.stat().st_size for p in segments(d))
        w.close()


class WalMachine(RuleBasedStateMachine):
    @initialize(segment_bytes=st.sampled_from([150, 400, 4096]))
    def setup(self, segment_bytes: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wal-"))
        self.segment_bytes = segment_bytes
        self.model: dict[int, bytes] = {}
        self.high = -1
        self.wal = WriteAheadLog(self.dir, max_bytes=1 << 30, segment_bytes=segment_bytes, fsync="never")
        assert self.wal.open() == []

    @rule(data=st.binary(max_size=200))
    def append(self, data: bytes) -> None:
        seq = self.wal.append(data, len(data))
        assert seq > self.high
        self.high = seq
        self.model[seq] = data

    @precondition(lambda self: bool(self.model))
    @rule(index=st.integers(min_value=0))
    def ack(self, index: int) -> None:
        seqs = sorted(self.model)
        s = seqs[index % len(seqs)]
        del self.model[s]
        self.wal.ack(s)

    @rule()
    def reopen(self) -> None:
        self.wal.close()
        self.wal = WriteAheadLog(self.dir, max_bytes=1 << 30, segment_bytes=self.segment_bytes, fsync="never")
        assert self.wal.open() == [WalRecord(s, len(v), v) for s, v in sorted(self.model.items())]

    @invariant()
    def counts(self) -> None:
        if hasattr(self, "wal"):
            assert self.wal.pending == len(self.model)
            files = segments(self.dir)
            assert self.wal.size_bytes == sum(p.stat().st_size for p in files)
            # only segments holding an unacked record survive, plus the active one
            for p in files[:-1]:
                start = int(p.name[8:28])
                nxt = int(files[files.index(p) + 1].name[8:28])
                assert any(start <= s < nxt for s in self.model), p.name

    def teardown(self) -> None:
        if hasattr(self, "wal"):
            self.wal.close()
            shutil.rmtree(self.dir, ignore_errors=True)


TestWalMachine = WalMachine.TestCase
TestWalMachine.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


CHILD = """
import sys
from gateway.sinks.wal import WriteAheadLog
w = WriteAheadLog(sys.argv[1], max_bytes=1 << 30, fsync="batch", segment_bytes=4096)
w.open()
print("ready", flush=True)
for i in range(100000):
    s = w.append(b"r" * (i % 500), 1)
    print(s, flush=True)
"""


def test_crash_sigkill_keeps_every_acknowledged_append(tmp_path: Path) -> None:
    rng = random.Random(7)
    printed: list[int] = []
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        target = rng.randrange(50, 400)
        for _ in range(target):
            line = proc.stdout.readline()
            printed.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        printed.extend(int(x) for x in proc.stdout.read().split())  # lines already in the pipe
        proc.stdout.close()
        reader = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=4096)
        got = [r.sequence for r in reader.open()]
        reader.close()
        assert set(printed) <= set(got), round_
        assert len(got) - len(printed) <= 1  # at most the one written but not yet printed
        assert got == sorted(got) and len(set(got)) == len(got)
        printed = list(got)  # the next child continues after whatever survived


def test_sequence_survives_an_emptied_last_segment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=10)  # one record per segment
    w.open()
    fill(w, 3)
    for s in range(2):  # a fully acked last segment is replaced at once (see the ack test): keep one
        w.ack(s)
    w.close()
    (last,) = segments(tmp_path)
    assert last.name == "segment-00000000000000000002.wal"
    with open(last, "r+b") as f:
        f.truncate(3)  # the only record left is torn away
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        w2 = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=10)
        assert w2.open() == []
    assert last.stat().st_size == 0
    assert w2.append(b"x", 1) == 2  # never below the name of the last segment
    w2.close()
    assert [r.sequence for r in WriteAheadLog(tmp_path, max_bytes=1 << 30).open()] == [2]


def test_ack_log_is_compacted_at_run_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal_module, "_COMPACT_MIN_BYTES", 0)
    w = WriteAheadLog(tmp_path, max_bytes=1 << 30, segment_bytes=300)
    w.open()
    fill(w, 40)
    for s in range(35):
        w.ack(s)
    acks = (tmp_path / "acks.log").read_bytes()
    on_disk = {s for p in segments(tmp_path) for s in range(int(p.name[8:28]), 40)}
    assert len(acks) < 35 * 8
    assert set(struct.unpack(f">{len(acks) // 8}Q", acks)) <= on_disk
    w.close()
    assert [r.sequence for r in WriteAheadLog(tmp_path, max_bytes=1 << 30).open()] == list(range(35, 40))
    assert not (tmp_path / "acks.log.tmp").exists()
