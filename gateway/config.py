"""The config file: YAML, `${env:NAME}` expansion, validation that reports every error at once.

Every error names the dotted path of the bad key (`sinks.audit.rotate_bytes: ...`), like the
Collector's `confmap` validation: a user fixes a broken file in one pass, not one error per run.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import types
import typing
from urllib.parse import urlsplit
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, create_model, model_validator

from gateway import registry
from gateway.otlp.signals import SIGNALS
from gateway.processors import redact
from gateway.configtypes import ByteSize, Duration, Endpoint, StrictModel
from gateway.routing.match import SCOPE, SPAN, MatchError, compile_match
from gateway.receivers.auth import AuthConfig
from gateway.receivers.limits import LimitsConfig
from gateway.receivers.tls import ServerTlsConfig
from gateway.sampling.head import HeadConfig
from gateway.sampling.tail import POLICY_TYPES, TailConfig
from gateway.budgets.config import AlertsConfig, BudgetConfig
from gateway.usage.attribution import AttributionConfig
from gateway.usage.config import UsageConfig

_ENV = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")  # `$$`, `${...}`, or an unclosed `${`
_ENV_REF = re.compile(r"^(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)
_NAME = r"^[A-Za-z0-9_.-]+$"
SIGNAL_NAMES = ("traces", "logs", "metrics")
_SIGNAL_OBJECTS = {s.name: s for s in SIGNALS.values()}
SignalName = Literal["traces", "logs", "metrics"]


class ConfigError(Exception):
    """All the problems of one config file, each `path: why`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class GrpcReceiverConfig(StrictModel):
    endpoint: Endpoint = "0.0.0.0:4317"
    max_message_bytes: ByteSize = Field(4 * 1024 * 1024, gt=0)
    tls: ServerTlsConfig | None = Field(None, description="Omitted: plain text.")
    max_connection_idle: Duration = Field(60.0, ge=0, description="Close (GOAWAY) a connection with no RPC for this long; 0: never.")
    max_connection_age: Duration = Field(0.0, ge=0, description="Close (GOAWAY) a connection this old; 0: never.")
    max_connection_age_grace: Duration = Field(10.0, ge=0, description="RPCs in flight when max_connection_age is reached get this long.")
    max_in_flight_requests: int = Field(0, ge=0, description="Refuse (UNAVAILABLE + RetryInfo) past this many RPCs in progress; 0: the default (see docs/receivers.md).")
    max_in_flight_bytes: ByteSize = Field(64 * 1024 * 1024, ge=0, description="Refuse past this many message bytes in progress; 0: no bound.")


class HttpReceiverConfig(StrictModel):
    endpoint: Endpoint = "0.0.0.0:4318"
    max_body_bytes: ByteSize = Field(
        20 * 1024 * 1024, gt=0, description="Bounds the body as sent and again after decompression (gzip bombs).")
    tls: ServerTlsConfig | None = Field(None, description="Omitted: plain text.")
    read_header_timeout: Duration = Field(60.0, ge=0, description="A request's headers must arrive within this; 0: no limit.")
    idle_timeout: Duration = Field(60.0, ge=0, description="Close a keep-alive connection idle this long; 0: never.")
    max_connections: int = Field(0, ge=0, description="Refuse (503) connections past this many; 0: from the open-files limit.")
    backlog: int = Field(0, ge=0, description="Listen queue length; 0: net.core.somaxconn.")
    max_in_flight_requests: int = Field(0, ge=0, description="Refuse (503 + Retry-After) past this many requests in progress; 0: the default (see docs/receivers.md).")
    max_in_flight_bytes: ByteSize = Field(64 * 1024 * 1024, ge=0, description="Refuse past this many body bytes in progress; 0: no bound.")
    langfuse_hold: Duration = Field(5.0, ge=0, description="How long an observation the Langfuse ingestion API "
                                    "opened waits for its update (end time, output, usage) before it is sent.")


class ReceiversConfig(StrictModel):
    """Only the protocols listed are served (as in the Collector); omit `receivers` for both."""

    grpc: GrpcReceiverConfig | None = None
    http: HttpReceiverConfig | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> "ReceiversConfig":
        if self.grpc is None and self.http is None:
            raise ValueError("enable at least one receiver (grpc or http)")
        return self


class AdminConfig(StrictModel):
    endpoint: Endpoint = "127.0.0.1:13133"
    token: SecretStr | None = Field(
        None, min_length=1, description="When set, every path but /health needs `Authorization: Bearer <token>`.")


class RouteSamplingConfig(StrictModel):
    """A route's own sampling, applied to what the route takes (tail sampling is global only)."""

    head: HeadConfig


class RouteRedactConfig(redact.Config):
    """`pipeline.redact` settings for one route's copy; present means on."""

    enabled: bool = True


class RouteConfig(StrictModel):
    name: str = Field(pattern=_NAME)
    match: dict[str, Any] | None = Field(None, description="Conditions (see gateway/routing/match.py); omitted: everything.")
    sinks: list[str] = Field(min_length=1)
    continue_: bool = Field(False, alias="continue", description="Keep evaluating the routes below (fan-out).")
    default: bool = Field(False, description="Takes what no other route took.")
    by: Literal["span", "trace"] = Field("span", description="trace: a match on any span takes the whole trace.")
    sampling: RouteSamplingConfig | None = Field(None, description="Applies to the traces the route takes.")
    signals: list[SignalName] = Field(["traces"], min_length=1, description="What the route carries.")
    redact: RouteRedactConfig | None = Field(
        None, description="Redact what this route sends (a copy: other routes see the data as it was).")


class SamplingConfig(StrictModel):
    head: HeadConfig | None = Field(None, description="Consistent head sampling by trace id; omitted: keep everything.")
    tail: TailConfig | None = Field(None, description="Buffer traces and keep those the policies choose.")


class ServiceConfig(StrictModel):
    shutdown_grace: Duration = Field(30.0, description="How long SIGTERM waits for queues to drain.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    config_watch_interval: Duration = Field(
        1.0, description="How often the config file is checked for changes (0: only on SIGHUP).")
    workers: int | Literal["auto"] = Field(
        1, description="Worker processes sharing the receivers' ports (auto: one per core); see docs/scaling.md.")

    @model_validator(mode="after")
    def _workers_positive(self) -> "ServiceConfig":
        if isinstance(self.workers, int) and not 1 <= self.workers <= 256:
            raise ValueError("workers: expected 1 to 256, or auto")
        return self

    def worker_count(self) -> int:
        """`workers` as a number (`auto`: the cores this process may run on)."""
        if self.workers == "auto":
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            return max(1, min(cores, _cgroup_cpus() or cores))
        return int(self.workers)


def _cgroup_cpus() -> int | None:
    """The cores a cgroup v2 CPU quota allows (a container's `limits.cpu`), rounded up; None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


class _Processors(StrictModel):
    """A processor section that is present is on unless it says `enabled: false`: `redact: {content: drop}`
    must never pass `check` and then redact nothing. Absent sections keep each processor's default."""

    @model_validator(mode="before")
    @classmethod
    def _present_means_on(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: {"enabled": True} if v is None else {"enabled": True, **v} if isinstance(v, dict) else v
                for k, v in data.items()}

    def running(self) -> list[str]:
        """The processors that run, in order."""
        return [name for name in registry.PROCESSORS if getattr(self, name).enabled]


PipelineConfig = create_model(  # one key per registered processor, each with its defaults
    "PipelineConfig", __base__=_Processors,
    **{name: (module.Config, module.Config()) for name, module in registry.PROCESSORS.items()},  # type: ignore[call-overload]
)

SinkUnion = Annotated[Union[tuple(m.Config for m in registry.SINKS.values())], Field(discriminator="type")]  # type: ignore[valid-type]


class Config(StrictModel):
    receivers: ReceiversConfig = ReceiversConfig(grpc=GrpcReceiverConfig(), http=HttpReceiverConfig())
    admin: AdminConfig = AdminConfig()
    sinks: dict[Annotated[str, Field(pattern=_NAME)], SinkUnion] = Field(min_length=1)
    routes: list[RouteConfig] | None = Field(
        None, description="Ordered; a route without `match` takes everything. Omitted: one route to every sink.")
    pipeline: PipelineConfig = PipelineConfig()  # type: ignore[valid-type]
    sampling: SamplingConfig = SamplingConfig()
    auth: AuthConfig | None = Field(None, description="API keys the receivers require; omitted: anyone may send.")
    limits: LimitsConfig | None = Field(None, description="Bounds on what one request may hold; omitted: none.")
    service: ServiceConfig = ServiceConfig()
    usage: UsageConfig = Field(UsageConfig(), description="Usage rollups (who spent what); on by default, SQLite.")
    budgets: list[BudgetConfig] = Field([], description="Spend limits per period, read from the usage store.")
    alerts: AlertsConfig = Field(AlertsConfig(), description="Where budget and rule notifications go; alert rules.")
    attribution: AttributionConfig = Field(
        AttributionConfig(), description="Where each LLM call's tenant, app, user, session and environment come from.")

    @model_validator(mode="after")
    def _routes_refer_to_sinks(self) -> "Config":
        errors = []
        if self.pipeline.price.enabled and not self.pipeline.normalize.enabled:
            errors.append("pipeline.price: pricing reads what pipeline.normalize finds; enable it or disable price")
        errors.extend(self._route_errors())
        errors.extend(self._budget_errors())
        errors.extend(self._loop_errors())
        if errors:
            raise ConfigError(errors)
        return self

    def _route_errors(self) -> list[str]:
        errors: list[str] = []
        seen: set[str] = set()
        takes_all: dict[str, int] = {}  # signal -> a route that takes all of it and stops
        defaults: dict[str, list[int]] = {}
        for i, route in enumerate(self.routes or ()):
            at = f"routes[{i}]"
            if route.name in seen:
                errors.append(f"{at}.name: duplicate route name {route.name!r}")
            seen.add(route.name)
            if len(set(route.signals)) != len(route.signals):
                errors.append(f"{at}.signals: a signal is listed twice")
            for j, sink in enumerate(route.sinks):
                if sink not in self.sinks:
                    errors.append(f"{at}.sinks[{j}]: no sink named {sink!r} (sinks: {', '.join(sorted(self.sinks))})")
                    continue
                kind = self.sinks[sink].type
                carried = registry.SINKS[kind].SIGNALS
                missing = [sig for sig in route.signals if sig not in carried]
                if missing:
                    errors.append(f"{at}.sinks[{j}]: sink {sink!r} (type {kind}) carries {', '.join(carried)} only, "
                                  f"not {', '.join(missing)}: give those signals a route of their own")
            level = 0
            if route.match is not None:
                try:
                    level = compile_match(route.match, f"{at}.match").level
                except MatchError as exc:
                    errors.extend(exc.errors)
            others = [sig for sig in route.signals if sig != "traces"]
            if others and level > SCOPE:
                errors.append(f"{at}.match: conditions on spans (span.*, name, status) apply to traces only, and this "
                              f"route also carries {', '.join(others)}: give those a route of their own")
            if others and route.by == "trace":
                errors.append(f"{at}.by: by: trace applies to traces only; this route also carries {', '.join(others)}")
            if route.default:
                for sig in route.signals:
                    defaults.setdefault(sig, []).append(i)
                if route.match is not None:
                    errors.append(f"{at}.match: a default route takes what no other route took; it has no match")
                continue
            for sig in route.signals:
                if sig in takes_all:
                    errors.append(f"{at}: unreachable for {sig}: routes[{takes_all[sig]}] has no match and takes "
                                  "everything (give it `continue: true` to fan out)")
            for sig in route.signals:
                if route.match is None and not route.continue_ and sig not in takes_all:
                    takes_all[sig] = i
            if level == SPAN and route.by == "span" and any(
                    getattr(self.sinks.get(s), "type", None) == "langfuse" for s in route.sinks):
                errors.append(f"{at}.by: this route matches single spans and sends to Langfuse, which would get "
                              "traces without their root span; use `by: trace`")
        for sig, indices in defaults.items():
            for i in indices[1:]:
                errors.append(f"routes[{i}].default: only one default route per signal ({sig}: routes[{indices[0]}] is)")
        for i, policy in enumerate(self.sampling.tail.policies if self.sampling.tail else ()):
            if policy.type == "attribute":
                try:
                    compile_match(policy.match, f"sampling.tail.policies[{i}].match")
                except MatchError as exc:
                    errors.extend(exc.errors)
        return errors

    def _budget_errors(self) -> list[str]:
        errors: list[str] = []
        if (self.budgets or self.alerts.rules) and not self.usage.enabled:
            errors.append("budgets: budgets and alert rules read the usage store; enable usage (usage.enabled: true)")
        names = [b.name for b in self.budgets]
        receivers = {r.name for r in self.alerts.receivers}
        for i, budget in enumerate(self.budgets):
            if names.count(budget.name) > 1 and names.index(budget.name) != i:
                errors.append(f"budgets[{i}].name: duplicate budget name {budget.name!r}")
            for j, name in enumerate(budget.receivers or ()):
                if name not in receivers:
                    errors.append(f"budgets[{i}].receivers[{j}]: no receiver named {name!r} in alerts.receivers")
        return errors

    def _loop_errors(self) -> list[str]:
        """A sink pointed at one of this gateway's own receivers sends every span back in: each
        copy comes back, is counted and priced again, for ever (the Collector has no such guard)."""
        listeners = {}
        for proto, rc in (("grpc", self.receivers.grpc), ("http", self.receivers.http)):
            if rc is not None:
                host, port = _host_port(rc.endpoint)
                if port:  # port 0: the OS picks one no config can name
                    listeners[port] = (proto, host, rc.endpoint)
        errors = []
        for name, sink in self.sinks.items():
            endpoint = getattr(sink, "endpoint", None)
            if not isinstance(endpoint, str) or not endpoint:
                continue
            host, port = _host_port(endpoint)
            own = listeners.get(port)
            if own is not None and host is not None and (_is_local(host) or host == own[1]):
                errors.append(f"sinks.{name}.endpoint: {endpoint!r} is this gateway's own {own[0]} receiver "
                              f"(receivers.{own[0]}.endpoint: {own[2]}): it would send every span back to otelgate "
                              "in a loop; point the sink at its backend"
                              + (f" (that is the {sink.type} sink's default endpoint: set sinks.{name}.endpoint)"
                                 if endpoint == _default_endpoint(sink) else ""))
        return errors

    def route_list(self) -> list[RouteConfig]:
        """The routes; without `routes:`, every signal goes to every sink that carries it."""
        if self.routes is not None:
            return self.routes
        out = []
        for signal in SIGNAL_NAMES:
            sinks = sorted(n for n, c in self.sinks.items() if signal in registry.SINKS[c.type].SIGNALS)
            if sinks:
                out.append(RouteConfig.model_validate(
                    {"name": "default" if signal == "traces" else f"default.{signal}", "sinks": sinks, "signals": [signal]}))
        return out

    def warnings(self) -> list[str]:
        routes = self.route_list()
        used = {s for r in routes for s in r.sinks}
        out = [f"sinks.{name}: not used by any route" for name in self.sinks if name not in used]
        for signal in SIGNAL_NAMES:
            carrying = [r for r in routes if signal in r.signals]
            if not carrying:
                out.append(f"routes: no route carries {signal}: {signal} sent to otelgate are dropped (counted in "
                           f"otelgate_router_dropped_{_ITEMS[signal]}_total{{reason=\"no_route\"}}); "
                           f"add `signals: [..., {signal}]` to a route to keep them")
            elif not any(r.default or r.match is None for r in carrying):
                out.append(f"routes: {signal} that match no route are dropped (counted in "
                           f"otelgate_router_dropped_{_ITEMS[signal]}_total{{reason=\"no_route\"}}); "
                           "add a route with `default: true` to keep them")
        return out


_ITEMS = {"traces": "spans", "logs": "log_records", "metrics": "metric_points"}


def _default_endpoint(sink: Any) -> str | None:
    """The endpoint a sink of this type and protocol gets when none is written (jaeger has one)."""
    try:
        return type(sink).model_validate({"type": sink.type, "protocol": getattr(sink, "protocol", "grpc")}).endpoint
    except (ValidationError, ValueError, AttributeError):
        return None


def _host_port(endpoint: str) -> tuple[str | None, int | None]:
    """(host, port) of `host:port`, `[v6]:port` or a URL (its scheme's default port when it has none)."""
    try:
        if "://" in endpoint:
            url = urlsplit(endpoint)
            return url.hostname, url.port or {"http": 80, "https": 443}.get(url.scheme.lower())
        host, _, port = endpoint.rpartition(":")
        return host.strip("[]"), int(port)
    except ValueError:
        return None, None


def _is_local(host: str) -> bool:
    """Whether `host` names this machine (so reaches its listeners bound to 0.0.0.0 or ::).
    No DNS look-up: `check` must stay fast and give the same answer offline."""
    host = host.lower().rstrip(".")
    return (host in ("0.0.0.0", "::", "::1", "localhost", "localhost.localdomain", "ip6-localhost",
                     socket.gethostname().lower()) or host.startswith("127."))


# -- loading ---------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A key written twice is a mistake (the second silently wins in plain YAML)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value (a name), not a list or mapping", key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load(path: str | os.PathLike[str] | None) -> Config:
    """Load a config file, or the embedded default when `path` is None.

    Raises only `ConfigError`, whatever the file holds (binary, a directory, unreadable, empty):
    `check` prints it and a reload rejects it, never a traceback or a dead watcher."""
    if path is None:
        return parse(resources.files("gateway").joinpath("default.yaml").read_text(), "<embedded default>")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not a text file (byte 0x{data[exc.start]:02x} at offset {exc.start} is not "
                           "UTF-8): is this the config file?"]) from None
    try:
        config = parse(text, str(path))
    except ConfigError:
        raise
    except Exception as exc:  # a bug or a pathological file: still a config error, never a crash
        raise ConfigError([f"{path}: cannot load: {type(exc).__name__}: {exc}"]) from exc
    errors = path_errors(config)
    if errors:
        raise ConfigError(errors)
    return config


def path_errors(config: Config) -> list[str]:
    """What `run` would fail on when opening files, known without creating any: each file sink's
    files and each disk queue's directory must be in (or be creatable under) a writable directory."""
    errors = []
    for name, sink in config.sinks.items():
        wanted: list[tuple[str, str, bool]] = []  # (key, path, is a directory)
        if sink.type == "file":
            carried = {sig for route in config.route_list() if name in route.sinks for sig in route.signals}
            wanted.append(("path", sink.path, False))
            for sig, key in (("logs", "logs_path"), ("metrics", "metrics_path")):
                if sig in carried or getattr(sink, key):
                    wanted.append((key, sink.path_for(_SIGNAL_OBJECTS[sig]), False))
        if sink.queue.type == "disk":
            wanted.append(("queue.dir", sink.queue.dir, True))
        for key, value, is_dir in wanted:
            problem = _unwritable(Path(value), is_dir)
            if problem:
                errors.append(f"sinks.{name}.{key}: {value!r}: {problem}")
    return errors


def _unwritable(path: Path, is_dir: bool) -> str | None:
    if path.exists():
        if is_dir and not path.is_dir():
            return "exists and is not a directory"
        if not is_dir and path.is_dir():
            return "is a directory, not a file"
        if not os.access(path, os.W_OK):
            return "not writable by this user"
        return None
    parent = path.parent
    while not parent.exists():  # missing directories are created at start: the first existing one decides
        if parent == parent.parent:
            return "no existing directory above it"
        parent = parent.parent
    if not parent.is_dir():
        return f"{str(parent)!r} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {str(parent)!r} is not writable by this user"
    return None


def parse(text: str, source: str = "<config>", environ: dict[str, str] | None = None) -> Config:
    """Validate `text`; every error of the file at once (variables, keys, values, references)."""
    loader = _UniqueKeyLoader(text)
    loader.name = source  # YAML errors name the file, not `<unicode string>`
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply to be a config"]) from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
    if raw is None:
        raise ConfigError([f"{source}: no settings (the file is empty or only comments); "
                           "a config needs at least `sinks:` (see config.example.yaml)"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys (receivers, sinks, routes...)"])
    errors: list[str] = []
    environ = os.environ if environ is None else environ
    raw = _expand(raw, "", environ, errors)
    env_paths = tuple(e.split(": ", 1)[0] for e in errors)
    try:
        config = Config.model_validate(raw, context={"environ": environ, "from_file": True})  # environ: for `key_env`
    except ValidationError as exc:
        described = _describe(exc)
        described += [e for e in _reference_errors(raw) if e not in described]
        # A value already reported as an unset variable is not reported again as empty.
        errors += [e for e in described if not any(e.startswith((f"{p}:", f"{p}.", f"{p}[")) for p in env_paths)]
        raise ConfigError(errors) from None
    except ConfigError as exc:
        raise ConfigError(errors + exc.errors) from None
    if errors:
        raise ConfigError(errors)
    return config


def _reference_errors(raw: dict[str, Any]) -> list[str]:
    """Routes naming sinks that do not exist, found even when other parts of the file are broken
    (the model's own check of them runs only once everything else is valid)."""
    sinks, routes = raw.get("sinks"), raw.get("routes")
    if not isinstance(sinks, dict) or not isinstance(routes, list):
        return []
    out = []
    for i, route in enumerate(routes):
        names = route.get("sinks") if isinstance(route, dict) else None
        for j, sink in enumerate(names if isinstance(names, list) else ()):
            if isinstance(sink, str) and sink not in sinks:
                out.append(f"routes[{i}].sinks[{j}]: no sink named {sink!r} (sinks: {', '.join(sorted(map(str, sinks)))})"
                           + _did_you_mean(sink, map(str, sinks)))
    return out


def _expand(node: Any, path: str, environ: Any, errors: list[str]) -> Any:
    """Replace `${env:NAME}`, `${NAME}` and `${env:NAME:-default}` in every string; `$$` is a literal `$`.

    An unclosed `${`, an empty name or a malformed reference is an error, never kept as text."""
    if isinstance(node, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), environ, errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}[{i}]", environ, errors) for i, v in enumerate(node)]
    if isinstance(node, str) and "$" in node:
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            inner = m.group(1)
            if inner is None:
                errors.append(f"{path}: unclosed ${{ in {node!r}: write ${{env:NAME}} (or $$ for a literal $)")
                return ""
            ref = _ENV_REF.match(inner)
            if ref is None:
                name = inner[4:] if inner.startswith("env:") else inner
                what = "no variable name" if not name else f"{name!r} is not a variable name"
                errors.append(f"{path}: {what} in {m.group(0)!r}: write ${{env:NAME}} or ${{env:NAME:-default}}")
                return ""
            name, default = ref.group(1), ref.group(2)
            value = environ.get(name)
            if default is not None and not value:  # as the shell's and the Collector's `:-`: unset or empty
                return default
            if value is None:
                errors.append(f"{path}: environment variable {name} is not set "
                              f"(or give a default: ${{env:{name}:-value}})")
                return ""
            return str(value)
        return _ENV.sub(sub, node)
    return node


# -- error messages in the user's terms --------------------------------------------------------

_SHAPES = {  # a path (ints as 0) -> what a mistyped value there should have been
    ("sinks",): "expected a mapping of sink name to sink settings",
    ("sinks", "*"): "expected a mapping of sink name to sink settings (each sink is a mapping such as "
                    "{type: file, path: ...})",
    ("routes",): "expected a list of routes (each `- name: ..., sinks: [...]`)",
    ("routes", 0): "expected a route: a mapping with name and sinks",
    ("routes", 0, "sinks"): "expected a list of sink names",
    ("routes", 0, "signals"): "expected a list of signals (traces, logs, metrics)",
    ("pipeline", "*"): "expected the processor's settings as a mapping (or nothing: on, with its defaults)",
    ("receivers",): "expected a mapping with grpc and/or http",
}
_TYPE_WORDS = {
    "dict_type": "expected a mapping", "model_type": "expected a mapping", "model_attributes_type": "expected a mapping",
    "list_type": "expected a list", "string_type": "expected a string", "int_type": "expected a whole number",
    "int_parsing": "expected a whole number", "int_from_float": "expected a whole number",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "bool_type": "expected true or false", "bool_parsing": "expected true or false",
}


def _shape(loc: list[Any]) -> str | None:
    for key in (tuple(0 if isinstance(p, int) else p for p in loc),
                tuple(0 if isinstance(p, int) else p for p in loc[:-1]) + ("*",)):
        if key in _SHAPES:
            return _SHAPES[key]
    return None


def _got(value: Any) -> str:
    text = repr(value)
    return f", got {text[:60] + '...' if len(text) > 60 else text}"


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _keys_at(loc: list[Any]) -> list[str] | None:
    """The keys the model at `loc` (the raw error path, union tags included) accepts, for "did you mean"."""
    tp: Any = Config
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return None
            tp = field.annotation
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin is list:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):  # a discriminated union: `part` is the tag
            tp = next((m for m in typing.get_args(tp) if isinstance(m, type) and issubclass(m, BaseModel)
                       and "type" in m.model_fields and part in typing.get_args(m.model_fields["type"].annotation)), None)
            if tp is None:
                return None
        else:
            return None
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return None


def _describe(exc: ValidationError) -> list[str]:
    messages = []
    for err in exc.errors():
        raw_loc = list(err["loc"])
        loc = list(raw_loc)
        # A discriminated union adds the sink type to the path: `sinks.main.file.path`.
        if len(loc) > 2 and loc[0] == "sinks" and loc[2] in registry.SINKS:
            del loc[2]
        # ... and the policy type to a tail policy's: `sampling.tail.policies[0].latency.threshold`.
        if len(loc) > 4 and loc[:3] == ["sampling", "tail", "policies"] and loc[4] in POLICY_TYPES:
            del loc[4]
        ctx = err.get("ctx") or {}
        if isinstance(ctx.get("error"), ConfigError):
            messages.extend(ctx["error"].errors)
            continue
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(str(loc[-1]), _keys_at(raw_loc[:-1]) or ())
        elif kind == "missing":
            msg = "required"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            what, types_ = ("sink type", registry.SINKS) if loc[0] == "sinks" else ("policy type", POLICY_TYPES)
            loc.append("type")
            msg = (f"unknown {what} {ctx.get('tag')!r}; expected one of: {', '.join(types_)}"
                   + _did_you_mean(ctx.get("tag", ""), types_)
                   if kind == "union_tag_invalid" else f"required (one of: {', '.join(types_)})")
        elif kind in _TYPE_WORDS:
            msg = (_shape(loc) or _TYPE_WORDS[kind]) + _got(err.get("input"))
        elif kind == "literal_error":
            msg = f"expected {ctx.get('expected')}{_got(err.get('input'))}"
        elif kind == "too_short" and loc == ["sinks"]:
            msg = "define at least one sink"
        elif kind == "too_short":
            msg = f"expected at least {ctx.get('min_length')} item{'s' if ctx.get('min_length') != 1 else ''}"
        elif kind == "string_pattern_mismatch" and loc and loc[-1] == "[key]":
            loc.pop()
            msg = "a name may use letters, digits, _ . and - only"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            msg = msg.replace("Input should be", "must be") + _got(err.get("input"))
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        messages.append(f"{_dotted(loc) or '<top level>'}: {msg}")
    return messages


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
