"""Runtime faults through the real gateway: a reload with a failing disk-queue sink, a backend that
restarts, idle and slow connections, wrong ports, loops."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
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


@pytest.mark.parametrize("down_s", [8, pytest.param(45, marks=pytest.mark.slow)])
def test_grpc_sink_uses_a_restarted_backend_again_within_seconds(tmp_path: Path, down_s: float) -> None:
    """gRPC's own reconnect backoff (up to 120 s) must not override the sink's retry policy.

    gRPC's attempts after a failure, by default: 1, 2.6, 5.2, 9.3, 15.8, 26.3, 43.1, 69.9 s
    (x1.6, +-20% jitter). After 8 s down the next attempt may still come soon after the restart,
    so only the slow case (45 s down) fails for certain without the fix: checked, it took 25.7 s
    with both of the sink's remedies removed (the bounded backoff options and the replacement of a
    channel in TRANSIENT_FAILURE before a retry); either one alone passes it."""
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
        time.sleep(down_s)  # long enough for gRPC's channel backoff to grow past the sink's retry.max
        backend = _backend(tmp_path / "b2", port)
        up = time.monotonic()
        wait_for(lambda: len(spans_in(read_json_lines(tmp_path / "b2" / "out.jsonl"))) == 5, timeout=60, interval=0.05)
        took = time.monotonic() - up
        assert took < 4.0, f"the restarted backend was used again only after {took:.1f} s"
    finally:
        gw.stop()
        backend.stop()


def _raw(gw: GatewayProcess) -> socket.socket:
    host, port = gw.endpoints["OTLP/HTTP"].rsplit(":", 1)
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    return s


def _read_until_closed(s: socket.socket, timeout: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    s.settimeout(timeout)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data, time.monotonic() - started
        data += chunk


def test_http_header_and_idle_timeouts_and_connection_cap(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    config["receivers"]["http"].update(read_header_timeout="1s", idle_timeout="1s", max_connections=8)
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        # Connected, sends nothing: closed with 408 after read_header_timeout.
        data, took = _read_until_closed(_raw(gw))
        assert data.startswith(b"HTTP/1.1 408") and 0.8 < took < 5, (data, took)
        # Slowloris: a header dripped a byte at a time is cut off, not held for an hour.
        s = _raw(gw)
        started = time.monotonic()
        closed = False
        for byte in b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            s.settimeout(0.1)
            try:
                s.recv(65536)  # the 408, or end of stream: the server cut the drip off
                closed = True
                break
            except socket.timeout:
                pass
            if time.monotonic() - started > 8:
                break
        assert closed and time.monotonic() - started < 5
        # Keep-alive: a served connection left idle is closed after idle_timeout.
        s = _raw(gw)
        body = _request("k", 2)
        s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        data, took = _read_until_closed(s)
        assert data.startswith(b"HTTP/1.1 200") and 0.8 < took < 5, (data[:100], took)
        # The cap: past max_connections a new connection gets 503 + Retry-After at once; the open ones still work.
        held = [_raw(gw) for _ in range(8)]
        time.sleep(0.2)
        data, took = _read_until_closed(_raw(gw))
        assert data.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in data and took < 0.5, data
        for s in held:
            s.close()
        time.sleep(0.2)
        assert requests.post(f"{gw.http}/v1/traces", data=_request("ok", 2), headers=PROTO, timeout=5).status_code == 200
        text = requests.get(f"{gw.admin}/metrics", timeout=5).text
        assert "process_open_fds " in text
        for reason in ("header_timeout", "idle_timeout", "too_many_connections"):
            assert metric(gw.admin, "otelgate_receiver_connections_closed_total", reason=reason) >= 1, reason
    finally:
        assert gw.stop() == 0


def test_grpc_exporter_pointed_at_the_http_port_fails_fast_with_the_fix(tmp_path: Path) -> None:
    import grpc

    gw = GatewayProcess(gateway_config(tmp_path), tmp_path).wait_ready()
    try:
        channel = grpc.insecure_channel(gw.endpoints["OTLP/HTTP"])
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        for _ in range(3):
            started = time.monotonic()
            try:
                export(_request("w", 1), timeout=10)
                raise AssertionError("a gRPC call to the HTTP port succeeded")
            except grpc.RpcError as exc:
                took = time.monotonic() - started
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
                assert "OTEL_EXPORTER_OTLP_PROTOCOL" in exc.details()
                assert took < 3, took
        channel.close()
        assert metric(gw.admin, "otelgate_receiver_requests_total", outcome="wrong_protocol") >= 1
        lines = [line for line in gw.lines if "wrong protocol" in line]
        assert len(lines) == 1 and "OTEL_EXPORTER_OTLP_PROTOCOL" in lines[0], lines
        assert "Traceback" not in gw.log_text() and "PRI/Upgrade" not in gw.log_text()
    finally:
        assert gw.stop() == 0


def test_grpc_idle_connections_are_closed(tmp_path: Path) -> None:
    import grpc

    config = gateway_config(tmp_path)
    config["receivers"]["grpc"]["max_connection_idle"] = "1s"
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        channel = grpc.insecure_channel(gw.grpc)
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        export(_request("g", 1), timeout=5)
        assert channel._channel.check_connectivity_state(False) == 2  # READY
        wait_for(lambda: channel._channel.check_connectivity_state(False) == 0, timeout=5)  # IDLE: the server's GOAWAY
        channel.close()
    finally:
        assert gw.stop() == 0


def test_two_gateways_pointed_at_each_other_do_not_amplify(tmp_path: Path) -> None:
    """A -> B -> A: each span crosses each instance once; the copy that comes back is dropped,
    counted (`reason="loop"`) and warned about once."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a_grpc, b_http = _free_port(), _free_port()
    a = gateway_config(a_dir)
    a["receivers"]["grpc"]["endpoint"] = f"127.0.0.1:{a_grpc}"
    a["sinks"]["peer"] = {"type": "otlp", "protocol": "http", "endpoint": f"http://127.0.0.1:{b_http}",
                          "batch": {"max_delay": "20ms"}, "retry": {"initial": "100ms", "max": "200ms"}}
    b = gateway_config(b_dir)
    b["receivers"]["http"]["endpoint"] = f"127.0.0.1:{b_http}"
    b["sinks"]["peer"] = {"type": "otlp", "protocol": "grpc", "endpoint": f"127.0.0.1:{a_grpc}", "compression": "none",
                          "batch": {"max_delay": "20ms"}, "retry": {"initial": "100ms", "max": "200ms"}}
    ga = GatewayProcess(a, a_dir).wait_ready()
    gb = GatewayProcess(b, b_dir).wait_ready()
    try:
        for who, gw in (("a", ga), ("b", gb)):  # data entering at either end
            r = requests.post(f"{gw.http}/v1/traces", data=_request(who, 3), headers=PROTO, timeout=5)
            assert r.status_code == 200
        wait_for(lambda: metric(ga.admin, "otelgate_receiver_rejected_spans_total", reason="loop") >= 3
                 and metric(gb.admin, "otelgate_receiver_rejected_spans_total", reason="loop") >= 3)
        time.sleep(1.0)  # a loop would keep going: give it time to show
        for d in (a_dir, b_dir):
            names = sorted(s["name"] for s in spans_in(read_json_lines(d / "out.jsonl")))
            assert names == sorted([f"a/{i}" for i in range(3)] + [f"b/{i}" for i in range(3)]), names
        assert metric(ga.admin, "otelgate_receiver_rejected_spans_total", reason="loop") == 3
        assert metric(gb.admin, "otelgate_receiver_rejected_spans_total", reason="loop") == 3
        for gw in (ga, gb):
            assert sum("data came back to the otelgate instance" in line for line in gw.lines) == 1
            # the sender learns it from partial success: counted there as rejected, never retried
            assert metric(gw.admin, "otelgate_sink_dropped_spans_total", sink="peer", reason="rejected") == 3
    finally:
        ga.stop()
        gb.stop()


def test_http_admission_control_refuses_past_the_in_flight_bound_at_once(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    config["receivers"]["http"]["max_in_flight_requests"] = 2
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        body = _request("slow", 50)
        head = (b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        slow = []
        for _ in range(2):  # two requests in progress: their bodies are still arriving
            s = _raw(gw)
            s.sendall(head + body[:100])
            slow.append(s)
        time.sleep(0.3)
        started = time.monotonic()
        r = requests.post(f"{gw.http}/v1/traces", data=_request("x", 5), headers=PROTO, timeout=5)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert time.monotonic() - started < 1.0
        assert metric(gw.admin, "otelgate_receiver_requests_total", outcome="overloaded") == 1
        for s in slow:  # they finish, and the next request is taken
            s.sendall(body[100:])
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            s.close()
        assert requests.post(f"{gw.http}/v1/traces", data=_request("y", 5), headers=PROTO, timeout=5).status_code == 200
    finally:
        assert gw.stop() == 0


def test_http_receiver_on_0000_serves_ipv6_too(tmp_path: Path) -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as exc:
        import pytest

        pytest.skip(f"no IPv6 loopback here: {exc}")
    config = gateway_config(tmp_path)
    config["receivers"]["http"]["endpoint"] = "0.0.0.0:0"
    config["receivers"]["grpc"]["endpoint"] = "127.0.0.1:0"
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        port = int(gw.endpoints["OTLP/HTTP"].rsplit(":", 1)[1])
        for host in ("127.0.0.1", "[::1]"):
            r = requests.post(f"http://{host}:{port}/v1/traces", data=_request(host, 2), headers=PROTO, timeout=5)
            assert r.status_code == 200, host
    finally:
        assert gw.stop() == 0


def test_admission_bounds_requests_and_bytes_and_always_takes_one() -> None:
    from gateway.receivers.intake import Admission

    async def scenario() -> None:
        a = Admission(2, 100)
        assert a.enter(500)  # one request always fits, however large
        assert not a.enter(1)  # bytes
        a.leave(500)
        assert a.enter(50) and not a.enter(60) and a.enter(10)
        assert not a.enter(1)  # requests
        a.leave(50)
        a.leave(10)
        assert (a.requests, a.bytes) == (0, 0)
        assert Admission(0, 0).max_requests == 32  # 0: the default

    import asyncio

    asyncio.run(scenario())


_GRPC_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _held_rpc(channel: Any, release: Any) -> Any:
    """An Export RPC that has arrived (headers sent) but whose message waits for `release`: the
    wire is a unary call's, only slow to send its one message."""
    def message() -> Any:
        release.wait(10)
        yield _request("held", 5)

    return channel.stream_unary(_GRPC_EXPORT).future(message(), timeout=15)


def _retry_info(err: Any) -> Any:
    from google.rpc import error_details_pb2, status_pb2

    details = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    info = error_details_pb2.RetryInfo()
    assert status_pb2.Status.FromString(details).details[0].Unpack(info)
    return info


def test_grpc_admission_counts_an_rpc_from_its_arrival_and_refuses_with_retry_info(tmp_path: Path) -> None:
    import threading

    import grpc

    config = gateway_config(tmp_path)
    config["receivers"]["grpc"]["max_in_flight_requests"] = 1
    gw = GatewayProcess(config, tmp_path).wait_ready()
    release = threading.Event()
    try:
        with grpc.insecure_channel(gw.grpc) as channel:
            held = _held_rpc(channel, release)
            time.sleep(0.3)
            started = time.monotonic()
            try:
                channel.unary_unary(_GRPC_EXPORT)(_request("x", 5), timeout=5)
                raise AssertionError("not refused while an RPC was in progress")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                assert _retry_info(err).retry_delay.seconds == 1
            assert time.monotonic() - started < 1.0
            assert metric(gw.admin, "otelgate_receiver_requests_total", protocol="grpc", outcome="overloaded") == 1
            release.set()
            held.result()  # the held RPC completes once its message comes, and the next one is taken
            channel.unary_unary(_GRPC_EXPORT)(_request("y", 5), timeout=5)
        wait_for(lambda: {s["name"] for s in spans_in(read_json_lines(tmp_path / "out.jsonl"))} >=
                 {f"{t}/{i}" for t in ("held", "y") for i in range(5)})
    finally:
        release.set()
        assert gw.stop() == 0
