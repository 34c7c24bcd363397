"""Live reload through the real gateway: file watch and SIGHUP, a valid change applied while
traffic flows with nothing lost, an invalid change rejected and shown on /health while the old
config keeps working, removed sinks drained, a changed disk-queue sink handing over its log."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric

PROTO = {"Content-Type": "application/x-protobuf"}


def _config(workdir: Path, sinks: dict[str, dict[str, Any]], routes: list[dict[str, Any]] | None = None,
            watch: str = "100ms") -> dict[str, Any]:
    config = gateway_config(workdir)
    config["sinks"] = {name: {"type": "file", "path": str(workdir / f"{name}.jsonl"), "batch": {"max_delay": "20ms"},
                              **extra} for name, extra in sinks.items()}
    if routes is not None:
        config["routes"] = routes
    config["service"]["config_watch_interval"] = watch
    return config


def _write(gw: GatewayProcess, config: dict[str, Any] | str) -> None:
    assert gw.config_path is not None
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    tmp = gw.config_path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(gw.config_path)  # as editors and config managers do: never a half-written file


def _health(gw: GatewayProcess) -> dict[str, Any]:
    return requests.get(f"{gw.admin}/health", timeout=5).json()


def _body(first_id: int, spans: int = 10) -> bytes:
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for i in range(first_id, first_id + spans):
        trace_id = random.Random(i).randbytes(16)  # random, as sampling expects of trace ids
        scope.spans.add(trace_id=trace_id, span_id=i.to_bytes(8, "big"), name=str(i))
    return req.SerializeToString()


class Traffic:
    """Posts requests of 10 spans in a loop; remembers which spans the gateway accepted."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.accepted: set[str] = set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        session, next_id = requests.Session(), 1
        while not self.stopped.is_set():
            r = session.post(f"{self.gw.http}/v1/traces", data=_body(next_id), headers=PROTO, timeout=10)
            if r.status_code == 200:
                self.accepted.update(str(i) for i in range(next_id, next_id + 10))
            next_id += 10
            time.sleep(0.005)

    def stop(self) -> set[str]:
        self.stopped.set()
        self.thread.join(10)
        return self.accepted


def _names(workdir: Path, sink: str) -> set[str]:
    return {s["name"] for s in spans_in(read_json_lines(workdir / f"{sink}.jsonl"))}


def test_valid_change_under_traffic_loses_nothing(tmp_path: Path) -> None:
    disk = {"queue": {"type": "disk", "dir": str(tmp_path / "queues")}}
    before = _config(tmp_path, {"kept": {}, "durable": disk}, routes=[{"name": "all", "sinks": ["kept", "durable"]}])
    after = _config(tmp_path, {"kept": {}, "durable": {**disk, "batch": {"max_delay": "50ms"}}, "added": {}},
                    routes=[{"name": "all", "sinks": ["kept", "durable"], "continue": True},
                            {"name": "new", "sinks": ["added"]}])
    gw = GatewayProcess(before, tmp_path).wait_ready()
    try:
        traffic = Traffic(gw)
        wait_for(lambda: len(traffic.accepted) >= 200)
        _write(gw, after)
        wait_for(lambda: _health(gw)["config"]["generation"] == 2)
        at_reload = len(traffic.accepted)
        wait_for(lambda: len(traffic.accepted) >= at_reload + 200)
        accepted = traffic.stop()
        wait_for(lambda: _names(tmp_path, "kept") == accepted)
        wait_for(lambda: _names(tmp_path, "durable") >= accepted)  # the log may resend a batch (at least once)
        added = _names(tmp_path, "added")
        assert 200 <= len(added) < len(accepted) and added <= accepted  # what came after the switch
        log = gw.log_text()
        assert "sink changed; restarting it sink=durable" in log and "sink added sink=added" in log
        assert "sink=kept" not in log  # unchanged: same queue, same file, untouched
        assert metric(gw.admin, "otelgate_sink_dropped_spans_total") == 0
        assert metric(gw.admin, "otelgate_config_reloads_total", outcome="applied") == 1
        assert set(_health(gw)["sinks"]) == {"kept", "durable", "added"}
    finally:
        assert gw.stop() == 0


def test_invalid_change_is_rejected_shown_on_health_and_the_old_config_keeps_working(tmp_path: Path) -> None:
    config = _config(tmp_path, {"a": {}})
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        health = _health(gw)["config"]
        assert health["generation"] == 1 and health["last_error"] is None and health["loaded_at"].endswith("Z")
        broken = _config(tmp_path, {"a": {"pathh": "/tmp/x"}}, routes=[{"name": "r", "sinks": ["nope"]}])
        _write(gw, broken)
        wait_for(lambda: _health(gw)["config"]["last_error"])
        health = _health(gw)["config"]
        assert health["generation"] == 1
        assert health["last_error"] == ["sinks.a.pathh: unknown key; did you mean 'path'?",
                                        "routes[0].sinks[0]: no sink named 'nope' (sinks: a)"]  # every error at once
        wait_for(lambda: "config reload rejected; the running config stays" in gw.log_text())  # logged after /health shows it
        _write(gw, "sinks: [unclosed")
        wait_for(lambda: "not valid YAML" in str(_health(gw)["config"]["last_error"]))
        assert requests.post(f"{gw.http}/v1/traces", data=_body(1), headers=PROTO, timeout=5).status_code == 200
        wait_for(lambda: len(_names(tmp_path, "a")) == 10)  # the old config still runs
        assert metric(gw.admin, "otelgate_config_reloads_total", outcome="invalid") == 2
        _write(gw, _config(tmp_path, {"a": {}, "b": {}}))
        wait_for(lambda: _health(gw)["config"]["generation"] == 2)
        assert _health(gw)["config"]["last_error"] is None
        assert requests.post(f"{gw.http}/v1/traces", data=_body(100), headers=PROTO, timeout=5).status_code == 200
        wait_for(lambda: len(_names(tmp_path, "b")) == 10)
    finally:
        assert gw.stop() == 0


def test_sighup_reloads_and_a_removed_sink_drains_first(tmp_path: Path) -> None:
    slow = {"batch": {"max_delay": "30s", "max_spans": 100000}}  # holds what it gets until drained
    config = _config(tmp_path, {"a": {}, "slow": slow}, watch="0s")
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        assert requests.post(f"{gw.http}/v1/traces", data=_body(1), headers=PROTO, timeout=5).status_code == 200
        wait_for(lambda: len(_names(tmp_path, "a")) == 10)
        assert not _names(tmp_path, "slow")
        _write(gw, _config(tmp_path, {"a": {}}, watch="0s"))
        time.sleep(0.5)
        assert _health(gw)["config"]["generation"] == 1  # not watching: waits for SIGHUP
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _health(gw)["config"]["generation"] == 2)
        wait_for(lambda: len(_names(tmp_path, "slow")) == 10)  # drained when removed, not dropped
        assert set(_health(gw)["sinks"]) == {"a", "a/logs", "a/metrics"}  # routes omitted: every signal
        assert "sink removed; draining its queue sink=slow queued=10" in gw.log_text()
    finally:
        assert gw.stop() == 0


def test_route_and_sampling_changes_apply_to_new_data(tmp_path: Path) -> None:
    config = _config(tmp_path, {"a": {}, "b": {}}, routes=[{"name": "r", "sinks": ["a"]}])
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        assert requests.post(f"{gw.http}/v1/traces", data=_body(1, 100), headers=PROTO, timeout=5).status_code == 200
        wait_for(lambda: len(_names(tmp_path, "a")) == 100)
        changed = _config(tmp_path, {"a": {}, "b": {}}, routes=[{"name": "r", "sinks": ["b"]}])
        changed["sampling"] = {"head": {"percentage": 50}}
        _write(gw, changed)
        wait_for(lambda: _health(gw)["config"]["generation"] == 2)
        assert requests.post(f"{gw.http}/v1/traces", data=_body(1000, 1000), headers=PROTO, timeout=5).status_code == 200
        wait_for(lambda: metric(gw.admin, "otelgate_sampled_spans_total", policy="head") == 1000)
        kept = metric(gw.admin, "otelgate_sampled_spans_total", policy="head", decision="kept")
        assert 350 < kept < 650
        wait_for(lambda: len(_names(tmp_path, "b")) == kept)
        assert len(_names(tmp_path, "a")) == 100
    finally:
        assert gw.stop() == 0



def test_api_keys_reload_with_the_config(tmp_path: Path) -> None:
    config = _config(tmp_path, {"a": {}})
    config["auth"] = {"keys": [{"key": "old-key-0123456789", "tenant": "t1"}]}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        def post(key: str) -> int:
            headers = {**PROTO, "Authorization": f"Bearer {key}"}
            return requests.post(f"{gw.http}/v1/traces", data=_body(1), headers=headers, timeout=5).status_code

        assert post("old-key-0123456789") == 200 and post("new-key-0123456789") == 401
        config["auth"] = {"keys": [{"key": "new-key-0123456789", "tenant": "t2"}]}
        _write(gw, config)
        wait_for(lambda: _health(gw)["config"]["generation"] == 2)
        assert post("old-key-0123456789") == 401 and post("new-key-0123456789") == 200
        assert "old-key-0123456789" not in gw.log_text() and "new-key-0123456789" not in gw.log_text()
    finally:
        assert gw.stop() == 0


def test_a_binary_config_file_is_a_rejected_reload_and_the_watcher_lives_on(tmp_path: Path) -> None:
    """A non-UTF-8 file once killed the watcher silently: no log, no /health error, later edits ignored."""
    gw = GatewayProcess(_config(tmp_path, {"a": {}}), tmp_path).wait_ready()
    try:
        assert gw.config_path is not None
        gw.config_path.write_bytes(b"\xff\xfe\x00binary\x89PNG\r\n")
        wait_for(lambda: _health(gw)["config"]["last_error"])
        assert "not a text file" in _health(gw)["config"]["last_error"][0]
        assert metric(gw.admin, "otelgate_config_reloads_total", outcome="invalid") == 1
        wait_for(lambda: "config reload rejected" in gw.log_text())  # the log line may follow /health
        gw.config_path.unlink()
        gw.config_path.mkdir()  # a directory where the file was: rejected too
        wait_for(lambda: "cannot read" in str(_health(gw)["config"]["last_error"]))
        gw.config_path.rmdir()
        _write(gw, _config(tmp_path, {"a": {}, "b": {}}))  # the watcher still sees edits
        wait_for(lambda: _health(gw)["config"]["generation"] == 2)
        assert _health(gw)["config"]["last_error"] is None
        assert "Traceback" not in gw.log_text()
    finally:
        assert gw.stop() == 0


def test_a_reload_changing_listeners_shows_restart_required(tmp_path: Path) -> None:
    config = _config(tmp_path, {"a": {}})
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        assert _health(gw)["config"]["restart_required"] is None
        changed = _config(tmp_path, {"a": {}, "b": {}})
        changed["receivers"]["http"]["endpoint"] = "127.0.0.1:1"
        changed["receivers"]["grpc"]["max_message_bytes"] = "1MiB"
        changed["admin"]["endpoint"] = "127.0.0.1:2"
        _write(gw, changed)
        wait_for(lambda: _health(gw)["config"]["generation"] == 2)
        pending = _health(gw)["config"]["restart_required"]
        assert "receivers.http.endpoint: running '127.0.0.1:0', the file says '127.0.0.1:1'" in pending
        assert "receivers.grpc.max_message_bytes: running 4194304, the file says 1048576" in pending
        assert "admin.endpoint: running '127.0.0.1:0', the file says '127.0.0.1:2'" in pending
        assert len(pending) == 3
        assert requests.post(f"{gw.http}/v1/traces", data=_body(1), headers=PROTO, timeout=5).status_code == 200
        _write(gw, _config(tmp_path, {"a": {}}))  # back to what runs: nothing pending
        wait_for(lambda: _health(gw)["config"]["generation"] == 3)
        assert _health(gw)["config"]["restart_required"] is None
    finally:
        assert gw.stop() == 0
