"""The usage API on the admin endpoint (behind `admin.token`, like every path but /health).

* `GET /api/v1/usage`: totals, groups, a step series, top users and sessions (gateway/usage/query.py);
* `GET /api/v1/budgets`: every budget key's spend, limit, utilization and state;
* `GET /api/v1/openapi.json`: the OpenAPI 3 document of both (gateway/usage/openapi.json),
  which the tests hold the implementation to.

Errors answer JSON `{"error": "..."}` with 400 for a bad question and 503 when the store
cannot be read.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from gateway.logs import get_logger
from gateway.usage.query import QueryError, answer, parse_query

_log = get_logger("usage.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def openapi_document() -> bytes:
    return resources.files("gateway.usage").joinpath("openapi.json").read_bytes()


def routes(usage: Any, budgets: Any = None) -> list[tuple[str, str, Handler]]:
    """The admin routes; `usage` is the UsageService (None: usage off), `budgets` the Budgets (or None)."""

    async def get_usage(request: web.Request) -> web.Response:
        if usage is None:
            return _json({"error": "usage accounting is off (usage.enabled: false)"}, 404)
        try:
            query = parse_query(dict(request.query), time.time())
        except QueryError as exc:
            return _json({"error": str(exc)}, 400)
        try:
            body = await answer(usage.store, query)
        except QueryError as exc:
            return _json({"error": str(exc)}, 400)
        except Exception as exc:
            _log.warning("usage query failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return _json({"error": f"the usage store cannot be read: {type(exc).__name__}"}, 503)
        return _json(body)

    async def get_budgets(request: web.Request) -> web.Response:
        if budgets is None:
            return _json([])
        return _json(budgets.report())

    document = openapi_document()

    async def get_openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    return [("GET", "/api/v1/usage", get_usage), ("GET", "/api/v1/budgets", get_budgets),
            ("GET", "/api/v1/openapi.json", get_openapi)]
