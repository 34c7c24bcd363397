"""Command line: `otelgate run` and `otelgate check`."""

from __future__ import annotations

import argparse
import errno
import asyncio
import sys

from gateway import __version__, logs
from gateway.config import Config, ConfigError, load


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
        lines.append(f"  {route.name}  (everything) -> {', '.join(route.sinks)}")
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

    from gateway.app import Gateway  # imported late: `check` stays fast and free of grpc

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(Gateway(config).run_until_signalled())
    except OSError as exc:
        hint = {errno.EADDRINUSE: "another process holds the port: stop it or change the endpoint in the config",
                errno.EACCES: "permission denied: check the file sink's path or use a port above 1023"}.get(exc.errno or 0)
        log.error("cannot start", error=str(exc), **({"hint": hint} if hint else {}))
        return 1
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
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
