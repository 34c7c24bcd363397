"""Running the gateway as several processes (`service.workers`): see `gateway.service.workers`.

This package's top level stays free of heavy imports: the receivers ask `worker_id()` whether
they run as one of several workers (then they share their port with SO_REUSEPORT).
"""

from __future__ import annotations

import os

WORKER_ENV = "OTELGATE_WORKER_ID"


def worker_id() -> int | None:
    """This process's worker number when a supervisor started it, else None (a single process)."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None
