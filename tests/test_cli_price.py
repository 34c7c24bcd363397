"""`otelgate price`: the gateway's own pricing path from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _price(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "price", *args], capture_output=True, text=True, timeout=60)


def test_price_breakdown_matches_published_prices() -> None:
    r = _price("gpt-4o-mini", "--input", "1000", "--output", "500", "--cache-read", "200")
    assert r.returncode == 0, r.stderr
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million tokens.
    assert "openai/gpt-4o-mini (computed)" in r.stdout
    assert "800 tokens x $0.15/Mtok" in r.stdout
    assert "200 tokens x $0.075/Mtok" in r.stdout
    assert f"total:        ${(800 * 0.15 + 200 * 0.075 + 500 * 0.60) / 1e6:.8f}" in r.stdout


def test_price_with_provider_spelling_and_date() -> None:
    r = _price("claude-sonnet-4-20250514", "--provider", "Anthropic", "--input", "1000", "--output", "10",
               "--cache-read", "100", "--cache-write", "50", "--at", "2025-06-01")
    assert r.returncode == 0, r.stderr
    expected = (850 * 3.0 + 100 * 0.30 + 50 * 3.75 + 10 * 15.0) / 1e6
    assert f"total:        ${expected:.8f}" in r.stdout


def test_price_uses_overrides_from_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("""
sinks: {a: {type: file}}
pipeline:
  price:
    overrides:
      - {name: in-house llama, model_regex: "llama-3.*-ft", input_per_mtok: 0.5, output_per_mtok: 1.5}
""")
    r = _price("llama-3.1-8b-ft", "--input", "2000000", "--output", "1000000", "-c", str(config))
    assert r.returncode == 0, r.stderr
    assert "in-house llama (override)" in r.stdout
    assert "total:        $2.50000000" in r.stdout


def test_unknown_model_exits_1_and_says_how_to_fix() -> None:
    r = _price("my-private-model", "--input", "10", "--output", "1")
    assert r.returncode == 1
    assert "no price known" in r.stderr and "overrides" in r.stderr


def test_bad_date_is_a_usage_error() -> None:
    r = _price("gpt-4o", "--input", "1", "--output", "1", "--at", "yesterday")
    assert r.returncode == 2 and "--at" in r.stderr
