"""The image archive beside the database: kept frames (lossless PNG) and the live view per camera."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

IMAGES_DIR = "images"
LIVE_DIR = "live"


def image_relpath(camera: str, stream: str, seq: int, final: str) -> str:
    return f"{IMAGES_DIR}/{camera}/{stream}/{seq:09d}-{final}.png"


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


def save_kept(data_dir: Path, relpath: str, pixels: np.ndarray) -> None:
    _write_atomic(data_dir / relpath, _encode(pixels, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]))


def save_live(data_dir: Path, camera: str, pixels: np.ndarray) -> None:
    _write_atomic(live_path(data_dir, camera), _encode(pixels, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 85]))
