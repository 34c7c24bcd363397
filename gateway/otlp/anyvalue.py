"""Reading an attribute's AnyValue as a number, whatever type the emitter chose for it."""

from __future__ import annotations

import math

from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def number(value: AnyValue) -> float | None:
    """An int, a double or a numeric string as a finite float; None for anything else."""
    kind = value.WhichOneof("value")
    if kind == "double_value":
        result = value.double_value
    elif kind == "int_value":
        result = float(value.int_value)
    elif kind == "string_value":
        try:
            result = float(value.string_value)
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None
