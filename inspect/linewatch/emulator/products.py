"""Part types and defects the scene emulator renders, as radiance images (float32, 0-255).

Each product returns its image, a mask of where defects may sit, a tint (its colour in RGB) and its
features (boxes a `missing_feature` defect can remove). Defects change the radiance and return the
region they touched, which becomes the frame's truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from linewatch.emulator.scene import ProductSpec

Array = np.ndarray[Any, Any]


@dataclass
class Rendered:
    image: Array  # (H, W) float32 radiance
    mask: Array  # (H, W) bool: where the part is
    tint: tuple[float, float, float]
    features: list[tuple[int, int, int, int]] = field(default_factory=list)  # x, y, w, h
    background: float = 45.0


def render_product(spec: ProductSpec, w: int, h: int, rng: np.random.Generator,
                   shift: tuple[float, float]) -> Rendered:
    jitter = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1)]) * spec.position_jitter * min(w, h)
    centre = (w / 2 + jitter[0] + shift[0], h / 2 + jitter[1] + shift[1])
    angle = rng.uniform(-spec.rotation_deg, spec.rotation_deg)
    return _PRODUCTS[spec.type](spec, w, h, rng, centre, angle)


def _belt(w: int, h: int, rng: np.random.Generator, level: float) -> Array:
    blot = cv2.resize(rng.normal(0, 6, (8, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.asarray(blot + level, np.float32)


def _round_part(spec: ProductSpec, w: int, h: int, rng: np.random.Generator, c: tuple[float, float],
                angle: float) -> Rendered:
    scale = min(w, h)
    img = _belt(w, h, rng, 45.0)
    r = scale * rng.uniform(0.30, 0.34)
    level = rng.uniform(165, 190)
    yy, xx = np.ogrid[:h, :w]
    rad = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2)
    mask = rad < r
    rings = 4.0 * spec.texture * np.sin(rad * rng.uniform(0.5, 0.8))
    img = np.where(mask, level + rings, img).astype(np.float32)
    bore = round(r * 0.28)
    cv2.circle(img, (round(c[0]), round(c[1])), bore, level - 90.0, -1, lineType=cv2.LINE_AA)
    box = (round(c[0]) - bore, round(c[1]) - bore, 2 * bore + 1, 2 * bore + 1)
    return Rendered(img, mask & (rad > r * 0.4), (1.0, 0.97, 0.9), [box], level)


def _metal_surface(spec: ProductSpec, w: int, h: int, rng: np.random.Generator, c: tuple[float, float],
                   angle: float) -> Rendered:
    noise = rng.normal(0, 18 * spec.texture, (h, w)).astype(np.float32)
    length = max(3, min(w, h) // 20)
    kernel: Array = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    kernel = (kernel / max(float(kernel.sum()), 1e-6)).astype(np.float32)
    brushed = cv2.filter2D(noise, -1, kernel, borderType=cv2.BORDER_REFLECT)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    sheen = 20.0 * np.cos((xx - c[0]) / w * np.pi) * np.cos((yy - c[1]) / h * np.pi * 0.5)
    img = (rng.uniform(95, 115) + sheen + brushed).astype(np.float32)
    return Rendered(img, np.ones((h, w), bool), (0.95, 0.97, 1.0), [], 105.0)


def _label(spec: ProductSpec, w: int, h: int, rng: np.random.Generator, c: tuple[float, float],
           angle: float) -> Rendered:
    """A printed label (or PCB): bars of print, a code block and pads on a card."""
    scale = min(w, h)
    card_w, card_h = scale * 0.62, scale * 0.42
    canvas = np.full((h, w), 30.0, np.float32)
    mask = np.zeros((h, w), np.uint8)
    features: list[tuple[float, float, float, float]] = []
    x0, y0 = -card_w / 2, -card_h / 2
    rows = 4
    for i in range(rows):  # print lines of varying length
        length = card_w * rng.uniform(0.35, 0.6)
        features.append((x0 + card_w * 0.08, y0 + card_h * (0.15 + 0.14 * i), length, card_h * 0.07))
    features.append((x0 + card_w * 0.72, y0 + card_h * 0.15, card_w * 0.2, card_w * 0.2))  # code block
    for k in range(3):  # pads
        features.append((x0 + card_w * (0.1 + 0.3 * k), y0 + card_h * 0.78, card_h * 0.1, card_h * 0.1))
    rot = cv2.getRotationMatrix2D((0.0, 0.0), angle * 0.1, 1.0)  # labels sit nearly straight
    rot[:, 2] += np.asarray(c)

    def poly(x: float, y: float, bw: float, bh: float) -> Array:
        pts = np.array([[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]], np.float32)
        return (pts @ rot[:, :2].T + rot[:, 2]).astype(np.int32)

    card = poly(x0, y0, card_w, card_h)
    cv2.fillPoly(canvas, [card], float(rng.uniform(205, 230)), lineType=cv2.LINE_AA)
    cv2.fillPoly(mask, [card], 1)
    ink = float(rng.uniform(25, 45))
    boxes = []
    for fx, fy, fw, fh in features:
        p = poly(fx, fy, fw, fh)
        cv2.fillPoly(canvas, [p], ink, lineType=cv2.LINE_AA)
        bx, by, bw, bh = cv2.boundingRect(p)
        boxes.append((bx, by, bw, bh))
    grain = rng.normal(0, 3 * spec.texture, (h, w)).astype(np.float32)
    return Rendered(canvas + grain, mask.astype(bool), (1.0, 0.98, 0.92), boxes, 218.0)


_PRODUCTS = {"round_part": _round_part, "metal_surface": _metal_surface, "label": _label}


def inject_defect(r: Rendered, kind: str, severity: float, rng: np.random.Generator) -> list[int] | None:
    """Draw defect `kind` into `r.image` in place; the region [x, y, w, h] it touched (None: nowhere)."""
    h, w = r.image.shape
    scale = min(w, h)
    if kind == "missing_feature":
        if not r.features:
            kind = "hole"  # a part without features can only lose material
        else:
            x, y, bw, bh = r.features[int(rng.integers(len(r.features)))]
            x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + bw), min(h, y + bh)
            if x1 <= x0 or y1 <= y0:
                return None
            r.image[y0:y1, x0:x1] = r.background + rng.normal(0, 2, (y1 - y0, x1 - x0))
            return [x0, y0, x1 - x0, y1 - y0]
    ys, xs = np.nonzero(r.mask[::4, ::4])
    if len(xs) == 0:
        return None
    i = int(rng.integers(len(xs)))
    cx, cy = int(xs[i]) * 4, int(ys[i]) * 4
    size = scale * (0.02 + 0.04 * severity)
    contrast = 50 + 60 * severity
    m = np.zeros((h, w), np.float32)
    if kind == "scratch":
        a = rng.uniform(0, np.pi)
        d = size * 2.0 * np.array([np.cos(a), np.sin(a)])
        cv2.line(m, (round(cx - d[0]), round(cy - d[1])), (round(cx + d[0]), round(cy + d[1])), 1.0,
                 max(1, round(scale / 150)), cv2.LINE_AA)
        r.image -= m * contrast
    elif kind == "crack":
        pts = [np.array([cx, cy], float)]
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(8):
            heading += rng.normal(0, 0.6)
            pts.append(pts[-1] + size * 0.5 * np.array([np.cos(heading), np.sin(heading)]))
        cv2.polylines(m, [np.array(pts, np.int32)], False, 1.0, 1, cv2.LINE_AA)
        r.image -= m * contrast * 1.2
    elif kind == "dent":
        rad = max(2, round(size / 2))
        cv2.circle(m, (cx, cy), rad, 1.0, -1, cv2.LINE_AA)
        r.image -= m * contrast
        rim = np.zeros_like(m)
        cv2.circle(rim, (cx - rad // 3, cy - rad // 3), rad, 1.0, max(1, rad // 4), cv2.LINE_AA)
        r.image += rim * contrast * 0.3
        m = np.maximum(m, rim)
    elif kind == "hole":
        cv2.circle(m, (cx, cy), max(2, round(size / 2)), 1.0, -1, cv2.LINE_AA)
        r.image[:] = r.image * (1 - m) + 8.0 * m
    else:  # stain
        cv2.circle(m, (cx, cy), max(3, round(size)), 1.0, -1, cv2.LINE_AA)
        m = cv2.GaussianBlur(m, (0, 0), size / 3)
        m[m < 0.02] = 0  # no invisible tails outside the region the truth names
        r.image -= m * contrast * 0.7
    ys, xs = np.nonzero(m > 0)
    if len(xs) == 0:
        return None
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
