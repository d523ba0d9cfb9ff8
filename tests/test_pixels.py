"""GenICam pixel formats to the line's layout: every supported format, row padding, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from linewatch.pixels import FORMATS, PixelFormatError, buffer_view, mosaic, to_line_format

RGB = (200, 60, 20)  # a saturated orange, so a swapped channel order shows


def _flat(fmt: str, w: int, h: int, pad: int) -> np.ndarray:
    """A driver buffer of format `fmt` holding the colour RGB everywhere, rows padded by `pad` bytes."""
    dtype, _, bits = FORMATS[fmt]
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = RGB
    if fmt.startswith("Bayer"):
        img = mosaic(rgb, fmt)
    elif fmt.startswith("Mono"):
        gray = round(0.299 * RGB[0] + 0.587 * RGB[1] + 0.114 * RGB[2])
        img = np.full((h, w), gray * ((1 << bits) - 1) // 255, dtype)
    else:
        order = {"RGB8": (0, 1, 2), "BGR8": (2, 1, 0), "RGBa8": (0, 1, 2, 1), "BGRa8": (2, 1, 0, 1)}[fmt]
        img = np.stack([rgb[..., i] if k < 3 else np.full((h, w), 255, np.uint8) for k, i in enumerate(order)], -1)
    rows = img.reshape(h, -1).view(np.uint8)
    return np.hstack([rows, np.full((h, pad), 77, np.uint8)]).reshape(-1)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("target", ["Mono8", "RGB8", "BGR8"])
def test_every_format_converts_with_padding(fmt: str, target: str) -> None:
    w, h, pad = 10, 6, 4
    view = buffer_view(_flat(fmt, w, h, pad), fmt, w, h, pad)
    out = to_line_format(view, fmt, target)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.shape == ((h, w) if target == "Mono8" else (h, w, 3))
    centre = out[2:4, 4:6].reshape(-1, 1 if target == "Mono8" else 3).mean(axis=0)
    gray = 0.299 * RGB[0] + 0.587 * RGB[1] + 0.114 * RGB[2]
    if target == "Mono8":
        assert abs(centre[0] - gray) <= 3, (fmt, centre)
    elif fmt.startswith("Mono"):
        assert np.allclose(centre, gray, atol=3), (fmt, centre)
    else:
        want = RGB if target == "RGB8" else RGB[::-1]
        assert np.allclose(centre, want, atol=3), (fmt, target, centre)


def test_the_conversion_is_a_copy_not_a_view() -> None:
    flat = _flat("RGB8", 8, 4, 0)[: 8 * 4].copy()  # 32 bytes: an 8x4 Mono8 frame of value 200/60/20
    out = to_line_format(buffer_view(flat, "Mono8", 8, 4), "Mono8", "Mono8")
    flat[:] = 0  # the driver re-uses its buffer
    assert out.min() > 0


def test_unknown_format_and_short_buffer_are_clear_errors() -> None:
    with pytest.raises(PixelFormatError, match="YUV422_8"):
        buffer_view(np.zeros(100, np.uint8), "YUV422_8", 10, 5)
    with pytest.raises(PixelFormatError, match="too small for 10x5"):
        buffer_view(np.zeros(40, np.uint8), "Mono8", 10, 5)
    with pytest.raises(PixelFormatError, match="target format"):
        to_line_format(np.zeros((2, 2), np.uint8), "Mono8", "Mono16")
