"""Start the real gateway as a child process (`python -m gateway run`) on ephemeral ports.

Tests talk to it over real loopback sockets; the listener lines it logs at start tell the ports
the OS chose. Everything the gateway logs is kept for assertions.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

_LISTENING = re.compile(r"(admin|OTLP/gRPC|OTLP/HTTP) listening endpoint=(\S+)")


class GatewayProcess:
    def __init__(self, config: dict[str, Any] | None, workdir: Path, args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / "otelgate.yaml"
            self.config_path.write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "gateway", "run", *args]
        if self.config_path is not None:
            cmd += ["-c", str(self.config_path)]
        self.proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self.endpoints: dict[str, str] = {}
        self._ready = threading.Event()
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if m := _LISTENING.search(line):
                self.endpoints[m.group(1)] = m.group(2)
            if " ready " in f"{line} " or '"event":"ready"' in line:
                self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> "GatewayProcess":
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start:\n" + "\n".join(self.lines))
        return self

    @property
    def grpc(self) -> str:
        return self.endpoints["OTLP/gRPC"]

    @property
    def http(self) -> str:
        return "http://" + self.endpoints["OTLP/HTTP"]

    @property
    def admin(self) -> str:
        return "http://" + self.endpoints["admin"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def log_text(self) -> str:
        return "\n".join(self.lines)


def gateway_config(workdir: Path, llm: bool = False, **sink_overrides: Any) -> dict[str, Any]:
    """A config on ephemeral loopback ports with one fast-flushing file sink `out`.

    The LLM processors are off unless `llm=True`, so transport tests can compare what was
    written with what was sent byte for byte.
    """
    sink = {"type": "file", "path": str(workdir / "out.jsonl"), "batch": {"max_delay": "20ms"}}
    sink.update(sink_overrides)
    config: dict[str, Any] = {
        "receivers": {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}},
        "admin": {"endpoint": "127.0.0.1:0"},
        "sinks": {"out": sink},
        "service": {"shutdown_grace": "10s"},
    }
    if not llm:
        config["pipeline"] = {name: {"enabled": False} for name in ("normalize", "price", "llm_metrics")}
    return config


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of an OTLP/JSON lines file (a line still being written is left out)."""
    if not path.exists():
        return []
    complete = path.read_bytes().split(b"\n")[:-1]
    return [orjson.loads(line) for line in complete if line.strip()]


def spans_in(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [span for line in lines for rs in line.get("resourceSpans", [])
            for ss in rs.get("scopeSpans", []) for span in ss.get("spans", [])]


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def read_proto_lines(path: Path) -> list[dict[str, Any]]:
    """The complete records of a `format: proto` file sink, as OTLP/JSON dicts like `read_json_lines`.

    A proto sink writes the bytes a request arrived as unless something edited it, so a test of
    an edit reads here to see that the edit, not the original, was written.
    """
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from gateway.otlp.json_codec import encode_message

    data = path.read_bytes() if path.exists() else b""
    out, pos = [], 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        if pos + 4 + size > len(data):
            break  # still being written
        out.append(orjson.loads(encode_message(ExportTraceServiceRequest.FromString(data[pos + 4:pos + 4 + size]))))
        pos += 4 + size
    return out
