"""The wire: socket addresses, the frame and verdict contracts, and their (de)serialisation.

Everything that crosses a ZeroMQ socket is defined here and validated on receipt; a bad message
raises MessageError naming the field, never a KeyError deep inside a process.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

FRAME_VERSION = 1
DTYPES = {"uint8": np.uint8, "uint16": np.uint16}
FINALS = ("PASS", "FAIL", "REVIEW")
Final = Literal["PASS", "FAIL", "REVIEW"]

# Message kinds on record's inbound socket (first frame of each multipart message).
KIND_ANNOUNCE = b"announce"
KIND_VERDICT = b"verdict"
KIND_ALARM = b"alarm"
KIND_ACTION = b"action"  # an operator's action (api -> record, the single writer)


class MessageError(ValueError):
    """A message does not follow its contract; the text names the field."""


@dataclass(frozen=True)
class Endpoints:
    """ZeroMQ addresses of one line. acquire binds `frames(camera)`; record binds `record` and `events`."""

    run_dir: Path

    def frames(self, camera: str) -> str:
        return f"ipc://{self.run_dir / f'frames-{camera}.sock'}"

    def control(self, camera: str) -> str:
        """REP socket acquire binds for commands to its camera (software trigger from api, PLC, tools)."""
        return f"ipc://{self.run_dir / f'control-{camera}.sock'}"

    @property
    def record(self) -> str:
        return f"ipc://{self.run_dir / 'record.sock'}"

    @property
    def events(self) -> str:
        return f"ipc://{self.run_dir / 'events.sock'}"


def now_ns() -> int:
    return time.time_ns()


def _get(d: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if name not in d:
        raise MessageError(f"{what}: missing field '{name}'")
    value = d[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise MessageError(f"{what}: field '{name}' has wrong type {type(value).__name__}")
    return value


def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MessageError(f"{what}: must be a JSON object")
    return data


@dataclass(frozen=True)
class FrameHeader:
    """Header of a frame message `[header, pixels]` (acquire -> infer) and of an announcement."""

    camera: str
    stream: str  # acquisition run id: (camera, stream, seq) is unique across restarts
    seq: int
    part_id: str
    t_capture_ns: int
    t_sent_ns: int
    width: int
    height: int
    channels: int
    dtype: str
    pixel_format: str
    truth: dict[str, Any] | None = None
    v: int = FRAME_VERSION
    device_frame_id: int | None = None  # the camera's own frame counter (GenTL frame id), when it has one
    device_timestamp_ns: int | None = None  # the camera's clock at exposure, when it reports one

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.channels * np.dtype(DTYPES[self.dtype]).itemsize

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> FrameHeader:
        d = _load_json(raw, "frame header")
        v = _get(d, "v", int, "frame header")
        if v != FRAME_VERSION:
            raise MessageError(f"frame header: unsupported version {v} (expected {FRAME_VERSION})")
        hdr = cls(
            camera=_get(d, "camera", str, "frame header"),
            stream=_get(d, "stream", str, "frame header"),
            seq=_get(d, "seq", int, "frame header"),
            part_id=_get(d, "part_id", str, "frame header"),
            t_capture_ns=_get(d, "t_capture_ns", int, "frame header"),
            t_sent_ns=_get(d, "t_sent_ns", int, "frame header"),
            width=_get(d, "width", int, "frame header"),
            height=_get(d, "height", int, "frame header"),
            channels=_get(d, "channels", int, "frame header"),
            dtype=_get(d, "dtype", str, "frame header"),
            pixel_format=_get(d, "pixel_format", str, "frame header"),
            truth=d.get("truth") if isinstance(d.get("truth"), dict) else None,
            device_frame_id=_get(d, "device_frame_id", int, "frame header") if d.get("device_frame_id") is not None
            else None,
            device_timestamp_ns=_get(d, "device_timestamp_ns", int, "frame header")
            if d.get("device_timestamp_ns") is not None else None,
        )
        for name in ("width", "height", "channels"):
            if getattr(hdr, name) <= 0:
                raise MessageError(f"frame header: field '{name}' must be > 0, got {getattr(hdr, name)}")
        if hdr.seq < 0:
            raise MessageError(f"frame header: field 'seq' must be >= 0, got {hdr.seq}")
        if hdr.dtype not in DTYPES:
            raise MessageError(f"frame header: field 'dtype' must be one of {sorted(DTYPES)}, got {hdr.dtype!r}")
        return hdr


def encode_frame(header: FrameHeader, pixels: np.ndarray) -> list[Any]:
    """Multipart `[header, pixels]`; the pixel buffer goes out without a copy."""
    return [header.to_bytes(), np.ascontiguousarray(pixels).data.cast("B")]


def decode_frame(parts: list[Any]) -> tuple[FrameHeader, np.ndarray]:
    """Header and a read-only array view over the received pixel buffer."""
    if len(parts) != 2:
        raise MessageError(f"frame message: expected 2 parts [header, pixels], got {len(parts)}")
    header = FrameHeader.from_bytes(bytes(parts[0]))
    buf = parts[1].buffer if hasattr(parts[1], "buffer") else parts[1]
    size = len(buf) if not isinstance(buf, memoryview) else buf.nbytes
    if size != header.nbytes:
        raise MessageError(
            f"frame message: pixel buffer has {size} bytes, header "
            f"{header.width}x{header.height}x{header.channels} {header.dtype} needs {header.nbytes}"
        )
    pixels = np.frombuffer(buf, dtype=DTYPES[header.dtype]).reshape(header.shape)
    return header, pixels


def peek_identity(raw: bytes) -> tuple[str, str, int] | None:
    """(camera, stream, seq) from a header that failed validation, when those fields are readable."""
    try:
        d = json.loads(raw)
        cam, stream, seq = d["camera"], d["stream"], d["seq"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
    if isinstance(cam, str) and isinstance(stream, str) and isinstance(seq, int) and not isinstance(seq, bool):
        return cam, stream, seq
    return None


@dataclass
class Verdict:
    """The canonical result of one frame (infer -> record -> events).

    `decided_by` is `model`, `rule:<name>`, `timeout` or `not_inspected`; `reasons` explains overrides.
    `timings_ms` holds per-stage durations (queue, preprocess, inference, failsafe, ...).
    """

    camera: str
    stream: str
    seq: int
    part_id: str
    final: Final
    decided_by: str
    reasons: list[str] = field(default_factory=list)
    recipe: str = ""
    model_hash: str | None = None
    model_name: str | None = None
    ruleset_hash: str | None = None
    label: str | None = None
    score: float | None = None
    probs: dict[str, float] | None = None
    t_capture_ns: int = 0
    t_sent_ns: int = 0
    t_received_ns: int = 0
    t_decided_ns: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    truth: dict[str, Any] | None = None
    image: str | None = None  # set by record when the image is kept

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Verdict:
        d = _load_json(raw, "verdict")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise MessageError(f"verdict: unknown field(s) {', '.join(unknown)}")
        for name in ("camera", "stream", "part_id", "decided_by"):
            _get(d, name, str, "verdict")
        _get(d, "seq", int, "verdict")
        if d.get("final") not in FINALS:
            raise MessageError(f"verdict: field 'final' must be one of {FINALS}, got {d.get('final')!r}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise MessageError(f"verdict: {exc}") from None

    @classmethod
    def not_inspected(cls, header: FrameHeader, recipe: str, reason: str) -> Verdict:
        """A frame that never reached a model: rejected, with its reason."""
        return cls(
            camera=header.camera, stream=header.stream, seq=header.seq, part_id=header.part_id,
            final="FAIL", decided_by="not_inspected", reasons=[reason], recipe=recipe,
            t_capture_ns=header.t_capture_ns, t_sent_ns=header.t_sent_ns, t_decided_ns=now_ns(),
            truth=header.truth,
        )


@dataclass(frozen=True)
class Alarm:
    """Something a person must look at (child restarted, model unusable, messages rejected...)."""

    source: str
    kind: str
    message: str
    severity: Literal["info", "warning", "critical"] = "warning"
    t_ns: int = field(default_factory=now_ns)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Alarm:
        d = _load_json(raw, "alarm")
        sev = d.get("severity", "warning")
        if sev not in ("info", "warning", "critical"):
            raise MessageError(f"alarm: field 'severity' must be info, warning or critical, got {sev!r}")
        return cls(
            source=_get(d, "source", str, "alarm"),
            kind=_get(d, "kind", str, "alarm"),
            message=_get(d, "message", str, "alarm"),
            severity=sev,
            t_ns=_get(d, "t_ns", int, "alarm"),
        )


OPERATOR_ACTIONS = ("set_lot", "review", "ack_alarm")


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
    t_ns: int = field(default_factory=now_ns)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> OperatorAction:
        d = _load_json(raw, "action")
        action = d.get("action")
        if action not in OPERATOR_ACTIONS:
            raise MessageError(f"action: field 'action' must be one of {', '.join(OPERATOR_ACTIONS)}, got {action!r}")
        detail = d.get("detail")
        if not isinstance(detail, dict):
            raise MessageError("action: field 'detail' must be an object")
        return cls(action=action, actor=_get(d, "actor", str, "action"),
                   request_id=_get(d, "request_id", str, "action"), detail=detail, t_ns=_get(d, "t_ns", int, "action"))


CONTROL_COMMANDS = ("trigger",)


@dataclass(frozen=True)
class CameraCommand:
    """A request on a camera's control socket; `trigger` takes one frame now (software trigger)."""

    cmd: Literal["trigger"]
    part_id: str | None = None  # from the PLC or the caller; generated when absent

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CameraCommand:
        d = _load_json(raw, "camera command")
        if d.get("cmd") not in CONTROL_COMMANDS:
            raise MessageError(f"camera command: field 'cmd' must be one of {CONTROL_COMMANDS}, got {d.get('cmd')!r}")
        part_id = d.get("part_id")
        if part_id is not None and (not isinstance(part_id, str) or not 0 < len(part_id) <= 128):
            raise MessageError("camera command: field 'part_id' must be a string of 1-128 characters")
        return cls(cmd=d["cmd"], part_id=part_id)


@dataclass(frozen=True)
class CameraReply:
    """acquire's answer on the control socket: the frame a trigger produced, or why it could not."""

    ok: bool
    seq: int | None = None
    part_id: str | None = None
    error: str | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CameraReply:
        d = _load_json(raw, "camera reply")
        if not isinstance(d.get("ok"), bool):
            raise MessageError("camera reply: field 'ok' must be true or false")
        seq, part_id, error = d.get("seq"), d.get("part_id"), d.get("error")
        return cls(ok=d["ok"], seq=seq if isinstance(seq, int) else None,
                   part_id=part_id if isinstance(part_id, str) else None,
                   error=error if isinstance(error, str) else None)
