"""Runtime faults through the real gateway: a reload with a failing disk-queue sink, a backend that
restarts, idle and slow connections, wrong ports, loops."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric
from tests.test_disk_queue import PROTO, _dead_endpoint, _request


def _health(gw: GatewayProcess) -> dict[str, Any]:
    return requests.get(f"{gw.admin}/health", timeout=5).json()


def _write(gw: GatewayProcess, config: dict[str, Any]) -> None:
    assert gw.config_path is not None
    tmp = gw.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config))
    tmp.replace(gw.config_path)


def test_reload_with_a_failing_disk_queue_sink_does_not_freeze_intake(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    config["service"]["config_watch_interval"] = "0s"
    config["sinks"]["fwd"] = {
        "type": "otlp", "protocol": "http", "endpoint": _dead_endpoint(), "compression": "none",
        "queue": {"type": "disk", "dir": str(tmp_path / "queue")},
        "batch": {"max_delay": "20ms"}, "retry": {"initial": "20s", "max": "30s", "max_elapsed": "300s"}}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        assert requests.post(f"{gw.http}/v1/traces", data=_request("a", 5), headers=PROTO, timeout=5).status_code == 200
        wait_for(lambda: "send failed; will retry" in gw.log_text())
        config["sinks"]["fwd"]["batch"]["max_delay"] = "30ms"  # a changed disk-queue sink: its log is handed over
        _write(gw, config)
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)
        r = requests.post(f"{gw.http}/v1/traces", data=_request("b", 5), headers=PROTO, timeout=10)
        took = time.monotonic() - started
        assert r.status_code == 200
        assert took < 2.0, f"a request during the reload waited {took:.1f} s"
        wait_for(lambda: _health(gw)["config"]["generation"] == 2, timeout=5)
        assert "undelivered spans kept in the disk queue" in gw.log_text()
    finally:
        assert gw.stop() == 0


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _backend(workdir: Path, grpc_port: int) -> GatewayProcess:
    workdir.mkdir(exist_ok=True)
    config = gateway_config(workdir)
    config["receivers"]["grpc"]["endpoint"] = f"127.0.0.1:{grpc_port}"
    return GatewayProcess(config, workdir).wait_ready()


def test_grpc_sink_uses_a_restarted_backend_again_within_seconds(tmp_path: Path) -> None:
    """gRPC's own reconnect backoff (up to 120 s) must not override the sink's retry policy."""
    port = _free_port()
    backend = _backend(tmp_path / "b1", port)
    config = gateway_config(tmp_path)
    config["sinks"] = {"fwd": {
        "type": "otlp", "protocol": "grpc", "endpoint": f"127.0.0.1:{port}", "compression": "none",
        "batch": {"max_delay": "20ms"}, "retry": {"initial": "200ms", "max": "1s", "max_elapsed": "120s"}}}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        assert requests.post(f"{gw.http}/v1/traces", data=_request("a", 5), headers=PROTO, timeout=5).status_code == 200
        wait_for(lambda: len(spans_in(read_json_lines(tmp_path / "b1" / "out.jsonl"))) == 5)
        assert backend.stop() == 0
        assert requests.post(f"{gw.http}/v1/traces", data=_request("b", 5), headers=PROTO, timeout=5).status_code == 200
        wait_for(lambda: "send failed; will retry" in gw.log_text())
        time.sleep(8)  # long enough for gRPC's channel backoff to grow past the sink's retry.max
        backend = _backend(tmp_path / "b2", port)
        up = time.monotonic()
        wait_for(lambda: len(spans_in(read_json_lines(tmp_path / "b2" / "out.jsonl"))) == 5, timeout=60, interval=0.05)
        took = time.monotonic() - up
        assert took < 2.0, f"the restarted backend was used again only after {took:.1f} s"
    finally:
        gw.stop()
        backend.stop()
