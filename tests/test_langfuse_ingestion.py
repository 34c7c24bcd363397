"""The Langfuse ingestion API (what the Langfuse SDK v2 and so Dify's Langfuse integration speak),
through the real gateway: answers as Langfuse's, events to priced spans with stable ids, scores
to evaluation log records, metrics and Langfuse scores."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.receivers.langfuse_ingestion import (
    convert, observation_span_id, project_id, root_span_id, trace_id, usage_and_cost,
)
from tests.clients import langfuse_v2
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.langfuse_server import LangfuseServer
from tests.test_backpressure_health_metrics import _fill, metric, stuck  # noqa: F401 (stuck: a fixture)

PK, SK = "pk-lf-dify-0001", "sk-lf-dify-0001"
GPT_4O = (2.5e-6, 10e-6)  # USD per token, published: $2.50 / $10 per million
SONNET_35 = (3e-6, 15e-6)  # $3 / $15 per million


@pytest.fixture(scope="session")
def langfuse_v2_dir() -> Path:
    where = langfuse_v2.install()
    if isinstance(where, str):
        pytest.skip(where)
    return where


def _attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", [])}


def _records(path: Path) -> list[dict[str, Any]]:
    return [r for line in read_json_lines(path) for rl in line.get("resourceLogs", [])
            for sl in rl["scopeLogs"] for r in sl["logRecords"]]


def _feedback(gw: GatewayProcess, family: str, labels: dict[str, str]) -> float:
    """`metric()` for the feedback families, whose label `name` clashes with its parameter."""
    text = requests.get(f"{gw.admin}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(family + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def _basic(pk: str, sk: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{pk}:{sk}".encode()).decode()}


def test_dify_langfuse_integration_with_the_real_sdk_v2(tmp_path: Path, langfuse_v2_dir: Path) -> None:
    with LangfuseServer(keys={PK: SK}).run_in_thread() as langfuse:
        config = gateway_config(tmp_path, llm=True)
        config["receivers"]["http"]["langfuse_hold"] = "3s"  # the SDK's next flush comes well before
        config["auth"] = {"langfuse_keys": [{"public_key": PK, "secret_key": SK, "tenant": "dify"}]}
        config["sinks"]["lf"] = {"type": "langfuse", "endpoint": langfuse.base_url, "forward_credentials": True,
                                 "batch": {"max_delay": "20ms"}}
        gw = GatewayProcess(config, tmp_path).wait_ready()
        try:
            run = langfuse_v2.run(langfuse_v2_dir, gw.http, PK, SK)
            assert run.returncode == 0, run.stderr[-3000:]
            ids = json.loads(run.stdout.strip().splitlines()[-1])
            assert ids["project"] == project_id(PK)  # auth_check() and Dify's project-id read passed

            # 3 traces (roots) + llm; workflow: LLM, Code; chatflow: workflow, LLM, LLM 2; + retrieval (held, then joined)
            spans = wait_for(lambda: len(s := spans_in(read_json_lines(tmp_path / "out.jsonl"))) >= 10 and s)
            records = wait_for(lambda: len(r := _records(tmp_path / "out.logs.jsonl")) >= 2 and r)
            wait_for(lambda: len(langfuse.spans()) >= 10 and len(langfuse.scores) >= 2)
            time.sleep(0.5)  # nothing more arrives
            spans = spans_in(read_json_lines(tmp_path / "out.jsonl"))
            assert len(spans) == 10 and len(langfuse.spans()) == 10
            by_name: dict[str, list[dict[str, Any]]] = {}
            for s in spans:
                by_name.setdefault(s["name"], []).append(s)

            # One priced span per call, cost exactly what the spans say.
            calls = [s for s in spans if _attrs(s).get("otelgate.llm.call")]
            assert sorted(s["name"] for s in calls) == ["LLM", "LLM", "LLM 2", "llm"]
            llm = _attrs(by_name["llm"][0])
            assert llm["otelgate.cost.source"] == "reported" and llm["gen_ai.usage.cost"] == pytest.approx(0.000036, abs=1e-12)
            assert (llm["gen_ai.usage.input_tokens"], llm["gen_ai.usage.output_tokens"]) == ("120", "30")
            nodes = {_attrs(s)["otelgate.langfuse.observation_id"]: _attrs(s) for s in by_name["LLM"]}
            a, c = nodes[ids["node_a"]], nodes[ids["node_c"]]
            assert a["gen_ai.provider.name"] == "openai" and a["otelgate.cost.source"] == "computed"
            assert a["gen_ai.usage.cost"] == pytest.approx(1000 * GPT_4O[0] + 200 * GPT_4O[1], abs=1e-9)
            assert c["gen_ai.provider.name"] == "anthropic"
            assert c["gen_ai.usage.cost"] == pytest.approx(2000 * SONNET_35[0] + 100 * SONNET_35[1], abs=1e-9)
            assert by_name["LLM 2"][0]["status"]["code"] == 2  # the failed node: an error span

            # Stable ids: the Langfuse ids, as OTel ids; roots, parents, trace-level and observation scores.
            chat = next(s for s in by_name["message"] if s["traceId"] == ids["chatflow"].replace("-", ""))
            assert chat["spanId"] == root_span_id(ids["chatflow"]).hex() and "parentSpanId" not in chat
            workflow = next(s for s in by_name["workflow"] if s["traceId"] == chat["traceId"] and s.get("parentSpanId"))
            assert workflow["spanId"] == observation_span_id(ids["chat_run"]).hex()
            assert workflow["parentSpanId"] == chat["spanId"]
            node = next(s for s in by_name["LLM"] if s["traceId"] == chat["traceId"])
            assert node["parentSpanId"] == workflow["spanId"]
            root_attrs = _attrs(chat)
            assert root_attrs["session.id"] == "conv-0001" and root_attrs["user.id"] == "end-user-7"
            assert root_attrs["langfuse.trace.metadata.app_id"] == "app-0001"

            # span() now, end() in a later request: one span, joined while held.
            (retrieval,) = by_name["retrieval"]
            assert int(retrieval["endTimeUnixNano"]) - int(retrieval["startTimeUnixNano"]) == 3_000_000_000
            assert "otelgate.langfuse.partial" not in _attrs(retrieval)
            assert _attrs(retrieval)["langfuse.observation.output"] == '{"documents":3}'

            # Resources say where the data came from.
            lines = read_json_lines(tmp_path / "out.jsonl")
            resources = [{a["key"]: a["value"]["stringValue"] for a in rs["resource"]["attributes"]}
                         for line in lines for rs in line["resourceSpans"]]
            assert all(r["otelgate.intake"] == "langfuse.ingestion" and r["otelgate.tenant"] == "dify" for r in resources)

            # Scores: evaluation log records joined to trace and span, counted, and Langfuse scores.
            like = next(r for r in records if _attrs(r)["gen_ai.evaluation.name"] == "user-feedback")
            assert like["eventName"] == "gen_ai.evaluation.result"
            assert like["traceId"] == ids["message"].replace("-", "")
            assert like["spanId"] == root_span_id(ids["message"]).hex()
            assert _attrs(like)["gen_ai.evaluation.score.value"] == 1.0
            rating = next(r for r in records if _attrs(r)["gen_ai.evaluation.name"] == "rating")
            assert rating["spanId"] == observation_span_id(ids["node_c"]).hex()
            app = f"langfuse:{PK}"
            wait_for(lambda: _feedback(gw, "otelgate_llm_feedback_total", {"app": app, "name": "rating", "label": "dislike"}) == 1)
            assert _feedback(gw, "otelgate_llm_feedback_total", {"app": app, "name": "user-feedback", "label": "none"}) == 1
            assert _feedback(gw, "otelgate_llm_feedback_score_count", {"app": app, "name": "user-feedback"}) == 1
            assert _feedback(gw, "otelgate_llm_feedback_score_sum", {"app": app, "name": "user-feedback"}) == 1.0

            scores = langfuse.scores
            assert scores["score-like-0001"] == {
                "id": "score-like-0001", "name": "user-feedback", "value": 1.0, "dataType": "NUMERIC",
                "traceId": ids["message"].replace("-", ""), "comment": "very helpful, mail me at jane@example.com"}
            assert scores["score-label-0002"]["value"] == "dislike"
            assert scores["score-label-0002"]["dataType"] == "CATEGORICAL"
            assert scores["score-label-0002"]["observationId"] == observation_span_id(ids["node_c"]).hex()
            lf_calls = [s for s in langfuse.spans() if any(kv.key == "otelgate.llm.call" for kv in s.attributes)]
            assert len(lf_calls) == 4
            # What Langfuse needs arrives intact: generations with model, usage and the same cost.
            lf = {s.name + ":" + s.span_id.hex(): {kv.key: kv.value for kv in s.attributes} for s in lf_calls}
            lf_llm = next(a for k, a in lf.items() if k.startswith("llm:"))
            assert lf_llm["langfuse.observation.type"].string_value == "generation"
            assert lf_llm["langfuse.observation.model.name"].string_value == "gpt-4o-mini"
            assert json.loads(lf_llm["langfuse.observation.usage_details"].string_value) == {
                "input": 120, "output": 30, "total": 150}
            assert json.loads(lf_llm["langfuse.observation.cost_details"].string_value)["total"] == pytest.approx(0.000036)
            lf_c = lf["LLM:" + observation_span_id(ids["node_c"]).hex()]
            assert json.loads(lf_c["langfuse.observation.cost_details"].string_value)["total"] == pytest.approx(
                c["gen_ai.usage.cost"], abs=1e-12)
            lf_root = next(s for s in langfuse.spans() if s.span_id == root_span_id(ids["message"]))
            root_kv = {kv.key: kv.value.string_value for kv in lf_root.attributes}
            assert root_kv["user.id"] == "end-user-7" and root_kv["session.id"] == "conv-0001"
            assert not langfuse.rejected

            # The wrong key pair: Langfuse's 401 on both routes; the SDK's auth_check fails.
            r = requests.get(f"{gw.http}/api/public/projects", headers=_basic(PK, "sk-wrong"), timeout=5)
            assert r.status_code == 401 and r.json()["error"] == "UnauthorizedError"
            r = requests.post(f"{gw.http}/api/public/ingestion", json={"batch": []}, headers=_basic("pk-x", "sk-y"), timeout=5)
            assert r.status_code == 401 and set(r.json()) == {"error", "message"}
            bad = langfuse_v2.run(langfuse_v2_dir, gw.http, PK, "sk-wrong")
            assert bad.returncode == 3 and "401" in bad.stderr, bad.stderr[-2000:]
            assert "sk-wrong" not in gw.log_text()
        finally:
            assert gw.stop() == 0


def _event(etype: str, body: dict[str, Any], ts: str = "2026-03-01T12:00:00.000Z") -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "type": etype, "timestamp": ts, "body": body}


def _ingest(gw: GatewayProcess, batch: list[Any], **headers: str) -> requests.Response:
    return requests.post(f"{gw.http}/api/public/ingestion", json={"batch": batch, "metadata": None},
                         headers={**_basic("pk-any", "sk-any"), **headers}, timeout=5)


def test_ingestion_answers_as_langfuse_does(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, llm=True)
    config["receivers"]["http"]["langfuse_hold"] = "1s"
    config["pipeline"] = {"redact": {"enabled": True, "content": "hash", "hash_secret": "0123456789abcdef"}}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        good = _event("generation-create", {"id": "gen-1", "traceId": "t-1", "name": "chat", "model": "gpt-4o",
                                            "startTime": "2026-03-01T12:00:00Z", "endTime": "2026-03-01T12:00:01Z",
                                            "usage": {"input": 10, "output": 2, "unit": "TOKENS"}})
        dify_node = _event("generation-create", {"id": "gen-2", "traceId": "t-1", "name": "LLM", "model": "house-model-7",
                                                 "startTime": "2026-03-01T12:00:00Z", "endTime": "2026-03-01T12:00:01Z",
                                                 "metadata": {"model_provider": "langgenius/openai/openai"},
                                                 "usage": {"input": 1, "output": 1}})
        unknown = _event("trace-delete", {"id": "t-1"})
        no_body = {"id": "ev-no-body", "type": "span-create", "timestamp": "2026-03-01T12:00:00Z"}
        orphan_update = _event("span-update", {})
        log = _event("sdk-log", {"log": "retrying"})
        score = _event("score-create", {"id": "s-1", "traceId": "t-1", "name": "thumbs", "value": "up",
                                        "comment": "call me on 555-0100"})
        r = _ingest(gw, [good, dify_node, unknown, no_body, orphan_update, log, score, "not an event"])
        assert r.status_code == 207, r.text
        body = r.json()
        assert body["successes"] == [{"id": i, "status": 201} for i in (good["id"], dify_node["id"], score["id"])]
        errors = {e["id"]: e for e in body["errors"]}
        assert set(errors) == {unknown["id"], "ev-no-body", orphan_update["id"], "unknown"}
        assert all(e["status"] == 400 and e["message"] == "Invalid request data" and e["error"] for e in errors.values())
        assert metric(gw.admin, "otelgate_receiver_rejected_spans_total", reason="invalid_langfuse_event") == 4

        assert requests.post(f"{gw.http}/api/public/ingestion", data=b"{}", headers={
            **_basic("a", "b"), "Content-Type": "application/json"}, timeout=5).json() == {
            "message": "Invalid request data", "errors": ["batch: Required array"]}
        r = requests.get(f"{gw.http}/api/public/ingestion", timeout=5)
        assert r.status_code == 405 and r.json()["error"] == "MethodNotAllowedError"
        r = requests.get(f"{gw.http}/api/public/projects", headers=_basic("pk-any", "sk-any"), timeout=5)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == project_id("pk-any")

        # An update in a later request joins the held span; an update for nothing held is its own part.
        r = _ingest(gw, [_event("span-create", {"id": "open-1", "traceId": "t-2", "name": "tool",
                                                "startTime": "2026-03-01T12:00:00Z"})])
        assert r.status_code == 207 and not r.json()["errors"]
        r = _ingest(gw, [_event("span-update", {"id": "open-1", "traceId": "t-2", "endTime": "2026-03-01T12:00:02Z",
                                                "output": {"ok": True}})])
        assert r.status_code == 207 and not r.json()["errors"]
        r = _ingest(gw, [_event("span-create", {"id": "never-ends", "traceId": "t-2", "name": "forgotten",
                                                "startTime": "2026-03-01T12:00:05Z"})])
        time.sleep(1.8)  # past the hold: sent as it is
        r = _ingest(gw, [_event("span-update", {"id": "never-ends", "traceId": "t-2", "endTime": "2026-03-01T12:00:09Z"})])
        spans = wait_for(lambda: len(s := spans_in(read_json_lines(tmp_path / "out.jsonl"))) >= 5 and s)
        tool = [s for s in spans if s["name"] == "tool"]
        assert len(tool) == 1 and int(tool[0]["endTimeUnixNano"]) - int(tool[0]["startTimeUnixNano"]) == 2_000_000_000
        parts = [s for s in spans if s["spanId"] == observation_span_id("never-ends").hex()]
        assert len(parts) == 2 and sum(bool(_attrs(s).get("otelgate.langfuse.partial")) for s in parts) == 1
        assert all(s["traceId"] == trace_id("t-2").hex() for s in parts)

        node = next(s for s in spans if s["name"] == "LLM")  # Dify names the provider in the metadata only
        assert _attrs(node)["gen_ai.provider.name"] == "openai"
        gen = next(s for s in spans if s["name"] == "chat")
        assert _attrs(gen)["gen_ai.usage.cost"] == pytest.approx(10 * GPT_4O[0] + 2 * GPT_4O[1], abs=1e-9)
        (record,) = _records(tmp_path / "out.logs.jsonl")
        assert record["body"]["stringValue"].startswith("hmac-sha256:")  # the comment is content: redacted
        assert _attrs(record)["gen_ai.evaluation.score.label"] == "up"
        assert _feedback(gw, "otelgate_llm_feedback_total", {"app": "langfuse:pk-any", "name": "thumbs", "label": "up"}) == 1
        assert "retrying" in gw.log_text()  # sdk-log: logged, in neither list
    finally:
        assert gw.stop() == 0


def test_otel_evaluation_events_are_counted_and_become_scores(tmp_path: Path) -> None:
    with LangfuseServer().run_in_thread() as langfuse:
        config = gateway_config(tmp_path, llm=True)
        config["sinks"]["lf"] = {"type": "langfuse", "endpoint": langfuse.base_url, "public_key": "pk-lf-test-0001",
                                 "secret_key": "sk-lf-test-0001", "batch": {"max_delay": "20ms"},
                                 "retry": {"initial": "100ms", "max": "1s"}}
        gw = GatewayProcess(config, tmp_path).wait_ready()
        try:
            def record(name: str, value: float | None, label: str | None) -> dict[str, Any]:
                attrs = [{"key": "gen_ai.evaluation.name", "value": {"stringValue": name}}]
                if value is not None:
                    attrs.append({"key": "gen_ai.evaluation.score.value", "value": {"doubleValue": value}})
                if label is not None:
                    attrs.append({"key": "gen_ai.evaluation.score.label", "value": {"stringValue": label}})
                return {"timeUnixNano": "1772366400000000000", "eventName": "gen_ai.evaluation.result",
                        "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "attributes": attrs}
            export = {"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "chatbot"}}]},
                                        "scopeLogs": [{"logRecords": [record("helpfulness", 1.0, "like"),
                                                                      record("helpfulness", 0.0, "dislike"),
                                                                      record("helpfulness", 1.0, "like"),
                                                                      record("relevance", 0.8, None),
                                                                      {"body": {"stringValue": "plain log"}}]}]}]}
            langfuse.fail_next(2, status=429, retry_after=1)  # Langfuse's rate limit: retried, nothing lost or doubled
            r = requests.post(f"{gw.http}/v1/logs", json=export, timeout=5)
            assert r.status_code == 200
            wait_for(lambda: _feedback(gw, "otelgate_llm_feedback_total", {"app": "chatbot"}) == 4)
            assert _feedback(gw, "otelgate_llm_feedback_total", {"app": "chatbot", "name": "helpfulness", "label": "like"}) == 2
            assert _feedback(gw, "otelgate_llm_feedback_total", {"app": "chatbot", "name": "relevance", "label": "none"}) == 1
            assert _feedback(gw, "otelgate_llm_feedback_score_sum", {"app": "chatbot", "name": "relevance"}) == pytest.approx(0.8)
            # Scores to Langfuse (three distinct ids: the two equal "like"s at one instant are one score, upserted);
            # the plain log record is counted as rejected, never sent.
            wait_for(lambda: metric(gw.admin, "otelgate_sink_sent_log_records_total", sink="lf")
                     + metric(gw.admin, "otelgate_sink_dropped_log_records_total", sink="lf") >= 5)
            assert {(s["name"], s["value"]) for s in langfuse.scores.values()} == {
                ("helpfulness", 1.0), ("helpfulness", 0.0), ("relevance", 0.8)}
            assert all(s["traceId"] == "0af7651916cd43dd8448eb211c80319c" and s["observationId"] == "b7ad6b7169203331"
                       for s in langfuse.scores.values())
            assert langfuse.score_posts == 3 and [st for st, _ in langfuse.rejected] == [429, 429]  # one post per score id
        finally:
            assert gw.stop() == 0


def test_conversion_ids_usage_and_cost() -> None:
    """The mapping itself: stable ids, Langfuse v2 usage to Langfuse's usage/cost details (what the
    normalizer reads), counts in characters left out, Langfuse's event order within a batch."""
    assert trace_id("a1b2c3d4-0001-4e5f-8a9b-000000000001").hex() == "a1b2c3d400014e5f8a9b000000000001"
    assert trace_id("0af7651916cd43dd8448eb211c80319c").hex() == "0af7651916cd43dd8448eb211c80319c"
    assert trace_id("my-trace") == trace_id("my-trace") != trace_id("my-trace-2") and len(trace_id("my-trace")) == 16
    assert observation_span_id("b7ad6b7169203331").hex() == "b7ad6b7169203331"
    assert len(observation_span_id("node-1")) == 8 and observation_span_id("node-1") != root_span_id("node-1")
    assert trace_id("00000000-0000-0000-0000-000000000000") != bytes(16)  # never the invalid all-zero id

    assert usage_and_cost({"usage": {"input": 10, "output": 5, "total": 15, "unit": "TOKENS", "totalCost": 0.25}}) == (
        {"input": 10, "output": 5, "total": 15}, {"total": 0.25})
    assert usage_and_cost({"usage": {"promptTokens": 7, "completionTokens": 3, "totalTokens": 10}}) == (
        {"input": 7, "output": 3, "total": 10}, None)
    assert usage_and_cost({"usage": {"input": 40, "output": 12, "unit": "CHARACTERS"}}) == (None, None)
    assert usage_and_cost({"usageDetails": {"input": 5, "input_cached_tokens": 20, "output": 1, "bad": "x"},
                           "costDetails": {"input": 0.1, "output": 0.2}}) == (
        {"input": 5, "input_cached_tokens": 20, "output": 1}, {"input": 0.1, "output": 0.2})
    assert usage_and_cost({"usage": {"input": -1, "output": True, "total": 2.5}}) == (None, None)

    # An update listed before its create is applied after it (Langfuse sorts updates last).
    update = _event("generation-update", {"id": "g", "traceId": "t", "endTime": "2026-03-01T12:00:02Z",
                                          "usage": {"input": 3, "output": 1}}, ts="2026-03-01T12:00:00.000Z")
    create = _event("generation-create", {"id": "g", "traceId": "t", "name": "first", "model": "gpt-4o",
                                          "startTime": "2026-03-01T12:00:00Z"}, ts="2026-03-01T12:00:01.000Z")
    out = convert([update, create], lambda _id: None)
    assert not out.errors and not out.held and len(out.spans) == 1
    span = out.spans[0]
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert span.name == "first" and span.end_time_unix_nano - span.start_time_unix_nano == 2_000_000_000
    assert attrs["langfuse.observation.type"].string_value == "generation"
    assert json.loads(attrs["langfuse.observation.usage_details"].string_value) == {"input": 3, "output": 1}
    assert span.parent_span_id == root_span_id("t") and span.trace_id == trace_id("t")


def test_held_observations_are_sent_at_shutdown(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    config["receivers"]["http"]["langfuse_hold"] = "60s"
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        r = _ingest(gw, [_event("span-create", {"id": "still-open", "traceId": "t-9", "name": "long-tool",
                                                "startTime": "2026-03-01T12:00:00Z"})])
        assert r.status_code == 207 and r.json()["successes"]
        time.sleep(0.3)
        assert not spans_in(read_json_lines(tmp_path / "out.jsonl"))  # held, waiting for its end
    finally:
        assert gw.stop() == 0
    (span,) = spans_in(read_json_lines(tmp_path / "out.jsonl"))  # acknowledged, so delivered
    assert span["name"] == "long-tool" and span["spanId"] == observation_span_id("still-open").hex()


def test_backpressure_refuses_the_whole_batch(stuck: Any) -> None:
    gw, fifo = stuck
    _fill(gw)
    batch = [_event("generation-create", {"id": "refused-gen", "traceId": "t-r", "name": "refused-call",
                                          "model": "gpt-4o", "startTime": "2026-03-01T12:00:00Z",
                                          "endTime": "2026-03-01T12:00:01Z"})]
    r = _ingest(gw, batch)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "queue full" in r.json()["message"]
    fifo.read_for(30)
    wait_for(lambda: _ingest(gw, [_event("span-create", {"id": "after", "traceId": "t-a", "name": "after-call",
                                                         "startTime": "2026-03-01T12:00:00Z",
                                                         "endTime": "2026-03-01T12:00:01Z"})]).status_code == 207)
    wait_for(lambda: b"after-call" in bytes(fifo.data))
    assert b"refused-call" not in bytes(fifo.data)  # refused means nothing of it was kept
