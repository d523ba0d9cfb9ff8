"""The fail-safe's rules: their parameters are hashed into every verdict's ruleset_hash."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from linewatch.config.base import _ordered_pair, _Strict

Verdict2 = Literal["FAIL", "REVIEW"]

class ExposureRuleConfig(_Strict):
    """Blank (lens cap, light off, flat) or saturated frames: the image cannot show a defect."""

    enabled: bool = Field(True, description="Check exposure before the model is trusted.")
    min_mean: float = Field(20.0, ge=0, le=255, description="Mean grey level below this is a dark/blank frame.")
    max_mean: float = Field(220.0, ge=0, le=255, description="Mean grey level above this is overexposed.")
    min_std: float = Field(8.0, ge=0, le=128, description="Grey-level std below this is a flat (blank) frame.")
    max_saturated: float = Field(0.02, ge=0, le=1, description="Largest share of pixels at 255 (saturated).")
    verdict: Verdict2 = Field("FAIL", description="Verdict when exposure is out of bounds.")


class BlurRuleConfig(_Strict):
    """Defocus or motion blur: variance of the Laplacian on a fixed-size copy of the frame."""

    enabled: bool = Field(True, description="Check sharpness before the model is trusted.")
    size: int = Field(128, ge=16, le=2048, description="Side of the square copy the Laplacian is measured on.")
    min_laplacian_var: float = Field(200.0, ge=0, le=1e6, description="Sharpness below this is a blurred frame.")
    verdict: Verdict2 = Field("FAIL", description="Verdict for a blurred frame.")


class PresenceRuleConfig(_Strict):
    """The part located as the largest bright blob: it must be there, whole and in position."""

    enabled: bool = Field(True, description="Check part presence and position (also locates the ROI).")
    threshold: int = Field(120, ge=1, le=254, description="Grey level separating the part from the belt.")
    area: tuple[float, float] = Field((0.15, 0.50), description="Allowed part area as a share of the frame.")
    max_offset: float = Field(0.12, ge=0, le=1, description="Largest centre offset, share of the frame's short side.")
    verdict: Verdict2 = Field("FAIL", description="Verdict when the part is missing or off position.")

    @field_validator("area")
    @classmethod
    def _area_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v)


class StatisticsRuleConfig(_Strict):
    """Frame statistics far from the model's training data: the model is outside what it knows."""

    enabled: bool = Field(True, description="Compare frame statistics to the training reference.")
    reference_mean: tuple[float, float] | None = Field(
        None, description="Training frames' mean grey level [mu, sd]; None = model metadata "
                          "`linewatch.reference_stats` (rule off when neither is set).")
    reference_std: tuple[float, float] | None = Field(
        None, description="Training frames' grey-level std [mu, sd]; None = from the model metadata.")
    max_z: float = Field(6.0, gt=0, le=100, description="Largest distance from the reference, in sd.")
    verdict: Verdict2 = Field("REVIEW", description="Verdict for a frame outside the training reference.")


class DarkSpotRuleConfig(_Strict):
    """Backup check beside the model: a dark blob on the part's face larger than `min_area_px` is FAIL."""

    enabled: bool = Field(True, description="Run threshold + blob analysis beside the model.")
    roi: tuple[float, float] = Field(
        (0.40, 0.92), description="ROI annulus [inner, outer] as shares of the located part's radius.")
    delta: float = Field(35.0, gt=0, le=255, description="A pixel this much darker than the ROI median is dark.")
    min_area_px: int = Field(12, ge=1, le=1_000_000, description="Dark blob area (px²) that fails the part.")

    @field_validator("roi")
    @classmethod
    def _roi_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v, 0.0, 2.0)


class TemplateRuleConfig(_Strict):
    """Backup check: difference to a golden template (aligned on the located part) inside the ROI."""

    path: Path | None = Field(None, description="Golden template image (PNG/NPY, frame-sized); None = off.")
    max_diff: float = Field(45.0, gt=0, le=255, description="Grey-level difference that counts as a deviation.")
    min_area_px: int = Field(30, ge=1, le=1_000_000, description="Deviating area (px²) that fails the part.")


class ModelHealthConfig(_Strict):
    """When the model is not trusted, and how the worker follows its file."""

    latency_budget_ms: float = Field(1000.0, gt=0, le=600_000,
                                     description="A batch slower than this is a model fault (safe verdict).")
    recover_after: int = Field(3, ge=1, le=10_000,
                               description="Healthy batches needed to leave rules-only mode after a run fault.")
    reload_check_s: float = Field(0.5, gt=0, le=3600, description="How often the model file is checked for change.")


class StreakConfig(_Strict):
    """Alarms over committed verdicts: a run of FAILs suggests a process or camera problem."""

    consecutive_fails: int = Field(12, ge=0, le=100_000, description="FAILs in a row (per camera) that alarm; 0 = off.")
    window: int = Field(200, ge=1, le=100_000, description="Verdicts in the FAIL-rate window (per camera).")
    max_fail_rate: float = Field(0.5, ge=0, le=1, description="FAIL rate over a full window that alarms; 1 = off.")
    request_stop: bool = Field(False, description="Streak alarms ask for a line stop (critical alarm for the PLC).")


class FailsafeConfig(_Strict):
    """The rules around and over the model; their parameters are hashed into every verdict's ruleset_hash."""

    review_band: tuple[float, float] = Field(
        (0.2, 0.8), description="Defect probability in [low, high) is uncertain and overridden."
    )
    class_bands: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Per-class uncertain bands {label: [low, high)}; empty = model metadata "
                                          "`linewatch.class_bands`, else review_band on the defect probability.")
    uncertain_verdict: Literal["REVIEW", "FAIL"] = Field("REVIEW", description="Verdict inside the band.")
    model_down_verdict: Literal["FAIL", "REVIEW"] = Field(
        "FAIL", description="Verdict while the model cannot be loaded or run."
    )
    exposure: ExposureRuleConfig = Field(default_factory=ExposureRuleConfig, description="Blank/saturated frames.")
    blur: BlurRuleConfig = Field(default_factory=BlurRuleConfig, description="Blurred frames.")
    presence: PresenceRuleConfig = Field(default_factory=PresenceRuleConfig, description="Part present, in place.")
    statistics: StatisticsRuleConfig = Field(default_factory=StatisticsRuleConfig,
                                             description="Frames unlike the training data.")
    dark_spot: DarkSpotRuleConfig = Field(default_factory=DarkSpotRuleConfig, description="Backup blob check.")
    template: TemplateRuleConfig = Field(default_factory=TemplateRuleConfig, description="Backup template check.")
    model_health: ModelHealthConfig = Field(default_factory=ModelHealthConfig, description="Model faults.")
    streak: StreakConfig = Field(default_factory=StreakConfig, description="Streak alarms (in record).")

    @field_validator("review_band")
    @classmethod
    def _band_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v)

    @field_validator("class_bands")
    @classmethod
    def _class_bands_ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for band in v.values():
            _ordered_pair(band)
        return v
