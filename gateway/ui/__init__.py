"""The usage page on the admin endpoint: `GET /usage` (gateway/ui/static/, package data).

A static page whose script reads the JSON API (`/api/v1/usage`, `/api/v1/budgets`), so it shows
exactly what the API answers and needs no build step: the only library is uPlot (MIT, vendored
from npm with its license, uPlot.LICENSE) for the time series.

With `admin.token`, a browser cannot send a Bearer header on navigation, so `/usage` answers a
login form (401) that posts the token to `POST /usage/login`; a right token sets a cookie
holding a digest of the token (HttpOnly, SameSite=Strict), which the admin endpoint accepts in
place of the header. A token change on reload invalidates every cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Token = Callable[[], str | None]  # the current admin.token (read per request: reloads change it)

COOKIE = "otelgate_admin"
LOGIN_PATH = "/usage/login"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".LICENSE": "text/plain"}
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"}


def cookie_value(token: str) -> str:
    """What the cookie holds: a digest of the token, never the token itself."""
    return hashlib.sha256(b"otelgate-ui\0" + token.encode()).hexdigest()


def cookie_ok(request: web.Request, token: str) -> bool:
    sent = request.cookies.get(COOKIE, "")
    return bool(sent) and hmac.compare_digest(sent.encode(), cookie_value(token).encode())


def _files() -> dict[str, tuple[bytes, str]]:
    base = resources.files("gateway.ui").joinpath("static")
    out = {}
    for entry in base.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix in _TYPES:
            out[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return out


def login_page(message: str = "", status: int = 401) -> web.Response:
    note = f'<p class="error">{message}</p>' if message else ""
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>otelgate usage: sign in</title>
<link rel="stylesheet" href="/usage/static/usage.css"></head><body class="login">
<form method="post" action="{LOGIN_PATH}"><h1>otelgate usage</h1>{note}
<label>Admin token <input type="password" name="token" id="token" autofocus required></label>
<button type="submit" id="signin">Sign in</button></form></body></html>"""
    return web.Response(status=status, text=body, content_type="text/html", headers=_HEADERS)


def routes(token: Token) -> list[tuple[str, str, Handler]]:
    files = _files()

    async def page(request: web.Request) -> web.Response:
        body, ctype = files["usage.html"]
        return web.Response(body=body, content_type=ctype, headers=_HEADERS)

    async def static(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(body=found[0], content_type=found[1], headers=_HEADERS)

    async def login(request: web.Request) -> web.Response:
        current = token()
        if current is None:
            raise web.HTTPSeeOther("/usage")
        form = await request.post()
        sent = str(form.get("token", ""))
        if not hmac.compare_digest(hashlib.sha256(sent.encode()).digest(), hashlib.sha256(current.encode()).digest()):
            return login_page("Wrong token.")
        response = web.HTTPSeeOther("/usage")
        response.set_cookie(COOKIE, cookie_value(current), httponly=True, samesite="Strict", path="/")
        return response

    return [("GET", "/usage", page), ("GET", "/usage/static/{name}", static), ("POST", LOGIN_PATH, login)]
