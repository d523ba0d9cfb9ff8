"""GenICam pixel formats to the layout the line sends (Mono8, RGB8 or BGR8), with cv2.

`to_line_format` reads a view of the driver's buffer (row padding stripped by striding, nothing
copied) and writes one new array: that conversion is the only copy on the way to ZeroMQ.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

# GenICam name -> (dtype, channels, significant bits)
FORMATS: dict[str, tuple[Any, int, int]] = {
    "Mono8": (np.uint8, 1, 8), "Mono10": (np.uint16, 1, 10), "Mono12": (np.uint16, 1, 12),
    "Mono16": (np.uint16, 1, 16), "RGB8": (np.uint8, 3, 8), "BGR8": (np.uint8, 3, 8),
    "RGBa8": (np.uint8, 4, 8), "BGRa8": (np.uint8, 4, 8),
    "BayerRG8": (np.uint8, 1, 8), "BayerBG8": (np.uint8, 1, 8), "BayerGB8": (np.uint8, 1, 8),
    "BayerGR8": (np.uint8, 1, 8),
}
_BAYER = {"BayerRG8": "RGGB", "BayerBG8": "BGGR", "BayerGB8": "GBRG", "BayerGR8": "GRBG"}
TARGETS = ("Mono8", "RGB8", "BGR8")


class PixelFormatError(ValueError):
    """A pixel format the line cannot convert, or a buffer that does not match its format."""


def buffer_view(data: np.ndarray, fmt: str, width: int, height: int, x_padding: int = 0) -> np.ndarray:
    """(H, W[, C]) view of a flat driver buffer whose rows may end in `x_padding` bytes."""
    if fmt not in FORMATS:
        raise PixelFormatError(f"pixel format {fmt!r} is not supported (supported: {', '.join(FORMATS)})")
    dtype, channels, _ = FORMATS[fmt]
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize + x_padding
    raw = data.view(np.uint8).reshape(-1)
    if raw.size < row_bytes * height:
        raise PixelFormatError(f"{fmt} buffer of {raw.size} bytes is too small for {width}x{height} "
                               f"(+{x_padding} padding bytes per row)")
    rows = raw[: row_bytes * height].reshape(height, row_bytes)[:, : width * channels * itemsize]
    view: np.ndarray = rows.view(dtype)
    return view.reshape(height, width) if channels == 1 else view.reshape(height, width, channels)


def line_shape(target: str, width: int, height: int) -> tuple[int, ...]:
    """Shape of a frame in the line's layout `target` (Mono8: (H, W), colour: (H, W, 3))."""
    return (height, width) if target == "Mono8" else (height, width, 3)


def to_line_format(view: np.ndarray, fmt: str, target: str, out: np.ndarray | None = None) -> np.ndarray:
    """A contiguous uint8 array in `target` layout from a view in GenICam format `fmt`: written into
    `out` when given (a frame ring slot, so the conversion is the only copy), else a new array."""
    if target not in TARGETS:
        raise PixelFormatError(f"target format {target!r} must be one of {TARGETS}")
    if fmt not in FORMATS:
        raise PixelFormatError(f"pixel format {fmt!r} is not supported (supported: {', '.join(FORMATS)})")
    bits = FORMATS[fmt][2]
    if bits > 8:  # Mono10/12/16 -> 8 bits: scale while converting, one output array
        if target == "Mono8":
            return cv2.convertScaleAbs(view, dst=out, alpha=255.0 / ((1 << bits) - 1))
        mono8 = cv2.convertScaleAbs(view, alpha=255.0 / ((1 << bits) - 1))
        return cv2.cvtColor(mono8, _GRAY_TO[target], dst=out)
    if fmt == target:
        if out is None:
            return np.array(view, copy=True, order="C")
        np.copyto(out, view)
        return out
    converted: np.ndarray = cv2.cvtColor(view, _code(fmt, target), dst=out)  # reads padded rows via strides
    return converted


_GRAY_TO = {"RGB8": cv2.COLOR_GRAY2RGB, "BGR8": cv2.COLOR_GRAY2BGR}


def _code(fmt: str, target: str) -> int:
    want = {"Mono8": "GRAY", "RGB8": "RGB", "BGR8": "BGR"}[target]
    if fmt in _BAYER:
        return int(getattr(cv2, f"COLOR_Bayer{_BAYER[fmt]}2{want}"))
    src = {"Mono8": "GRAY", "RGB8": "RGB", "BGR8": "BGR", "RGBa8": "RGBA", "BGRa8": "BGRA"}[fmt]
    return int(getattr(cv2, f"COLOR_{src}2{want}"))


def mosaic(rgb: np.ndarray, fmt: str) -> np.ndarray:
    """Sample an (H, W, 3) RGB image through a Bayer filter `fmt` (the emulator's colour sensor)."""
    pattern = _BAYER[fmt]
    out = np.empty(rgb.shape[:2], rgb.dtype)
    index = {"R": 0, "G": 1, "B": 2}
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, index[pattern[k]]]
    return out
