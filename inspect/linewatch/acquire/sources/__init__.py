"""Camera sources behind one narrow interface, chosen by the `type` key of a camera's source.

A source hands out frames it owns (already copied out of any driver buffer and converted to the
line's pixel format), with the camera's frame id and timestamp when it has them and, for the
emulator and labelled replays, the ground truth. Frames the camera lost or delivered incomplete
are reported (`skipped_incomplete`, gaps in `frame_id`) so that acquire records each one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from linewatch.config import CameraConfig

# Where a source may write its next frame (shape in the line's layout -> a free frame ring slot, or None):
# the source's one copy (conversion out of the driver buffer) then lands where the workers read it.
FrameBuffers = Callable[[tuple[int, ...]], np.ndarray | None]


class SourceError(Exception):
    """A source cannot be opened or used as configured; the text names the camera and the problem."""


class CameraLost(SourceError):
    """The camera stopped answering (cable pulled, power cycled); acquire alarms and reconnects."""


class SourceEnded(SourceError):
    """A finite source (a replay without loop) has no more frames."""


@dataclass(frozen=True)
class Grabbed:
    pixels: np.ndarray
    pixel_format: str
    truth: dict[str, Any] | None = None
    frame_id: int | None = None  # the camera's frame counter; a gap means frames were lost on the way
    timestamp_ns: int | None = None  # the camera's clock, when it has one
    skipped_incomplete: int = 0  # incomplete buffers discarded since the previous frame


class FrameSource(Protocol):
    """What acquire needs from a camera.

    `paced_by_device`: True when `grab` waits for the camera (its frame rate or a trigger), False
    when acquire paces a source that renders on demand. `grab` returns None when no frame came
    within `timeout_s` (normal while waiting for a trigger) and raises CameraLost when the camera is
    gone; `reconnect` opens it again (raising CameraLost while it is still away).
    """

    paced_by_device: bool

    def grab(self, timeout_s: float) -> Grabbed | None: ...
    def trigger(self) -> None: ...
    def reconnect(self) -> None: ...
    def close(self) -> None: ...


def open_source(cam: CameraConfig, into: FrameBuffers | None = None) -> FrameSource:
    """The source for `cam`, opened and ready to grab; sources that convert pixels write them `into`."""
    if cam.source.type == "emulator":
        from linewatch.acquire.sources.emulated import EmulatorCamera

        return EmulatorCamera(cam, into)
    if cam.source.type == "genicam":
        from linewatch.acquire.sources.genicam import GenicamCamera

        return GenicamCamera(cam, into)
    if cam.source.type == "replay":
        from linewatch.acquire.sources.replay import ReplayCamera

        return ReplayCamera(cam)
    raise SourceError(f"cameras[{cam.name}].source.type: unknown source {cam.source.type!r}")
