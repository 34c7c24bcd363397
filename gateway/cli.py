"""Command line: `otelgate run`, `otelgate check`, `otelgate price` and `otelgate usage`."""

from __future__ import annotations

import argparse
import errno
import asyncio
import sys

from gateway import __version__, logs
from gateway.config import Config, ConfigError, load
from gateway.usage import cli as usage_cli

GIL_SWITCH_INTERVAL_S = 0.001  # see `run`: the event loop must not wait 5 ms behind a sink's encoding thread


def _summary(config: Config) -> str:
    lines = ["receivers:"]
    for name, rc in (("grpc", config.receivers.grpc), ("http", config.receivers.http)):
        if rc is not None:
            lines.append(f"  {name}  {rc.endpoint}")
    lines.append(f"admin:  {config.admin.endpoint}")
    lines.append("sinks:")
    for name, sc in config.sinks.items():
        lines.append(f"  {name}  type={sc.type}")
    lines.append("routes:")
    for route in config.route_list():
        if route.default:
            what = "(what no other route took)"
        elif route.match is None:
            what = "(everything)"
        else:
            what = ", ".join(f"{k}={v}" for k, v in route.match.items())
        extras = [x for x in ("+".join(route.signals) if route.signals != ["traces"] else "",
                              f"by {route.by}" if route.by == "trace" else "", "continue" if route.continue_ else "",
                              "redacted" if route.redact else "",
                              f"sampled {route.sampling.head.percentage:g}%" if route.sampling else "") if x]
        lines.append(f"  {route.name}  {what}{' [' + ', '.join(extras) + ']' if extras else ''} -> {', '.join(route.sinks)}")
    lines.append(f"processors: {', '.join(config.pipeline.running()) or 'none'}")
    if config.sampling.head is not None:
        lines.append(f"head sampling: {config.sampling.head.percentage:g}%")
    if config.sampling.tail is not None:
        tail = config.sampling.tail
        policies = ", ".join(p.name or p.type for p in tail.policies) or "keep all"
        lines.append(f"tail sampling: wait {tail.decision_wait:g}s, {tail.combine} of: {policies}")
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"{args.config}: invalid config ({len(exc.errors)} error{'s' if len(exc.errors) != 1 else ''}):", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    for warning in config.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: valid")
    print(_summary(config))
    return 0


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format)
    log = logs.get_logger("cli")
    try:
        config = load(args.config)
    except ConfigError as exc:
        for error in exc.errors:
            log.error("invalid config", error=error)
        log.error("not started: fix the config (`otelgate check -c FILE` lists every error)")
        return 1
    logs.configure(args.log_format, config.service.log_level)
    for warning in config.warnings():
        log.warning("config warning", warning=warning)
    log.info("starting", version=__version__, config=args.config or "<embedded default>")

    from gateway.service import worker_id

    loader = None
    if worker_id() is not None:  # started by a supervisor (service.workers > 1)
        from gateway.service.workers import worker_setup
        config, loader = worker_setup(config)
    elif config.service.worker_count() > 1:
        from gateway.service.workers import supervise
        return supervise(config, args.config, args.log_format)
    elif any(sc.queue.type == "disk" for sc in config.sinks.values()):
        from gateway.service.workers import adopt_orphans
        adopt_orphans(config, None, 1)  # disk queues left by workers of an earlier `service.workers`

    from gateway.app import Gateway, StartError  # imported late: `check` stays fast and free of grpc

    # Sinks encode in their own threads: with CPython's default 5 ms GIL switch interval, every
    # wake-up of the event loop (each step of each request) could wait up to 5 ms for an encoding
    # thread, and under overload accepted requests waited seconds (gRPC p50 0.35-1.7 s; 1 ms:
    # 4-9 ms, at the same goodput per CPU second: tests/bench/RESULTS.md, "overload").
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        gateway = Gateway(config, config_path=args.config) if loader is None else \
            Gateway(config, config_path=args.config, loader=loader)
        runner(gateway.run_until_signalled())
    except StartError as exc:
        log.error("cannot start", error=str(exc))
        return 1
    except OSError as exc:
        hint = {errno.EADDRINUSE: "another process holds the port: stop it or change the endpoint in the config",
                errno.EACCES: "permission denied: check the file sink's path or use a port above 1023"}.get(exc.errno or 0)
        log.error("cannot start", error=str(exc), **({"hint": hint} if hint else {}))
        return 1
    return 0


def _price(args: argparse.Namespace) -> int:
    """The gateway's own pricing path (overrides from -c, then genai-prices), for one call."""
    from datetime import datetime, timezone

    from gateway.llm.pricing import PriceTable
    from gateway.llm.providers import canonical_provider

    overrides = []
    if args.config:
        try:
            config = load(args.config)
        except ConfigError as exc:
            for error in exc.errors:
                print(f"  {error}", file=sys.stderr)
            return 1
        overrides = config.pipeline.price.overrides
    at = None
    if args.at:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            print(f"--at: not an ISO date or time: {args.at!r} (e.g. 2025-06-01 or 2025-06-01T12:00:00Z)", file=sys.stderr)
            return 2
        if at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
    provider = canonical_provider(args.provider) if args.provider else None
    quote = PriceTable(overrides).quote(
        args.model, provider, input_tokens=args.input, output_tokens=args.output,
        cache_read_tokens=args.cache_read, cache_write_tokens=args.cache_write, at=at, service_tier=args.tier)
    if quote is None:
        print(f"no price known for {args.model!r}" + (f" (provider {provider})" if provider else "")
              + ": add a pipeline.price.overrides entry for it", file=sys.stderr)
        return 1

    def rate(value: float | None) -> str:
        return f"${value:g}/Mtok" if value is not None else "-"

    uncached = max(0, args.input - args.cache_read - args.cache_write)
    print(f"model:        {args.model} -> {quote.matched} ({quote.source})")
    print(f"input:        {uncached} tokens x {rate(quote.input_per_mtok)}")
    print(f"cache read:   {args.cache_read} tokens x {rate(quote.cache_read_per_mtok)}")
    print(f"cache write:  {args.cache_write} tokens x {rate(quote.cache_write_per_mtok)}")
    print(f"input cost:   ${quote.input_usd:.8f}")
    print(f"output:       {args.output} tokens x {rate(quote.output_per_mtok)} = ${quote.output_usd:.8f}")
    if quote.request_usd:
        print(f"per request:  ${quote.request_usd:.8f}")
    print(f"total:        ${quote.total_usd:.8f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otelgate", description="An OTLP gateway for the traces of LLM applications.")
    parser.add_argument("--version", action="version", version=f"otelgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the gateway (embedded default config without -c)")
    run.add_argument("-c", "--config", help="config YAML file")
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.set_defaults(func=_run)
    check = commands.add_parser("check", help="validate a config file and summarise it")
    check.add_argument("-c", "--config", required=True, help="config YAML file")
    check.set_defaults(func=_check)
    price = commands.add_parser("price", help="price one LLM call the way the gateway does")
    price.add_argument("model")
    price.add_argument("--provider", help="e.g. openai, anthropic, aws.bedrock (any spelling the gateway reads)")
    price.add_argument("--input", type=int, required=True, help="input tokens, including cache reads and writes")
    price.add_argument("--output", type=int, required=True, help="output tokens, including reasoning")
    price.add_argument("--cache-read", type=int, default=0)
    price.add_argument("--cache-write", type=int, default=0)
    price.add_argument("--tier", help="service tier, e.g. flex, priority")
    price.add_argument("--at", help="ISO date or time of the call, for historic prices (default: now)")
    price.add_argument("-c", "--config", help="config YAML whose pipeline.price.overrides apply")
    price.set_defaults(func=_price)
    usage_cli.add_parser(commands)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
