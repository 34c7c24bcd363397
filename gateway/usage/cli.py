"""`otelgate usage`: the usage API's figures as a terminal table (or its JSON).

It asks a running gateway's admin endpoint (`--url`, with `--token` or `OTELGATE_ADMIN_TOKEN`),
or reads the usage store a config names directly (`-c FILE`; without either, the embedded
default's `./otelgate-usage.db`), so it also works while no gateway runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from typing import Any

import orjson

from gateway.usage.query import QueryError, answer, parse_query

_RELATIVE = re.compile(r"^(\d+)(m|h|d)$")
_UNITS = {"m": 60, "h": 3600, "d": 86400}
_COLUMNS = [("calls", "calls"), ("errors", "errors"), ("input_tokens", "input"), ("output_tokens", "output"),
            ("cache_read_tokens", "cache_read"), ("cost_usd", "cost_usd"), ("turns", "turns"),
            ("sessions", "sessions"), ("active_users", "users")]


def add_parser(commands: Any) -> None:
    usage = commands.add_parser("usage", help="who spent what: usage totals and breakdowns as a table")
    usage.add_argument("--from", dest="start", help="RFC 3339, Unix seconds, or a time ago: 30m, 24h, 7d (default 24h)")
    usage.add_argument("--to", dest="end", help="RFC 3339, Unix seconds, or a time ago (default now)")
    usage.add_argument("--by", default="", help="group by these, comma-separated: tenant, app, environment, "
                       "provider, model, operation, status, user, session, day")
    usage.add_argument("--step", help="also a series with this step (e.g. 1h, 1d)")
    usage.add_argument("--where", action="append", default=[], metavar="DIM=VALUE", help="filter, e.g. app=support-bot")
    usage.add_argument("--top", type=int, default=0, help="also list the top N users and sessions by cost")
    source = usage.add_mutually_exclusive_group()
    source.add_argument("--url", help="a running gateway's admin endpoint, e.g. http://127.0.0.1:13133")
    source.add_argument("-c", "--config", help="read the usage store this config names (default: the embedded default's)")
    usage.add_argument("--token", default=os.environ.get("OTELGATE_ADMIN_TOKEN"),
                       help="admin.token for --url (default: $OTELGATE_ADMIN_TOKEN)")
    usage.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    usage.set_defaults(func=run)


def _when(text: str | None, now: float) -> str | None:
    if text is None:
        return None
    m = _RELATIVE.match(text.strip())
    return str(int(now) - int(m.group(1)) * _UNITS[m.group(2)]) if m else text


def _params(args: argparse.Namespace, now: float) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in (("from", _when(args.start, now)), ("to", _when(args.end, now)), ("group_by", args.by),
                        ("step", args.step), ("top", str(args.top))):
        if value:
            params[name] = value
    for item in args.where:
        dim, sep, value = item.partition("=")
        if not sep:
            raise QueryError(f"--where: expected DIM=VALUE, got {item!r}")
        params[dim.strip()] = value
    return params


def _fetch_url(url: str, params: dict[str, str], token: str | None) -> dict[str, Any]:
    import urllib.error
    import urllib.parse
    import urllib.request
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/usage?" + urllib.parse.urlencode(params))
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return orjson.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            message = orjson.loads(body)["error"]
        except Exception:
            message = body.decode(errors="replace").strip() or exc.reason
        raise QueryError(f"{url}: HTTP {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise QueryError(f"{url}: cannot reach the admin endpoint: {getattr(exc, 'reason', exc)}") from None


async def _read_store(config_path: str | None, params: dict[str, str], now: float) -> dict[str, Any]:
    from gateway.config import load
    from gateway.usage import store as stores
    config = load(config_path)
    if not config.usage.enabled:
        raise QueryError(f"{config_path or '<embedded default>'}: usage is off (usage.enabled: false)")
    if config.usage.store == "sqlite" and not os.path.exists(config.usage.path):
        raise QueryError(f"no usage store at {config.usage.path} (has a gateway run here?)")
    store = stores.create(config.usage)
    try:
        return await answer(store, parse_query(params, now))
    finally:
        await store.close()


def _cell(value: Any, name: str) -> str:
    if value is None:
        return "-"
    if name == "cost_usd":
        return f"{value:.4f}"
    return str(value)


def table(body: dict[str, Any], dims: list[str]) -> str:
    """The figures as aligned columns: one line per group (or per series point), then the total."""
    header = [*dims, *(label for _, label in _COLUMNS)]
    rows: list[list[str]] = []
    source = body["groups"] if dims else []
    for group in source:
        rows.append([str(group["key"].get(d, "")) or "(none)" for d in dims]
                    + [_cell(group.get(f), f) for f, _ in _COLUMNS])
    total = ["total", *([""] * (len(dims) - 1))] if dims else []
    rows.append(total + [_cell(body["totals"].get(f), f) for f, _ in _COLUMNS])
    out = [f"usage {body['from']} .. {body['to']}"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = len(dims)

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < numeric else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out.append(line(header))
    out.extend(line(r) for r in rows)
    if body.get("series"):
        out.append("")
        out.append(line(["t".ljust(20), *([""] * (numeric - 1))] + [label for _, label in _COLUMNS])
                   if numeric else "  ".join(["t".ljust(20), *(label for _, label in _COLUMNS)]))
        for point in body["series"]:
            out.append("  ".join([point["t"].ljust(20), *(_cell(point.get(f), f).rjust(8) for f, _ in _COLUMNS)]))
    for what in ("top_users", "top_sessions"):
        entries = body.get(what) or []
        if entries:
            out.append("")
            out.append(what.replace("_", " ") + ":")
            for e in entries:
                who = e.get("user") if what == "top_users" else f"{e['session']} ({e.get('user') or '-'})"
                out.append(f"  {who}  calls={e['calls']} turns={e['turns']} cost_usd={e['cost_usd']:.4f}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        params = _params(args, now)
        if args.url:
            body = _fetch_url(args.url, params, args.token)
        else:
            body = asyncio.run(_read_store(args.config, params, now))
    except QueryError as exc:
        print(f"otelgate usage: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a config error or an unreachable store
        errors = getattr(exc, "errors", None)
        print(f"otelgate usage: {'; '.join(errors) if errors else f'{type(exc).__name__}: {exc}'}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        dims = [d for d in args.by.split(",") if d.strip()]
        print(table(body, [d.strip() for d in dims]))
    return 0


