from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_process import GatewayProcess, gateway_config

FIXTURES = Path(__file__).parent / "fixtures"
TRACE_FIXTURES = ["anthropic_sdk_native", "langfuse", "openai_v2", "openinference_openai", "openllmetry_openai", "pydantic_ai"]


def read_records(path: Path) -> list[bytes]:
    """The bodies of a fixture `.otlp.bin`: records of a 4-byte big-endian length and a body."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4:pos + 4 + size])
        pos += 4 + size
    return out


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """The real gateway with one file sink at `tmp_path/out.jsonl`, stopped after the test."""
    gw = GatewayProcess(gateway_config(tmp_path), tmp_path).wait_ready()
    yield gw
    gw.stop()
