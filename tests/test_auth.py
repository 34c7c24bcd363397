"""API keys on both receivers and the admin token, through the real gateway and the real SDK exporters."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from gateway.config import ConfigError, parse
from tests.gateway_process import GatewayProcess, gateway_config, read_proto_lines, wait_for
from tests.sdk_export import export

KEY_INLINE = "ogk_inline_7f3a9c2e5b1d4a6f8e0c"
KEY_FILE = "ogk_file_2b8d4f6a1c3e5a7b9d0f"
KEY_ENV = "ogk_env_9e1c3a5b7d2f4e6a8c0b"
ADMIN_TOKEN = "adm_5c7e9a1b3d5f7a9c1e3b"
ENV_NAME = "OTELGATE_TEST_API_KEY"
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway with three keys (inline, file, environment) and an admin token."""
    tmp_path = tmp_path_factory.mktemp("auth")
    (tmp_path / "key.txt").write_text(KEY_FILE + "\n")
    config = _config(tmp_path)
    config["auth"] = {"keys": [
        {"key": KEY_INLINE, "tenant": "acme"},
        {"key_file": str(tmp_path / "key.txt"), "tenant": "beta"},
        {"key_env": ENV_NAME, "tenant": "gamma"},
    ]}
    config["admin"]["token"] = ADMIN_TOKEN
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_NAME, KEY_ENV)
        gateway = GatewayProcess(config, tmp_path).wait_ready()
    yield gateway
    gateway.stop()


def _endpoint(gw: GatewayProcess, protocol: str) -> str:
    return gw.grpc if protocol == "grpc" else gw.http


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _resources_by_span(path: Path) -> dict[str, dict[str, Any]]:
    """Span name -> its resource's attributes (as plain values), from the file sink."""
    out = {}
    for line in read_proto_lines(path):
        for rs in line.get("resourceSpans", []):
            attrs = {a["key"]: next(iter(a["value"].values())) for a in rs.get("resource", {}).get("attributes", [])}
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    out[span["name"]] = attrs
    return out


def _config(tmp_path: Path) -> dict[str, Any]:
    """One protobuf file sink: it writes the received bytes unless the request was edited, so a
    tenant written without dropping those bytes would not show."""
    return gateway_config(tmp_path, format="proto", path=str(tmp_path / "out.pb"))


def _out(gw: GatewayProcess) -> Path:
    return gw.workdir / "out.pb"


def _arrived(gw: GatewayProcess, name: str) -> dict[str, Any]:
    return wait_for(lambda: _resources_by_span(_out(gw)).get(name))


def _metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    text = requests.get(f"{gw.admin}/metrics", headers=_bearer(ADMIN_TOKEN), timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def _assert_refused(gw: GatewayProcess, protocol: str, headers: dict[str, str] | None) -> None:
    """The export fails, is counted, and nothing of it reaches the sink (checked behind a good export)."""
    before = _metric(gw, "otelgate_receiver_requests_total", protocol=protocol, outcome="unauthenticated")
    refused = f"refused-{uuid.uuid4().hex}"
    assert not export(protocol, _endpoint(gw, protocol), refused, headers)
    assert _metric(gw, "otelgate_receiver_requests_total", protocol=protocol, outcome="unauthenticated") == before + 1
    barrier = f"barrier-{uuid.uuid4().hex}"
    assert export(protocol, _endpoint(gw, protocol), barrier, _bearer(KEY_INLINE))
    _arrived(gw, barrier)
    assert refused not in _resources_by_span(_out(gw))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_without_a_key_nothing_gets_in(gw: GatewayProcess, protocol: str) -> None:
    _assert_refused(gw, protocol, None)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("headers", [
    _bearer("ogk_wrong_0000000000000000"),
    _bearer(KEY_INLINE[:-1]),                       # one character short
    {"Authorization": f"Basic {KEY_INLINE}"},       # right key, wrong scheme
    {"x-api-key": KEY_INLINE},                      # right key, wrong header
], ids=["unknown", "prefix", "basic", "other-header"])
def test_a_wrong_key_gets_nothing_in(gw: GatewayProcess, protocol: str, headers: dict[str, str]) -> None:
    _assert_refused(gw, protocol, headers)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("key, tenant", [(KEY_INLINE, "acme"), (KEY_FILE, "beta"), (KEY_ENV, "gamma")],
                         ids=["key", "key_file", "key_env"])
def test_a_known_key_names_the_tenant(gw: GatewayProcess, protocol: str, key: str, tenant: str) -> None:
    """The key's tenant is on the resource; the sender's own claims (header, attribute) are ignored."""
    name = f"ok-{uuid.uuid4().hex}"
    assert export(protocol, _endpoint(gw, protocol), name, {**_bearer(key), "x-otelgate-tenant": "mallory"},
                  resource={"otelgate.tenant": "mallory"})
    resource = _arrived(gw, name)
    assert resource["otelgate.tenant"] == tenant
    assert resource["service.name"] == "sdk-test"


@pytest.mark.parametrize("content_type", ["application/json", "application/x-protobuf"])
def test_http_401_is_a_status_in_the_request_encoding(gw: GatewayProcess, content_type: str) -> None:
    body = b"{}" if content_type == "application/json" else trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
    r = requests.post(f"{gw.http}/v1/traces", data=body, timeout=5,
                      headers={"Content-Type": content_type, "Authorization": "Bearer nope-nope-nope"})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.headers["Content-Type"] == content_type
    if content_type == "application/json":
        status = status_pb2.Status(code=r.json()["code"], message=r.json()["message"])
    else:
        status = status_pb2.Status.FromString(r.content)
    assert status.code == code_pb2.UNAUTHENTICATED
    assert status.message == "unknown API key"
    r = requests.post(f"{gw.http}/v1/traces", data=body, timeout=5, headers={"Content-Type": content_type})
    assert r.status_code == 401 and "Bearer <key>" in r.text


def test_grpc_answer_is_unauthenticated(gw: GatewayProcess) -> None:
    with grpc.insecure_channel(gw.grpc) as channel:
        call = channel.unary_unary(EXPORT_METHOD)
        with pytest.raises(grpc.RpcError) as err:
            call(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "missing API key" in err.value.details()
        assert call(b"", timeout=5, metadata=(("authorization", f"Bearer {KEY_ENV}"),)) == b""  # empty request: OK


def test_keys_never_reach_the_log(gw: GatewayProcess) -> None:
    export("http", gw.http, "log-check", _bearer("ogk_wrong_1111111111111111"))
    text = gw.log_text()
    for secret in (KEY_INLINE, KEY_FILE, KEY_ENV, ADMIN_TOKEN, "ogk_wrong_1111111111111111"):
        assert secret not in text
    # What the log does say about the keys: their fingerprints, at start.
    assert all(_fingerprint(k) in text for k in (KEY_INLINE, KEY_FILE, KEY_ENV))


def test_admin_token_guards_all_but_health(gw: GatewayProcess) -> None:
    assert requests.get(f"{gw.admin}/health", timeout=5).status_code == 200
    for headers in ({}, _bearer("wrong"), _bearer(KEY_INLINE), {"Authorization": ADMIN_TOKEN}):
        r = requests.get(f"{gw.admin}/metrics", headers=headers, timeout=5)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert "otelgate_" not in r.text
    assert requests.get(f"{gw.admin}/nope", timeout=5).status_code == 401  # every path but /health
    r = requests.get(f"{gw.admin}/metrics", headers=_bearer(ADMIN_TOKEN), timeout=5)
    assert r.status_code == 200 and "otelgate_receiver_requests_total" in r.text


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_named_header_carries_the_raw_key(tmp_path: Path, protocol: str) -> None:
    config = _config(tmp_path)
    config["auth"] = {"header": "X-API-Key", "keys": [{"key": KEY_INLINE, "tenant": "acme"}], "tenant_attribute": "tenant.id"}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        endpoint = _endpoint(gw, protocol)
        assert not export(protocol, endpoint, "bearer", _bearer(KEY_INLINE))  # the key, but not in the named header
        assert export(protocol, endpoint, "raw", {"x-api-key": KEY_INLINE})
        resource = _arrived(gw, "raw")
        assert resource["tenant.id"] == "acme" and "otelgate.tenant" not in resource
        assert "bearer" not in _resources_by_span(_out(gw))
        if protocol == "http":
            r = requests.post(f"{gw.http}/v1/traces", data=b"{}", headers={"Content-Type": "application/json"}, timeout=5)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'ApiKey header="x-api-key"'
    finally:
        gw.stop()


def _errors(auth: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    text = f"sinks: {{out: {{type: file, path: /tmp/x}}}}\nauth: {auth!r}\n"
    with pytest.raises(ConfigError) as err:
        parse(text, environ=environ or {})
    return err.value.errors


def test_config_errors_name_the_key_and_never_show_it(tmp_path: Path) -> None:
    assert _errors({"keys": [{"key_file": str(tmp_path / "missing"), "tenant": "a"}]}) == [
        f"auth.keys[0]: key_file: cannot read {tmp_path / 'missing'}: No such file or directory"]
    assert _errors({"keys": [{"key_env": ENV_NAME, "tenant": "a"}]}) == [
        f"auth.keys[0]: key_env: environment variable {ENV_NAME} is not set"]
    assert _errors({"keys": [{"key": KEY_INLINE, "key_env": ENV_NAME, "tenant": "a"}]}) == [
        "auth.keys[0]: give exactly one of key, key_file, key_env"]
    assert _errors({"keys": [{"key": "has space", "tenant": "a"}]}) == [
        "auth.keys[0]: key: a key must be visible ASCII without spaces (it travels in a header)"]
    assert _errors({"keys": [{"key": KEY_INLINE}]}) == ["auth.keys[0].tenant: required"]
    assert _errors({"keys": []}) == ["auth: give keys (OTLP API keys) or langfuse_keys, or omit auth"]
    assert _errors({"header": "x-key-bin", "keys": [{"key": KEY_INLINE, "tenant": "a"}]})[0].startswith("auth.header: not a usable header name")
    duplicate = _errors({"keys": [{"key": KEY_INLINE, "tenant": "a"}, {"key": KEY_INLINE, "tenant": "b"}]})
    assert duplicate == [f"auth: keys[1]: the same key as keys[0] (fingerprint {_fingerprint(KEY_INLINE)}); one key names one tenant"]
    assert not any(KEY_INLINE in e for e in duplicate)


def test_key_env_reads_the_environment_the_config_expands() -> None:
    text = f"sinks: {{out: {{type: file, path: /tmp/x}}}}\nauth: {{keys: [{{key_env: {ENV_NAME}, tenant: a}}]}}\n"
    assert parse(text, environ={ENV_NAME: f"  {KEY_ENV}\n"}).auth.keys[0].secret() == KEY_ENV  # whitespace trimmed


def test_keys_are_masked_when_the_config_is_dumped() -> None:
    config = parse(f"sinks: {{out: {{type: file, path: /tmp/x}}}}\nauth: {{keys: [{{key: {KEY_INLINE}, tenant: a}}]}}\n"
                   f"admin: {{token: {ADMIN_TOKEN}}}\n")
    dumped = str(config.model_dump(mode="json"))
    assert KEY_INLINE not in dumped and ADMIN_TOKEN not in dumped
