"""A real Prometheus (Debian's `prometheus` package) on 127.0.0.1 and a free port, scraping one
target every second; skipped with the reason when it is not installed."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.pg_server import _free_port


@contextmanager
def start_prometheus(workdir: Path, target: str, token: str | None = None) -> Iterator[str]:
    """Prometheus scraping `target` (host:port, path /metrics) as job `otelgate`; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Prometheus is not installed (apt-get install prometheus; tests/servers/install.sh does it)")
    job: dict[str, Any] = {"job_name": "otelgate", "static_configs": [{"targets": [target]}]}
    if token:
        job["authorization"] = {"credentials": token}
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [job]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'prom-data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"prometheus did not start: {err[-2000:]}")
        time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query's vector (or a scalar as one unlabelled sample); raises on a PromQL error."""
    params: dict[str, Any] = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    body = requests.get(f"{url}/api/v1/query", params=params, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    data = body["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]
