"""The loop from reviewed parts to a better model: each recipe's data and training settings, and the gate.

`retrain.recipes` is keyed by recipe name (the line's `recipe` is the default one); `retrain.gate` is the
promotion gate every promotion passes, `linewatch models promote` as well as `linewatch retrain`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from linewatch.config.base import _Strict
from linewatch.paths import MODELS_DIR

_SNAPSHOT = r"^([0-9a-f]{8,64})?$"  # an id or a unique prefix of 8+ hex characters; empty: not set


class GateConfig(_Strict):
    """What a candidate must not lose against the active model on the recipe's holdout."""

    tolerance: float = Field(
        0.01, ge=0, le=1, description="Allowed loss over the whole holdout in accuracy, escape rate and REVIEW rate.")
    segment_tolerance: float = Field(
        0.05, ge=0, le=1, description="Allowed loss in accuracy and escape rate within one segment (a camera, "
        "lighting, lot... value of the holdout's manifest).")
    segment_min_samples: int = Field(
        30, ge=1, le=1_000_000, description="Holdout parts a segment needs before the gate judges it (fewer: "
        "shown, not judged).")


class RetrainRecipe(_Strict):
    """One recipe's retraining: the data it starts from, the holdout it is judged on, how it trains."""

    base_snapshot: str = Field(
        "", pattern=_SNAPSHOT, description="Snapshot the training data starts from (id or unique prefix); the "
        "reviewed parts since it are added. Required to retrain.")
    holdout_snapshot: str = Field(
        "", pattern=_SNAPSHOT, description="Snapshot the candidate and the active model are compared on; it never "
        "gains reviewed parts. Required to retrain.")
    kind: Literal["classifier", "anomaly", "patchcore"] = Field("classifier", description="What is trained.")
    backbone: Literal["none", "efficientnet-lite0"] = Field(
        "none", description="classifier: none = the compact network from scratch, or fine-tune EfficientNet-Lite0.")
    arch: Literal["compact", "fine"] = Field("compact", description="From-scratch network (backbone none).")
    net_size: int | None = Field(None, ge=16, le=2048, description="Side the network sees (unset: the kind's default).")
    epochs: int = Field(30, ge=1, le=10_000, description="Most epochs trained.")
    batch: int = Field(16, ge=1, le=4096, description="Training batch size.")
    lr: float = Field(2e-3, gt=0, le=1, description="Peak learning rate.")
    patience: int = Field(6, ge=1, le=10_000, description="Early stop after this many epochs without improvement.")
    max_minutes: float | None = Field(None, gt=0, le=10_000, description="Training time budget (unset: none).")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Validation share of the training snapshot.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Split and training seed.")


class RetrainConfig(_Strict):
    models: Path = Field(MODELS_DIR, description="The model registry retrain promotes into (the line's model.path "
                         "should be its active link, models/active/<recipe>.onnx, for a hot swap).")
    recipes: dict[str, RetrainRecipe] = Field(
        default_factory=dict, max_length=256, description="Retraining per recipe name (docs/data.md).")
    gate: GateConfig = Field(default_factory=GateConfig, description="The promotion gate.")
