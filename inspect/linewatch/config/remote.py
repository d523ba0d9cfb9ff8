"""Remote inference workers: the TCP ports a line opens for workers in other processes or on other hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from linewatch.config.base import _Strict

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class RemoteWorkersConfig(_Strict):
    """Where a line takes workers over TCP (`linewatch worker --connect tcp://HOST:PORT`).

    record's inbound socket listens on `port`, camera k's frames on `port + 1 + k` (k as in `cameras`);
    frames travel inline (`infer.transport: inline`), the pixels inside each message."""

    enabled: bool = Field(False, description="Open the TCP ports for remote workers (needs infer.transport inline).")
    host: str = Field("127.0.0.1", description="Address the line listens on for remote workers (0.0.0.0 = every "
                      "interface).")
    port: int = Field(5600, ge=1, le=65000, description="record's port for verdicts and alarms; camera k's frames "
                      "are on port + 1 + k.")
    auth: Literal["curve", "none"] = Field(
        "curve", description="curve: the ports are CurveZMQ servers (encrypted) that take only workers whose public "
        "key is in keys_dir/workers (docs/security.md); none: anyone who reaches them, on a loopback host only.")
    keys_dir: Path | None = Field(None, description="The line's key pair (line.key, made at the first start) and "
                                  "workers/ with the enrolled workers' public keys (default data_dir/remote-keys).")

    @model_validator(mode="after")
    def _no_open_ports(self) -> RemoteWorkersConfig:
        """Unauthenticated ports on a reachable address would take forged verdicts (a bad part passed) from any host."""
        if self.enabled and self.auth == "none" and self.host not in LOOPBACK:
            raise ValueError(f"infer.remote.auth none on host {self.host}: any host reaching it could send verdicts; "
                             "use auth curve (the default), or a loopback host")
        return self
