"""Replay: a folder of images (PNG/JPEG/TIFF/BMP) or a video file as a camera, in order or looped.

Labels come from a manifest when present (`manifest.jsonl`, one `{"file": ..., "truth": {...}}`
per line, as `linewatch emulate` writes it). acquire paces replay at the camera's `fps`, or takes
the next image on each software trigger.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.acquire.sources import Grabbed, SourceEnded, SourceError
from linewatch.config import CameraConfig, ReplaySource
from linewatch.paths import resolve
from linewatch.pixels import to_line_format

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
MANIFEST = "manifest.jsonl"
# A looped folder keeps its frames decoded up to this many bytes: a camera's frame is ready when it is
# triggered, not decoded from disk again on each round (a 256² PNG took about half a millisecond).
KEEP_DECODED_BYTES = 256 << 20


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """file name -> truth; a malformed line is an error naming the file and line."""
    truths: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            truths[str(entry["file"])] = dict(entry["truth"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"manifest {path}:{n}: needs {{'file': ..., 'truth': {{...}}}} ({exc})") from None
    return truths


class ReplayCamera:
    def __init__(self, cam: CameraConfig):
        assert isinstance(cam.source, ReplaySource)
        self.cam, self.src = cam, cam.source
        if cam.trigger == "hardware":
            raise SourceError(f"camera {cam.name}: a replay has no hardware trigger (use free_run or software)")
        self.paced_by_device = cam.trigger == "software"
        path = resolve(self.src.path)
        self._files: list[Path] = []
        self._video: cv2.VideoCapture | None = None
        if path.is_dir():
            self._files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise SourceError(f"camera {cam.name}: replay folder {path} has no PNG/JPEG/TIFF/BMP images")
        elif path.is_file():
            self._video = cv2.VideoCapture(str(path))
            if not self._video.isOpened():
                raise SourceError(f"camera {cam.name}: {path} is not a video file OpenCV can read")
        else:
            raise SourceError(f"camera {cam.name}: replay path {path} does not exist")
        manifest = self.src.manifest or (path / MANIFEST if path.is_dir() else path.with_suffix(".jsonl"))
        self._truth = read_manifest(manifest) if manifest.is_file() else {}
        self._n = 0
        self._pending = threading.Semaphore(0)
        self._decoded: dict[int, tuple[str, np.ndarray]] = {}  # a looped folder's frames, as the line takes them
        self._decoded_bytes = 0

    def grab(self, timeout_s: float) -> Grabbed | None:
        if self.cam.trigger == "software" and not self._pending.acquire(timeout=timeout_s):
            return None
        index = self._n % len(self._files) if self._files else -1
        if index in self._decoded:
            name, pixels = self._decoded[index]
        else:
            name, img = self._next()
            if img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # OpenCV reads BGR
            fmt = "Mono8" if img.ndim == 2 else "RGB8"
            pixels = img if fmt == self.cam.pixel_format else to_line_format(img, fmt, self.cam.pixel_format)
            pixels = np.ascontiguousarray(pixels)
            if self._files and self.src.loop and self._decoded_bytes + pixels.nbytes <= KEEP_DECODED_BYTES:
                pixels.flags.writeable = False  # handed out again on every round
                self._decoded[index] = (name, pixels)
                self._decoded_bytes += pixels.nbytes
        self._n += 1
        return Grabbed(pixels, self.cam.pixel_format, self._truth.get(name), frame_id=self._n)

    def _next(self) -> tuple[str, np.ndarray]:
        if self._video is not None:
            ok, frame = self._video.read()
            if not ok and self.src.loop and self._n:
                self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self._video.read()
            if not ok:
                raise SourceEnded(f"camera {self.cam.name}: video {self.src.path} ended")
            return f"{self._n}", frame
        if self._n >= len(self._files) and not self.src.loop:
            raise SourceEnded(f"camera {self.cam.name}: replay folder {self.src.path} ended")
        path = self._files[self._n % len(self._files)]
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None or img.dtype != np.uint8 or img.ndim not in (2, 3):
            raise SourceError(f"camera {self.cam.name}: {path} is not an 8-bit image OpenCV can read")
        if img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        return path.name, img

    def trigger(self) -> None:
        """In software mode each trigger replays the next image."""
        if self.cam.trigger != "software":
            raise SourceError(f"camera {self.cam.name} is in {self.cam.trigger} mode, not software trigger")
        self._pending.release()

    def reconnect(self) -> None:
        """A replay never goes away."""

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
