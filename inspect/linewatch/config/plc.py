"""The PLC interface: the Modbus TCP server the line's PLC polls and writes (see docs/modbus.md)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from linewatch.config.base import _Strict


class PlcClient(_Strict):
    """Addresses allowed to talk to the Modbus server, and what they may do."""

    address: str = Field("127.0.0.0/8", description="Client address or network (CIDR), IPv4 or IPv6.")
    access: Literal["read", "read_write"] = Field(
        "read_write", description="read: reads only, every write is refused (exception 1); read_write: both.")

    @field_validator("address")
    @classmethod
    def _network(cls, v: str) -> str:
        ipaddress.ip_network(v, strict=False)  # ValueError names the text
        return v


def _loopback() -> list[PlcClient]:
    return [PlcClient(address="127.0.0.0/8"), PlcClient(address="::1")]


class PlcConfig(_Strict):
    """Where the `plc` process listens and how quickly it follows the line."""

    enabled: bool = Field(True, description="Start the plc process (Modbus TCP server) with the line.")
    host: str = Field("127.0.0.1", description="Address the Modbus TCP server listens on (0.0.0.0 = every interface).")
    port: int = Field(5020, ge=1, le=65535, description="Modbus TCP port (502 is the standard one; needs privileges).")
    clients: list[PlcClient] = Field(
        default_factory=_loopback, max_length=256, description="Allow-list of client addresses (first match wins); "
        "a connection from any other address is closed unanswered, logged and counted (default: loopback, read-write).")
    results_buffer: int = Field(
        8, ge=1, le=1000, description="Results a camera queues for the PLC while Results Buffer Enable is on; "
        "when full, further results set Results Buffer Overrun and are counted (their rows are recorded anyway).")
    watchdog_s: float = Field(
        0.0, ge=0, le=3600, description="Alarm when the PLC's heartbeat register (`plc_heartbeat`) has not "
        "changed for this long, once it has been written (0 = no watchdog).")
    watchdog_offline: bool = Field(
        False, description="When the PLC watchdog fires, also take the line offline (parts recorded not "
        "inspected, reason `offline`) until the heartbeat resumes.")
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
