"""Admin endpoint: `GET /health` (JSON) and `GET /metrics` (Prometheus text).

/health answers 503 `unavailable` while the gateway starts or drains, so a load balancer stops
sending before listeners close; otherwise 200 with `ok`, or `degraded` while any sink (or the usage store, or alert delivery) is failing.

With `admin.token`, every other path needs `Authorization: Bearer <token>` (401 otherwise), or
the usage page's cookie (gateway/ui: set by its login form); /health stays open for probes. The token is read from the config on each request, so a reload
that swaps `config` changes it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import __version__, ui
from gateway.config import AdminConfig
from gateway.configtypes import split_endpoint
from gateway.telemetry import Metrics

_OPEN_PATHS = frozenset({"/health", ui.LOGIN_PATH, "/usage/static/usage.css"})  # probes; the login form


class AdminServer:
    def __init__(self, config: AdminConfig, metrics: Metrics, sinks_health: Callable[[], dict[str, dict[str, object]]],
                 config_status: Callable[[], dict[str, object]] | None = None) -> None:
        self.config = config
        self.endpoint = config.endpoint
        self.state = "starting"  # starting | running | draining
        self._metrics = metrics
        self._sinks_health = sinks_health
        self._config_status = config_status
        self._started = time.monotonic()
        self._runner: web.AppRunner | None = None
        # Added by other parts before start (the usage API): (method, path, handler); and /health sections.
        self.routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = []
        self.health_sections: dict[str, Callable[[], dict[str, object]]] = {}

    async def start(self) -> None:
        app = web.Application(middlewares=[self._require_token])
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics_text)
        for method, path, handler in self.routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        unix = self.config.endpoint.startswith("unix:")  # a worker's, read by its supervisor
        try:
            if unix:
                await web.UnixSite(runner, self.config.endpoint[5:]).start()
            else:
                host, port = split_endpoint(self.config.endpoint)
                await web.TCPSite(runner, host, port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.endpoint = self.config.endpoint if unix else f"{host}:{runner.addresses[0][1]}"

    async def shutdown(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @web.middleware
    async def _require_token(self, request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        token = self.config.token
        if token is not None and request.path not in _OPEN_PATHS:
            scheme, _, sent = request.headers.get("Authorization", "").strip().partition(" ")
            sent_digest = hashlib.sha256(sent.strip().encode("utf-8", "surrogateescape")).digest()
            expected = hashlib.sha256(token.get_secret_value().encode()).digest()
            if (not hmac.compare_digest(sent_digest, expected) or scheme.lower() != "bearer") and \
                    not ui.cookie_ok(request, token.get_secret_value()):
                if request.path == "/usage" and request.method == "GET":
                    return ui.login_page()
                return web.Response(status=401, text="send Authorization: Bearer <admin.token>\n",
                                    headers={"WWW-Authenticate": 'Bearer realm="otelgate-admin"'})
        return await handler(request)

    def health(self) -> tuple[int, dict[str, object]]:
        sinks = self._sinks_health()
        sections = {name: section() for name, section in self.health_sections.items()}
        if self.state != "running":
            status, code = "unavailable", 503
        elif any(s["status"] in ("failing", "full") for s in (*sinks.values(), *sections.values())):
            status, code = "degraded", 200
        else:
            status, code = "ok", 200
        body = {"status": status, "version": __version__, "uptime_s": round(time.monotonic() - self._started, 3),
                "sinks": sinks}
        if self._config_status is not None:
            body["config"] = self._config_status()
        body.update(sections)
        return code, body

    async def _health(self, request: web.Request) -> web.Response:
        code, body = self.health()
        return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")

    async def _metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
