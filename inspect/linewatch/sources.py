"""Camera sources behind one narrow interface, chosen by the `type` key of a camera's source.

A source hands out frames it owns (already copied out of any driver buffer), with the pixel
format and, for the emulator, the ground truth. GenICam and replay sources plug in here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from linewatch.config import CameraConfig
from linewatch.emulator import PartEmulator


@dataclass(frozen=True)
class Grabbed:
    pixels: np.ndarray
    pixel_format: str
    truth: dict[str, Any] | None = None


class FrameSource(Protocol):
    def grab(self) -> Grabbed: ...
    def close(self) -> None: ...


class EmulatorCamera:
    """Renders part after part; `grab` returns the next part in the sequence."""

    def __init__(self, cam: CameraConfig):
        src = cam.source
        self._emu = PartEmulator(cam.width, cam.height, seed=src.seed, defect_rate=src.defect_rate,
                                 exposure_us=cam.exposure_us)
        self._n = 0

    def grab(self) -> Grabbed:
        part = self._emu.render(self._n)
        self._n += 1
        return Grabbed(part.pixels, "Mono8", part.truth)

    def close(self) -> None:
        pass


def open_source(cam: CameraConfig) -> FrameSource:
    if cam.source.type == "emulator":
        return EmulatorCamera(cam)
    raise ValueError(f"cameras[{cam.name}].source.type: unknown source {cam.source.type!r}")
