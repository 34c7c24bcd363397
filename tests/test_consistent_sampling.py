"""Consistent probability sampling against the OpenTelemetry specification's encoding.

`th:0` = 100%, `th:8` = 50%, `th:c` = 25% are the specification's examples; the others are worked
out by hand from the Collector's `ProbabilityToThresholdWithPrecision` at 4 hex digits (1/3:
(2/3)*2^56 = 0xaaaa_aaaa... rounds up to aaab; 0.999: the rejection 0.001 has two leading zero
hex digits, so 6 digits are kept: 0x004189_37... -> 004189).
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sampling.consistent import (
    MAX, TraceStateError, decode_threshold, encode_threshold, keep, randomness, threshold, with_threshold,
)


@pytest.mark.parametrize("probability, th", [
    (1.0, "0"), (0.5, "8"), (0.25, "c"), (0.125, "e"), (1 / 3, "aaab"), (0.1, "e666"), (2 / 3, "5555"),
    (0.01, "fd71"), (0.001, "ffbe"), (0.999, "004189"),
])
def test_threshold_encoding_matches_the_spec(probability: float, th: str) -> None:
    assert encode_threshold(threshold(probability)) == th


def test_decode_pads_with_trailing_zeros() -> None:
    assert decode_threshold("8") == MAX // 2
    assert decode_threshold("0") == 0
    for bad in ("", "g", "123456789abcdef0", "8A"):
        with pytest.raises(TraceStateError):
            decode_threshold(bad)


def test_randomness_is_the_56_low_bits_or_rv() -> None:
    trace_id = bytes.fromhex("5b8efff798038103d269b633813fc60c")
    assert randomness(trace_id) == 0x69b633813fc60c
    assert randomness(trace_id, "vendor=x,ot=rv:00000000000001;th:8") == 1
    assert randomness(trace_id, "ot=rv:zz") == 0x69b633813fc60c  # invalid rv: the trace id


def test_decision_is_r_at_least_t() -> None:
    t = threshold(0.5)
    assert keep(b"\x00" * 9 + b"\x80" + b"\x00" * 6, "", t)  # R = 2^55 = T: kept
    assert not keep(b"\x00" * 9 + b"\x7f" + b"\xff" * 6, "", t)


def test_rate_is_within_statistical_bounds_over_10k_traces() -> None:
    rng = random.Random(7)
    for p in (0.1, 0.5, 0.9):
        t = threshold(p)
        kept = sum(keep(rng.randbytes(16), "", t) for _ in range(10_000))
        sigma = (10_000 * p * (1 - p)) ** 0.5
        assert abs(kept - 10_000 * p) < 4 * sigma, (p, kept)


def test_tracestate_update_keeps_other_members_and_the_larger_threshold() -> None:
    assert with_threshold("", threshold(0.5)) == "ot=th:8"
    assert with_threshold("vendor=1,ot=rv:00112233445566", threshold(0.25)) == "ot=th:c;rv:00112233445566,vendor=1"
    assert with_threshold("ot=th:c", threshold(0.5)) == "ot=th:c"  # already sampled harder upstream
    assert with_threshold("ot=th:8", threshold(0.25)) == "ot=th:c"


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1.0), st.binary(min_size=16, max_size=16))
def test_same_input_same_decision_and_monotone(p: float, trace_id: bytes) -> None:
    t = threshold(p)
    assert keep(trace_id, "", t) == keep(trace_id, "", threshold(p))
    assert 0 <= t <= MAX  # MAX: too small a probability to keep anything at this precision
    if keep(trace_id, "", t):  # kept at p: kept at every larger probability too
        assert keep(trace_id, "", threshold(min(1.0, p * 2)))


def test_two_independent_deciders_agree() -> None:
    ids = [os.urandom(16) for _ in range(2000)]
    a = [keep(i, "", threshold(0.3)) for i in ids]
    b = [keep(i, "", threshold(0.3)) for i in ids]
    assert a == b
