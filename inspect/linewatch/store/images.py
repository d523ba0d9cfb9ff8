"""The image archive beside the database: kept frames (PNG or JPEG) and the live view per camera.

Encoding runs on a writer thread so record's commit loop never waits on a codec or the disk; the
decision to keep an image (and its path on the row) is taken synchronously, before the row commits.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.config.line import RecordConfig
from linewatch.store.disk import is_disk_full

log = logging.getLogger("images")
IMAGES_DIR = "images"
LIVE_DIR = "live"
EXTENSIONS = {"png": "png", "jpeg": "jpg"}



def archive_bytes(data_dir: Path) -> int:
    """Bytes of the kept-image archive (images, heatmaps), one stat a file; files removed meanwhile are skipped."""
    total = 0
    for folder, _, files in os.walk(data_dir / IMAGES_DIR):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return total

class ImagePolicy:
    """Which parts' images are kept, and when a camera's live view is refreshed: decided by the same rules
    in infer (which sends a verdict's pixels only when they are wanted) and record (which writes them).

    Every FAIL and REVIEW is kept, and every `pass_sample_every`-th PASS as a sample (not while the disk
    runs low); the live view shows at most `live_view_hz` frames a second per camera."""

    def __init__(self, rc: RecordConfig):
        self.pass_sample_every, self.live_view_hz = rc.pass_sample_every, rc.live_view_hz
        self._last_live: dict[str, float] = {}

    def keeps(self, final: str, seq: int, pass_samples: bool = True) -> bool:
        every = self.pass_sample_every
        return final != "PASS" or bool(pass_samples and every and seq % every == 0)

    def live_due(self, camera: str) -> bool:
        """True (and counted as shown) when the camera's live view is due a new frame."""
        now = time.monotonic()
        if not self.live_view_hz or now - self._last_live.get(camera, -1e9) < 1.0 / self.live_view_hz:
            return False
        self._last_live[camera] = now
        return True


def image_relpath(camera: str, stream: str, seq: int, final: str, fmt: str = "png") -> str:
    return f"{IMAGES_DIR}/{camera}/{stream}/{seq:09d}-{final}.{EXTENSIONS[fmt]}"


def heatmap_relpath(image_relpath: str) -> str:
    """The anomaly map kept beside a kept image (grey PNG at the model's map resolution)."""
    return image_relpath.rsplit(".", 1)[0] + ".heat.png"


def rgb8(image: np.ndarray) -> np.ndarray:
    """A frame (mono or RGB, 8 or 16 bits) as 8-bit RGB for drawing on."""
    if image.dtype != np.uint8:  # 16-bit frames: their top 8 bits
        image = (image.astype(np.uint32) * 255 // max(int(np.iinfo(image.dtype).max), 1)).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else np.ascontiguousarray(image[..., :3])


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image (mono or RGB) with the heatmap (uint8 or [0, 1] float, any size) blended over it, as RGB."""
    rgb = rgb8(image)
    h8 = heat if heat.dtype == np.uint8 else (np.clip(heat, 0, 1) * 255).astype(np.uint8)
    h8 = cv2.resize(h8, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap(h8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1 - alpha, colour, alpha, 0)


def draw_detections(rgb: np.ndarray, detections: list[dict[str, Any]] | None) -> np.ndarray:
    """Boxes (the row's `detections`: label, score, box x, y, width, height in frame pixels) drawn on an RGB image,
    each labelled with its class and score."""
    if not detections:
        return rgb
    out = np.ascontiguousarray(rgb.copy())
    thick = max(1, round(min(out.shape[:2]) / 200))
    for d in detections:
        x, y, w, h = (round(float(v)) for v in d["box"])
        cv2.rectangle(out, (x, y), (x + w, y + h), (255, 40, 40), thick)
        cv2.putText(out, f"{d['label']} {float(d['score']):.2f}", (x, max(10, y - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35 * thick, (255, 40, 40), thick, cv2.LINE_AA)
    return out


def load_overlay(data_dir: Path, image_relpath: str,
                 detections: list[dict[str, Any]] | None = None) -> np.ndarray | None:
    """A kept image (RGB) with what the model saw in it: its heatmap blended over it and its detection boxes;
    None when the image is gone or the model gave neither."""
    heat_path = data_dir / heatmap_relpath(image_relpath)
    heat = cv2.imread(str(heat_path), cv2.IMREAD_GRAYSCALE) if heat_path.is_file() else None
    if heat is None and not detections:
        return None
    pixels = cv2.imread(str(data_dir / image_relpath), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        return None
    rgb = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return draw_detections(heatmap_overlay(rgb, heat) if heat is not None else rgb8(rgb), detections)


def live_path(data_dir: Path, camera: str) -> Path:
    return data_dir / LIVE_DIR / f"{camera}.jpg"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a half-written file on a full disk would hold on to its blocks
        raise


def _encode(pixels: np.ndarray, ext: str, params: list[int]) -> bytes:
    img = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise ValueError(f"cannot encode a {pixels.shape} {pixels.dtype} frame as {ext}")
    return buf.tobytes()


#: Lossless PNG made fast: each row filtered against its left neighbour (SUB) and deflated by run-length only.
#: Against zlib level 1 with OpenCV's adaptive filters it encodes 256² emulator frames 2.3x and 300² ELPV cells
#: 1.7x faster, and the files come out a little smaller (benchmarks/store_throughput.py, `png`).
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
            cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def png_bytes(pixels: np.ndarray) -> bytes:
    """Lossless PNG, fast (`PNG_FAST`): kept images and heatmaps are written on the hot path's side."""
    return _encode(pixels, ".png", PNG_FAST)


def save_kept(data_dir: Path, relpath: str, pixels: np.ndarray, quality: int = 90) -> None:
    """Lossless PNG, or JPEG at `quality` when the path ends in .jpg."""
    if relpath.endswith(".jpg"):
        data = _encode(pixels, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        data = png_bytes(pixels)
    _write_atomic(data_dir / relpath, data)


def save_live(data_dir: Path, camera: str, pixels: np.ndarray) -> None:
    _write_atomic(live_path(data_dir, camera), _encode(pixels, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 85]))


@dataclass(frozen=True)
class _Job:
    relpath: str | None  # None: the live view of `camera`
    camera: str
    pixels: np.ndarray
    heatmap: bytes | None = None  # the anomaly map as PNG bytes (encoded by infer), kept beside the image


class ImageWriter:
    """A bounded queue of images and one thread that encodes and writes them."""

    def __init__(self, data_dir: Path, quality: int, capacity: int):
        self.data_dir, self.quality = data_dir, quality
        self._jobs: queue.Queue[_Job | None] = queue.Queue(capacity)
        self.failed = 0
        self.disk_full: str | None = None  # the error of the latest write refused for a full disk, for record
        self._thread = threading.Thread(target=self._run, name="image-writer", daemon=True)
        self._thread.start()

    def submit(self, relpath: str | None, camera: str, pixels: np.ndarray, heatmap: bytes | None = None) -> bool:
        """Queue an image (and its heatmap); False when the queue is full (the caller decides what that means)."""
        try:
            self._jobs.put_nowait(_Job(relpath, camera, pixels, heatmap))
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
                    if job.heatmap is not None:
                        _write_atomic(self.data_dir / heatmap_relpath(job.relpath), job.heatmap)
            except (OSError, ValueError, cv2.error) as exc:  # a full disk or odd frame must not stop the writer
                self.failed += 1
                if is_disk_full(exc):
                    self.disk_full = str(exc)
                log.error("image %s not written: %s", job.relpath or f"live/{job.camera}", exc)
