"""The frame contract (acquire -> infer, and its announcement to record): header, pixels, slot releases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import orjson

from linewatch.wire.codec import (
    DECODE_ERRORS,
    ENCODER,
    MAX_INT64,
    Count,
    MessageError,
    Positive,
    check_storable,
    decode_problem,
    decoded,
)

FRAME_VERSION = 2  # 2: a frame may travel as `[header]` with its pixels in a shared-memory slot
FRAME_VERSIONS = (1, 2)  # accepted on receipt; version 1 headers carry no slot
DTYPES = {"uint8": np.uint8, "uint16": np.uint16}
PixelDtype = Literal["uint8", "uint16"]


@dataclass(frozen=True)
class FrameHeader:
    """Header of a frame message (acquire -> infer) and of an announcement.

    Inline frames travel as `[header, pixels]`. Shared-memory frames travel as `[header]` alone: the
    pixels lie in slot `slot` of the camera's frame ring (`wire/frame_ring.py`), valid while the slot's
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
    t_capture_mono_ns: Count | None = None  # CLOCK_MONOTONIC at capture: deadlines and durations (`clock.py`)
    recipe: str | None = None  # the recipe in force when the part was captured (None: the line's configured one)

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.channels * np.dtype(DTYPES[self.dtype]).itemsize

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)

    @property
    def t_sent_mono_ns(self) -> int | None:
        """CLOCK_MONOTONIC when acquire sent it (its wall stamps are capture time plus monotonic time)."""
        if self.t_capture_mono_ns is None:
            return None
        return self.t_capture_mono_ns + (self.t_sent_ns - self.t_capture_ns)

    def to_bytes(self) -> bytes:
        return ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> FrameHeader:
        """Validated against the fields' types by msgspec, in C (every frame is decoded by a worker and
        announced to record); a wrong field is named, e.g. ``Expected `int` >= 1 - at `$.width` ``."""
        try:
            hdr = _HEADER.decode(raw)
        except DECODE_ERRORS as exc:
            raise MessageError(f"frame header: {decode_problem(exc)}") from None
        if hdr.v not in FRAME_VERSIONS:
            raise MessageError(f"frame header: unsupported version {hdr.v} (expected one of {FRAME_VERSIONS})")
        _check_slot(hdr)
        if hdr.truth is not None:  # it travels on in the part's verdict and row
            check_storable(hdr.truth, "frame header", "truth")
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
        return ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SlotRelease:
        return decoded(_SLOT_RELEASE, raw, "slot release")


def peek_identity(raw: bytes | memoryview | msgspec.Raw) -> tuple[str, str, int] | None:
    """(camera, stream, seq) from a header or verdict that failed validation, when those fields are readable."""
    try:
        d = orjson.loads(bytes(raw))  # refuses nesting past 1024 levels, where json.loads would recurse too deep
        cam, stream, seq = d["camera"], d["stream"], d["seq"]
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    if (isinstance(cam, str) and isinstance(stream, str) and isinstance(seq, int) and not isinstance(seq, bool)
            and 0 <= seq <= MAX_INT64):
        return cam, stream, seq
    return None


_HEADER = msgspec.json.Decoder(FrameHeader)
_SLOT_RELEASE = msgspec.json.Decoder(SlotRelease)
