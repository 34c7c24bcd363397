"""The usage service: the recorder on the hot path, the store behind it, and the work between.

Every `flush_interval` the service takes the recorder's rollups and writes them (with whatever
an earlier failed flush left) in one transaction. While the store is slow the recorder keeps
accumulating; while it is down, unwritten rollups are kept up to `max_pending_rows` and
retried; what is past that bound is counted in `otelgate_usage_dropped_total{rollup}` and
logged. Ingestion never waits for any of it. A crash loses at most one flush interval.

Once an hour (and at start) rows past `retention` are deleted and per-minute rows older than
`compact_after` are compacted to per-hour rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from prometheus_client import Counter, Gauge

from gateway.logs import get_logger
from gateway.telemetry import Metrics
from gateway.usage import store as stores
from gateway.usage.config import UsageConfig
from gateway.usage.recorder import Recorder, Rollups
from gateway.usage.store import Store

_log = get_logger("usage")
_MAINTAIN_EVERY_S = 3600.0
_LOG_EVERY_S = 60.0  # a failing store is logged at most this often


class UsageService:
    def __init__(self, config: UsageConfig, metrics: Metrics, store: Store | None = None) -> None:
        self.config = config
        self.store = store if store is not None else stores.create(config)
        self.recorder = Recorder(config.max_pending_rows)
        self._unsent: Rollups | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened = False
        self._last_ok: float | None = None
        self._last_error: str | None = None
        self._last_logged = 0.0
        self._last_maintained = 0.0
        self._reported_drops = {"minute": 0, "user": 0, "session": 0}
        r = metrics.registry
        self.m_dropped = Counter("otelgate_usage_dropped", "LLM call contributions to usage rollups that could not "
                                 "be kept (pending rows at usage.max_pending_rows), by rollup", ["rollup"], registry=r)
        self.m_flushes = Counter("otelgate_usage_flushes", "Usage store flushes by outcome", ["outcome"], registry=r)
        self.m_pending = Gauge("otelgate_usage_pending_rows", "Usage rollup rows waiting to be written", registry=r)
        self.m_pending.set_function(lambda: self.recorder._rows + (self._unsent.rows() if self._unsent else 0))

    async def start(self) -> None:
        """Open the store if it answers; if not, start anyway and keep trying (usage is never a reason not to run)."""
        await self._open()
        self._task = asyncio.create_task(self._loop(), name="usage-flush")
        _log.info("usage accounting on", store=self.store.name,
                  where=self.config.path if self.store.name == "sqlite" else "postgresql",
                  flush_interval_s=self.config.flush_interval)

    async def _open(self) -> bool:
        if self._opened:
            return True
        try:
            await self.store.open()
        except Exception as exc:
            self._failed("open", exc)
            return False
        self._opened = True
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_interval)
            await self.flush()
            now = time.time()
            if self._opened and now - self._last_maintained >= _MAINTAIN_EVERY_S:
                self._last_maintained = now
                await self.maintain(now)

    async def flush(self) -> bool:
        """Write what is pending; True if the store took it."""
        taken = self.recorder.take()
        self._count_drops()
        if self._unsent is not None:
            unsent, self._unsent = self._unsent, None
            self._drop(unsent.merge(taken, self.config.max_pending_rows))
            taken = unsent
        try:
            if not taken.rows():
                return True
            if not await self._open():
                raise ConnectionError(self._last_error or "store not open")
            await self.store.write(taken)
        except Exception as exc:
            self._unsent = taken
            self.recorder.limit = max(0, self.config.max_pending_rows - taken.rows())
            self.m_flushes.labels("failed").inc()
            self._failed("flush", exc)
            return False
        self.recorder.limit = self.config.max_pending_rows
        self.m_flushes.labels("ok").inc()
        if self._last_error is not None:
            _log.info("usage store writing again", store=self.store.name)
        self._last_ok, self._last_error = time.time(), None
        return True

    async def maintain(self, now: float) -> None:
        retain = int(now - self.config.retention)
        compact = int(now - self.config.compact_after) // 3600 * 3600
        try:
            await self.store.maintain(retain // 86400 * 86400, compact)
        except Exception as exc:
            self._failed("maintain", exc)

    def _count_drops(self) -> None:
        for rollup, total in self.recorder.dropped.items():
            new = total - self._reported_drops[rollup]
            if new:
                self._reported_drops[rollup] = total
                self._drop({rollup: new})

    def _drop(self, lost: dict[str, int]) -> None:
        for rollup, n in lost.items():
            if n:
                self.m_dropped.labels(rollup).inc(n)
                _log.warning("usage rollups dropped: pending rows at their bound", rollup=rollup, count=n,
                             max_pending_rows=self.config.max_pending_rows,
                             cause=self._last_error or "more distinct keys in one flush interval than the bound")

    def _failed(self, what: str, exc: BaseException) -> None:
        self._last_error = f"{what}: {type(exc).__name__}: {exc}"[:300]
        now = time.monotonic()
        if now - self._last_logged >= _LOG_EVERY_S:
            self._last_logged = now
            _log.error("usage store failing; rollups are kept in memory and retried", store=self.store.name,
                       error=self._last_error)

    def health(self) -> dict[str, Any]:
        pending = self.recorder._rows + (self._unsent.rows() if self._unsent else 0)
        return {"status": "failing" if self._last_error else "ok", "store": self.store.name,
                "last_flush": _stamp(self._last_ok), "pending_rows": pending,
                "dropped": dict(self.recorder.dropped), "last_error": self._last_error}

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending (within `timeout`) and close the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except (asyncio.TimeoutError, Exception) as exc:
            _log.error("usage: the last rollups could not be written", error=str(exc) or type(exc).__name__)
        with contextlib.suppress(Exception):
            await self.store.close()


def _stamp(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
