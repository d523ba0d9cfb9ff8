"""The image archive beside the database: kept frames (PNG or JPEG) and the live view per camera.

Encoding runs on a writer thread so record's commit loop never waits on a codec or the disk; the
decision to keep an image (and its path on the row) is taken synchronously, before the row commits.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("images")
IMAGES_DIR = "images"
LIVE_DIR = "live"
EXTENSIONS = {"png": "png", "jpeg": "jpg"}


def image_relpath(camera: str, stream: str, seq: int, final: str, fmt: str = "png") -> str:
    return f"{IMAGES_DIR}/{camera}/{stream}/{seq:09d}-{final}.{EXTENSIONS[fmt]}"


def live_path(data_dir: Path, camera: str) -> Path:
    return data_dir / LIVE_DIR / f"{camera}.jpg"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _encode(pixels: np.ndarray, ext: str, params: list[int]) -> bytes:
    img = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise ValueError(f"cannot encode a {pixels.shape} {pixels.dtype} frame as {ext}")
    return buf.tobytes()


def save_kept(data_dir: Path, relpath: str, pixels: np.ndarray, quality: int = 90) -> None:
    """Lossless PNG, or JPEG at `quality` when the path ends in .jpg."""
    if relpath.endswith(".jpg"):
        data = _encode(pixels, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        data = _encode(pixels, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])
    _write_atomic(data_dir / relpath, data)


def save_live(data_dir: Path, camera: str, pixels: np.ndarray) -> None:
    _write_atomic(live_path(data_dir, camera), _encode(pixels, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 85]))


@dataclass(frozen=True)
class _Job:
    relpath: str | None  # None: the live view of `camera`
    camera: str
    pixels: np.ndarray


class ImageWriter:
    """A bounded queue of images and one thread that encodes and writes them."""

    def __init__(self, data_dir: Path, quality: int, capacity: int):
        self.data_dir, self.quality = data_dir, quality
        self._jobs: queue.Queue[_Job | None] = queue.Queue(capacity)
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="image-writer", daemon=True)
        self._thread.start()

    def submit(self, relpath: str | None, camera: str, pixels: np.ndarray) -> bool:
        """Queue an image; False when the queue is full (the caller decides what that means)."""
        try:
            self._jobs.put_nowait(_Job(relpath, camera, pixels))
            return True
        except queue.Full:
            return False

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""
        self._jobs.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if job.relpath is None:
                    save_live(self.data_dir, job.camera, job.pixels)
                else:
                    save_kept(self.data_dir, job.relpath, job.pixels, self.quality)
            except (OSError, ValueError, cv2.error) as exc:  # a full disk or odd frame must not stop the writer
                self.failed += 1
                log.error("image %s not written: %s", job.relpath or f"live/{job.camera}", exc)
