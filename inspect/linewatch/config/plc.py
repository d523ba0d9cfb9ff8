"""The PLC interface: the Modbus TCP server the line's PLC polls and writes (see docs/modbus.md)."""

from __future__ import annotations

from pydantic import Field

from linewatch.config.base import _Strict


class PlcConfig(_Strict):
    """Where the `plc` process listens and how quickly it follows the line."""

    enabled: bool = Field(True, description="Start the plc process (Modbus TCP server) with the line.")
    host: str = Field("127.0.0.1", description="Address the Modbus TCP server listens on (0.0.0.0 = every interface).")
    port: int = Field(5020, ge=1, le=65535, description="Modbus TCP port (502 is the standard one; needs privileges).")
    heartbeat_ms: float = Field(500.0, ge=50, le=60_000, description="Period of the heartbeat counter register.")
    refresh_ms: float = Field(
        200.0, ge=20, le=10_000, description="How often worker status files and the alarm table are read."
    )
    command_timeout_s: float = Field(
        5.0, gt=0, le=60, description="How long a trigger, lot change or acknowledge waits for its confirmation."
    )
    stop_alarm_kinds: tuple[str, ...] = Field(
        ("fail_streak", "fail_rate", "disk_full"), description="Critical alarms of these kinds set the "
        "line-stop-requested bit (streak alarms are critical when failsafe.streak.request_stop is on; disk_full "
        "when the data disk took no more writes).",
    )
