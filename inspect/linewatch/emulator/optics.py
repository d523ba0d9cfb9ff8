"""The emulated camera between the scene's radiance and the sensor's pixels.

Lighting (flicker, slow drift, scenario changes), lens (vignetting, distortion, defocus, dust),
motion blur from line speed during the exposure, then the sensor: exposure and gain in electrons
with shot and read noise, quantised to Mono8, RGB8 or a Bayer mosaic. Maps that do not change from
frame to frame are computed once.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from linewatch.emulator.scene import CameraEffects, LineSpec
from linewatch.pixels import mosaic

Array = np.ndarray[Any, Any]
NOMINAL_EXPOSURE_US = 5000.0  # exposure at which a radiance of 255 fills the well


class CameraModel:
    def __init__(self, fx: CameraEffects, line: LineSpec, width: int, height: int, seed: int,
                 exposure_us: float):
        self.fx, self.w, self.h = fx, width, height
        self.exposure = exposure_us / NOMINAL_EXPOSURE_US
        self.gain = 10 ** (fx.gain_db / 20)
        self.blur_px = line.speed_mm_s * exposure_us * 1e-6 / line.mm_per_px
        yy, xx = np.mgrid[:height, :width].astype(np.float32)
        nx, ny = (xx - width / 2) / (width / 2), (yy - height / 2) / (height / 2)
        r2 = nx * nx + ny * ny
        self.vignette: Array | None = (1 - fx.vignetting * np.clip(r2 / 2, 0, 1)) if fx.vignetting else None
        self.maps: tuple[Array, Array] | None = None
        if fx.distortion_k1:
            k = 1 + fx.distortion_k1 * r2
            self.maps = (nx * k * (width / 2) + width / 2, ny * k * (height / 2) + height / 2)
        self.dust: Array | None = None
        if fx.dust:
            rng = np.random.default_rng([seed, 7919])
            d = np.zeros((height, width), np.float32)
            for _ in range(fx.dust):
                pos = (int(rng.integers(width)), int(rng.integers(height)))
                cv2.circle(d, pos, int(rng.integers(2, max(3, min(width, height) // 60))), float(rng.uniform(0.2, 0.5)),
                           -1, cv2.LINE_AA)
            self.dust = 1 - cv2.GaussianBlur(d, (0, 0), max(1.0, min(width, height) / 200))

    def expose(self, radiance: Array, tint: tuple[float, float, float], lighting: float, t: float,
               rng: np.random.Generator) -> Array:
        """Sensor output (uint8) for a radiance image (float32, 0-255) at scene time `t`."""
        fx = self.fx
        light = lighting * (1 + fx.flicker * math.sin(2 * math.pi * fx.flicker_hz * t + 0.3))
        light *= 1 + fx.drift * math.sin(2 * math.pi * t / fx.drift_period_s)
        img: Array = radiance * np.float32(light)
        if self.vignette is not None:
            img *= self.vignette
        if self.maps is not None:
            img = cv2.remap(img, self.maps[0], self.maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if fx.defocus_px > 0:
            img = cv2.GaussianBlur(img, (0, 0), fx.defocus_px)
        if self.blur_px >= 1:
            n = round(self.blur_px)
            img = cv2.blur(img, (n, 1))
        if self.dust is not None:
            img *= self.dust
        if fx.pixel_format != "Mono8":
            img = img[..., None] * np.asarray(tint, np.float32)
            if fx.pixel_format.startswith("Bayer"):
                img = mosaic(img, fx.pixel_format)
        return self._sensor(img, rng)

    def _sensor(self, img: Array, rng: np.random.Generator) -> Array:
        per_dn = np.float32(self.fx.full_well_e / 255.0)
        electrons: Array = np.maximum(img * np.float32(self.exposure * per_dn), 0)
        noise = np.asarray(rng.standard_normal(img.shape, dtype=np.float32))
        sigma: Array = np.sqrt(electrons + np.float32(self.fx.read_noise_e ** 2))
        electrons += noise * sigma
        dn: Array = electrons * np.float32(self.gain / per_dn)
        out: Array = np.clip(dn + 0.5, 0, 255).astype(np.uint8)
        return out
