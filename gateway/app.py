"""The gateway: every part built from one config, started downstream first, stopped upstream first.

Start order (as the Collector's graph): admin (answering 503 `starting`) -> sinks -> receivers
-> ready. Stop order: admin says `draining` -> receivers close and finish in-flight requests ->
sink queues drain within `service.shutdown_grace` -> admin closes. So each stage stops while its
consumer is still alive, and nothing acknowledged is left behind without being counted.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from gateway import logs, ui
from gateway.admin import AdminServer
from gateway.budgets.alerter import Alerter
from gateway.config import Config, ConfigError, load
from gateway.configtypes import split_endpoint
from gateway.logs import get_logger
from gateway.pipeline import Pipeline
from gateway.processors import Processor
from gateway.receivers.intake import Intake
from gateway.receivers.otlp_grpc import OtlpGrpcReceiver
from gateway.receivers.otlp_http import OtlpHttpReceiver
from gateway.service import worker_id
from gateway.telemetry import Metrics
from gateway.usage import api as usage_api
from gateway.usage.service import UsageService

_log = get_logger("gateway")


class Receiver(Protocol):
    endpoint: str
    tls_mode: str  # off | tls | mtls

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class StartError(Exception):
    """A part could not start; the message names the config key and value, and why."""


class ConfigStatus:
    """What /health says of the config: which load is running, why the last one failed, and which
    settings of the file are not in effect until a restart (listeners keep their sockets)."""

    def __init__(self) -> None:
        self.generation = 1
        self.loaded_at = time.time()
        self.last_error: list[str] | None = None
        self.restart_required: list[str] | None = None

    def as_dict(self) -> dict[str, object]:
        loaded = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))
        return {"generation": self.generation, "loaded_at": loaded, "last_error": self.last_error,
                "restart_required": self.restart_required}


class Gateway:
    def __init__(self, config: Config, processors: Sequence[Processor] | None = None,
                 config_path: str | os.PathLike[str] | None = None,
                 loader: Callable[[Path], Config] = load) -> None:
        """`config_path` is the file `config` came from: it is watched and reloaded on change or SIGHUP,
        read with `loader` (a worker's adjusts ports, admin socket and disk queue directories)."""
        self.config = config
        self._load = loader
        self._worker = worker_id()
        self.config_path = Path(config_path) if config_path is not None else None
        self.config_status = ConfigStatus()
        self._config_digest = _digest(self.config_path)
        self._reload_lock = asyncio.Lock()
        self.metrics = Metrics()
        # Usage accounting: the account processor feeds its recorder; the store is written off the hot path.
        self.usage = UsageService(config.usage, self.metrics) if config.usage.enabled else None
        self.pipeline = Pipeline(config, self.metrics, processors, self.usage.recorder if self.usage else None)
        self.affinity = None  # with workers, when the config decides on whole traces
        if self._worker is not None:
            from gateway.service.workers import affinity_for
            self.affinity = affinity_for(config, self.pipeline, self._worker)
        self.intake = intake = Intake(self.affinity or self.pipeline, self.metrics)
        intake.configure(config)  # API keys and limits; a reload calls it again
        self.receivers: dict[str, Receiver] = {}
        if config.receivers.grpc is not None:
            self.receivers["OTLP/gRPC"] = OtlpGrpcReceiver(config.receivers.grpc, intake)
        if config.receivers.http is not None:
            self.receivers["OTLP/HTTP"] = OtlpHttpReceiver(config.receivers.http, intake)
        self.admin = AdminServer(config.admin, self.metrics, self.pipeline.health, self.config_status.as_dict)
        self.alerter = Alerter(config.budgets, config.alerts, self.usage, self.metrics) \
            if self.usage is not None and (config.budgets or config.alerts.rules) else None
        self.admin.routes.extend(usage_api.routes(self.usage, self.alerter))
        admin = self.admin
        self.admin.routes.extend(ui.routes(lambda: admin.config.token.get_secret_value() if admin.config.token else None))
        if self.usage is not None:
            self.admin.health_sections["usage"] = self.usage.health
        if self.alerter is not None:
            self.admin.health_sections["alerts"] = self.alerter.health
        self._started: list[str] = []
        self._listening = _listener_settings(config)  # what the sockets were bound with: a reload keeps them

    def _listener_keys(self) -> list[tuple[str, str]]:
        keys = [("admin.endpoint", self.config.admin.endpoint)]
        keys += [(f"receivers.{proto}.endpoint", rc.endpoint) for proto, rc in
                 (("grpc", self.config.receivers.grpc), ("http", self.config.receivers.http)) if rc is not None]
        return keys

    async def start(self) -> None:
        """Start everything, or roll back what started and raise (`StartError` naming the key).

        Every listener's address is tried first, before any part starts, so a wrong or taken
        address fails before a sink has created a file or a queue directory."""
        if self._worker is None:  # a worker's siblings already hold the shared ports (SO_REUSEPORT)
            for key, endpoint in self._listener_keys():
                _probe_listen(key, endpoint)
        try:
            try:
                await self.admin.start()
            except OSError as exc:
                raise StartError(f"admin.endpoint {self.config.admin.endpoint!r}: cannot listen: {_why(exc)}") from exc
            # A worker's admin socket is its supervisor's business, not the public endpoint.
            _log.info("admin listening" if self._worker is None else "worker admin socket",
                      endpoint=self.admin.endpoint, paths="/health /metrics")
            if self.usage is not None:
                await self.usage.start()
            if self.alerter is not None:
                await self.alerter.start()
            await self.pipeline.start()
            if self.affinity is not None:
                await self.affinity.start()
            for (key, value), (name, receiver) in zip(self._listener_keys()[1:], self.receivers.items()):
                try:
                    await receiver.start()
                except (OSError, RuntimeError) as exc:
                    raise StartError(f"{key} {value!r}: cannot listen: {_why(exc)}") from exc
                self._started.append(name)
                _log.info(f"{name} listening", endpoint=receiver.endpoint, tls=receiver.tls_mode)
        except BaseException:
            await self.stop()
            raise
        # Everything built so far (price tables, compiled configs, modules) lives as long as the
        # process: keep it out of the collector's full passes, which otherwise walk it every time.
        gc.freeze()
        gc.set_threshold(700, 10, 100)  # full passes 10x rarer: the trace buffer holds many young objects
        self.admin.state = "running"
        if self._worker is None:
            _log.info("loaded", **_loaded_summary(self))
        _log.info("ready" if self._worker is None else "worker up", sinks=",".join(self.pipeline.drivers))

    async def stop(self) -> None:
        """Idempotent; safe after a partial start."""
        self.admin.state = "draining"
        deadline = time.monotonic() + self.config.service.shutdown_grace
        for name in reversed(self._started):
            await self.receivers[name].shutdown()
        self._started.clear()
        if self.affinity is not None:
            await self.affinity.stop()
        await self.pipeline.drain(max(0.0, deadline - time.monotonic()))
        if self.alerter is not None:
            await self.alerter.stop()
        if self.usage is not None:
            await self.usage.stop(min(5.0, max(1.0, deadline - time.monotonic())))
        await self.admin.shutdown()

    async def reload(self, reason: str) -> bool:
        """Load the config file again and switch to it if valid; else keep running the old one.

        Receivers and the admin endpoint keep their listeners (changing them needs a restart,
        which is logged); everything else switches, API keys and the admin token included.
        """
        if self.config_path is None:
            _log.info("reload requested but no config file was given (embedded default)", reason=reason)
            return False
        async with self._reload_lock:
            digest = _digest(self.config_path)
            try:
                config = self._load(self.config_path)
            except Exception as exc:  # load raises ConfigError only; anything else is still a rejected reload
                self._config_digest = digest
                errors = exc.errors if isinstance(exc, ConfigError) else [f"{self.config_path}: cannot load: {exc!r}"]
                self.config_status.last_error = errors
                self.metrics.config_reloads.labels("invalid").inc()
                for error in errors:
                    _log.error("config reload rejected; the running config stays", reason=reason, error=error)
                return False
            self._config_digest = digest
            if config == self.config:
                self.config_status.last_error = None
                _log.info("config unchanged", reason=reason)
                return True
            pending = _listener_diff(self._listening, _listener_settings(config)) or None
            for change in pending or ():
                _log.warning("config: takes a restart; the running listener stays", change=change)
            if (config.budgets, config.alerts) != (self.config.budgets, self.config.alerts):
                _log.warning("config: budgets or alerts changed; that takes a restart (kept the running ones)")
            if config.usage != self.config.usage:
                _log.warning("config: usage changed; that takes a restart (kept the running usage store)")
            try:
                await self.pipeline.reload(config, config.service.shutdown_grace)
            except Exception as exc:
                self.config_status.last_error = [f"cannot apply: {exc}"]
                self.metrics.config_reloads.labels("failed").inc()
                _log.error("config reload failed; the running config stays", reason=reason, error=str(exc))
                return False
            self.intake.configure(config)  # API keys and limits
            self.admin.config = config.admin  # the token (its endpoint is bound already)
            self.config = config
            status = self.config_status
            status.generation += 1
            status.loaded_at = time.time()
            status.last_error = None
            status.restart_required = pending
            logs.set_level(config.service.log_level)
            self.metrics.config_reloads.labels("applied").inc()
            _log.info("config reloaded", reason=reason, generation=status.generation,
                      sinks=",".join(self.pipeline.drivers), routes=",".join(r.name for r in config.route_list()))
            return True

    async def _watch_config(self) -> None:
        """Reload when the file's content changes (polled: works on every filesystem and in containers).

        Never ends but by cancellation: a failure in one poll is logged and the next poll runs,
        and should the loop itself die it is restarted (logged and counted), so an edit of the
        file is never silently ignored."""
        while True:
            try:
                while True:
                    interval = self.config.service.config_watch_interval
                    await asyncio.sleep(interval or 1.0)
                    if interval and _digest(self.config_path) != self._config_digest:
                        await self.reload("file changed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any bug
                self.metrics.config_reloads.labels("watcher_error").inc()
                _log.error("config watcher failed; restarting it", error=repr(exc))
                await asyncio.sleep(1.0)

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks: set[asyncio.Task[bool]] = set()

        def on_hangup() -> None:
            task = asyncio.create_task(self.reload("SIGHUP"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        await self.start()
        watcher = asyncio.create_task(self._watch_config()) if self.config_path is not None else None
        await stop.wait()
        _log.info("shutting down", grace_s=self.config.service.shutdown_grace)
        if watcher is not None:
            watcher.cancel()
        async with self._reload_lock:  # let a reload in progress finish first
            await self.stop()
        _log.info("stopped")


def _why(exc: BaseException) -> str:
    """The reason alone: no errno prefix, no gRPC's `set GRPC_VERBOSITY=debug` advice."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    for noise in ("; set GRPC_VERBOSITY=debug environment variable to see detailed error message.",):
        text = text.replace(noise, "")
    return text


def _probe_listen(key: str, endpoint: str) -> None:
    """Resolve and bind `endpoint` once (then close), as the listener will: a bad host, a taken
    port or a privileged one is a `StartError` naming the key before anything has started."""
    host, port = split_endpoint(endpoint)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartError(f"{key} {endpoint!r}: cannot listen: the host {host!r} does not resolve "
                         f"({exc.strerror}); use an IP address of this machine, 0.0.0.0 or [::]") from None
    for family, kind, proto, _, address in infos[:1] if port == 0 else infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as exc:
            hint = {98: "another process holds the port: stop it or change the endpoint",
                    13: "permission denied: use a port above 1023",
                    99: "not an address of this machine"}.get(exc.errno or 0)
            raise StartError(f"{key} {endpoint!r}: cannot listen: {_why(exc)}" + (f" ({hint})" if hint else "")) from None


def _listener_settings(config: Config) -> dict[str, object]:
    """The settings bound at start (flat `key: value`), which a reload cannot change."""
    out: dict[str, object] = {"admin.endpoint": config.admin.endpoint}
    for proto in ("grpc", "http"):
        rc = getattr(config.receivers, proto)
        out[f"receivers.{proto}"] = "off" if rc is None else "on"
        for key, value in (rc.model_dump(mode="json") if rc is not None else {}).items():
            out[f"receivers.{proto}.{key}"] = value
    return out


def _listener_diff(running: dict[str, object], wanted: dict[str, object]) -> list[str]:
    """`KEY: running X, the file says Y` for each difference (a receiver turned on or off is one line)."""
    return [f"{key}: running {running[key]!r}, the file says {wanted[key]!r}"
            for key in sorted(set(running) & set(wanted)) if running[key] != wanted[key]]


def _loaded_summary(gateway: "Gateway") -> dict[str, str]:
    """One start-up line of what was loaded: what an operator checks first."""
    from importlib.metadata import PackageNotFoundError, version

    config = gateway.config
    listeners = [f"admin={gateway.admin.endpoint}"]
    listeners += [f"{name}={r.endpoint}" for name, r in gateway.receivers.items()]
    try:
        prices = f"genai-prices {version('genai-prices')}"
    except PackageNotFoundError:  # pragma: no cover
        prices = "genai-prices (unknown version)"
    refresh = config.pipeline.price.refresh
    if not config.pipeline.price.enabled:
        prices = "off"
    elif refresh is not None:
        prices += f", refreshed from {refresh.source}"
    return {"listeners": " ".join(listeners),
            "sinks": ",".join(f"{name}({sink.type})" for name, sink in config.sinks.items()),
            "routes": ",".join(r.name for r in config.route_list()),
            "processors": ",".join(config.pipeline.running()) or "none",
            "prices": prices}


def _digest(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None
