"""The file sink's formats, rotation and compression, read back the way a user would."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import orjson
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from gateway.batch import count_spans
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records
from tests.gateway_process import GatewayProcess, gateway_config, wait_for

PROTO = {"Content-Type": "application/x-protobuf"}


def _all_bodies() -> list[bytes]:
    return [b for name in TRACE_FIXTURES for b in read_records(FIXTURES / f"{name}.otlp.bin")]


def _send_all(gw: GatewayProcess, bodies: list[bytes]) -> None:
    for body in bodies:
        assert requests.post(f"{gw.http}/v1/traces", data=body, headers=PROTO, timeout=5).status_code == 200


def _proto_records(data: bytes) -> list[trace_service_pb2.ExportTraceServiceRequest]:
    out, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        out.append(trace_service_pb2.ExportTraceServiceRequest.FromString(data[pos + 4:pos + 4 + size]))
        pos += 4 + size
    return out


def _merged(requests_: list[trace_service_pb2.ExportTraceServiceRequest]) -> list:
    return [rs for r in requests_ for rs in r.resource_spans]


def test_proto_format_is_length_prefixed_requests(tmp_path: Path) -> None:
    gw = GatewayProcess(gateway_config(tmp_path, path=str(tmp_path / "out.pb"), format="proto"), tmp_path).wait_ready()
    bodies = _all_bodies()
    _send_all(gw, bodies)
    assert gw.stop() == 0
    written = _proto_records((tmp_path / "out.pb").read_bytes())
    sent = [trace_service_pb2.ExportTraceServiceRequest.FromString(b) for b in bodies]
    assert _merged(written) == _merged(sent)


def test_gzip_json_is_one_valid_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl.gz"
    gw = GatewayProcess(gateway_config(tmp_path, path=str(path), compress="gzip"), tmp_path).wait_ready()
    bodies = _all_bodies()
    _send_all(gw, bodies)
    assert gw.stop() == 0
    lines = gzip.decompress(path.read_bytes()).splitlines()
    assert len(lines) >= 1
    got = [rs for line in lines for rs in orjson.loads(line)["resourceSpans"]]
    expected = [rs for name in TRACE_FIXTURES
                for req in orjson.loads((FIXTURES / f"{name}.json").read_bytes())["requests"]
                for rs in req["body"]["resourceSpans"]]
    assert got == expected


def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    out = tmp_path / "spans" / "out.jsonl"
    config = gateway_config(tmp_path, path=str(out), rotate_bytes="20KiB", keep=2,
                            batch={"max_spans": 1, "max_delay": "0s"})
    gw = GatewayProcess(config, tmp_path).wait_ready()
    bodies = _all_bodies()
    _send_all(gw, bodies)
    total = sum(count_spans(trace_service_pb2.ExportTraceServiceRequest.FromString(b)) for b in bodies)
    sent = lambda: float(requests.get(f"{gw.admin}/metrics", timeout=5).text.split('otelgate_sink_sent_spans_total{sink="out"} ')[1].split()[0])
    wait_for(lambda: sent() == total)
    assert gw.stop() == 0
    files = sorted(p.name for p in out.parent.iterdir() if ".logs." not in p.name and ".metrics." not in p.name)
    rotated = [f for f in files if f != "out.jsonl"]
    assert "out.jsonl" in files
    assert len(rotated) == 2, files
    for name in rotated:
        assert name.startswith("out-") and name.endswith(".jsonl")
    # Every file that is kept is whole OTLP/JSON lines, each under the limit unless a single record is larger.
    for name in files:
        data = (out.parent / name).read_bytes()
        for line in data.splitlines():
            assert orjson.loads(line)["resourceSpans"]
        assert len(data) <= 20 * 1024 or len(data.splitlines()) == 1
    assert "file rotated" in gw.log_text()


def test_a_fifo_or_device_is_never_rotated(tmp_path: Path) -> None:
    """`path: /dev/null` (or a pipe) past `rotate_bytes` must stay what it is: renaming /dev/null
    once replaced the machine's null device with a plain file."""
    import os
    import stat as stat_
    import threading

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    received = bytearray()
    stop = threading.Event()

    def read() -> None:
        with open(fifo, "rb", buffering=0) as f:
            while not stop.is_set():
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    config = gateway_config(tmp_path, path=str(fifo), rotate_bytes="4KiB", keep=1,
                            batch={"max_spans": 1, "max_delay": "0s"})
    gw = GatewayProcess(config, tmp_path).wait_ready()
    bodies = _all_bodies()
    _send_all(gw, bodies)
    total = sum(count_spans(trace_service_pb2.ExportTraceServiceRequest.FromString(b)) for b in bodies)
    sent = lambda: float(requests.get(f"{gw.admin}/metrics", timeout=5).text.split('otelgate_sink_sent_spans_total{sink="out"} ')[1].split()[0])
    wait_for(lambda: sent() == total)
    assert gw.stop() == 0
    stop.set()
    reader.join(5)
    assert stat_.S_ISFIFO(os.stat(fifo).st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("pipe-")]  # nothing renamed
    assert len(received) > 4 * 1024 and "file rotated" not in gw.log_text()
