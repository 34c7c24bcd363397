"""A real Alertmanager (Debian's prometheus-alertmanager) on 127.0.0.1 and a free port, with a
temp config whose one receiver is a webhook; skipped with the reason when it is not installed."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.pg_server import _free_port


def start_alertmanager(workdir: Path, webhook_url: str) -> Iterator[str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.skip("Alertmanager is not installed (apt-get install prometheus-alertmanager; .ci/run does it)")
    config = {"route": {"receiver": "hook", "group_by": ["alertname", "budget", "key"], "group_wait": "0s",
                        "group_interval": "1s", "repeat_interval": "1h"},
              "receivers": [{"name": "hook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}]}
    (workdir / "am.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = subprocess.Popen([binary, f"--config.file={workdir / 'am.yml'}", f"--storage.path={workdir / 'am-data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode() if proc.stderr else ""
            proc.kill()
            raise RuntimeError(f"alertmanager did not start: {err[-2000:]}")
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
