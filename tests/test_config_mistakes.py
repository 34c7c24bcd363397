"""Mistakes users make in config files, through the real CLI (`otelgate check` / `run` as
subprocesses) and the real gateway: each caught by `check`, named by key and value, never a
traceback, and what `check` passes is what `run` runs."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import requests
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.cli import main
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric

ROOT = Path(__file__).parent.parent
PROTO = {"Content-Type": "application/x-protobuf"}
SCRUBBED = {"PATH": "/usr/bin:/bin"}  # none of the example's variables (not even HOME)


def _cli(tmp_path: Path, command: str, config: str | bytes | None, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.yaml"
    if isinstance(config, bytes):
        path.write_bytes(config)
    elif config is not None:
        path.write_text(config)
    return subprocess.run([sys.executable, "-m", "gateway", command, "-c", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout, env={**(env or os.environ), "PYTHONPATH": str(ROOT)})


def _check(tmp_path: Path, config: str | bytes | None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`otelgate check` through its real entry point, in this process (a subprocess per case would
    cost seconds each on a shared machine); `env` (a scrubbed environment) takes a real subprocess."""
    if env is not None:
        return _cli(tmp_path, "check", config, env)
    path = tmp_path / "c.yaml"
    if isinstance(config, bytes):
        path.write_bytes(config)
    elif config is not None:
        path.write_text(config)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["check", "-c", str(path)])
    except Exception:  # a traceback is what the user would have seen
        code, err = 99, io.StringIO(err.getvalue() + "Traceback\n" + traceback.format_exc())
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(["otelgate", "check"], code, out.getvalue(), err.getvalue())


# -- the file itself -------------------------------------------------------------------------


@pytest.mark.parametrize("content, fragment", [
    (b"\xff\xfe\x00\x89PNG\r\n\x1a\n", "not a text file"),
    (b"", "the file is empty or only comments"),
    (b"   \n# only a comment\n", "the file is empty or only comments"),
    (b"sinks: {a: {type: file}}\n? [a, b]\n: x\n", "a key must be a plain value"),
    (b"[" * 1000, "nested too deeply"),  # deep enough to break a recursive parser
])
def test_check_never_prints_a_traceback_for_a_bad_file(tmp_path: Path, content: bytes, fragment: str) -> None:
    result = _check(tmp_path, content)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr


def test_check_of_a_binary_file_in_a_real_process(tmp_path: Path) -> None:
    result = _cli(tmp_path, "check", b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not a text file (byte 0x89 at offset 0 is not UTF-8)" in result.stderr


def test_check_on_a_directory_and_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").mkdir()
    result = _check(tmp_path, None)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot read: Is a directory" in result.stderr
    (tmp_path / "c.yaml").rmdir()
    result = _check(tmp_path, None)
    assert result.returncode == 1 and "cannot read: No such file or directory" in result.stderr


def test_a_yaml_error_names_the_file(tmp_path: Path) -> None:
    result = _check(tmp_path, "sinks:\n  a: {type: file\n")
    assert result.returncode == 1
    assert f'in "{tmp_path / "c.yaml"}", line' in result.stderr
    assert "<unicode string>" not in result.stderr


# -- the example -----------------------------------------------------------------------------


def test_the_example_passes_check_with_no_variables_set(tmp_path: Path) -> None:
    result = _check(tmp_path, (ROOT / "config.example.yaml").read_text(), env=SCRUBBED)
    assert result.returncode == 0, result.stderr
    assert "processors: normalize, price, account, llm_metrics, feedback" in result.stdout


def test_a_sink_pointed_at_our_own_receiver_is_refused(tmp_path: Path) -> None:
    """config.example.yaml once sent its jaeger sink to otelgate's own 4317: one span came back 49 times."""
    host = socket.gethostname()
    result = _check(tmp_path, f"""
receivers: {{grpc: {{endpoint: 0.0.0.0:4317}}, http: {{endpoint: "127.0.0.1:4318"}}}}
sinks:
  jaeger: {{type: jaeger, endpoint: localhost:4317}}
  tempo: {{type: otlp, endpoint: "[::1]:4317"}}
  collector: {{type: otlp, protocol: http, endpoint: "http://127.0.0.1:4318/v1/traces"}}
  self: {{type: otlp, endpoint: "{host}:4317"}}
  fine: {{type: otlp, endpoint: "collector.example:4317"}}
  other_port: {{type: otlp, endpoint: "localhost:14317"}}
  defaulted: {{type: jaeger}}
""")
    assert result.returncode == 1
    for sink in ("jaeger", "tempo", "collector", "self"):
        assert f"sinks.{sink}.endpoint: " in result.stderr and "this gateway's own" in result.stderr, result.stderr
    assert "sinks.fine" not in result.stderr and "sinks.other_port" not in result.stderr
    assert "sinks.defaulted.endpoint: 'localhost:4317'" in result.stderr
    assert "that is the jaeger sink's default endpoint: set sinks.defaulted.endpoint" in result.stderr
    assert "5 errors" in result.stderr


# -- what run would reject, caught by check ---------------------------------------------------


@pytest.mark.parametrize("receiver", ["grpc", "http"])
@pytest.mark.parametrize("endpoint, fragment", [
    ("http://127.0.0.1:4318", "not a URL: write '127.0.0.1:4318'"),
    ("::1:4317", "an IPv6 address needs brackets: write [::1]:4317"),
    ("[::zz]:4317", "not an IPv6 address"),
    ("local host:4317", "not a host name or IP address"),
])
def test_receiver_endpoints_are_checked_the_same_for_both(tmp_path: Path, receiver: str, endpoint: str, fragment: str) -> None:
    result = _check(tmp_path, yaml.safe_dump({"receivers": {receiver: {"endpoint": endpoint}},
                                              "sinks": {"a": {"type": "file"}}}))
    assert result.returncode == 1
    assert f"receivers.{receiver}.endpoint: " in result.stderr and fragment in result.stderr, result.stderr


def test_ipv6_literals_pass_check_and_run(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    config = gateway_config(tmp_path)
    config["receivers"] = {"grpc": {"endpoint": "[::1]:0"}, "http": {"endpoint": "[::1]:0"}}
    assert _check(tmp_path, yaml.safe_dump(config)).returncode == 0
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        assert gw.endpoints["OTLP/HTTP"].startswith("::1:")
    finally:
        assert gw.stop() == 0


def test_file_sink_paths_are_checked_without_creating_anything(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file, not a directory")
    (tmp_path / "dir.jsonl").mkdir()
    result = _check(tmp_path, f"""
sinks:
  under_a_file: {{type: file, path: {tmp_path}/plain/out.jsonl}}
  is_a_dir: {{type: file, path: {tmp_path}/dir.jsonl}}
  deep_missing: {{type: file, path: {tmp_path}/new/deeper/out.jsonl}}
  queue: {{type: file, path: ok.jsonl, queue: {{type: disk, dir: {tmp_path}/plain}}}}
""")
    assert result.returncode == 1
    assert f"sinks.under_a_file.path: '{tmp_path}/plain/out.jsonl': '{tmp_path}/plain' is a file" in result.stderr
    assert "sinks.is_a_dir.path: " in result.stderr and "is a directory, not a file" in result.stderr
    assert "sinks.queue.queue.dir: " in result.stderr and "exists and is not a directory" in result.stderr
    assert "deep_missing" not in result.stderr  # missing directories are created at start
    assert not (tmp_path / "new").exists() and not (tmp_path / "ok.jsonl").exists()


def test_run_names_the_key_and_value_and_creates_no_file_before_failing(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        for receiver, endpoint, fragment in [
            ("http", f"127.0.0.1:{port}", "Address already in use"),
            ("grpc", f"127.0.0.1:{port}", "Address already in use"),
            ("grpc", "no-such-host.invalid:0", "does not resolve"),
            ("http", "no-such-host.invalid:0", "does not resolve"),
        ]:
            config = gateway_config(tmp_path)
            config["sinks"]["out"]["path"] = str(tmp_path / "data" / "out.jsonl")
            config["receivers"][receiver]["endpoint"] = endpoint
            result = _cli(tmp_path, "run", yaml.safe_dump(config))
            assert result.returncode == 1, result.stderr
            assert f"receivers.{receiver}.endpoint '{endpoint}': cannot listen: " in result.stderr, result.stderr
            assert fragment in result.stderr
            assert "add_port.cc" not in result.stderr and "Traceback" not in result.stderr
            assert not (tmp_path / "data").exists(), "a sink created its files before the failure"
    finally:
        taken.close()


# -- every error at once, in the user's terms -------------------------------------------------


def test_every_error_in_one_run_with_suggestions(tmp_path: Path) -> None:
    """A Langfuse sink once took three rounds of `check`: variables, then keys, then routes."""
    result = _check(tmp_path, """
recievers: {}
sinks:
  lf:
    type: langfuse
    endpoint: https://cloud.langfuse.com
    public_key: ${env:LF_PK_UNSET}
    secret_key: ${env:LF_SK_UNSET}
    enviroment: production
    batch: {max_delay: 200}
  archive: {type: fiel, path: x.jsonl}
routes:
  - {name: main, sinks: [lf, archiv]}
""")
    assert result.returncode == 1
    for expected in [
        "recievers: unknown key; did you mean 'receivers'?",
        "sinks.lf.public_key: environment variable LF_PK_UNSET is not set",
        "sinks.lf.secret_key: environment variable LF_SK_UNSET is not set",
        "sinks.lf.enviroment: unknown key; did you mean 'environment'?",
        "sinks.lf.batch.max_delay: a duration needs a unit: write 200ms or 200s",
        "sinks.archive.type: unknown sink type 'fiel'; expected one of: file, otlp, jaeger, langfuse, loadbalancing; did you mean 'file'?",
        "routes[0].sinks[1]: no sink named 'archiv' (sinks: archive, lf); did you mean 'archive'?",
    ]:
        assert expected in result.stderr, f"{expected!r} not in:\n{result.stderr}"
    assert "7 errors" in result.stderr


@pytest.mark.parametrize("text, expected", [
    ("sinks: {path: ./x.jsonl}", "sinks.path: expected a mapping of sink name to sink settings"),
    ("sinks: [a]", "sinks: expected a mapping of sink name to sink settings"),
    ("sinks: {a: {type: file}}\nroutes: {name: r}", "routes: expected a list of routes"),
    ("sinks: {a: {type: file}}\nroutes: [{name: r, sinks: a}]", "routes[0].sinks: expected a list of sink names"),
    ("sinks: {a: {type: file, keep: many}}", "sinks.a.keep: expected a whole number, got 'many'"),
])
def test_wrong_shapes_are_described_in_the_users_terms(tmp_path: Path, text: str, expected: str) -> None:
    result = _check(tmp_path, text)
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr
    assert "Input should be" not in result.stderr and "valid dictionary" not in result.stderr


# -- variables and durations ------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("${env:TOKEN", "sinks.a.headers.authorization: unclosed ${ in '${env:TOKEN'"),
    ("Bearer ${env:}", "sinks.a.headers.authorization: no variable name in '${env:}'"),
    ("${}", "sinks.a.headers.authorization: no variable name in '${}'"),
    ("${env:1BAD}", "'1BAD' is not a variable name"),
])
def test_malformed_variables_are_errors_naming_the_key(tmp_path: Path, value: str, expected: str) -> None:
    result = _check(tmp_path, yaml.safe_dump({"sinks": {"a": {"type": "otlp", "endpoint": "collector:4317",
                                                              "headers": {"authorization": value}}}}))
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr


def test_variable_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "sinks: {a: {type: file, path: '${env:OUT_UNSET:-fallback.jsonl}', logs_path: '${env:OUT_EMPTY:-l.jsonl}'}}"
    monkeypatch.delenv("OUT_UNSET", raising=False)
    monkeypatch.setenv("OUT_EMPTY", "")
    result = _check(tmp_path, text)
    assert result.returncode == 0, result.stderr
    from gateway.config import parse

    config = parse(text, environ={"OUT_UNSET": "set.jsonl", "OUT_EMPTY": ""})
    assert config.sinks["a"].path == "set.jsonl" and config.sinks["a"].logs_path == "l.jsonl"


def test_a_bare_number_for_a_duration_is_an_error(tmp_path: Path) -> None:
    result = _check(tmp_path, "sinks: {a: {type: file, retry: {initial: 1, max: 30s}}}\n"
                              "service: {shutdown_grace: 2.5, config_watch_interval: 0}")
    assert result.returncode == 1
    assert "sinks.a.retry.initial: a duration needs a unit: write 1ms or 1s" in result.stderr
    assert "service.shutdown_grace: a duration needs a unit: write 2.5ms or 2.5s" in result.stderr
    assert "config_watch_interval" not in result.stderr  # 0 is 0 in every unit
    assert "2 errors" in result.stderr


# -- processors: present means on ------------------------------------------------------------


@pytest.mark.parametrize("section", ["{redact: {content: drop}}", "{redact: {}}", "{redact: }"])
def test_a_present_processor_section_is_on_and_check_says_so(tmp_path: Path, section: str) -> None:
    result = _check(tmp_path, f"sinks: {{a: {{type: file}}}}\npipeline: {section}")
    assert result.returncode == 0, result.stderr
    assert "processors: normalize, price, account, llm_metrics, feedback, redact" in result.stdout
    off = _check(tmp_path, "sinks: {a: {type: file}}\npipeline: {redact: {enabled: false, content: drop}, price: {enabled: false}}")
    assert "processors: normalize, account, llm_metrics, feedback\n" in off.stdout


def test_redact_with_only_content_set_redacts_through_the_gateway(tmp_path: Path) -> None:
    """`pipeline: {redact: {content: drop}}` once passed check and redacted nothing."""
    config = gateway_config(tmp_path)
    config["pipeline"]["redact"] = {"content": "drop"}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        req = ExportTraceServiceRequest()
        span = req.resource_spans.add().scope_spans.add().spans.add(
            trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="chat")
        for key, value in (("gen_ai.prompt", "mail alice@example.com"), ("note", "card 4111 1111 1111 1111")):
            attr = span.attributes.add(key=key)
            attr.value.string_value = value
        assert requests.post(f"{gw.http}/v1/traces", data=req.SerializeToString(), headers=PROTO, timeout=5).status_code == 200
        spans = wait_for(lambda: spans_in(read_json_lines(tmp_path / "out.jsonl")))
        written = (tmp_path / "out.jsonl").read_text()
        assert "alice@example.com" not in written and "4111 1111" not in written
        assert "[REDACTED:credit_card]" in written
        assert "gen_ai.prompt" not in {a["key"] for a in spans[0]["attributes"]} or "alice" not in written
    finally:
        assert gw.stop() == 0


# -- what /metrics and the start-up log tell ---------------------------------------------------


def _llm_span(scope: object, i: int, request_model: str, response_model: str | None, error: bool) -> None:
    span = scope.spans.add(trace_id=i.to_bytes(16, "big"), span_id=i.to_bytes(8, "big"), name=f"chat {request_model}",  # type: ignore[attr-defined]
                           start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_001_000_000_000)
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": request_model}
    if response_model:
        attrs |= {"gen_ai.response.model": response_model}
    for key, value in attrs.items():
        span.attributes.add(key=key).value.string_value = value
    if not error:
        span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = 10
        span.attributes.add(key="gen_ai.usage.output_tokens").value.int_value = 5
    else:
        span.status.code = 2


def test_llm_metrics_label_a_call_by_its_requested_model_whether_it_failed_or_not(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, llm=True)
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        req = ExportTraceServiceRequest()
        scope = req.resource_spans.add().scope_spans.add()
        _llm_span(scope, 1, "gpt-4o", "gpt-4o-2024-08-06", error=False)
        _llm_span(scope, 2, "gpt-4o", "gpt-4o-2024-08-06", error=False)
        _llm_span(scope, 3, "gpt-4o", None, error=True)
        assert requests.post(f"{gw.http}/v1/traces", data=req.SerializeToString(), headers=PROTO, timeout=5).status_code == 200
        wait_for(lambda: metric(gw.admin, "otelgate_llm_requests_total") == 3)
        # errors / requests by model: one PromQL division over one label
        assert metric(gw.admin, "otelgate_llm_requests_total", model="gpt-4o") == 3
        assert metric(gw.admin, "otelgate_llm_requests_total", model="gpt-4o", status="error") == 1
        assert metric(gw.admin, "otelgate_llm_requests_total", response_model="gpt-4o-2024-08-06") == 2
        assert metric(gw.admin, "otelgate_llm_tokens_total", model="gpt-4o", type="input") == 20
        text = requests.get(f"{gw.admin}/metrics", timeout=5).text
        assert 'otelgate_build_info{python="' in text
        for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
            assert f"\n{name} " in text, name
        loaded = next(line for line in gw.lines if " loaded " in line)
        for fragment in ("listeners='admin=127.0.0.1:", "OTLP/gRPC=127.0.0.1:", "sinks=out(file)", "routes=default",
                         "processors=normalize,price,account,llm_metrics", "prices='genai-prices "):
            assert fragment in loaded, loaded
    finally:
        assert gw.stop() == 0
