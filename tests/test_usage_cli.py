"""`otelgate usage`: the same figures as the API, from a running gateway (--url) or straight from
the store a config names (-c), as a table or JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import requests
import yaml

from tests.gateway_process import GatewayProcess, wait_for
from tests.test_usage import usage_config
from tests.usage_traffic import TRAFFIC, send


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "usage", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_usage_command(tmp_path: Path) -> None:
    config = usage_config(tmp_path)
    config["admin"]["token"] = "tok"
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        send(gw.http)
        n_calls = sum(t.calls for t in TRAFFIC)
        auth = {"Authorization": "Bearer tok"}
        wait_for(lambda: requests.get(f"{gw.admin}/api/v1/usage", headers=auth, timeout=5).json()["totals"]["calls"]
                 == n_calls)
        api = requests.get(f"{gw.admin}/api/v1/usage", params={"group_by": "app,model"}, headers=auth, timeout=5).json()
        out = _cli("--url", gw.admin, "--token", "tok", "--by", "app,model", "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        body = orjson.loads(out.stdout)
        assert body["groups"] == api["groups"] and body["totals"] == api["totals"]

        text = _cli("--url", gw.admin, "--token", "tok", "--by", "app", "--from", "7d", "--top", "2", cwd=tmp_path)
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert lines[1].split()[:3] == ["app", "calls", "errors"]
        rows = {line.split()[0]: line.split() for line in lines[2:5]}
        assert rows["support-bot"][1] == "5" and rows["search"][1] == "4" and rows["total"][1] == str(n_calls)
        assert "top users:" in text.stdout

        denied = _cli("--url", gw.admin, cwd=tmp_path)
        assert denied.returncode == 2 and "HTTP 401" in denied.stderr
        bad = _cli("--url", gw.admin, "--token", "tok", "--by", "colour", cwd=tmp_path)
        assert bad.returncode == 2 and "unknown dimension 'colour'" in bad.stderr
    finally:
        gw.stop()
    # No gateway running: read the store the config names.
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    direct = _cli("-c", str(tmp_path / "cfg.yaml"), "--by", "app,model", "--json", cwd=tmp_path)
    assert direct.returncode == 0, direct.stderr
    body = orjson.loads(direct.stdout)
    assert body["groups"] == api["groups"] and body["totals"]["calls"] == n_calls
    (tmp_path / "empty").mkdir()
    missing = _cli(cwd=tmp_path / "empty")  # the embedded default's ./otelgate-usage.db is not there
    assert missing.returncode == 2 and "no usage store at" in missing.stderr
