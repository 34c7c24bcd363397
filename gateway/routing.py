"""Routes: an ordered list of rules that pick the sinks for each batch.

In this version a route has no `match`, so the first route takes everything; the router is
built once per config and is a pure function of the batch, so a reload can swap it atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.batch import Batch
from gateway.config import RouteConfig
from gateway.sinks.driver import SinkDriver


class Router:
    def __init__(self, routes: Sequence[RouteConfig], drivers: Mapping[str, SinkDriver]) -> None:
        self._targets: tuple[SinkDriver, ...] = tuple(drivers[s] for s in routes[0].sinks) if routes else ()

    def route(self, batch: Batch) -> tuple[SinkDriver, ...]:
        return self._targets
