"""The gateway: every part built from one config, started downstream first, stopped upstream first.

Start order (as the Collector's graph): admin (answering 503 `starting`) -> sinks -> receivers
-> ready. Stop order: admin says `draining` -> receivers close and finish in-flight requests ->
sink queues drain within `service.shutdown_grace` -> admin closes. So each stage stops while its
consumer is still alive, and nothing acknowledged is left behind without being counted.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Sequence
from typing import Protocol

from gateway.admin import AdminServer
from gateway.config import Config
from gateway.logs import get_logger
from gateway.pipeline import Pipeline
from gateway.processors import Processor
from gateway.receivers.intake import Intake
from gateway.receivers.otlp_grpc import OtlpGrpcReceiver
from gateway.receivers.otlp_http import OtlpHttpReceiver
from gateway.telemetry import Metrics

_log = get_logger("gateway")


class Receiver(Protocol):
    endpoint: str
    tls_mode: str  # off | tls | mtls

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class Gateway:
    def __init__(self, config: Config, processors: Sequence[Processor] | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.pipeline = Pipeline(config, self.metrics, processors)
        self.intake = intake = Intake(self.pipeline, self.metrics)
        intake.configure(config)  # API keys and limits; a reload calls it again
        self.receivers: dict[str, Receiver] = {}
        if config.receivers.grpc is not None:
            self.receivers["OTLP/gRPC"] = OtlpGrpcReceiver(config.receivers.grpc, intake)
        if config.receivers.http is not None:
            self.receivers["OTLP/HTTP"] = OtlpHttpReceiver(config.receivers.http, intake)
        self.admin = AdminServer(config.admin, self.metrics, self.pipeline.health)
        self._started: list[str] = []

    async def start(self) -> None:
        """Start everything, or roll back what started and raise."""
        try:
            await self.admin.start()
            _log.info("admin listening", endpoint=self.admin.endpoint, paths="/health /metrics")
            await self.pipeline.start()
            for name, receiver in self.receivers.items():
                await receiver.start()
                self._started.append(name)
                _log.info(f"{name} listening", endpoint=receiver.endpoint, tls=receiver.tls_mode)
        except BaseException:
            await self.stop()
            raise
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
        await self.admin.shutdown()

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        _log.info("shutting down", grace_s=self.config.service.shutdown_grace)
        await self.stop()
        _log.info("stopped")
