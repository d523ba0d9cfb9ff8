"""The wire: socket addresses, the frame and verdict contracts, and their (de)serialisation.

Everything that crosses a ZeroMQ socket is defined here and validated on receipt; a bad message
raises MessageError naming the field, never a KeyError deep inside a process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import numpy as np
import orjson

FRAME_VERSION = 2  # 2: a frame may travel as `[header]` with its pixels in a shared-memory slot
FRAME_VERSIONS = (1, 2)  # accepted on receipt; version 1 headers carry no slot
DTYPES = {"uint8": np.uint8, "uint16": np.uint16}
PixelDtype = Literal["uint8", "uint16"]
Final = Literal["PASS", "FAIL", "REVIEW"]

# Message kinds on record's inbound socket (first frame of each multipart message).
KIND_ANNOUNCE = b"announce"
KIND_VERDICT = b"verdict"
# infer -> record: the verdicts of one batch that carry no image, as one JSON array (`encode_verdict_batch`):
# one message per batch instead of per frame halves record's per-row cost of receiving and decoding.
KIND_VERDICT_BATCH = b"verdict_batch"
KIND_ALARM = b"alarm"
KIND_ACTION = b"action"  # an operator's action (api -> record, the single writer)
# record's events (PUB): `alarm` and `action` carry one JSON object; `verdicts` one group commit's rows
# (see `encode_verdict_group`): one message per group, not per row, keeps record's publishing cheap.
KIND_VERDICTS = b"verdicts"


class MessageError(ValueError):
    """A message does not follow its contract; the text names the field."""


@dataclass(frozen=True)
class Endpoints:
    """ZeroMQ addresses of one line. acquire binds `frames(camera)`; record binds `record` and `events`."""

    run_dir: Path

    def frames(self, camera: str) -> str:
        return f"ipc://{self.run_dir / f'frames-{camera}.sock'}"

    def releases(self, camera: str) -> str:
        """PULL socket acquire binds; workers PUSH back the shared-memory slots they are done with."""
        return f"ipc://{self.run_dir / f'releases-{camera}.sock'}"

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


def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)  # orjson.JSONDecodeError is a json.JSONDecodeError
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MessageError(f"{what}: must be a JSON object")
    return data


MAX_INT64 = 2**63 - 1
#: seq and nanosecond times: SQLite stores signed 64-bit integers (and a huge seq would make record's gap
#: tracking watch billions of frames), so bigger numbers are refused at the door.
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT64)]


@dataclass(frozen=True)
class FrameHeader:
    """Header of a frame message (acquire -> infer) and of an announcement.

    Inline frames travel as `[header, pixels]`. Shared-memory frames travel as `[header]` alone: the
    pixels lie in slot `slot` of the camera's frame ring (`frame_ring.py`), valid while the slot's
    generation stamp still equals `gen`.
    """

    camera: str
    stream: str  # acquisition run id: (camera, stream, seq) is unique across restarts
    seq: Count
    part_id: str
    t_capture_ns: Count
    t_sent_ns: Count
    width: Positive
    height: Positive
    channels: Positive
    dtype: PixelDtype
    pixel_format: str
    truth: dict[str, Any] | None = None
    v: int = FRAME_VERSION
    device_frame_id: int | None = None  # the camera's own frame counter (GenTL frame id), when it has one
    device_timestamp_ns: int | None = None  # the camera's clock at exposure, when it reports one
    slot: Annotated[int, msgspec.Meta(ge=0)] | None = None  # frame ring slot holding the pixels (None: inline)
    gen: Annotated[int, msgspec.Meta(ge=1)] | None = None  # the slot's generation when these pixels were written

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.channels * np.dtype(DTYPES[self.dtype]).itemsize

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> FrameHeader:
        """Validated against the fields' types by msgspec, in C (every frame is decoded by a worker and
        announced to record); a wrong field is named, e.g. ``Expected `int` >= 1 - at `$.width` ``."""
        try:
            hdr = _HEADER.decode(raw)
        except msgspec.DecodeError as exc:
            raise MessageError(f"frame header: {_decode_problem(exc)}") from None
        if hdr.v not in FRAME_VERSIONS:
            raise MessageError(f"frame header: unsupported version {hdr.v} (expected one of {FRAME_VERSIONS})")
        _check_slot(hdr)
        return hdr


def _check_slot(hdr: FrameHeader) -> None:
    """Slot and generation come together (version 2 only); the ring checks the slot's range."""
    if hdr.slot is None and hdr.gen is None:
        return
    if hdr.v < 2:
        raise MessageError(f"frame header: field 'slot' needs version 2, got version {hdr.v}")
    if hdr.slot is None or hdr.gen is None:
        missing = "slot" if hdr.slot is None else "gen"
        raise MessageError(f"frame header: field '{missing}' is missing (slot and gen come together)")


def encode_frame(header: FrameHeader, pixels: np.ndarray, raw_header: bytes | None = None) -> list[Any]:
    """Multipart `[header, pixels]`; the pixel buffer goes out without a copy (`raw_header`: the header
    already encoded, e.g. for its announcement)."""
    return [raw_header or header.to_bytes(), np.ascontiguousarray(pixels).data.cast("B")]


def decode_frame(parts: list[Any]) -> tuple[FrameHeader, np.ndarray]:
    """Header and a read-only array view over the received pixel buffer (an inline frame; a header's
    slot fields, if any, are ignored: the pixels part is the frame). Slot frames: `frame_ring.FrameReader`."""
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


@dataclass(frozen=True)
class SlotRelease:
    """Frame ring slots a worker is done with (infer -> acquire), batched: `slots` holds (slot, gen) pairs."""

    camera: str
    stream: str
    slots: list[tuple[Count, Count]]

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SlotRelease:
        return _decoded(_SLOT_RELEASE, raw, "slot release")


def peek_identity(raw: bytes | memoryview | msgspec.Raw) -> tuple[str, str, int] | None:
    """(camera, stream, seq) from a header or verdict that failed validation, when those fields are readable."""
    try:
        d = json.loads(bytes(raw))
        cam, stream, seq = d["camera"], d["stream"], d["seq"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
    if (isinstance(cam, str) and isinstance(stream, str) and isinstance(seq, int) and not isinstance(seq, bool)
            and 0 <= seq <= MAX_INT64):
        return cam, stream, seq
    return None


class VerdictError(MessageError):
    """A verdict that failed validation; `identity` is its part's (camera, stream, seq) when readable, so
    record can fail that part at once, naming the problem, instead of letting it time out."""

    def __init__(self, text: str, identity: tuple[str, str, int] | None):
        super().__init__(text)
        self.identity = identity


@dataclass
class Verdict:
    """The canonical result of one frame (infer -> record -> events).

    `decided_by` is `model`, `rule:<name>`, `timeout` or `not_inspected`; `reasons` explains overrides.
    `timings_ms` holds per-stage durations (queue, preprocess, inference, failsafe, ...).
    """

    camera: str
    stream: str
    seq: Count
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
    t_capture_ns: Count = 0
    t_sent_ns: Count = 0
    t_received_ns: Count = 0
    t_decided_ns: Count = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    truth: dict[str, Any] | None = None
    image: str | None = None  # set by record when the image is kept

    def to_bytes(self) -> bytes:
        return orjson.dumps(self, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Verdict:
        """Validated against the fields' types (msgspec, in C: record decodes every verdict of the line).

        A field this version does not know is ignored, so a newer worker's verdicts are still recorded;
        a known field with a wrong type or value is refused, naming the field (VerdictError)."""
        try:
            return _VERDICT.decode(raw)
        except msgspec.DecodeError as exc:
            raise VerdictError(f"verdict: {_decode_problem(exc)}", peek_identity(raw)) from None

    @classmethod
    def many_from_bytes(cls, raw: bytes) -> tuple[list[Verdict], list[VerdictError]]:
        """The verdicts of a `verdict_batch` message, and what is wrong with each item that fails validation
        (its neighbours are kept: one bad item does not cost the batch's other parts their verdicts)."""
        try:
            return _VERDICTS.decode(raw), []
        except msgspec.ValidationError:
            pass  # one item or more is bad: decode them one by one
        except msgspec.DecodeError as exc:
            raise MessageError(f"verdict batch: {_decode_problem(exc)}") from None
        try:
            items = _RAW_ITEMS.decode(raw)
        except msgspec.DecodeError as exc:
            raise MessageError(f"verdict batch: {_decode_problem(exc)}") from None
        good, errors = [], []
        for i, item in enumerate(items):
            try:
                good.append(cls.from_bytes(item))
            except VerdictError as exc:
                errors.append(VerdictError(f"verdict batch: item {i}: {exc}", exc.identity))
        return good, errors

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
    t_ns: Count = field(default_factory=now_ns)

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Alarm:
        return _decoded(_ALARM, raw, "alarm")


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
        return _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> OperatorAction:
        return _decoded(_ACTION, raw, "action")


@dataclass(frozen=True)
class CameraCommand:
    """A request on a camera's control socket; `trigger` takes one frame now (software trigger)."""

    cmd: Literal["trigger"]
    part_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None  # generated when absent

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CameraCommand:
        return _decoded(_COMMAND, raw, "camera command")


@dataclass(frozen=True)
class CameraReply:
    """acquire's answer on the control socket: the frame a trigger produced, or why it could not."""

    ok: bool
    seq: Count | None = None
    part_id: str | None = None
    error: str | None = None

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CameraReply:
        return _decoded(_REPLY, raw, "camera reply")


_HEADER = msgspec.json.Decoder(FrameHeader)
_ENCODER = msgspec.json.Encoder()
_VERDICT = msgspec.json.Decoder(Verdict)  # unknown fields are ignored: a newer sender stays readable
_VERDICTS = msgspec.json.Decoder(list[Verdict])
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_SLOT_RELEASE = msgspec.json.Decoder(SlotRelease)
_ALARM = msgspec.json.Decoder(Alarm)
_ACTION = msgspec.json.Decoder(OperatorAction)
_COMMAND = msgspec.json.Decoder(CameraCommand)
_REPLY = msgspec.json.Decoder(CameraReply)
_T = TypeVar("_T")


def _decoded(decoder: msgspec.json.Decoder[_T], raw: bytes, what: str) -> _T:
    """A control-plane message validated by msgspec; the error names the field, e.g.
    ``alarm: Expected `str`, got `int` - at `$.kind` ``."""
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise MessageError(f"{what}: {_decode_problem(exc)}") from None


def _decode_problem(exc: msgspec.DecodeError) -> str:
    """msgspec's text names the field (`... - at `$.seq``); a syntax error says so."""
    return str(exc) if isinstance(exc, msgspec.ValidationError) else f"not valid JSON ({exc})"


def encode_verdict_batch(verdicts: Sequence[Verdict]) -> bytes:
    """A `verdict_batch` message body (infer -> record); `Verdict.many_from_bytes` reads it."""
    return orjson.dumps(verdicts, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def encode_verdict_group(columns: tuple[str, ...], rows: list[tuple[Any, ...]], json_columns: tuple[str, ...],
                         commit_id: int, t_committed_ns: int, event_ms: float) -> bytes:
    """A `verdicts` event: the rows of one group commit as the store has them, column-wise.

    `json_columns` are JSON texts in the rows (sent as text: record never re-parses them); the event is
    published once the group is committed, `event_ms` after its commit.
    """
    return orjson.dumps({"commit_id": commit_id, "t_committed_ns": t_committed_ns, "event_ms": event_ms,
                         "columns": columns, "json_columns": json_columns, "rows": rows})


def decode_verdict_group(raw: bytes, json_columns: bool = True) -> list[dict[str, Any]]:
    """One dict per verdict of a `verdicts` event, as the REST API shows a row, plus the commit's stage
    times (`t_committed_ns`, `record_ms`: decided -> committed, `event_ms`: committed -> published).
    `json_columns=False` leaves the JSON columns (reasons, probs, truth) as text, for a reader that
    only counts verdicts.

    A malformed event raises MessageError (a ValueError) naming what is wrong.
    """
    group = _load_json(raw, "verdicts event")
    try:
        columns, rows = group["columns"], group["rows"]
        parsed = group["json_columns"] if json_columns else ()
        stages = {"t_committed_ns": int(group["t_committed_ns"]), "event_ms": float(group["event_ms"])}
        out = []
        for values in rows:
            if len(values) != len(columns):
                raise MessageError(f"verdicts event: a row has {len(values)} values for {len(columns)} columns")
            row = dict(zip(columns, values, strict=True))
            for name in parsed:
                row[name] = orjson.loads(row[name]) if row[name] else None
            decided = row.get("t_decided_ns")
            row.update(stages, record_ms=(stages["t_committed_ns"] - decided) / 1e6 if decided else None)
            out.append(row)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise MessageError(f"verdicts event: {type(exc).__name__} {exc}") from None
    return out
