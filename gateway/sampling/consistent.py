"""Consistent probability sampling, as OpenTelemetry specifies it (TraceState: Probability Sampling).

A decision is a pure function of the trace, so every otelgate replica and every OpenTelemetry
Collector in `probabilistic_sampler`'s proportional mode keep the same traces:

- randomness R: the explicit `rv` of the `ot` tracestate entry (14 hex digits) when present,
  otherwise the 56 low bits of the trace id (W3C Trace Context level 2 makes them random);
- rejection threshold T = (1 - p) * 2^56, written as `th:<hex>`: 14 hex digits with trailing zeros
  removed (`th:0` means keep everything), rounded to `precision` significant hex digits exactly
  as the Collector's probabilistic_sampler does (default 4);
- keep the span when R >= T, and record T in the kept span's tracestate (`ot=th:...`) so that
  downstream tools can count each kept span as 1 / p of the original. A span already sampled
  upstream keeps the larger of the two thresholds (its effective probability is the smaller).
"""

from __future__ import annotations

MAX = 1 << 56  # thresholds and randomness values are 56-bit
_HEX_DIGITS = 14


class TraceStateError(ValueError):
    pass


def threshold(probability: float, precision: int = 4) -> int:
    """The rejection threshold of `probability`, rounded to `precision` significant hex digits.

    Exactly the Collector's `ProbabilityToThresholdWithPrecision` (pkg/sampling), so both make
    the same decisions and write the same `th`: leading zero digits of the rejection probability
    (probabilities close to 1) add precision; a probability too small to keep anything at this
    precision rounds to MAX (keep nothing).
    """
    if not 1.0 / MAX <= probability <= 1.0:
        raise ValueError(f"probability must be in [2^-56, 1], got {probability}")
    if not 1 <= precision <= _HEX_DIGITS:
        raise ValueError("precision must be 1-14 hex digits")
    if probability == 1.0:
        return 0
    reject = 1.0 - probability
    while reject * 16 < 1:
        reject *= 16
        precision += 1
    precision = min(precision, _HEX_DIGITS)
    rscaled = MAX - round(probability * MAX)
    shift = 4 * (_HEX_DIGITS - precision)
    if shift:
        rscaled = ((rscaled + (1 << (shift - 1))) >> shift) << shift
    return min(rscaled, MAX)


def encode_threshold(value: int) -> str:
    """`th` value: 14 hex digits, trailing zeros removed; "0" for keep-everything."""
    if value == 0:
        return "0"
    return f"{value:014x}".rstrip("0")


def decode_threshold(text: str) -> int:
    if not 1 <= len(text) <= _HEX_DIGITS or any(c not in "0123456789abcdef" for c in text):
        raise TraceStateError(f"invalid th value {text!r}")
    return int(text.ljust(_HEX_DIGITS, "0"), 16)


def _ot_entry(tracestate: str) -> tuple[dict[str, str], list[str]]:
    """The `ot` member's sub-keys, and the other list members in order."""
    fields: dict[str, str] = {}
    others: list[str] = []
    for member in (m.strip() for m in tracestate.split(",")):
        if not member:
            continue
        if member.startswith("ot="):
            for item in member[3:].split(";"):
                key, sep, value = item.partition(":")
                if sep:
                    fields[key] = value
        else:
            others.append(member)
    return fields, others


def randomness(trace_id: bytes, tracestate: str = "") -> int:
    """R: the `rv` of the `ot` entry if valid, else the trace id's 56 low bits."""
    if "ot=" in tracestate:
        rv = _ot_entry(tracestate)[0].get("rv")
        if rv is not None and len(rv) == _HEX_DIGITS:
            try:
                return int(rv, 16)
            except ValueError:
                pass
    return int.from_bytes(trace_id[-7:], "big")


def keep(trace_id: bytes, tracestate: str, reject_below: int) -> bool:
    return randomness(trace_id, tracestate) >= reject_below


def with_threshold(tracestate: str, value: int) -> str:
    """`tracestate` with `ot=th:` set to max(existing, value), the `ot` member moved first."""
    fields, others = _ot_entry(tracestate)
    existing = fields.get("th")
    if existing is not None:
        try:
            value = max(value, decode_threshold(existing))
        except TraceStateError:
            pass
    fields = {"th": encode_threshold(value), **{k: v for k, v in fields.items() if k != "th"}}
    ot = "ot=" + ";".join(f"{k}:{v}" for k, v in fields.items())
    return ",".join([ot, *others])
