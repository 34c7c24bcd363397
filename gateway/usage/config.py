"""`usage:`: where the usage rollups are kept, how often they are flushed, how long they live."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from gateway.configtypes import Duration, StrictModel


class UsageConfig(StrictModel):
    enabled: bool = True
    store: Literal["sqlite", "postgres"] = "sqlite"
    path: str = Field("./otelgate-usage.db", description="The SQLite file (store: sqlite).")
    dsn: SecretStr | None = Field(None, description="postgresql://user:password@host:port/db (store: postgres).")
    flush_interval: Duration = Field(5.0, gt=0, description="Rollups are written this often; a crash loses at most this much.")
    retention: Duration = Field(30 * 86400.0, gt=0, description="Rollups older than this are deleted.")
    compact_after: Duration = Field(2 * 86400.0, gt=0, description="Per-minute rollups older than this become per-hour.")
    max_pending_rows: int = Field(200_000, gt=0, description=(
        "Rollup rows held in memory while the store is slow or down; past it calls are counted in "
        "otelgate_usage_dropped_total."))

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> "UsageConfig":
        if self.enabled and self.store == "postgres" and self.dsn is None:
            raise ValueError("store: postgres needs dsn: postgresql://user:password@host:port/database")
        return self
