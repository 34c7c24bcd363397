"""Field types shared by every part's config: strict models, durations, sizes, endpoints.

Users write `30s`, `500ms`, `4MiB` and `host:port`; parts receive floats (seconds), ints (bytes)
and checked endpoints, so no part parses units itself.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _parse_duration(value: object, info: ValidationInfo) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, 200ms or 1m")
    if isinstance(value, (int, float)):
        # In a file a bare number is ambiguous (`max_delay: 200` read as 200 s, not 200 ms): only 0
        # is the same in every unit. Python callers pass seconds.
        if value != 0 and (info.context or {}).get("from_file"):
            raise ValueError(f"a duration needs a unit: write {value:g}ms or {value:g}s (got the bare number {value:g})")
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 5s, 200ms or 1m, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _parse_size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4MiB or 1048576")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    else:
        raise ValueError(f"expected a size such as 4MiB or 1048576, got {value!r}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?)*\.?$")


def _parse_endpoint(value: object) -> str:
    """`host:port` or `[v6]:port`: the one syntax both receivers and the admin endpoint bind, checked
    here so that `otelgate check` rejects what `run` could never listen on."""
    if not isinstance(value, str):
        raise ValueError(f"expected host:port, got {value!r}")
    if "://" in value:
        rest = value.split("://", 1)[1].rstrip("/")
        raise ValueError(f"expected host:port, not a URL: write {rest!r} instead of {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port with a port 0-65535, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"not an IPv6 address in {value!r}") from None
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets: write [{host}]:{port}, got {value!r}")
    elif not _HOST.match(host):
        raise ValueError(f"not a host name or IP address: {host!r} in {value!r}")
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration)]
"""Seconds, written as `5s`, `200ms`, `1m`, `1h` or `30d` (in a file a bare number other than 0 is an error)."""

ByteSize = Annotated[int, BeforeValidator(_parse_size)]
"""Bytes, written as `4MiB`, `20MB` or a number of bytes."""

Endpoint = Annotated[str, BeforeValidator(_parse_endpoint)]
"""`host:port` or `[ipv6]:port`; port 0 asks the OS for a free port (the real one is logged at start)."""


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)
