"""Seedable generators of synthetic parts with ground truth.

`PartEmulator` is the default: a machined round part on a conveyor belt, seen by a Mono8 camera; a
share of parts carries a defect (dent, scratch or stain). The reference model was trained on its
pixels, so they never change. `SceneEmulator` renders what a scene file describes (products,
defects, camera effects, scenarios). Frame `seq` of seed `s` is always the same image, so training
data, tests and the live line agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from linewatch.emulator.optics import CameraModel
from linewatch.emulator.products import inject_defect, render_product
from linewatch.emulator.scene import DEFECT_KINDS, Scene, conditions_at

DEFECT_TYPES = ("dent", "scratch", "stain")


@dataclass(frozen=True)
class RenderedPart:
    pixels: np.ndarray  # (H, W) uint8
    truth: dict[str, Any]  # label good|defect, type, region [x, y, w, h]


class PartEmulator:
    """Renders part `seq` deterministically from (seed, seq)."""

    def __init__(self, width: int = 256, height: int = 256, seed: int = 0, defect_rate: float = 0.2,
                 exposure_us: float = 5000.0):
        self.width, self.height = width, height
        self.seed, self.defect_rate = seed, defect_rate
        self.gain = exposure_us / 5000.0

    def render(self, seq: int) -> RenderedPart:
        rng = np.random.default_rng([self.seed, seq])
        w, h = self.width, self.height
        scale = min(w, h)
        img: np.ndarray[Any, Any] = np.empty((h, w), np.float32)
        img[:] = 45 + rng.normal(0, 1.0)
        # Belt texture: low-frequency blotches plus sensor noise.
        blot = cv2.resize(rng.normal(0, 6, (8, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        img += blot
        cx = w / 2 + rng.uniform(-0.06, 0.06) * scale
        cy = h / 2 + rng.uniform(-0.06, 0.06) * scale
        r = scale * rng.uniform(0.30, 0.34)
        part = np.zeros((h, w), np.float32)
        level = rng.uniform(165, 190)
        cv2.circle(part, (round(cx), round(cy)), round(r), level, -1, lineType=cv2.LINE_AA)
        cv2.circle(part, (round(cx), round(cy)), round(r * 0.28), level - 90.0, -1, lineType=cv2.LINE_AA)
        # Machining rings: faint concentric texture.
        yy, xx = np.ogrid[:h, :w]
        rad = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        rings = 4.0 * np.sin(rad * rng.uniform(0.5, 0.8)) * (rad < r)
        img = np.where(part > 0, part + rings, img)

        truth: dict[str, Any] = {"label": "good", "type": None, "region": None}
        if rng.random() < self.defect_rate:
            kind = DEFECT_TYPES[int(rng.integers(len(DEFECT_TYPES)))]
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.45, 0.85) * r
            dx, dy = cx + dist * np.cos(ang), cy + dist * np.sin(ang)
            size = scale * rng.uniform(0.035, 0.06)
            mask: np.ndarray[Any, Any] = np.zeros((h, w), np.float32)
            if kind == "dent":
                cv2.circle(mask, (round(dx), round(dy)), max(2, round(size / 2)), 1.0, -1, cv2.LINE_AA)
                img -= mask * rng.uniform(70, 110)
            elif kind == "scratch":
                a2 = rng.uniform(0, np.pi)
                length = size * rng.uniform(2.5, 4.0)
                p1 = (round(dx - length * np.cos(a2) / 2), round(dy - length * np.sin(a2) / 2))
                p2 = (round(dx + length * np.cos(a2) / 2), round(dy + length * np.sin(a2) / 2))
                cv2.line(mask, p1, p2, 1.0, max(2, round(scale / 120)), cv2.LINE_AA)
                img -= mask * rng.uniform(70, 110)
            else:
                cv2.circle(mask, (round(dx), round(dy)), max(3, round(size)), 1.0, -1, cv2.LINE_AA)
                mask = cv2.GaussianBlur(mask, (0, 0), size / 3)
                img -= mask * rng.uniform(55, 80)
            ys, xs = np.nonzero(mask > 0.1)
            x0, y0 = int(xs.min()), int(ys.min())
            truth = {"label": "defect", "type": kind,
                     "region": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]}
        img = img * self.gain + rng.normal(0, 2.0, (h, w)).astype(np.float32)
        return RenderedPart(np.clip(img, 0, 255).astype(np.uint8), truth)


@dataclass(frozen=True)
class SceneFrame:
    pixels: np.ndarray | None  # sensor output in `pixel_format`; None when the camera dropped the frame
    pixel_format: str
    truth: dict[str, Any]
    incomplete: bool = False  # the camera delivered a torn buffer (the part is not inspectable)


class SceneEmulator:
    """Renders frame `seq` of a scene at scene time seq / fps (the encoder's part period when moving)."""

    def __init__(self, scene: Scene, width: int = 256, height: int = 256, seed: int = 0, fps: float = 20.0,
                 exposure_us: float = 5000.0):
        self.scene, self.width, self.height, self.seed = scene, width, height, seed
        self.period = scene.encoder_period_s or 1.0 / fps
        self.camera = CameraModel(scene.camera, scene.line, width, height, seed, exposure_us)

    def render(self, seq: int) -> SceneFrame:
        rng = np.random.default_rng([self.seed, seq, 1])
        t = seq * self.period
        cond = conditions_at(self.scene, t)
        fmt = self.scene.camera.pixel_format
        part = render_product(self.scene.product, self.width, self.height, rng, cond.shift)
        truth: dict[str, Any] = {"label": "good", "type": None, "severity": None, "region": None,
                                  "t_scene_s": round(t, 6)}
        if rng.random() < cond.defect_rate:
            kind = cond.defect_types[int(rng.integers(len(cond.defect_types)))]
            low, high = self.scene.defects.severity
            severity = float(rng.uniform(low, high))
            region = inject_defect(part, kind, severity, rng)
            if region is not None:
                truth = {**truth, "label": "defect", "type": kind, "severity": round(severity, 3), "region": region}
        for kind, share in cond.extra_defects:  # a new flaw on its own: drawn apart, the part is otherwise the same
            extra = np.random.default_rng([self.seed, seq, 2, DEFECT_KINDS.index(kind)])
            if truth["label"] == "good" and extra.random() < share:
                low, high = self.scene.defects.severity
                severity = float(extra.uniform(low, high))
                region = inject_defect(part, kind, severity, extra)
                if region is not None:
                    truth = {**truth, "label": "defect", "type": kind, "severity": round(severity, 3),
                             "region": region}
        fx = self.scene.camera
        fate = rng.random()
        if fate < fx.drop_rate:
            return SceneFrame(None, fmt, truth)
        pixels = self.camera.expose(part.image, part.tint, cond.lighting, t, rng)
        return SceneFrame(pixels, fmt, truth, incomplete=fate < fx.drop_rate + fx.incomplete_rate)
