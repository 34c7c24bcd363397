"""`service.workers: N | auto`: N gateway processes on the same ports, one supervisor.

Why processes: one otelgate process is bound to one core (the GIL); the kernel spreads new
connections over every socket bound with SO_REUSEPORT, so N workers each run the whole gateway
(receivers, pipeline, sinks) on their own core with nothing shared on the hot path.

The supervisor (the process `otelgate run` started):
- binds each receiver's port once without listening (SO_REUSEPORT), so an ephemeral port (`:0`)
  is the same for every worker and a worker restarted later gets it back; a port held by another
  program fails the start as a single process would;
- starts the workers (`python -m gateway run` again, with `OTELGATE_WORKER_ID`, so grpc does not
  share a forked runtime), each with its admin endpoint on a Unix socket only it and the
  supervisor use, its own disk queue directory `<queue.dir>/worker-<id>/` and, for file sinks,
  its own file `<stem>.worker-<id><suffixes>` (records of two processes never interleave,
  rotation stays per file);
- restarts a worker that dies (logged, `otelgate_worker_restarts_total`), with a backoff that
  grows while it keeps dying; the restarted worker reopens its directory and delivers what its
  disk queue held;
- forwards SIGHUP to every worker (each also watches the config file itself), and on SIGTERM
  tells every worker to drain, waits for them, and exits 0 if they all did;
- serves the one admin endpoint: `/metrics` is the sum over the workers of every sample (a
  counter of a worker that died is carried at its last scraped value, so totals do not go
  backwards), `/health` lists every worker's state.

Workers set PR_SET_PDEATHSIG: if the supervisor is killed, they drain and exit by themselves.
A worker 0 (or a single process) adopts the disk queues of workers that no longer exist (after
`workers` was lowered, or the layout changed from one process to several or back): their
records move into its own log before it starts, so they are delivered, never stranded.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession, ClientTimeout, UnixConnector, web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from gateway import __version__
from gateway import ui
from gateway.admin import AdminServer
from gateway.budgets.alerter import STORE_GAUGES
from gateway.config import Config, ConfigError
from gateway.configtypes import split_endpoint
from gateway.logs import get_logger
from gateway.service import WORKER_ENV, worker_id

_log = get_logger("workers")

ENDPOINTS_ENV = "OTELGATE_WORKER_ENDPOINTS"  # JSON: {"grpc": "h:p", "http": "h:p", "admin": "unix:/..."}
COUNT_ENV = "OTELGATE_WORKERS"
_READY_TIMEOUT = 60.0
_RESTART_BACKOFF = (0.5, 30.0)  # first delay, maximum; doubled while a worker keeps dying early
_STABLE_AFTER = 30.0  # a worker that ran this long resets its backoff
_SCRAPE_TIMEOUT = 5.0
# The usage API (read from the store every worker shares): forwarded to a running worker.
_FORWARDED_PATHS = ("/api/v1/usage", "/api/v1/budgets", "/api/v1/openapi.json")
_HEALTH_KEYS = frozenset(("status", "version", "uptime_s", "sinks", "config", "workers"))  # the rest: sections
_SINK_STATUS_ORDER = ("ok", "retrying", "degraded", "failing")


# -- in the worker ------------------------------------------------------------------------------


def worker_config(config: Config, worker: int, endpoints: dict[str, str]) -> Config:
    """The config a worker runs: the supervisor's ports, a private admin socket, its own queue
    directories and files. Applied again on every reload, so a reload compares like with like."""
    receivers = config.receivers
    update_receivers: dict[str, Any] = {}
    for name in ("grpc", "http"):
        rc = getattr(receivers, name)
        if rc is not None:
            update_receivers[name] = rc.model_copy(update={"endpoint": endpoints[name]})
    sinks = {name: _sink_for_worker(sc, worker) for name, sc in config.sinks.items()}
    return config.model_copy(update={
        "receivers": receivers.model_copy(update=update_receivers),
        # The worker's admin socket sits in the supervisor's private (0700) directory and is read
        # only by it: no token there, so the supervisor's scrapes and forwarded API calls get in.
        "admin": config.admin.model_copy(update={"endpoint": endpoints["admin"], "token": None}),
        "sinks": sinks,
    })


def _sink_for_worker(sc: Any, worker: int) -> Any:
    update: dict[str, Any] = {}
    if sc.queue.type == "disk":
        update["queue"] = sc.queue.model_copy(update={"dir": str(Path(sc.queue.dir) / f"worker-{worker}")})
    if sc.type == "file":
        for key in ("path", "logs_path", "metrics_path"):
            value = getattr(sc, key)
            if value and not value.startswith("/dev/"):
                update[key] = worker_path(value, worker)
        if not sc.logs_path:  # derived from `path` before it got the worker suffix
            from gateway.otlp.signals import SIGNALS
            update["logs_path"] = worker_path(sc.path_for(SIGNALS["logs"]), worker)
            update["metrics_path"] = worker_path(sc.path_for(SIGNALS["metrics"]), worker)
    return sc.model_copy(update=update) if update else sc


def worker_path(path: str, worker: int) -> str:
    """`out/traces.jsonl` -> `out/traces.worker-1.jsonl` (`/dev/...` stays as it is)."""
    if path.startswith("/dev/"):
        return path
    p = Path(path)
    stem, dot, rest = p.name.partition(".")
    return str(p.with_name(f"{stem}.worker-{worker}{dot}{rest}"))


def worker_setup(config: Config) -> tuple[Config, Any]:
    """In a worker: its config, the loader its reloads use, and log lines tagged `worker=<id>`."""
    from gateway.config import load

    worker = worker_id()
    assert worker is not None
    endpoints = orjson.loads(os.environ[ENDPOINTS_ENV])
    workers = int(os.environ.get(COUNT_ENV, "1"))
    _tag_logs(worker)
    if worker == 0:
        adopt_orphans(config, 0, workers)
    from gateway.service.affinity import needs_affinity

    affinity = needs_affinity(config)

    def reload_config(path: Path) -> Config:
        fresh = load(path)
        if needs_affinity(fresh) != affinity:
            raise ConfigError(["service.workers: turning tail sampling or by: trace routes on or off while running "
                               "with workers takes a restart (trace affinity is set up at start)"])
        return worker_config(fresh, worker, endpoints)

    return worker_config(config, worker, endpoints), reload_config


def affinity_for(config: Config, pipeline: Any, worker: int) -> Any:
    """The trace-affinity front of a worker's pipeline, or None when the config needs no whole traces."""
    from gateway.service.affinity import AffinityPipeline, needs_affinity

    if not needs_affinity(config):
        return None
    endpoints = orjson.loads(os.environ[ENDPOINTS_ENV])
    return AffinityPipeline(pipeline, worker, int(os.environ.get(COUNT_ENV, "1")), endpoints["dir"])


def _tag_logs(worker: int) -> None:
    import logging

    def tag(record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        record.fields = {**(fields or {}), "worker": worker}
        return True

    for handler in logging.getLogger("otelgate").handlers:
        handler.addFilter(tag)


def adopt_orphans(config: Config, worker: int | None, workers: int) -> None:
    """Move the disk queues no running process owns into this one's (worker 0, or a single process).

    Single process: it owns `<dir>/<sink>`; `<dir>/worker-*/` are orphans. Worker 0 of N: it owns
    `<dir>/worker-0/<sink>`; `<dir>/worker-K/` for K >= N and the single-process `<dir>/<sink>`
    are orphans. Records are appended to the own log (fsynced) before the orphan is deleted, so a
    crash in between delivers them twice, never zero times.
    """
    for name, sc in config.sinks.items():
        if sc.queue.type != "disk":
            continue
        base = Path(sc.queue.dir)
        if not base.is_dir():
            continue
        own = base if worker is None else base / f"worker-{worker}"
        roots = []
        for d in base.glob("worker-*"):
            number = d.name[len("worker-"):]
            if d.is_dir() and number.isdigit() and (worker is None or int(number) >= workers):
                roots.append(d)
        if worker is not None:
            roots.append(base)
        subs = [Path(sub) for sub in (name, f"{name}.logs", f"{name}.metrics")]
        for root in roots:
            # A loadbalancing sink keeps one log per backend: <sink>.backends/<host_port>/<sink>.
            backends = root / f"{name}.backends"
            nested = [p.relative_to(root) / sub for p in backends.iterdir() for sub in subs] if backends.is_dir() else []
            for sub in subs + nested:
                source = root / sub
                if source.is_dir() and source != own / sub:
                    _move_log(source, own / sub, name)
            if root != base:
                try:
                    root.rmdir()  # only once no sink's log is left in it
                except OSError:
                    pass


def _move_log(source: Path, target: Path, sink: str) -> None:
    from gateway.sinks.wal import WriteAheadLog

    unlimited = 1 << 62
    src = WriteAheadLog(source, max_bytes=unlimited, fsync="never")
    records = src.open()
    if records:
        dst = WriteAheadLog(target, max_bytes=unlimited, fsync="batch")
        dst.open()
        for record in records:
            dst.append(record.request, record.spans)
        dst.close()
    src.close()
    shutil.rmtree(source)
    if records:
        _log.warning("adopted the disk queue of a worker that no longer runs", sink=sink, source=str(source),
                     target=str(target), batches=len(records), items=sum(r.spans for r in records))


# -- in the supervisor ----------------------------------------------------------------------------


class _Worker:
    def __init__(self, number: int, admin_socket: str) -> None:
        self.id = number
        self.admin_socket = admin_socket
        self.proc: subprocess.Popen[bytes] | None = None
        self.status = "starting"  # starting | running | restarting | draining | stopped
        self.restarts = 0
        self.started_at = 0.0
        self.next_start = 0.0
        self.backoff = _RESTART_BACKOFF[0]
        self.last_counters: dict[tuple[str, str], float] = {}  # (family, sample text) -> value
        self.session: ClientSession | None = None

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "pid": self.proc.pid if self.proc is not None else None, "status": self.status,
                "restarts": self.restarts}

    async def get(self, path: str) -> tuple[int, bytes]:
        status, body, _ = await self.fetch(path)
        return status, body

    async def fetch(self, path: str) -> tuple[int, bytes, str]:
        """GET `path` (with its query) from the worker's admin socket: status, body, content type."""
        if self.session is None:
            self.session = ClientSession(connector=UnixConnector(path=self.admin_socket),
                                         timeout=ClientTimeout(total=_SCRAPE_TIMEOUT))
        async with self.session.get(f"http://worker{path}") as response:
            return response.status, await response.read(), response.content_type

    async def close_session(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Supervisor:
    def __init__(self, config: Config, config_path: str, log_format: str) -> None:
        self.config = config
        self.config_path = config_path
        self.log_format = log_format
        self.count = config.service.worker_count()
        self._placeholders: list[socket.socket] = []
        self._endpoints: dict[str, str] = {}
        self._dir = tempfile.mkdtemp(prefix="otelgate-workers-")
        self.workers = [_Worker(i, os.path.join(self._dir, f"worker-{i}.sock")) for i in range(self.count)]
        self._retired: dict[tuple[str, str], float] = {}  # counters of dead workers, as last_counters
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.admin = _SupervisorAdmin(self)

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hangup)
        try:
            self._reserve_ports()
            await self.admin.start()
            _log.info("admin listening", endpoint=self.admin.endpoint, paths="/health /metrics", workers=self.count)
            for w in self.workers:
                self._spawn(w)
            await self._wait_all_running(stop)
        except (OSError, RuntimeError) as exc:
            _log.error("cannot start the workers", error=str(exc))
            await self._stop_all()
            await self.admin.shutdown()
            self._cleanup()
            return 1
        for name, label in (("grpc", "OTLP/gRPC"), ("http", "OTLP/HTTP")):
            if name in self._endpoints:
                _log.info(f"{label} listening", endpoint=self._endpoints[name], workers=self.count)
        self.admin.state = "running"
        _log.info("ready", workers=self.count, pids=",".join(str(w.proc.pid) for w in self.workers if w.proc))
        while not stop.is_set():
            self._supervise()
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
        _log.info("shutting down", grace_s=self.config.service.shutdown_grace, workers=self.count)
        self.admin.state = "draining"
        code = await self._stop_all()
        await self.admin.shutdown()
        self._cleanup()
        _log.info("stopped", exit_code=code)
        return code

    def _reserve_ports(self) -> None:
        """Bind (never listen on) each receiver's port with SO_REUSEPORT: it fixes `:0` to one
        port for every worker and keeps it for restarted ones."""
        for name in ("grpc", "http"):
            rc = getattr(self.config.receivers, name)
            if rc is None:
                continue
            host, port = split_endpoint(rc.endpoint)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                raise OSError(exc.errno, f"cannot bind {rc.endpoint} for receivers.{name}: {exc.strerror}") from None
            self._placeholders.append(sock)
            self._endpoints[name] = f"{host}:{sock.getsockname()[1]}"

    def _spawn(self, w: _Worker) -> None:
        endpoints = {**self._endpoints, "admin": f"unix:{w.admin_socket}", "dir": self._dir}
        try:
            os.unlink(w.admin_socket)
        except FileNotFoundError:
            pass
        env = {**os.environ, WORKER_ENV: str(w.id), COUNT_ENV: str(self.count),
               ENDPOINTS_ENV: orjson.dumps(endpoints).decode()}
        cmd = [sys.executable, "-m", "gateway", "run", "-c", self.config_path, "--log-format", self.log_format]
        w.proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)  # noqa: S603 - our own command
        w.started_at = time.monotonic()
        w.status = "starting"

    async def _wait_all_running(self, stop: asyncio.Event) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while not all(w.status == "running" for w in self.workers):
            for w in self.workers:
                if w.status == "running":
                    continue
                assert w.proc is not None
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker {w.id} exited during start ({_exit_reason(w.proc.returncode)}); "
                                       "its log lines above say why")
                if await self._is_running(w):
                    w.status = "running"
                    _log.info("worker started", worker=w.id, pid=w.proc.pid)
            if stop.is_set():
                raise RuntimeError("stopped while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {_READY_TIMEOUT:g} s")
            await asyncio.sleep(0.05)

    async def _is_running(self, w: _Worker) -> bool:
        if not os.path.exists(w.admin_socket):
            return False
        try:
            status, _ = await w.get("/health")
        except (OSError, asyncio.TimeoutError):
            return False
        return status == 200

    def _supervise(self) -> None:
        """Notice dead workers and restart them when their backoff is over."""
        now = time.monotonic()
        for w in self.workers:
            if w.proc is not None and w.status in ("starting", "running") and w.proc.poll() is not None:
                if now - w.started_at > _STABLE_AFTER:  # it had run fine: not a crash loop
                    w.backoff = _RESTART_BACKOFF[0]
                w.next_start = now + w.backoff
                w.backoff = min(_RESTART_BACKOFF[1], w.backoff * 2)
                w.status = "restarting"
                w.restarts += 1
                for key, value in w.last_counters.items():  # totals never go backwards
                    self._retired[key] = self._retired.get(key, 0.0) + value
                w.last_counters = {}
                _log.error("worker died; restarting it", worker=w.id, pid=w.proc.pid,
                           reason=_exit_reason(w.proc.returncode), restart_in_s=round(w.next_start - now, 2),
                           restarts=w.restarts)
                self._track(w.close_session())
            if w.status == "restarting" and now >= w.next_start:
                self._spawn(w)
                self._track(self._watch_start(w))

    async def _watch_start(self, w: _Worker) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        proc = w.proc
        while w.proc is proc and w.status == "starting" and proc is not None and proc.poll() is None:
            if await self._is_running(w):
                w.status = "running"
                _log.info("worker restarted", worker=w.id, pid=proc.pid, restarts=w.restarts)
                return
            if time.monotonic() > deadline:
                _log.error("restarted worker not ready; killing it", worker=w.id, pid=proc.pid)
                proc.kill()
                return
            await asyncio.sleep(0.1)

    def _track(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forward_hangup(self) -> None:
        _log.info("SIGHUP: asking every worker to reload")
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGHUP)

    async def _stop_all(self) -> int:
        self._stopping = True
        live = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for w in live:
            w.status = "draining"
            w.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.config.service.shutdown_grace + 10.0
        code = 0
        for w in self.workers:
            if w.proc is None:
                continue
            while w.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if w.proc.poll() is None:
                _log.error("worker did not stop in time; killing it", worker=w.id, pid=w.proc.pid)
                w.proc.kill()
                w.proc.wait()
            if w in live and w.proc.returncode != 0:
                _log.error("worker stopped with an error", worker=w.id, reason=_exit_reason(w.proc.returncode))
                code = 1
            w.status = "stopped"
            await w.close_session()
        return code

    def _cleanup(self) -> None:
        for sock in self._placeholders:
            sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- admin: one endpoint over every worker -------------------------------------------------

    async def scrape(self, path: str) -> list[tuple[_Worker, bytes | None]]:
        """Each running worker's answer on `path` (None where it did not answer)."""
        async def one(w: _Worker) -> tuple[_Worker, bytes | None]:
            if w.status not in ("running", "draining"):
                return w, None
            try:
                return w, (await w.get(path))[1]
            except (OSError, asyncio.TimeoutError):
                return w, None
        return list(await asyncio.gather(*(one(w) for w in self.workers)))

    def merged_metrics(self, texts: Iterable[tuple[_Worker, bytes | None]]) -> bytes:
        """Every worker's /metrics summed sample by sample, with the counters of dead workers.

        Read line by line rather than with prometheus-client's parser: the workers all write the
        same exposition (one code, the same label order), so a sample's `name{labels}` text is
        its key, and a scrape costs about a tenth of a full parse (it ran 5 times a second in
        the benchmarks and took 15% of a core)."""
        headers: dict[str, list[str]] = {}  # family -> its HELP and TYPE lines, in first-seen order
        kinds: dict[str, str] = {}
        samples: dict[str, dict[str, float]] = {}
        for w, text in texts:
            if text is None:
                continue
            counters: dict[tuple[str, str], float] = {}
            family, rows, counted, shared = "", samples.setdefault("", {}), False, False
            for line in text.decode().splitlines():
                if line.startswith("#"):
                    parts = line.split(" ", 3)
                    if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                        family = parts[2]
                        rows = samples.setdefault(family, {})
                        lines = headers.setdefault(family, [])
                        if len(lines) < 2 and line not in lines:
                            lines.append(line)
                        if parts[1] == "TYPE" and len(parts) == 4:
                            kinds[family] = parts[3]
                        counted = kinds.get(family) in ("counter", "histogram")
                        shared = family in STORE_GAUGES  # every worker reads the same store: one value, not a sum
                    continue
                key, _, value = line.rpartition(" ")
                if not key:
                    continue
                number = float(value)
                rows[key] = max(rows.get(key, number), number) if shared else rows.get(key, 0.0) + number
                if counted:
                    counters[(family, key)] = number
            w.last_counters = counters
        for (family, key), value in self._retired.items():
            rows = samples.get(family)
            if rows is not None and family in headers:
                rows[key] = rows.get(key, 0.0) + value
        out: list[str] = []
        for family, lines in headers.items():
            out.extend(lines)
            out.extend(f"{key} {floatToGoString(value)}" for key, value in samples[family].items())
        out.append("# HELP otelgate_workers Worker processes by state")
        out.append("# TYPE otelgate_workers gauge")
        states: dict[str, int] = {}
        for w in self.workers:
            states[w.status] = states.get(w.status, 0) + 1
        for state in ("starting", "running", "restarting", "draining", "stopped"):
            out.append(f'otelgate_workers{{status="{state}"}} {states.get(state, 0)}')
        out.append("# HELP otelgate_worker_restarts_total Workers the supervisor restarted after they died")
        out.append("# TYPE otelgate_worker_restarts_total counter")
        for w in self.workers:
            out.append(f'otelgate_worker_restarts_total{{worker="{w.id}"}} {w.restarts}')
        return ("\n".join(out) + "\n").encode()

    def merged_health(self, bodies: Iterable[tuple[_Worker, dict[str, Any] | None]]) -> tuple[int, dict[str, object]]:
        sinks: dict[str, dict[str, Any]] = {}
        sections: dict[str, dict[str, Any]] = {}  # usage, alerts: the first failing worker's, else the first's
        config_status = None
        for w, body in bodies:
            if body is None:
                continue
            config_status = config_status or body.get("config")
            for name, section in body.items():
                if name not in _HEALTH_KEYS and isinstance(section, dict) and (
                        name not in sections or sections[name].get("status") not in ("failing", "full")):
                    sections[name] = section
            for key, sink in (body.get("sinks") or {}).items():
                merged = sinks.setdefault(key, {"status": "ok", "queue_depth": 0, "queue_capacity": 0, "last_error": None})
                merged["status"] = max(merged["status"], sink.get("status", "ok"), key=_sink_rank)
                merged["queue_depth"] += sink.get("queue_depth", 0)
                merged["queue_capacity"] += sink.get("queue_capacity", 0)
                merged["last_error"] = merged["last_error"] or sink.get("last_error")
                for extra, value in sink.items():  # per-sink details (backends...) from the first worker
                    merged.setdefault(extra, value)
        running = sum(w.status == "running" for w in self.workers)
        if self.admin.state != "running" or running == 0:
            status, code = "unavailable", 503
        elif running < len(self.workers) or any(s["status"] == "failing" for s in sinks.values()) or \
                any(s.get("status") in ("failing", "full") for s in sections.values()):
            status, code = "degraded", 200
        else:
            status, code = "ok", 200
        body: dict[str, object] = {"status": status, "version": __version__,
                                   "uptime_s": round(time.monotonic() - self.admin.started, 3),
                                   "workers": [w.as_dict() for w in self.workers], "sinks": sinks}
        if config_status is not None:
            body["config"] = config_status
        body.update(sections)
        return code, body


class _SupervisorAdmin(AdminServer):
    """The public admin endpoint (and its token) answering for every worker.

    The usage API reads the store the workers share (one SQLite file, or PostgreSQL), so any
    running worker answers it for all: the supervisor forwards it there. The usage page is static
    and served here."""

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__(supervisor.config.admin, None, lambda: {})  # type: ignore[arg-type]
        self._supervisor = supervisor
        self.started = time.monotonic()
        admin = self
        self.routes.extend(ui.routes(lambda: admin.config.token.get_secret_value() if admin.config.token else None))
        self.routes.extend(("GET", path, self._forward) for path in _FORWARDED_PATHS)

    async def _forward(self, request: web.Request) -> web.Response:
        for w in self._supervisor.workers:
            if w.status == "running":
                try:
                    status, body, content_type = await w.fetch(request.path_qs)
                except (OSError, asyncio.TimeoutError):
                    continue  # the next worker reads the same store
                return web.Response(status=status, body=body, content_type=content_type)
        return web.Response(status=503, body=orjson.dumps({"error": "no worker is running; retry later"}),
                            content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        scraped = await self._supervisor.scrape("/health")
        code, body = self._supervisor.merged_health((w, _json(h)) for w, h in scraped)
        return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")

    async def _metrics_text(self, request: web.Request) -> web.Response:
        scraped = await self._supervisor.scrape("/metrics")
        return web.Response(body=self._supervisor.merged_metrics(scraped),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


def _sink_rank(status: str) -> int:
    return _SINK_STATUS_ORDER.index(status) if status in _SINK_STATUS_ORDER else len(_SINK_STATUS_ORDER)


def _json(body: bytes | None) -> dict[str, Any] | None:
    try:
        return orjson.loads(body) if body is not None else None
    except orjson.JSONDecodeError:
        return None


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def supervise(config: Config, config_path: str, log_format: str) -> int:
    """`otelgate run` with `service.workers` > 1: run the supervisor until SIGTERM."""
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return int(runner(Supervisor(config, config_path, log_format).run()))
