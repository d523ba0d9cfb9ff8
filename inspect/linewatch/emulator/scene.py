"""Emulator scene files (`cameras/scenes/*.yaml`): product, defects, camera effects, line, scenarios.

A scene describes what the emulated camera sees and how conditions change over time, so that drift
detection and fail-safes can be tested. Scene time is frame index / frame rate, so a scene replays
identically for a seed, at any speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from linewatch.config import _format_error, _Strict
from linewatch.paths import resolve

DEFECT_KINDS = ("scratch", "crack", "dent", "hole", "stain", "missing_feature")
DefectKind = Literal["scratch", "crack", "dent", "hole", "stain", "missing_feature"]


_DEFAULT_TYPES: tuple[DefectKind, ...] = ("scratch", "dent", "stain")


class SceneError(ValueError):
    """A scene file cannot be read; the text names the file and the field."""


class ProductSpec(_Strict):
    type: Literal["round_part", "metal_surface", "label"] = Field("round_part", description="Part type.")
    position_jitter: float = Field(0.06, ge=0, le=0.3, description="Part offset, as a share of the frame.")
    rotation_deg: float = Field(180.0, ge=0, le=180, description="Random rotation within +- this angle.")
    texture: float = Field(1.0, ge=0, le=5, description="Texture strength (1 = nominal).")


class DefectSpec(_Strict):
    rate: float = Field(0.2, ge=0, le=1, description="Share of parts with a defect.")
    types: list[DefectKind] = Field(default_factory=lambda: list(_DEFAULT_TYPES), min_length=1,
                                    description="Defect types drawn uniformly.")
    severity: tuple[float, float] = Field((0.5, 1.0), description="Severity range in [0, 1] (size, contrast).")

    @model_validator(mode="after")
    def _severity_ordered(self) -> DefectSpec:
        low, high = self.severity
        if not 0 <= low <= high <= 1:
            raise ValueError(f"severity must satisfy 0 <= low <= high <= 1, got [{low}, {high}]")
        return self


class CameraEffects(_Strict):
    pixel_format: Literal["Mono8", "RGB8", "BayerRG8"] = Field("Mono8", description="Sensor output format.")
    gain_db: float = Field(0.0, ge=0, le=36, description="Analogue gain.")
    full_well_e: float = Field(10000.0, gt=0, le=1e6, description="Electrons at full scale (shot noise).")
    read_noise_e: float = Field(10.0, ge=0, le=1000, description="Read noise in electrons.")
    defocus_px: float = Field(0.0, ge=0, le=20, description="Defocus blur sigma.")
    vignetting: float = Field(0.0, ge=0, le=0.9, description="Light lost in the corners.")
    distortion_k1: float = Field(0.0, ge=-0.5, le=0.5, description="Radial lens distortion (barrel < 0).")
    flicker: float = Field(0.0, ge=0, le=0.5, description="Lighting flicker amplitude (relative).")
    flicker_hz: float = Field(100.0, gt=0, le=1000, description="Flicker frequency (mains x2).")
    drift: float = Field(0.0, ge=0, le=0.5, description="Slow lighting drift amplitude (relative).")
    drift_period_s: float = Field(600.0, gt=0, description="Period of the slow drift.")
    dust: int = Field(0, ge=0, le=200, description="Dust specks on the lens (fixed for a seed).")
    drop_rate: float = Field(0.0, ge=0, le=0.5, description="Share of frames the camera drops.")
    incomplete_rate: float = Field(0.0, ge=0, le=0.5, description="Share of frames delivered incomplete.")


class LineSpec(_Strict):
    speed_mm_s: float = Field(0.0, ge=0, le=10_000, description="Conveyor speed (motion blur, encoder).")
    spacing_mm: float = Field(100.0, gt=0, le=10_000, description="Part pitch on the conveyor (encoder).")
    mm_per_px: float = Field(0.2, gt=0, le=100, description="Object size of one pixel.")


class Scenario(_Strict):
    """From `at_s`, over `over_s` seconds, move conditions to the values given (unset: unchanged)."""

    at_s: float = Field(0.0, ge=0, description="Scene time the change starts.")
    over_s: float = Field(0.0, ge=0, description="Ramp duration (0: a step, e.g. a camera bump).")
    lighting: float | None = Field(None, ge=0, le=3, description="Lighting factor reached (1 = nominal).")
    shift_px: tuple[float, float] | None = Field(None, description="View offset reached (camera bump).")
    defect_rate: float | None = Field(None, ge=0, le=1, description="Defect rate reached.")
    add_defect: DefectKind | None = Field(None, description="A defect type that appears from `at_s`.")
    add_defect_rate: float | None = Field(
        None, ge=0, le=1, description="Share of the parts without another defect that get `add_defect` (a new flaw "
        "on its own, e.g. a new supplier's material); unset: it joins the types drawn for defective parts.")


class Scene(_Strict):
    description: str = Field("", description="What this scene shows.")
    product: ProductSpec = Field(default_factory=ProductSpec, description="The part type.")
    defects: DefectSpec = Field(default_factory=DefectSpec, description="Defect injection.")
    camera: CameraEffects = Field(default_factory=CameraEffects, description="Camera and optics effects.")
    line: LineSpec = Field(default_factory=LineSpec, description="Conveyor (motion blur, encoder trigger).")
    scenarios: list[Scenario] = Field(default_factory=list, max_length=100, description="Changes over time.")

    @property
    def encoder_period_s(self) -> float | None:
        """Seconds between parts when an encoder triggers the camera (None: the line is not moving)."""
        return self.line.spacing_mm / self.line.speed_mm_s if self.line.speed_mm_s > 0 else None


@dataclass(frozen=True)
class Conditions:
    """The state of a scene at one instant."""

    lighting: float
    shift: tuple[float, float]
    defect_rate: float
    defect_types: tuple[str, ...]
    extra_defects: tuple[tuple[str, float], ...] = ()  # (type, share of otherwise good parts) on their own


def conditions_at(scene: Scene, t: float) -> Conditions:
    lighting, shift, rate = 1.0, (0.0, 0.0), scene.defects.rate
    types = list(scene.defects.types)
    extra: dict[str, float] = {}
    for sc in sorted(scene.scenarios, key=lambda s: s.at_s):
        if t < sc.at_s:
            continue
        k = 1.0 if sc.over_s == 0 else min(1.0, (t - sc.at_s) / sc.over_s)
        if sc.lighting is not None:
            lighting += (sc.lighting - lighting) * k
        if sc.shift_px is not None:
            shift = (shift[0] + (sc.shift_px[0] - shift[0]) * k, shift[1] + (sc.shift_px[1] - shift[1]) * k)
        if sc.defect_rate is not None:
            rate += (sc.defect_rate - rate) * k
        if sc.add_defect is not None and sc.add_defect_rate is not None:
            extra[sc.add_defect] = sc.add_defect_rate
        elif sc.add_defect is not None and sc.add_defect not in types:
            types.append(sc.add_defect)
    return Conditions(lighting, shift, rate, tuple(types), tuple(extra.items()))


def load_scene(path: Path) -> Scene:
    path = resolve(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SceneError(f"scene {path}: cannot read file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SceneError(f"scene {path}: not valid YAML: {exc}") from None
    try:
        return Scene.model_validate(data or {})
    except ValidationError as exc:
        problems = [_format_error(e) for e in exc.errors()]
        raise SceneError(f"scene {path}: " + "; ".join(problems)) from None
