"""The Langfuse SDK pointed at otelgate: its OTLP exporter posts to the Langfuse-compatible path
with Basic auth; otelgate checks the key pair, names the tenant, and a `langfuse` sink with
`forward_credentials` delivers each team's spans to Langfuse (the strict test endpoint) with that
team's own key pair."""

from __future__ import annotations

import base64
from pathlib import Path

import requests
from langfuse import Langfuse
from opentelemetry.sdk.trace import TracerProvider

from tests.gateway_process import GatewayProcess, gateway_config, wait_for
from tests.langfuse_server import LangfuseServer
from tests.test_backpressure_health_metrics import metric

TEAMS = {"pk-lf-team-a": "sk-lf-team-a", "pk-lf-team-b": "sk-lf-team-b"}


def _use_langfuse_sdk(base_url: str, public_key: str, secret_key: str, name: str) -> None:
    client = Langfuse(public_key=public_key, secret_key=secret_key, base_url=base_url,
                      tracer_provider=TracerProvider(), flush_interval=0.1)
    with client.start_as_current_observation(name=f"{name}-request", as_type="span"):
        with client.start_as_current_observation(name=f"{name}-llm", as_type="generation", model="gpt-4o-mini",
                                                 usage_details={"input": 120, "output": 30}) as generation:
            generation.update(output="hello")
    client.flush()
    client.shutdown()


def _tenant(received: object) -> str:
    attrs = {kv.key: kv.value.string_value for kv in received.request.resource_spans[0].resource.attributes}  # type: ignore[attr-defined]
    return attrs["otelgate.tenant"]


def test_langfuse_sdk_through_otelgate_keeps_each_teams_credentials(tmp_path: Path) -> None:
    with LangfuseServer(keys=dict(TEAMS)).run_in_thread() as langfuse:
        config = gateway_config(tmp_path, llm=True)
        config["auth"] = {"langfuse_keys": [{"public_key": pk, "secret_key": sk, "tenant": pk.removeprefix("pk-lf-")}
                                            for pk, sk in TEAMS.items()]}
        config["sinks"]["lf"] = {"type": "langfuse", "endpoint": langfuse.url, "forward_credentials": True,
                                 "batch": {"max_delay": "20ms"}}
        config["routes"] = [{"name": "langfuse", "sinks": ["lf"], "continue": True}, {"name": "all", "sinks": ["out"]}]
        gw = GatewayProcess(config, tmp_path).wait_ready()
        try:
            _use_langfuse_sdk(gw.http, "pk-lf-team-a", TEAMS["pk-lf-team-a"], "a")
            _use_langfuse_sdk(gw.http, "pk-lf-team-b", TEAMS["pk-lf-team-b"], "b")
            wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_spans_total", sink="lf") == 4)
            by_key: dict[str, set[str]] = {}
            for received in langfuse.received:
                pk = base64.b64decode(received.headers["authorization"].split()[1]).decode().split(":")[0]
                names = {s.name for rs in received.request.resource_spans for ss in rs.scope_spans for s in ss.spans}
                by_key.setdefault(pk, set()).update(names)
                assert _tenant(received) == pk.removeprefix("pk-lf-")
            assert by_key == {"pk-lf-team-a": {"a-request", "a-llm"}, "pk-lf-team-b": {"b-request", "b-llm"}}
            assert not langfuse.rejected

            # A wrong pair never gets in; nor does an OTLP client without an API key (none configured).
            _use_langfuse_sdk(gw.http, "pk-lf-intruder", "sk-wrong", "intruder")
            wait_for(lambda: metric(gw.admin, "otelgate_receiver_requests_total", outcome="unauthenticated") >= 1)
            r = requests.post(f"{gw.http}/v1/traces", data=b"", headers={"Content-Type": "application/x-protobuf"}, timeout=5)
            assert r.status_code == 401
            assert metric(gw.admin, "otelgate_receiver_accepted_spans_total") == 4
            assert "sk-wrong" not in gw.log_text() and "sk-lf-team-a" not in gw.log_text()
        finally:
            assert gw.stop() == 0
