"""`otelgate check` and config loading: every mistake named by its dotted path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load, parse


def _check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=30, env=env)


def test_check_lists_every_error_with_its_path(tmp_path: Path) -> None:
    result = _check(tmp_path, """
receivers:
  grpc: {endpoint: "localhost", max_mesage_bytes: 4}
  http: {max_body_bytes: -5}
admin: {endpont: 127.0.0.1:1}
sinks:
  traces: {type: file, rotate_bytes: lots, formt: json, compress: zip}
  other: {type: kafka}
  notype: {path: x}
""")
    assert result.returncode == 1
    err = result.stderr
    for expected in [
        "receivers.grpc.endpoint: expected host:port",
        "receivers.grpc.max_mesage_bytes: unknown key",
        "receivers.http.max_body_bytes: a size cannot be negative",
        "admin.endpont: unknown key",
        "sinks.traces.rotate_bytes: expected a size",
        "sinks.traces.formt: unknown key",
        "sinks.traces.compress: expected 'none' or 'gzip', got 'zip'",
        "sinks.other.type: unknown sink type 'kafka'; expected one of: file, otlp, jaeger, langfuse",
        "sinks.notype.type: required",
    ]:
        assert expected in err, f"{expected!r} not in:\n{err}"
    assert "9 errors" in err


def test_check_routes_must_name_existing_sinks(tmp_path: Path) -> None:
    result = _check(tmp_path, """
sinks: {a: {type: file}}
routes:
  - {name: main, sinks: [a, b]}
  - {name: main, sinks: [a]}
""")
    assert result.returncode == 1
    assert "routes[0].sinks[1]: no sink named 'b' (sinks: a)" in result.stderr
    assert "routes[1].name: duplicate route name 'main'" in result.stderr
    assert "routes[1]: unreachable" in result.stderr


def test_check_valid_prints_summary_and_warnings(tmp_path: Path) -> None:
    result = _check(tmp_path, """
receivers: {http: {endpoint: 127.0.0.1:9999}}
sinks:
  a: {type: file, path: a.jsonl}
  spare: {type: file, path: b.jsonl, format: proto}
routes: [{name: main, sinks: [a]}]
""")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "http  127.0.0.1:9999" in result.stdout and "grpc" not in result.stdout
    assert "a  type=file" in result.stdout and "main  (everything) -> a" in result.stdout
    assert "warning: sinks.spare: not used by any route" in result.stderr


def test_env_expansion(tmp_path: Path) -> None:
    config = parse("sinks: {a: {type: file, path: '${env:OUT_DIR}/x-${NAME}.jsonl', keep: 3}}",
                   environ={"OUT_DIR": "/data", "NAME": "n"})
    assert config.sinks["a"].path == "/data/x-n.jsonl"
    assert parse("sinks: {a: {type: file, path: 'cost$$'}}", environ={}).sinks["a"].path == "cost$"
    with pytest.raises(ConfigError) as err:
        parse("sinks: {a: {type: file, path: '${env:MISSING_DIR}/x'}}", environ={})
    assert err.value.errors == ["sinks.a.path: environment variable MISSING_DIR is not set "
                                "(or give a default: ${env:MISSING_DIR:-value})"]


def test_check_reports_unset_variable(tmp_path: Path) -> None:
    result = _check(tmp_path, "sinks: {a: {type: file, path: '${OTELGATE_TEST_UNSET}'}}", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "sinks.a.path: environment variable OTELGATE_TEST_UNSET is not set" in result.stderr


@pytest.mark.parametrize("text, fragment", [
    ("sinks: [1, 2]", "sinks: expected a mapping of sink name to sink settings, got [1, 2]"),
    ("- a\n- b", "the top level must be a mapping"),
    ("sinks: {a: {type: file}}\nsinks: {}", "duplicate key 'sinks'"),
    ("sinks: {a: {type: file", "not valid YAML"),
    ("receivers: {}\nsinks: {a: {type: file}}", "receivers: enable at least one receiver"),
    ("sinks: {}", "sinks: define at least one sink"),
    ("sinks: {a: {type: file, batch: {max_delay: soon}}}", "sinks.a.batch.max_delay: expected a duration"),
    ("sinks: {a: {type: file, retry: {initial: 1m, max: 5s}}}", "sinks.a.retry: retry.initial must not exceed retry.max"),
    ("sinks: {a: {type: file, queue: {when_full: block}}}", "sinks.a.queue.when_full"),
    ("sinks: {'bad name': {type: file}}", "sinks.bad name"),
])
def test_broken_configs(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text, environ={})
    assert any(fragment in e for e in err.value.errors), err.value.errors


def test_embedded_default() -> None:
    config = load(None)
    assert config.receivers.grpc.endpoint == "0.0.0.0:4317"
    assert config.receivers.http.endpoint == "0.0.0.0:4318"
    assert config.admin.endpoint == "127.0.0.1:13133"
    assert config.sinks["local_file"].path == "./otelgate-traces.jsonl"
    assert [r.sinks for r in config.route_list()] == [["local_file"]]


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    config = parse(example.read_text(), environ={"HOME": "/home/user", "LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk"})
    assert config.sinks


def test_run_with_broken_config_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sinks: {a: {type: file, pth: x}}")
    result = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "sinks.a.pth: unknown key" in result.stderr
