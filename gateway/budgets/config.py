"""`budgets:` and `alerts:`: spend limits per period, alert rules over a window, and receivers."""

from __future__ import annotations

import zoneinfo
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.configtypes import Duration, StrictModel

_NAME = r"^[A-Za-z0-9_.-]+$"
MatchKey = Literal["tenant", "app", "user", "environment", "provider", "model"]
Per = Literal["tenant", "app", "user"]


class BudgetConfig(StrictModel):
    name: str = Field(pattern=_NAME)
    match: dict[MatchKey, str | list[str]] = Field({}, description="Calls counted: each key equals the value (or one of "
                                                   "the list); omitted: all calls.")
    per: Per | None = Field(None, description="One budget per distinct value (e.g. per user).")
    period: Literal["day", "week", "month"] = "day"
    timezone: str = Field("UTC", description="Where the period starts (weeks start on Monday).")
    limit_usd: float | None = Field(None, gt=0)
    limit_tokens: int | None = Field(None, gt=0, description="Input plus output tokens (input includes cache).")
    warn_at: list[float] = Field([0.5, 0.8, 1.0], min_length=1, description="Utilization thresholds that notify.")
    receivers: list[str] | None = Field(None, description="Receivers to notify; omitted: every receiver.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as UTC or Europe/Paris)") from None
        return value

    @field_validator("warn_at")
    @classmethod
    def _thresholds(cls, value: list[float]) -> list[float]:
        if any(not 0 < t <= 10 for t in value):
            raise ValueError("thresholds are utilization ratios above 0 (1.0 = the limit)")
        return sorted(set(value))

    @model_validator(mode="after")
    def _consistent(self) -> "BudgetConfig":
        if self.limit_usd is None and self.limit_tokens is None:
            raise ValueError("give limit_usd, limit_tokens or both")
        if self.per == "user" or "user" in self.match:
            if "provider" in self.match or "model" in self.match:
                raise ValueError("a budget by user cannot also match provider or model: users' usage is kept by "
                                 "tenant, app and environment")
            if self.timezone != "UTC":
                raise ValueError("a budget by user counts UTC days (users' usage is kept per UTC day): use timezone: UTC")
        return self

    @property
    def by_user(self) -> bool:
        return self.per == "user" or "user" in self.match


class ReceiverConfig(StrictModel):
    name: str = Field(pattern=_NAME)
    type: Literal["webhook", "slack", "alertmanager"]
    url: str = Field(pattern=r"^https?://", description="webhook/slack: the URL posted to; alertmanager: its base URL.")
    headers: dict[str, SecretStr] = Field({}, description="Sent with every notification (e.g. Authorization).")
    timeout: Duration = Field(5.0, gt=0)


class RuleConfig(StrictModel):
    name: str = Field(pattern=_NAME)
    type: Literal["error_rate", "latency_p95", "avg_input_tokens"] = Field(
        description="error_rate: errors/calls (0-1); latency_p95: seconds; avg_input_tokens: input tokens per call.")
    threshold: float = Field(gt=0)
    window: Duration = Field(300.0, ge=60)
    by: Literal["app", "model", "tenant", "environment", "provider"] | None = Field(
        None, description="Evaluate per value of this dimension; omitted: over all calls.")
    match: dict[Literal["tenant", "app", "environment", "provider", "model"], str | list[str]] = {}
    min_calls: int = Field(10, ge=1, description="Fewer calls in the window: not evaluated.")
    receivers: list[str] | None = None


class AlertsConfig(StrictModel):
    receivers: list[ReceiverConfig] = []
    rules: list[RuleConfig] = []
    interval: Duration = Field(15.0, gt=0, description="How often budgets and rules are evaluated.")
    retries: int = Field(5, ge=0, description="Delivery retries (with exponential backoff) before counting a failure.")

    @model_validator(mode="after")
    def _unique(self) -> "AlertsConfig":
        for what, names in (("receivers", [r.name for r in self.receivers]), ("rules", [r.name for r in self.rules])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"{what}: duplicate name {sorted(dup)[0]!r}")
        known = {r.name for r in self.receivers}
        for rule in self.rules:
            for name in rule.receivers or ():
                if name not in known:
                    raise ValueError(f"rules.{rule.name}.receivers: no receiver named {name!r}")
        return self
