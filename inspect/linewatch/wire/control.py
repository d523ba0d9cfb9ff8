"""Control-plane messages: alarms, operators' actions, and commands to a camera with their replies."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import msgspec

from linewatch.clock import now_ns
from linewatch.wire.codec import ENCODER, Count, MessageError, check_storable, decoded


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

    `set_lot`: detail `{"lot": str}` (a lot `check_lot` accepts); `review`: detail `{"inspection_id": int,
    "decision": PASS|FAIL, "label": str, "note": str}`; `ack_alarm`: detail `{"alarm_id": int}`;
    `drift_relearn`: detail `{"camera": str}` (the camera's drift reference is learnt again from its next parts,
    after a deliberate change); `reset_counters`: detail `{}` (the HMI's "since reset" counters start now);
    `set_recipe`: detail `{"recipe": str, "job": int}` (the line switches between parts); `set_offline`: detail
    `{"cameras": [str], "reason": "offline"|"paused"|None}` (None: back online).
    `request_id` lets the sender find its committed audit row.
    """

    action: Literal["set_lot", "review", "ack_alarm", "drift_relearn", "reset_counters", "set_recipe", "set_offline"]
    actor: str
    request_id: str
    detail: dict[str, Any]
    t_ns: Count = field(default_factory=now_ns)

    def to_bytes(self) -> bytes:
        return ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> OperatorAction:
        """Its detail is checked for its action too: record binds the ids in SQL and stores the detail as JSON."""
        action = decoded(_ACTION, raw, "action")
        try:
            msgspec.convert(action.detail, _DETAILS[action.action])
        except msgspec.ValidationError as exc:
            text = str(exc)
            where = text.replace("`$", "`$.detail", 1) if "`$" in text else f"{text} - at `$.detail`"
            raise MessageError(f"action: {where}") from None
        check_storable(action.detail, "action", "detail")
        return action


class _LotDetail(TypedDict):
    lot: str  # record applies the lot rule (`check_lot`)


class _ReviewDetail(TypedDict):
    inspection_id: Count
    decision: str  # record refuses anything but PASS or FAIL, naming it
    label: NotRequired[str | None]
    note: NotRequired[str | None]


class _AckDetail(TypedDict):
    alarm_id: Count


class _RelearnDetail(TypedDict):
    camera: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class _NoDetail(TypedDict):
    pass


class _RecipeDetail(TypedDict):
    recipe: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    job: Annotated[int, msgspec.Meta(ge=0, le=65535)]


class _OfflineDetail(TypedDict):
    cameras: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]], msgspec.Meta(max_length=64)]
    reason: Literal["offline", "paused"] | None


_DETAILS: dict[str, type] = {"set_lot": _LotDetail, "review": _ReviewDetail, "ack_alarm": _AckDetail,
                             "drift_relearn": _RelearnDetail, "reset_counters": _NoDetail, "set_recipe": _RecipeDetail,
                             "set_offline": _OfflineDetail}


LOT_MAX_CHARS = 64  # the PLC's lot registers hold 64 ASCII characters


class LotError(ValueError):
    """A lot id that breaks the lot rule (`check_lot`); the text states the rule and the value."""


def check_lot(lot: object) -> str:
    """The one lot rule, for every way a lot enters the line (REST, PLC registers, record's `set_lot`):
    1-64 characters, no leading or trailing whitespace, no control characters. Returns the lot."""
    if (not isinstance(lot, str) or not 1 <= len(lot) <= LOT_MAX_CHARS or lot != lot.strip()
            or any(unicodedata.category(c) == "Cc" for c in lot)):
        raise LotError(f"lot must be 1-{LOT_MAX_CHARS} characters without leading or trailing spaces or "
                       f"control characters, got {lot!r}")
    return lot


@dataclass(frozen=True)
class CameraCommand:
    """A request on a camera's control socket: `trigger` takes one frame now (software trigger); `set_recipe`
    stamps `recipe` on every following part; `set_offline` records every following part as not inspected with
    reason `offline` (`paused`), or inspects them again when `offline` is None."""

    cmd: Literal["trigger", "set_recipe", "set_offline"]
    part_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None  # generated when absent
    recipe: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    offline: Literal["offline", "paused"] | None = None

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
