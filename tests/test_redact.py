"""Redaction (`pipeline.redact`): detectors, JSON values, content modes, allow-lists, metrics,
log records, the captured fixtures, properties, and a test corpus through the real gateway.

1. Detectors: true positives and near misses for each kind (a 16-digit number failing Luhn stays,
   an IBAN with a wrong checksum stays, timestamps and decimals stay).
2. Values: JSON leaves redacted and still valid JSON (double-encoded too), escapes in raw text.
3. Content modes keep / drop / hash / truncate on attributes, indexed keys and span events.
4. The fixtures: nothing raises, models and token counts unchanged.
5. Properties (hypothesis): random attribute maps never raise; redacting twice == once.
6. The real gateway, the real SDK exporter, a file sink: no e-mail, card number or API key of the
   corpus in the file, JSON attributes still parse.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.batch import Batch, RequestContext, count_spans
from gateway.config import ConfigError, parse
from gateway.pipeline import build_processors
from gateway.processors.redact import Config, Redactor
from gateway.redaction.detectors import DETECTORS
from gateway.telemetry import Metrics
from tests.conftest import FIXTURES, TRACE_FIXTURES, read_records
from tests.gateway_process import GatewayProcess, gateway_config, read_json_lines, spans_in, wait_for
from tests.test_backpressure_health_metrics import metric

SECRET = "0123456789abcdef-test-secret"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
       ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")


def _redactor(**settings: Any) -> tuple[Redactor, Metrics]:
    metrics = Metrics()
    return Redactor(Config(enabled=True, **settings), metrics), metrics


def _redact(text: str, **settings: Any) -> str:
    return _redactor(**settings)[0].redact_text(text)


def _counts(metrics: Metrics) -> dict[str, float]:
    return {s.labels["kind"]: s.value for f in metrics.registry.collect() if f.name == "otelgate_redactions"
            for s in f.samples if s.name.endswith("_total")}


def _string(text: str) -> AnyValue:
    return AnyValue(string_value=text)


def _span(attributes: dict[str, Any], events: dict[str, dict[str, Any]] | None = None) -> Span:
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="chat")
    for key, value in attributes.items():
        span.attributes.add(key=key).value.CopyFrom(_any(value))
    for name, attrs in (events or {}).items():
        event = span.events.add(name=name)
        for key, value in attrs.items():
            event.attributes.add(key=key).value.CopyFrom(_any(value))
    return span


def _any(value: Any) -> AnyValue:
    if isinstance(value, AnyValue):
        return value
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(_any(v) for v in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(KeyValue(key=k, value=_any(v)) for k, v in value.items())
        return out
    return _string(value)


def _attrs(span: Span) -> dict[str, AnyValue]:
    return {kv.key: kv.value for kv in span.attributes}


# -- 1. detectors -------------------------------------------------------------------------------

POSITIVES = {
    "email": ["alice@example.com", "alice.smith+tag@mail.example.co.uk", "o'brien@x.io".replace("'", ""),
              "josé@exämple.com"],
    "phone": ["+1 555 123 4567", "+44 20 7946 0958", "+4915123456789", "(555) 123-4567", "555-123-4567",
              "555.123.4567", "555 123 4567"],
    "credit_card": ["4111 1111 1111 1111", "4111111111111111", "5555-5555-5555-4444", "378282246310005",
                    "6011 0009 9013 9424", "4012 8888 8888 1881"],
    "iban": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606",
             "NO9386011117947"],
    "ipv4": ["10.0.0.1", "192.168.1.254", "8.8.8.8"],
    "ipv6": ["2001:db8::1", "fe80:0:0:0:202:b3ff:fe1e:8329", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
    "api_key": ["sk-proj-abcdefghijklmnopqrstuvwxyz012345", "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz-0123",
                "sk-abcdefghijklmnopqrstuvwxyz0123", "AKIAIOSFODNN7EXAMPLE", "ghp_" + "a1B2" * 9,
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"],
    "jwt": [JWT],
}


def test_every_detector_is_on_by_default_and_tested() -> None:
    assert Config(enabled=True).detectors == list(DETECTORS)
    assert set(POSITIVES) | {"bearer_token"} == set(DETECTORS)  # bearer: below, with its scheme kept


@pytest.mark.parametrize("kind, value", [(k, v) for k, vs in POSITIVES.items() for v in vs])
def test_detector_finds(kind: str, value: str) -> None:
    redactor, metrics = _redactor()
    assert redactor.redact_text(f"before {value} after.") == f"before [REDACTED:{kind}] after."
    assert redactor.redact_text(value) == f"[REDACTED:{kind}]"
    assert _counts(metrics) == {kind: 2}


@pytest.mark.parametrize("text", [
    "4111111111111112",  # 16 digits, fails Luhn
    "4111 1111 1111 1112",
    "1732561234567890123",  # an epoch in ns (19 digits, starts with 1)
    "1732561234567",  # in ms
    "0.4111111111111111",  # the digits of a decimal
    "id ab4111111111111111",  # inside a longer token
    "DE89 3704 0044 0532 0130 01",  # IBAN with a wrong checksum
    "GB82WEST12345698765433",
    "user@localhost", "@property", "a@b",  # no domain with a TLD
    "2024-06-01 12:30", "5551234567", "+123 45", "call 555-1234",  # not phone numbers
    "10.0.0.256", "1.2.3", "12:30:45", "std::vector", "1::2", "fe80::1", "deadbeef:cafe",
    "the bearer of bad news", "Bearer short", "task-management-system-for-everyone", "sk-short",
    "AKIAIOSFODNN7EXAMPL", "eyJhbGciOiJIUzI1NiJ9 only a header",
    "gpt-4o-mini-2024-07-18", "claude-sonnet-4-20250514", "chatcmpl-56448282de53b966ac14e1ecd840a",
    "d0b06fac-e6f2-440c-8d63-7cfc2278653e",
])
def test_near_misses_stay(text: str) -> None:
    redactor, metrics = _redactor()
    assert redactor.redact_text(text) is text
    assert _counts(metrics) == {}


def test_bearer_keeps_the_scheme_and_card_keeps_what_follows() -> None:
    assert _redact("Authorization: Bearer abcdef0123456789xyz") == "Authorization: Bearer [REDACTED:bearer_token]"
    assert _redact("card 4111 1111 1111 1111 123 exp") == "card [REDACTED:credit_card] 123 exp"
    assert _redact("iban DE89 3704 0044 0532 0130 00 EUR") == "iban [REDACTED:iban] EUR"
    assert _redact("mapped ::ffff:192.168.0.1") == "mapped ::ffff:[REDACTED:ipv4]"
    assert _redact("+4111111111111111") == "+[REDACTED:credit_card]"  # no phone (16 digits) but a card


def test_escapes_in_raw_text_are_boundaries() -> None:
    """A value that looks like JSON but does not parse is scanned as raw text: `\\n` before a token."""
    raw = r'{"broken": "key:\nAKIAIOSFODNN7EXAMPLE\tbob@example.com\n4111111111111111'
    assert _redact(raw) == r'{"broken": "key:\n[REDACTED:api_key]\t[REDACTED:email]\n[REDACTED:credit_card]'


def test_detectors_subset_and_custom_regexes() -> None:
    text = "alice@example.com paid with 4111 1111 1111 1111, ticket EMP-004711, ref ABC"
    only_email = _redact(text, detectors=["email"])
    assert only_email == "[REDACTED:email] paid with 4111 1111 1111 1111, ticket EMP-004711, ref ABC"
    redactor, metrics = _redactor(detectors=[], custom=[{"name": "employee", "regex": r"EMP-\d{6}"},
                                                        {"name": "ref", "regex": "^alice"}])
    assert redactor.redact_text(text) == "[REDACTED:ref]@example.com paid with 4111 1111 1111 1111, ticket [REDACTED:employee], ref ABC"
    assert _counts(metrics) == {"employee": 1, "ref": 1}
    span = _span({"a": "x", "note": "alice wrote"})  # `^`: no gate, every value on its own
    assert redactor.redact_span(span) and _attrs(span)["note"].string_value == "[REDACTED:ref] wrote"
    # A user regex that matches markers cannot make redaction stack markers.
    redactor, _ = _redactor(custom=[{"name": "word", "regex": "REDACTED|email"}])
    once = redactor.redact_text("alice@example.com")
    assert once == "[REDACTED:email]" and redactor.redact_text(once) == once


@pytest.mark.parametrize("text, fragment", [
    ("custom: [{name: x, regex: '(?<=a)b'}]", "pipeline.redact.custom[0].regex: not a valid RE2 regex"),
    ("custom: [{name: x, regex: 'a*'}]", "pipeline.redact.custom[0].regex: matches the empty string"),
    ("custom: [{name: email, regex: 'x'}]", "pipeline.redact.custom[0].name: 'email' is the name of a built-in kind"),
    ("custom: [{name: Bad-Name, regex: 'x'}]", "pipeline.redact.custom[0].name"),
    ("custom: [{name: a, regex: x}, {name: a, regex: y}]", "pipeline.redact: custom: duplicate name(s) a"),
    ("detectors: [email, ssn]", "pipeline.redact.detectors[1]"),
    ("content: hash", "pipeline.redact: content: hash needs hash_secret"),
    ("content: hash, hash_secret: short", "pipeline.redact.hash_secret"),
    ("content: mask", "pipeline.redact.content"),
    ("truncate_bytes: 0", "pipeline.redact.truncate_bytes"),
    ("contents: drop", "pipeline.redact.contents: unknown key"),
])
def test_config_errors_name_the_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(f"sinks: {{a: {{type: file}}}}\npipeline: {{redact: {{enabled: true, {text}}}}}", environ={})
    assert any(fragment in e for e in err.value.errors), err.value.errors


def test_hash_secret_from_the_environment() -> None:
    config = parse("sinks: {a: {type: file}}\npipeline: {redact: {enabled: true, content: hash, "
                   "hash_secret: '${env:REDACT_SECRET}'}}", environ={"REDACT_SECRET": SECRET})
    assert config.pipeline.redact.hash_secret == SECRET
    assert SECRET not in repr(config.pipeline.redact)


# -- 2. values: JSON, arrays, lists ---------------------------------------------------------------

MESSAGES = [{"role": "system", "parts": [{"type": "text", "content": "You help bob@example.com."}]},
            {"role": "user", "parts": [{"type": "text", "content": "My card is 4111 1111 1111 1111\nthanks"}]}]


def test_json_leaves_are_redacted_and_the_value_stays_json() -> None:
    redacted = _redact(json.dumps(MESSAGES))
    assert json.loads(redacted) == [
        {"role": "system", "parts": [{"type": "text", "content": "You help [REDACTED:email]."}]},
        {"role": "user", "parts": [{"type": "text", "content": "My card is [REDACTED:credit_card]\nthanks"}]}]
    clean = json.dumps([{"role": "user", "content": "Summarize OpenTelemetry in 12 words"}], indent=2)
    assert _redact(clean) is clean  # nothing found: the original text, not a re-encoding


def test_double_encoded_json_and_escapes() -> None:
    inner = json.dumps({"messages": [{"content": "mail alice@example.com, key sk-proj-abcdefghijklmnopqrstuvwx"}]})
    double = json.dumps(inner)  # MLflow: a JSON string holding JSON
    redacted = _redact(double)
    assert json.loads(json.loads(redacted)) == {"messages": [{"content": "mail [REDACTED:email], key [REDACTED:api_key]"}]}
    # Non-ASCII escaped by the encoder (ensure_ascii) and a slash escaped (PHP): still found.
    escaped = json.dumps({"text": "José <jos\u00e9@exämple.com> Bearer abc/def0123456789xyz"})
    assert "\\u00e9" in escaped
    assert json.loads(_redact(escaped)) == {"text": "José <[REDACTED:email]> Bearer [REDACTED:bearer_token]"}
    php = '{"token":"Bearer abc\\/def0123456789xyz"}'
    assert json.loads(_redact(php)) == {"token": "Bearer [REDACTED:bearer_token]"}


def test_arrays_and_kvlists() -> None:
    redactor, _ = _redactor()
    value = _any(["ok", "alice@example.com", 4111111111111111, {"to": "bob@example.com", "n": 3, "deep": [["10.0.0.1"]]}])
    assert redactor.redact_anyvalue(value)
    assert value == _any(["ok", "[REDACTED:email]", 4111111111111111,
                          {"to": "[REDACTED:email]", "n": 3, "deep": [["[REDACTED:ipv4]"]]}])  # numbers untouched
    assert not redactor.redact_anyvalue(value)


# -- 3. spans: keys, content modes, events, resources ------------------------------------------------

CONTENT = {
    "gen_ai.input.messages": json.dumps(MESSAGES),
    "gen_ai.prompt.0.content": "hello alice@example.com",
    "gen_ai.prompt.0.role": "user",
    "llm.input_messages.3.message.content": "call +1 555 123 4567",
    "llm.input_messages.3.message.role": "user",
    "input.value": "plain question",
}
OTHER = {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 33, "user.email": "carol@example.com",
         "telemetry.sdk.version": "1.2.3.4", "app.version": "1.2.3.4"}
EVENTS = {"gen_ai.content.prompt": {"gen_ai.prompt": "secret plan for dave@example.com"},
          "exception": {"exception.message": "no user erin@example.com", "exception.type": "KeyError"}}


def _redacted_span(**settings: Any) -> tuple[Span, dict[str, float], Redactor]:
    redactor, metrics = _redactor(**settings)
    span = _span({**CONTENT, **OTHER}, EVENTS)
    assert redactor.redact_span(span)
    return span, _counts(metrics), redactor


def test_keep_redacts_patterns_everywhere_but_allowed_keys() -> None:
    span, counts, _ = _redacted_span(allow_keys=["user.*"])
    attrs = _attrs(span)
    assert attrs["gen_ai.prompt.0.content"].string_value == "hello [REDACTED:email]"
    assert attrs["llm.input_messages.3.message.content"].string_value == "call [REDACTED:phone]"
    assert attrs["user.email"].string_value == "carol@example.com"  # allow_keys, by prefix
    assert attrs["telemetry.sdk.version"].string_value == "1.2.3.4"  # built-in allow list
    assert attrs["app.version"].string_value == "[REDACTED:ipv4]"  # a version looks like an address
    assert attrs["gen_ai.usage.input_tokens"].int_value == 33
    assert span.events[0].attributes[0].value.string_value == "secret plan for [REDACTED:email]"
    assert span.events[1].attributes[0].value.string_value == "no user [REDACTED:email]"
    assert counts == {"email": 4, "phone": 1, "credit_card": 1, "ipv4": 1}


def test_drop_removes_content_only() -> None:
    span, counts, _ = _redacted_span(content="drop")
    assert set(_attrs(span)) == {"gen_ai.prompt.0.role", "llm.input_messages.3.message.role", *OTHER}
    assert [e.name for e in span.events] == ["gen_ai.content.prompt", "exception"]  # the events stay, for timing
    assert len(span.events[0].attributes) == 0
    assert counts["content_drop"] == 5


def test_hash_is_joinable_and_keyed() -> None:
    span, counts, redactor = _redacted_span(content="hash", hash_secret=SECRET)
    attrs = _attrs(span)
    expected = "hmac-sha256:" + hmac.new(SECRET.encode(), b"plain question", hashlib.sha256).hexdigest()
    assert attrs["input.value"].string_value == expected
    assert attrs["gen_ai.prompt.0.role"].string_value == "user"
    assert counts["content_hash"] == 5
    again = _span({"input.value": "plain question"})
    redactor.redact_span(again)
    assert _attrs(again)["input.value"].string_value == expected  # equal values, equal hashes
    other, _ = _redactor(content="hash", hash_secret=SECRET + "2")
    third = _span({"input.value": "plain question"})
    other.redact_span(third)
    assert _attrs(third)["input.value"].string_value != expected
    structured = _span({"gen_ai.input.messages": [{"role": "user", "content": "x"}]})  # logs put AnyValues here
    redactor.redact_span(structured)
    assert _attrs(structured)["gen_ai.input.messages"].string_value.startswith("hmac-sha256:")
    assert not redactor.redact_span(span)  # hashing a hash: nothing


def test_truncate_cuts_on_a_character_boundary() -> None:
    redactor, metrics = _redactor(content="truncate", truncate_bytes=5)
    span = _span({"input.value": "é" * 1000, "output.value": "short", "gen_ai.output.messages": json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": "日本語のテキスト"}]}], ensure_ascii=False)})
    redactor.redact_span(span)
    attrs = _attrs(span)
    assert attrs["input.value"].string_value == "éé[TRUNCATED:2000]"  # 4 bytes: a third é would be 6
    assert attrs["output.value"].string_value == "short"
    messages = json.loads(attrs["gen_ai.output.messages"].string_value)  # still JSON: cut leaf by leaf
    assert messages == [{"role": "assis[TRUNCATED:9]", "parts": [{"type": "text", "content": "日[TRUNCATED:24]"}]}]
    assert _counts(metrics)["content_truncate"] == 3
    before = span.SerializeToString()
    assert not redactor.redact_span(span) and span.SerializeToString() == before


def test_truncate_then_patterns_leave_no_half_secret() -> None:
    redactor, _ = _redactor(content="truncate", truncate_bytes=12)
    span = _span({"input.value": "mail alice@example.com now"})
    redactor.redact_span(span)
    # Patterns first (the cut never leaves half an address), then the cut; the marker gives the
    # size before the cut.
    assert _attrs(span)["input.value"].string_value == "mail [REDACT[TRUNCATED:25]"


def test_names_status_links_resources_and_scopes() -> None:
    redactor, _ = _redactor()
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=_string("svc 10.0.0.1"))  # allowed: kept
    rs.resource.attributes.add(key="host.ip", value=_string("10.0.0.1"))
    ss = rs.scope_spans.add()
    ss.scope.attributes.add(key="owner", value=_string("team@example.com"))
    span = ss.spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="GET /users/alice@example.com")
    span.status.message = "denied for sk-proj-abcdefghijklmnopqrstuvwx"
    span.links.add(trace_id=b"\x03" * 16, span_id=b"\x04" * 8).attributes.add(key="peer", value=_string("8.8.8.8"))
    batch = Batch(request, 1, RequestContext("test"), raw=request.SerializeToString())
    redactor(batch)
    assert batch.raw is None
    assert [kv.value.string_value for kv in rs.resource.attributes] == ["svc 10.0.0.1", "[REDACTED:ipv4]"]
    assert ss.scope.attributes[0].value.string_value == "[REDACTED:email]"
    assert span.name == "GET /users/[REDACTED:email]"
    assert span.status.message == "denied for [REDACTED:api_key]"
    assert span.links[0].attributes[0].value.string_value == "[REDACTED:ipv4]"
    clean = Batch(ExportTraceServiceRequest(), 0, RequestContext("test"), raw=b"same")
    assert redactor(clean).raw == b"same"  # nothing changed: the received bytes stay usable


def test_log_records() -> None:
    """Issue 7 reuses this: GenAI event bodies are content, other bodies and attributes are scanned."""
    body = next(iter(read_records(FIXTURES / "openai_v2.logs.otlp.bin")))
    request = ExportLogsServiceRequest.FromString(body)
    records = [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    records[0].attributes.add(key="note", value=_string("from alice@example.com"))
    records[0].body.string_value = "a GenAI event: its body is content"
    plain = request.resource_logs[0].scope_logs[0].log_records.add()  # not an event: its body is scanned
    plain.body.string_value = json.dumps({"text": "card 4111111111111111"})
    hashing, metrics = _redactor(content="hash", hash_secret=SECRET)
    assert hashing.redact_logs_request(request)
    assert records[0].attributes[-1].value.string_value == "from [REDACTED:email]"
    assert records[0].body.string_value.startswith("hmac-sha256:")
    assert json.loads(plain.body.string_value) == {"text": "card [REDACTED:credit_card]"}
    content_attrs = [kv for r in records for kv in r.attributes if kv.key in ("gen_ai.input.messages", "gen_ai.output.messages")]
    assert content_attrs and all(kv.value.string_value.startswith("hmac-sha256:") for kv in content_attrs)
    genai = ExportLogsServiceRequest()
    record = genai.resource_logs.add().scope_logs.add().log_records.add(event_name="gen_ai.user.message")
    record.body.CopyFrom(_any({"content": "hi, I am alice@example.com"}))
    dropping, _ = _redactor(content="drop")
    assert dropping.redact_logs_request(genai) and not record.HasField("body")


# -- 4. the fixtures -------------------------------------------------------------------------------

_COUNTED = ("gen_ai.usage.", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.provider.name",
            "otelgate.cost", "gen_ai.usage.cost", "llm.token_count.", "llm.model_name")


@pytest.mark.parametrize("mode", ["keep", "drop", "hash", "truncate"])
def test_fixtures_keep_models_and_counts(mode: str) -> None:
    config = parse("sinks: {a: {type: file}}\npipeline: {redact: {enabled: true, content: %s, hash_secret: %s, "
                   "truncate_bytes: 16}}" % (mode, SECRET), environ={})
    metrics = Metrics()
    chain = build_processors(config, metrics)
    changed = 0
    for name in TRACE_FIXTURES:
        for body in read_records(FIXTURES / f"{name}.otlp.bin"):
            request = ExportTraceServiceRequest.FromString(body)
            batch = Batch(request, count_spans(request), RequestContext("test"), raw=body)
            for process in chain[:-1]:
                batch = process(batch)
            before = _counted(batch.request)
            batch = chain[-1](batch)
            assert _counted(batch.request) == before
            assert before  # the fixtures do carry models and counts
            changed += batch.raw is None
    assert changed > 0
    assert (metric_value := _counts(metrics)) and all(v > 0 for v in metric_value.values())


def _counted(request: ExportTraceServiceRequest) -> list[tuple[bytes, str, bytes]]:
    return [(span.span_id, kv.key, kv.value.SerializeToString()) for rs in request.resource_spans
            for ss in rs.scope_spans for span in ss.spans for kv in span.attributes if kv.key.startswith(_COUNTED)]


# -- 5. properties ----------------------------------------------------------------------------------

_PII = ["alice@example.com", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "10.1.2.3", "2001:db8::7",
        "+44 20 7946 0958", "Bearer abcdefghijklmnop0123", "sk-proj-abcdefghijklmnopqrstuvwx", "AKIAIOSFODNN7EXAMPLE",
        JWT, "[REDACTED:email]", "[TRUNCATED:99]", "hmac-sha256:" + "a" * 64]
_texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="ab19 .-@:+()[]{}\"\\\nskAKIeyJé日", max_size=60),
    st.builds(lambda a, pii, b: a + pii + b, st.text(max_size=6), st.sampled_from(_PII), st.text(max_size=6)),
)
_json_values = st.recursive(
    st.one_of(_texts, st.integers(-2**63, 2**63 - 1), st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12)
_strings = st.one_of(_texts, _json_values.map(lambda v: orjson.dumps(v).decode()),
                     _json_values.map(lambda v: orjson.dumps(orjson.dumps(v).decode()).decode()))
_values = st.recursive(
    st.one_of(_strings.map(_string), st.integers(-2**63, 2**63 - 1).map(_any), st.floats(allow_nan=False).map(_any),
              st.booleans().map(_any)),
    lambda inner: st.one_of(st.lists(inner, max_size=3).map(lambda vs: _any(list(vs))),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3).map(lambda d: _any(dict(d)))),
    max_leaves=8)
_keys = st.one_of(st.sampled_from([*CONTENT, *OTHER, "gen_ai.output.messages", "pydantic_ai.all_messages",
                                   "gen_ai.completion.2.content", "service.name", "gen_ai.prompt"]), st.text(max_size=12))
_SETTINGS = [dict(), dict(content="drop"), dict(content="hash", hash_secret=SECRET),
             dict(content="truncate", truncate_bytes=7), dict(custom=[{"name": "word", "regex": "[a-z]{3}"}])]
_REDACTORS = [_redactor(**s)[0] for s in _SETTINGS]
_UNGATED = [_redactor(**s)[0] for s in _SETTINGS]
for _r in _UNGATED:
    _r._pattern_gate = _r._content_gate = None  # every value on its own: what the gates skip must change nothing


@settings(max_examples=int(os.environ.get("REDACT_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=8), st.dictionaries(_keys, _values, max_size=3), _texts,
       st.sampled_from(range(len(_SETTINGS))))
def test_random_attributes_never_raise_the_gate_misses_nothing_and_twice_is_once(
        attributes: dict[str, AnyValue], event: dict[str, AnyValue], name: str, which: int) -> None:
    redactor = _REDACTORS[which]
    span = _span(attributes, {"gen_ai.content.prompt": event})
    span.name = name
    ungated = Span()
    ungated.CopyFrom(span)
    redactor.redact_span(span)
    once = span.SerializeToString(deterministic=True)
    _UNGATED[which].redact_span(ungated)
    assert ungated.SerializeToString(deterministic=True) == once
    assert not redactor.redact_span(span)
    assert span.SerializeToString(deterministic=True) == once
    for kv in span.attributes:  # with patterns only, a value that was JSON is still JSON
        before = attributes[kv.key].string_value
        if which in (0, 4) and before[:1] in "[{" and _is_json(before):
            assert _is_json(kv.value.string_value)


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


# -- 6. through the real gateway ---------------------------------------------------------------------

EMAILS = ["alice.smith@example.com", "bob+llm@corp.example.org", "carol@example.co.uk", "dave@example.net",
          "erin@example.io", "frank@example.com"]
CARDS = ["4111 1111 1111 1111", "5555555555554444", "3782-822463-10005", "4012 8888 8888 1881", "6011000990139424"]
KEYS = ["sk-proj-Q2FsbGluZ0FsbFNlY3JldHMxMjM0NTY3ODkw", "sk-ant-api03-R2V0T3V0T2ZNeUtleUNoYWluMTIzNDU2",
        "AKIAI44QH8DHBEXAMPLE", "ghp_" + "Zx9Y" * 9, "github_pat_11AAAAAAA0bbbbbbbbbbbb_cccccccccccccccccccc", JWT]
CORPUS = EMAILS + CARDS + KEYS


def _emit_corpus(endpoint: str) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "redact-test", "team.owner": EMAILS[5]}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    tracer = provider.get_tracer("tests.redact")
    messages = [{"role": "user", "parts": [{"type": "text", "content": f"I am {EMAILS[0]}, card {CARDS[0]}, "
                                                                      f"my key is {KEYS[0]}\nthanks"}]}]
    with tracer.start_as_current_span(f"chat for {EMAILS[1]}") as span:  # OTel GenAI, JSON messages
        span.set_attribute("gen_ai.provider.name", "openai")
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
        span.set_attribute("gen_ai.usage.input_tokens", 12)
        span.set_attribute("gen_ai.usage.output_tokens", 3)
        span.set_attribute("gen_ai.input.messages", json.dumps(messages))
        span.set_attribute("gen_ai.output.messages", json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": f"Noted, {EMAILS[2]} / {CARDS[1]}"}]}]))
        span.add_event("gen_ai.content.prompt", {"gen_ai.prompt": f"old style {KEYS[2]} {CARDS[2]}"})
    with tracer.start_as_current_span("ChatCompletion") as span:  # OpenInference
        span.set_attribute("openinference.span.kind", "LLM")
        span.set_attribute("llm.model_name", "gpt-4o-mini")
        span.set_attribute("llm.token_count.prompt", 9)
        span.set_attribute("llm.input_messages.0.message.role", "user")
        span.set_attribute("llm.input_messages.0.message.content", f"reach me at {EMAILS[3]} or use {KEYS[1]}")
        span.set_attribute("input.value", json.dumps({"messages": messages, "api_key": KEYS[3]}))
        span.set_attribute("output.value", f"Card {CARDS[3]} accepted")
    with tracer.start_as_current_span("openai.chat") as span:  # OpenLLMetry, MLflow double encoding
        span.set_attribute("gen_ai.system", "OpenAI")
        span.set_attribute("gen_ai.prompt.0.content", f"token {KEYS[4]}")
        span.set_attribute("gen_ai.completion.0.content", f"sent to {EMAILS[4]}")
        span.set_attribute("mlflow.spanInputs", json.dumps(json.dumps({"jwt": KEYS[5], "card": CARDS[4]})))
        span.set_attribute("tags", ["vip", EMAILS[5]])
        try:
            raise PermissionError(f"user {EMAILS[0]} may not use {KEYS[0]}")
        except PermissionError as exc:
            span.record_exception(exc)
    provider.shutdown()


def test_no_corpus_secret_reaches_the_sink(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, llm=True)
    config["pipeline"] = {"redact": {"enabled": True}}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        _emit_corpus(gw.http)
        wait_for(lambda: len(spans_in(read_json_lines(tmp_path / "out.jsonl"))) == 3)
        redactions = metric(gw.admin, "otelgate_redactions_total")
    finally:
        assert gw.stop() == 0
    text = (tmp_path / "out.jsonl").read_text()
    leaked = [secret for secret in CORPUS if secret in text or secret.replace(" ", "").replace("-", "") in text]
    assert not leaked
    for secret in CORPUS:  # nor in the gateway's own log
        assert secret not in gw.log_text()
    spans = {s["name"]: {a["key"]: a["value"] for a in s["attributes"]} for s in spans_in(read_json_lines(tmp_path / "out.jsonl"))}
    chat = spans["chat for [REDACTED:email]"]
    messages = json.loads(chat["gen_ai.input.messages"]["stringValue"])  # still JSON
    assert messages[0]["parts"][0]["content"] == ("I am [REDACTED:email], card [REDACTED:credit_card], "
                                                   "my key is [REDACTED:api_key]\nthanks")
    assert json.loads(chat["gen_ai.output.messages"]["stringValue"])[0]["role"] == "assistant"
    assert json.loads(spans["ChatCompletion"]["input.value"]["stringValue"])["api_key"] == "[REDACTED:api_key]"
    assert json.loads(json.loads(spans["openai.chat"]["mlflow.spanInputs"]["stringValue"])) == {
        "jwt": "[REDACTED:jwt]", "card": "[REDACTED:credit_card]"}
    assert chat["gen_ai.request.model"] == {"stringValue": "gpt-4o-mini"}  # what the other processors need stays
    assert chat["gen_ai.usage.input_tokens"] == {"intValue": "12"}
    assert "gen_ai.usage.cost" in chat  # priced before redaction, from untouched counts
    assert redactions >= 18


def test_content_hash_through_the_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELGATE_TEST_REDACT_SECRET", SECRET)
    config = gateway_config(tmp_path)
    config["pipeline"]["redact"] = {"enabled": True, "content": "hash", "hash_secret": "${env:OTELGATE_TEST_REDACT_SECRET}"}
    gw = GatewayProcess(config, tmp_path).wait_ready()
    try:
        _emit_corpus(gw.http)
        wait_for(lambda: len(spans_in(read_json_lines(tmp_path / "out.jsonl"))) == 3)
        assert metric(gw.admin, "otelgate_redactions_total", kind="content_hash") == 9
    finally:
        assert gw.stop() == 0
    text = (tmp_path / "out.jsonl").read_text()
    assert not [secret for secret in CORPUS if secret in text or secret.replace(" ", "").replace("-", "") in text]
    assert SECRET not in text and SECRET not in gw.log_text()
    spans = {s["name"]: {a["key"]: a["value"] for a in s["attributes"]} for s in spans_in(read_json_lines(tmp_path / "out.jsonl"))}
    digest = hmac.new(SECRET.encode(), f"Card {CARDS[3]} accepted".encode(), hashlib.sha256).hexdigest()
    assert spans["ChatCompletion"]["output.value"] == {"stringValue": f"hmac-sha256:{digest}"}
    assert spans["ChatCompletion"]["llm.input_messages.0.message.role"] == {"stringValue": "user"}
