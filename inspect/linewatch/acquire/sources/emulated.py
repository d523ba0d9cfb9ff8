"""The emulator as a camera: the default round part, or a scene file, with the camera's trigger modes.

free_run: acquire paces it at `fps`. software: `trigger()` queues a frame that `grab` then renders.
hardware: a simulated encoder triggers a frame every part pitch (scene `line.spacing_mm /
speed_mm_s`, or 1 / fps when the scene's line does not move). Frames a scene drops leave a gap in
`frame_id`; incomplete ones are counted in `skipped_incomplete`, as a GenTL camera reports them.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from linewatch.acquire.sources import FrameBuffers, Grabbed, SourceError
from linewatch.config import CameraConfig, EmulatorSource
from linewatch.emulator.parts import PartEmulator, SceneEmulator
from linewatch.emulator.scene import load_scene
from linewatch.pixels import line_shape, to_line_format


class EmulatorCamera:
    def __init__(self, cam: CameraConfig, into: FrameBuffers | None = None):
        assert isinstance(cam.source, EmulatorSource)
        src = cam.source
        self.cam, self.into = cam, into
        self._part: PartEmulator | None = None
        self._scene: SceneEmulator | None = None
        if src.scene is None:
            self._part = PartEmulator(cam.width, cam.height, seed=src.seed, defect_rate=src.defect_rate,
                                      exposure_us=cam.exposure_us)
            period = 1.0 / cam.fps
        else:
            self._scene = SceneEmulator(load_scene(src.scene), cam.width, cam.height, seed=src.seed, fps=cam.fps,
                                        exposure_us=cam.exposure_us)
            period = self._scene.period
        self.encoder_period = period
        self.paced_by_device = cam.trigger != "free_run"
        self._n = 0
        self._pending = threading.Semaphore(0)
        self._next_encoder = time.monotonic()

    def grab(self, timeout_s: float) -> Grabbed | None:
        if self.cam.trigger == "software" and not self._pending.acquire(timeout=timeout_s):
            return None
        if self.cam.trigger == "hardware":
            delay = self._next_encoder - time.monotonic()
            if delay > timeout_s:
                time.sleep(timeout_s)
                return None
            if delay > 0:
                time.sleep(delay)
            self._next_encoder = max(self._next_encoder + self.encoder_period, time.monotonic() - self.encoder_period)
        return self._render()

    def _render(self) -> Grabbed:
        if self._part is not None:
            part = self._part.render(self._n)
            self._n += 1
            pixels = part.pixels if self.cam.pixel_format == "Mono8" else to_line_format(
                part.pixels, "Mono8", self.cam.pixel_format, self._slot(part.pixels.shape))
            return Grabbed(pixels, self.cam.pixel_format, part.truth, frame_id=self._n)
        assert self._scene is not None
        skipped = 0
        while True:  # like a GenTL stream: dropped frames leave an id gap, torn ones are counted
            frame = self._scene.render(self._n)
            self._n += 1
            if frame.pixels is None:
                continue
            if frame.incomplete:
                skipped += 1
                continue
            pixels = to_line_format(frame.pixels, frame.pixel_format, self.cam.pixel_format,
                                    self._slot(frame.pixels.shape))
            return Grabbed(pixels, self.cam.pixel_format, frame.truth, frame_id=self._n,
                           timestamp_ns=round(frame.truth["t_scene_s"] * 1e9), skipped_incomplete=skipped)

    def _slot(self, rendered: tuple[int, ...]) -> np.ndarray | None:
        """The frame ring slot the conversion writes into, when acquire offers one."""
        return self.into(line_shape(self.cam.pixel_format, rendered[1], rendered[0])) if self.into else None

    def trigger(self) -> None:
        if self.cam.trigger != "software":
            raise SourceError(f"camera {self.cam.name} is in {self.cam.trigger} mode, not software trigger")
        self._pending.release()

    def reconnect(self) -> None:
        """Nothing to reconnect: an emulator never goes away."""

    def close(self) -> None:
        pass
