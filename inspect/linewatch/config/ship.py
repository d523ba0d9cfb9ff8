"""Fleet results: where `linewatch ship` sends the line's inspections, alarms and audit rows (PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from linewatch.config.base import _Strict


class ShipConfig(_Strict):
    """The central PostgreSQL and how `linewatch ship` follows the line's store (docs/fleet.md).

    The password is never in this file: `password_file`, else the environment (`LINEWATCH_SHIP_PASSWORD`, then
    libpq's own `PGPASSWORD` / `~/.pgpass`)."""

    enabled: bool = Field(False, description="Start ship as a process of the line (else run `linewatch ship` "
                          "on its own).")
    host: str = Field("127.0.0.1", min_length=1, max_length=253, description="PostgreSQL host.")
    port: int = Field(5432, ge=1, le=65535, description="PostgreSQL port.")
    dbname: str = Field("linewatch", min_length=1, max_length=63, description="Database holding every line's rows.")
    user: str = Field("linewatch", min_length=1, max_length=63, description="PostgreSQL role ship logs in as.")
    password_file: Path | None = Field(None, description="File whose first line is the role's password (mode 0600; "
                                       "unset: LINEWATCH_SHIP_PASSWORD, then libpq's PGPASSWORD or ~/.pgpass).")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "prefer", description="libpq sslmode of the connection (verify-full across an untrusted network).")
    batch_rows: int = Field(1000, ge=1, le=100_000, description="Rows per PostgreSQL transaction (each carries "
                            "its table's high-water mark).")
    interval_s: float = Field(1.0, ge=0.05, le=3600, description="How often ship looks for new rows once caught up.")
    connect_timeout_s: float = Field(5.0, ge=1, le=120, description="How long one connection attempt may take.")
    retry_backoff_s: tuple[float, float] = Field((1.0, 30.0), description="First and longest wait before "
                                                 "connecting again after PostgreSQL failed.")
    lag_alarm_s: float = Field(600.0, ge=0, le=30 * 86_400, description="A `ship_lag` alarm when the oldest row "
                               "not yet shipped is older than this (0 = never).")

    @model_validator(mode="after")
    def _backoff_ordered(self) -> ShipConfig:
        low, high = self.retry_backoff_s
        if not 0 < low <= high <= 3600:
            raise ValueError(f"ship.retry_backoff_s must be 0 < first <= longest <= 3600, got {low:g}, {high:g}")
        return self
