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
from gateway.configtypes import ByteSize, Duration, Endpoint, StrictModel
from gateway.receivers.auth import AuthConfig
from gateway.receivers.limits import LimitsConfig
from gateway.receivers.tls import ServerTlsConfig
from gateway.sampling.head import HeadConfig

_ENV = re.compile(r"\$\$|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = r"^[A-Za-z0-9_.-]+$"


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


class RouteConfig(StrictModel):
    name: str = Field(pattern=_NAME)
    sinks: list[str] = Field(min_length=1)


class SamplingConfig(StrictModel):
    head: HeadConfig | None = Field(None, description="Consistent head sampling by trace id; omitted: keep everything.")


class ServiceConfig(StrictModel):
    shutdown_grace: Duration = Field(30.0, description="How long SIGTERM waits for queues to drain.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"


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

    @model_validator(mode="after")
    def _routes_refer_to_sinks(self) -> "Config":
        errors = []
        if self.pipeline.price.enabled and not self.pipeline.normalize.enabled:
            errors.append("pipeline.price: pricing reads what pipeline.normalize finds; enable it or disable price")
        seen: set[str] = set()
        for i, route in enumerate(self.routes or ()):
            if route.name in seen:
                errors.append(f"routes[{i}].name: duplicate route name {route.name!r}")
            seen.add(route.name)
            for j, sink in enumerate(route.sinks):
                if sink not in self.sinks:
                    errors.append(f"routes[{i}].sinks[{j}]: no sink named {sink!r} (sinks: {', '.join(sorted(self.sinks))})")
            if i > 0:
                errors.append(f"routes[{i}]: unreachable: routes[0] has no match and takes everything")
        if errors:
            raise ConfigError(errors)
        return self

    def route_list(self) -> list[RouteConfig]:
        return self.routes if self.routes is not None else [RouteConfig(name="default", sinks=sorted(self.sinks))]

    def warnings(self) -> list[str]:
        used = {s for r in self.route_list() for s in r.sinks}
        return [f"sinks.{name}: not used by any route" for name in self.sinks if name not in used]


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
        ctx = err.get("ctx") or {}
        if isinstance(ctx.get("error"), ConfigError):
            messages.extend(ctx["error"].errors)
            continue
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required"
        elif kind == "union_tag_invalid":
            loc.append("type")
            msg = f"unknown sink type {ctx.get('tag')!r}; expected one of: {', '.join(registry.SINKS)}"
        elif kind == "union_tag_not_found":
            loc.append("type")
            msg = f"required (one of: {', '.join(registry.SINKS)})"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        messages.append(f"{_dotted(loc) or '<top level>'}: {msg}")
    return messages


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
