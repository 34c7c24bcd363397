"""A disk queue on a filesystem that fills before its budget: a real 4 MiB tmpfs, mounted by the test.

The promise: a request is answered 200 only once its batch is in the log; when the log cannot take
it (the filesystem is full), the request is refused with backpressure (503 + Retry-After) when no
other target took it, never acknowledged and then dropped. Delivered data leaves the disk at once,
the queue accepts again by itself, and a restart with a fully delivered log starts empty.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric
from tests.test_disk_queue import PROTO, _request


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a 4 MiB tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _segments_bytes(queue: Path) -> int:
    return sum(p.stat().st_size for p in queue.rglob("segment-*.wal"))


def test_disk_full_refuses_instead_of_acknowledging_and_losing(tmp_path: Path, small_fs: Path) -> None:
    port = _free_port()  # the backend comes up here later
    config = gateway_config(tmp_path)
    config["sinks"] = {"fwd": {
        "type": "otlp", "protocol": "http", "endpoint": f"http://127.0.0.1:{port}", "compression": "none",
        "queue": {"type": "disk", "dir": str(small_fs), "min_free_bytes": "256KiB"},  # default budget: 1 GiB
        "batch": {"max_delay": "20ms"}, "retry": {"initial": "100ms", "max": "300ms", "max_elapsed": "120s"}}}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    backend = None
    try:
        accepted: list[str] = []
        refused = 0
        for i in range(400):
            body = _request(f"r{i}", 100)  # ~30 KB
            r = requests.post(f"{gw.http}/v1/traces", data=body, headers=PROTO, timeout=10)
            if r.status_code == 200:
                accepted += [f"r{i}/{j}" for j in range(100)]
            else:
                assert r.status_code == 503, r.text
                assert int(r.headers["Retry-After"]) >= 1
                refused += 1
                if refused >= 5:
                    break
        assert refused >= 5, "a filled filesystem never refused"
        assert len(accepted) > 1000
        health = requests.get(f"{gw.admin}/health", timeout=5).json()
        assert health["sinks"]["fwd"]["status"] == "full", health
        assert "disk_full" in health["sinks"]["fwd"]["full_reason"]
        for reason in ("disk_error", "disk_full", "queue_full"):
            assert metric(gw.admin, "otelgate_sink_dropped_spans_total", reason=reason) == 0
        assert metric(gw.admin, "otelgate_receiver_refused_spans_total") > 0

        # The backend comes up: everything acknowledged arrives, and the disk is given back at once.
        bdir = tmp_path / "backend"
        bdir.mkdir()
        bconfig = gateway_config(bdir)
        bconfig["receivers"]["http"]["endpoint"] = f"127.0.0.1:{port}"
        backend = GatewayProcess(bconfig, bdir).wait_ready()
        out = bdir / "out.jsonl"
        wait_for(lambda: len(spans_in(read_json_lines(out))) >= len(accepted), timeout=60, interval=0.2)
        got = [s["name"] for s in spans_in(read_json_lines(out))]
        assert set(got) == set(accepted)
        wait_for(lambda: _segments_bytes(small_fs) == 0, timeout=10)
        wait_for(lambda: requests.get(f"{gw.admin}/health", timeout=5).json()["sinks"]["fwd"]["status"] == "ok")

        # It accepts again by itself.
        r = requests.post(f"{gw.http}/v1/traces", data=_request("after", 100), headers=PROTO, timeout=10)
        assert r.status_code == 200
        wait_for(lambda: "after/99" in {s["name"] for s in spans_in(read_json_lines(out))}, timeout=20)
        wait_for(lambda: _segments_bytes(small_fs) == 0, timeout=10)
        assert gw.stop() == 0
        assert (small_fs / "fwd" / "acks.log").stat().st_size == 0

        # A restart with a fully delivered log starts empty.
        gw = GatewayProcess(config, tmp_path).wait_ready()
        assert "delivering what the disk queue kept" not in gw.log_text()
        assert _segments_bytes(small_fs) == 0
    finally:
        gw.stop()
        if backend is not None:
            backend.stop()


def test_disk_full_with_another_target_drops_only_that_copy(tmp_path: Path, small_fs: Path) -> None:
    """Another sink took the request: 200, and the disk queue counts its copy (`disk_full`) at admission."""
    config = gateway_config(tmp_path)
    config["sinks"]["fwd"] = {
        "type": "otlp", "protocol": "http", "endpoint": f"http://127.0.0.1:{_free_port()}", "compression": "none",
        "queue": {"type": "disk", "dir": str(small_fs), "min_free_bytes": "256KiB"},
        "batch": {"max_delay": "20ms"}, "retry": {"initial": "100ms", "max": "300ms", "max_elapsed": "120s"}}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        for i in range(200):
            r = requests.post(f"{gw.http}/v1/traces", data=_request(f"r{i}", 100), headers=PROTO, timeout=10)
            assert r.status_code == 200, r.text
            if metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="fwd", reason="disk_full") >= 500:
                break
        assert metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="fwd", reason="disk_full") >= 500
        assert metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="out") == 0
        assert "disk_full" in gw.log_text()
    finally:
        gw.stop()
