"""The drift watch: which signals are watched, the reference they are compared with, the false-alarm rate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from linewatch.config.base import _Strict

#: The reference mean may be off by this many standard errors before the stated false-alarm rate no longer holds
#: (97.7 %, one-sided): the detectors are calibrated for it (`watch/cusum.py`).
REFERENCE_SLACK_SE = 2.0
SignalName = Literal["brightness", "contrast", "sharpness", "saturation", "part_x", "part_y", "part_size",
                     "score", "embedding", "defect_rate", "override_rate"]
SIGNAL_NAMES: tuple[SignalName, ...] = ("brightness", "contrast", "sharpness", "saturation", "part_x", "part_y",
                                        "part_size", "score", "embedding", "defect_rate", "override_rate")


class WatchConfig(_Strict):
    """Drift detectors per camera and recipe, calibrated to an expected run time between false alarms."""

    enabled: bool = Field(True, description="Watch every camera's signals for drift (docs/drift.md).")
    signals: list[SignalName] = Field(
        default_factory=lambda: list(SIGNAL_NAMES), max_length=len(SIGNAL_NAMES),
        description="Signals watched: image properties (brightness, contrast, sharpness, saturation, part_x, part_y, "
        "part_size), the model's score and embedding, the defect rate (FAIL or REVIEW share) and the fail-safe's "
        "override rate.")
    reference: Literal["auto", "learned"] = Field(
        "auto", description="auto: brightness (and contrast, for a one-channel model) take their reference from the "
        "model's `linewatch.reference_stats` metadata (its training images) when it has them; learned: every signal "
        "from the first reference_parts parts. The model's own signals are always learned.")
    reference_parts: int = Field(
        1000, ge=100, le=1_000_000, description="Parts learnt as the reference after a model or recipe change (stored: "
        "a restart does not learn them again).")
    ert_parts: float = Field(
        1e7, ge=1e3, le=1e12, description="Expected run time between false drift alarms, in parts per camera on a "
        "stationary line: every detector's threshold is calibrated to it on the reference.")
    shift_sd: float = Field(
        0.25, gt=0, le=5, description="Smallest lasting shift worth detecting, in reference standard deviations "
        "(the CUSUM's allowance is half of it): smaller finds slow drifts sooner, larger reacts faster to steps.")
    window: int = Field(500, ge=10, le=100_000, description="Parts (and reviews) the performance estimates span.")
    state_interval_s: float = Field(
        5.0, gt=0, le=3600, description="How often the detectors' state is written to the store for /api/drift.")

    @model_validator(mode="after")
    def _allowance_above_the_reference_error(self) -> WatchConfig:
        """The CUSUM's allowance must exceed the reference mean's error it is calibrated for, else no threshold is
        ever reached and the detectors are dead."""
        slack = REFERENCE_SLACK_SE / self.reference_parts**0.5
        if self.shift_sd / 2 < slack + 0.02:
            raise ValueError(f"watch.shift_sd {self.shift_sd:g} is too small for watch.reference_parts "
                             f"{self.reference_parts}: it must be at least {2 * (slack + 0.02):.3g} (more reference "
                             "parts allow a smaller shift)")
        return self
