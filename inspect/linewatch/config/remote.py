"""Remote inference workers: the TCP ports a line opens for workers in other processes or on other hosts."""

from __future__ import annotations

from pydantic import Field

from linewatch.config.base import _Strict


class RemoteWorkersConfig(_Strict):
    """Where a line takes workers over TCP (`linewatch worker --connect tcp://HOST:PORT`).

    record's inbound socket listens on `port`, camera k's frames on `port + 1 + k` (k as in `cameras`);
    frames travel inline (`infer.transport: inline`), the pixels inside each message."""

    enabled: bool = Field(False, description="Open the TCP ports for remote workers (needs infer.transport inline).")
    host: str = Field("127.0.0.1", description="Address the line listens on for remote workers (0.0.0.0 = every "
                      "interface; the ports carry frames and verdicts unauthenticated: a plant network only).")
    port: int = Field(5600, ge=1, le=65000, description="record's port for verdicts and alarms; camera k's frames "
                      "are on port + 1 + k.")
