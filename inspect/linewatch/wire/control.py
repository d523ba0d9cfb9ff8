"""Control-plane messages: alarms, operators' actions, and commands to a camera with their replies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from linewatch.clock import now_ns
from linewatch.wire.codec import ENCODER, Count, decoded


@dataclass(frozen=True)
class Alarm:
    """Something a person must look at (child restarted, model unusable, messages rejected...)."""

    source: str
    kind: str
    message: str
    severity: Literal["info", "warning", "critical"] = "warning"
    t_ns: Count = field(default_factory=now_ns)

    def to_bytes(self) -> bytes:
        return ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Alarm:
        return decoded(_ALARM, raw, "alarm")


@dataclass(frozen=True)
class OperatorAction:
    """An operator's change sent by the api to record, which applies it and writes the audit log.

    `set_lot`: detail `{"lot": str}`; `review`: detail `{"inspection_id": int, "decision": PASS|FAIL,
    "label": str, "note": str}`; `ack_alarm`: detail `{"alarm_id": int}`. `request_id` lets the sender
    find its committed audit row.
    """

    action: Literal["set_lot", "review", "ack_alarm"]
    actor: str
    request_id: str
    detail: dict[str, Any]
    t_ns: Count = field(default_factory=now_ns)

    def to_bytes(self) -> bytes:
        return ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> OperatorAction:
        return decoded(_ACTION, raw, "action")


@dataclass(frozen=True)
class CameraCommand:
    """A request on a camera's control socket; `trigger` takes one frame now (software trigger)."""

    cmd: Literal["trigger"]
    part_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None  # generated when absent

    def to_bytes(self) -> bytes:
        return ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CameraCommand:
        return decoded(_COMMAND, raw, "camera command")


@dataclass(frozen=True)
class CameraReply:
    """acquire's answer on the control socket: the frame a trigger produced, or why it could not."""

    ok: bool
    seq: Count | None = None
    part_id: str | None = None
    error: str | None = None

    def to_bytes(self) -> bytes:
        return ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CameraReply:
        return decoded(_REPLY, raw, "camera reply")


_ALARM = msgspec.json.Decoder(Alarm)
_ACTION = msgspec.json.Decoder(OperatorAction)
_COMMAND = msgspec.json.Decoder(CameraCommand)
_REPLY = msgspec.json.Decoder(CameraReply)
