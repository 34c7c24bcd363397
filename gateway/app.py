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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from gateway import logs, ui
from gateway.admin import AdminServer
from gateway.budgets.alerter import Alerter
from gateway.config import Config, ConfigError, load
from gateway.logs import get_logger
from gateway.pipeline import Pipeline
from gateway.processors import Processor
from gateway.receivers.intake import Intake
from gateway.receivers.otlp_grpc import OtlpGrpcReceiver
from gateway.receivers.otlp_http import OtlpHttpReceiver
from gateway.telemetry import Metrics
from gateway.usage import api as usage_api
from gateway.usage.service import UsageService

_log = get_logger("gateway")


class Receiver(Protocol):
    endpoint: str
    tls_mode: str  # off | tls | mtls

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class ConfigStatus:
    """What /health says of the config: which load is running, and why the last one failed."""

    def __init__(self) -> None:
        self.generation = 1
        self.loaded_at = time.time()
        self.last_error: list[str] | None = None

    def as_dict(self) -> dict[str, object]:
        loaded = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))
        return {"generation": self.generation, "loaded_at": loaded, "last_error": self.last_error}


class Gateway:
    def __init__(self, config: Config, processors: Sequence[Processor] | None = None,
                 config_path: str | os.PathLike[str] | None = None) -> None:
        """`config_path` is the file `config` came from: it is watched and reloaded on change or SIGHUP."""
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        self.config_status = ConfigStatus()
        self._config_digest = _digest(self.config_path)
        self._reload_lock = asyncio.Lock()
        self.metrics = Metrics()
        # Usage accounting: the account processor feeds its recorder; the store is written off the hot path.
        self.usage = UsageService(config.usage, self.metrics) if config.usage.enabled else None
        self.pipeline = Pipeline(config, self.metrics, processors, self.usage.recorder if self.usage else None)
        self.intake = intake = Intake(self.pipeline, self.metrics)
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

    async def start(self) -> None:
        """Start everything, or roll back what started and raise."""
        try:
            await self.admin.start()
            _log.info("admin listening", endpoint=self.admin.endpoint, paths="/health /metrics")
            if self.usage is not None:
                await self.usage.start()
            if self.alerter is not None:
                await self.alerter.start()
            await self.pipeline.start()
            for name, receiver in self.receivers.items():
                await receiver.start()
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
        _log.info("ready", sinks=",".join(self.pipeline.drivers))

    async def stop(self) -> None:
        """Idempotent; safe after a partial start."""
        self.admin.state = "draining"
        deadline = time.monotonic() + self.config.service.shutdown_grace
        for name in reversed(self._started):
            await self.receivers[name].shutdown()
        self._started.clear()
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
                config = load(self.config_path)
            except ConfigError as exc:
                self._config_digest = digest
                self.config_status.last_error = exc.errors
                self.metrics.config_reloads.labels("invalid").inc()
                for error in exc.errors:
                    _log.error("config reload rejected; the running config stays", reason=reason, error=error)
                return False
            self._config_digest = digest
            if config == self.config:
                self.config_status.last_error = None
                _log.info("config unchanged", reason=reason)
                return True
            if config.receivers != self.config.receivers:
                _log.warning("config: receivers changed; that takes a restart (kept the running receivers)")
            if (config.budgets, config.alerts) != (self.config.budgets, self.config.alerts):
                _log.warning("config: budgets or alerts changed; that takes a restart (kept the running ones)")
            if config.usage != self.config.usage:
                _log.warning("config: usage changed; that takes a restart (kept the running usage store)")
            if config.admin.endpoint != self.config.admin.endpoint:
                _log.warning("config: admin.endpoint changed; that takes a restart (kept the running endpoint)")
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
            logs.set_level(config.service.log_level)
            self.metrics.config_reloads.labels("applied").inc()
            _log.info("config reloaded", reason=reason, generation=status.generation,
                      sinks=",".join(self.pipeline.drivers), routes=",".join(r.name for r in config.route_list()))
            return True

    async def _watch_config(self) -> None:
        """Reload when the file's content changes (polled: works on every filesystem and in containers)."""
        while True:
            interval = self.config.service.config_watch_interval
            await asyncio.sleep(interval or 1.0)
            if interval and _digest(self.config_path) != self._config_digest:
                await self.reload("file changed")

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


def _digest(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None
