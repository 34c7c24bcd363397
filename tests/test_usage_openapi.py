"""The usage API held to its OpenAPI document by schemathesis: generated requests against a real
gateway holding known traffic; every response must match the document (status, content type,
body schema) and nothing may answer 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)
from schemathesis.checks import not_a_server_error

from tests.gateway_process import GatewayProcess, wait_for
from tests.test_usage import usage_config
from tests.usage_traffic import TRAFFIC, send

TOKEN = "schema-token"


@pytest.fixture(scope="module")
def gateway_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("openapi")
    config = usage_config(tmp)
    config["admin"]["token"] = TOKEN
    config["budgets"] = [{"name": "daily", "limit_usd": 1.0}, {"name": "per-user", "per": "user", "limit_tokens": 100}]
    config["alerts"] = {"interval": "200ms"}
    gw = GatewayProcess(config, tmp).wait_ready()
    try:
        send(gw.http, TRAFFIC)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        wait_for(lambda: requests.get(f"{gw.admin}/api/v1/usage", headers=auth, timeout=5).json()["totals"]["calls"])
        wait_for(lambda: len(requests.get(f"{gw.admin}/api/v1/budgets", headers=auth, timeout=5).json()) > 1)
        yield gw.admin
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def api_schema(gateway_admin: str) -> schemathesis.BaseSchema:
    text = requests.get(f"{gateway_admin}/api/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    schema = schemathesis.openapi.from_dict(text.json())
    schema.config.update(base_url=gateway_admin, headers={"Authorization": f"Bearer {TOKEN}"})
    return schema


def test_api_conforms_to_its_openapi_document(api_schema: schemathesis.BaseSchema) -> None:
    """Each operation of the document, with requests generated from it (schemathesis' strategies,
    driven by hypothesis here rather than through its pytest plugin)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} == {"/api/v1/usage", "/api/v1/budgets", "/api/v1/openapi.json"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40 if operation.path == "/api/v1/usage" else 3, deadline=None,
                  suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                           response_schema_conformance])
        run()


def test_document_is_served_and_names_the_pinned_fields(gateway_admin: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    doc = requests.get(f"{gateway_admin}/api/v1/openapi.json", headers=auth, timeout=5).json()
    figures = doc["components"]["schemas"]["Figures"]["required"]
    assert figures == ["calls", "errors", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                       "reasoning_tokens", "turns", "cost_usd", "sessions", "active_users"]
    assert set(doc["components"]["schemas"]["Usage"]["required"]) >= {"from", "to", "totals", "groups", "series"}
    assert requests.get(f"{gateway_admin}/api/v1/openapi.json", timeout=5).status_code == 401
