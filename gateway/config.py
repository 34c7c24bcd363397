"""The config file: YAML, `${env:NAME}` expansion, validation that reports every error at once.

Every error names the dotted path of the bad key (`sinks.audit.rotate_bytes: ...`), like the
Collector's `confmap` validation: a user fixes a broken file in one pass, not one error per run.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, SecretStr, ValidationError, create_model, model_validator

from gateway import registry
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

_ENV = re.compile(r"\$\$|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = r"^[A-Za-z0-9_.-]+$"
SIGNAL_NAMES = ("traces", "logs", "metrics")
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


class HttpReceiverConfig(StrictModel):
    endpoint: Endpoint = "0.0.0.0:4318"
    max_body_bytes: ByteSize = Field(
        20 * 1024 * 1024, gt=0, description="Bounds the body as sent and again after decompression (gzip bombs).")
    tls: ServerTlsConfig | None = Field(None, description="Omitted: plain text.")


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


PipelineConfig = create_model(  # one key per registered processor, each with its defaults
    "PipelineConfig", __base__=StrictModel,
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


# -- loading ---------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A key written twice is a mistake (the second silently wins in plain YAML)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(path: str | os.PathLike[str] | None) -> Config:
    """Load a config file, or the embedded default when `path` is None."""
    if path is None:
        return parse(resources.files("gateway").joinpath("default.yaml").read_text(), "<embedded default>")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    return parse(text, str(path))


def parse(text: str, source: str = "<config>", environ: dict[str, str] | None = None) -> Config:
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys (receivers, sinks, routes...)"])
    errors: list[str] = []
    environ = os.environ if environ is None else environ
    raw = _expand(raw, "", environ, errors)
    if errors:
        raise ConfigError(errors)
    try:
        return Config.model_validate(raw, context={"environ": environ})  # for keys named by `key_env`
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ConfigError:
        raise


def _expand(node: Any, path: str, environ: Any, errors: list[str]) -> Any:
    """Replace `${env:NAME}` / `${NAME}` in every string; `$$` is a literal `$`."""
    if isinstance(node, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), environ, errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}[{i}]", environ, errors) for i, v in enumerate(node)]
    if isinstance(node, str) and "$" in node:
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1)
            if name not in environ:
                errors.append(f"{path}: environment variable {name} is not set")
                return ""
            return environ[name]
        return _ENV.sub(sub, node)
    return node


def _describe(exc: ValidationError) -> list[str]:
    messages = []
    for err in exc.errors():
        loc = list(err["loc"])
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
            msg = "unknown key"
        elif kind == "missing":
            msg = "required"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            what, types = ("sink type", registry.SINKS) if loc[0] == "sinks" else ("policy type", POLICY_TYPES)
            loc.append("type")
            msg = (f"unknown {what} {ctx.get('tag')!r}; expected one of: {', '.join(types)}"
                   if kind == "union_tag_invalid" else f"required (one of: {', '.join(types)})")
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        messages.append(f"{_dotted(loc) or '<top level>'}: {msg}")
    return messages


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
