"""What both model kinds share: early stopping with a checkpoint, and the ONNX metadata contract."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.training.card import code_version
from linewatch.training.dataset import Dataset, sharpness
from linewatch.training.network import InputSpec, preprocess


class EarlyStopping:
    """Keeps the best state by validation loss (saved as checkpoint.pt) and says when to stop."""

    def __init__(self, torch: Any, net: Any, patience: int, checkpoint: Path, extra: dict[str, Any],
                 log: Callable[[str], Any]):
        self.torch, self.net, self.patience, self.checkpoint, self.extra, self.log = (
            torch, net, patience, checkpoint, extra, log)
        self.best, self.best_epoch, self.stale = math.inf, 0, 0
        self.best_state = copy.deepcopy(net.state_dict())

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record an epoch; True when training should stop."""
        if val_loss < self.best - 1e-4:
            self.best, self.best_epoch, self.stale = val_loss, epoch, 0
            self.best_state = copy.deepcopy(self.net.state_dict())
            self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            self.torch.save({"state": self.best_state, **self.extra}, self.checkpoint)
            return False
        self.stale += 1
        if self.stale >= self.patience:
            self.log(f"early stop: no validation improvement for {self.patience} epochs")
            return True
        return False

    def restore(self) -> None:
        self.net.load_state_dict(self.best_state)
        self.net.eval()


def contract_metadata(name: str, kind: str, spec: InputSpec, labels: list[str], defect_labels: list[str],
                      band: tuple[float, float], train_images: np.ndarray, p_defect_good: np.ndarray,
                      dataset_sha256: str, opts: Any, snapshot: str | None,
                      threshold: float = 0.5) -> dict[str, str]:
    """The `metadata_props` the worker and the fail-safe read (docs/models.md, "Training"), with what made the model
    (`provenance_metadata`); `threshold`: the defect probability from which the model's verdict is FAIL."""
    g = train_images.reshape(len(train_images), -1).astype(np.float32)
    means, stds, sharp = g.mean(axis=1), g.std(axis=1), sharpness(train_images)
    return provenance_metadata(opts, snapshot) | {
        "linewatch.name": name, "linewatch.kind": kind,
        "linewatch.labels": json.dumps(labels), "linewatch.defect_labels": json.dumps(defect_labels),
        "linewatch.input_layout": spec.layout, "linewatch.input_height": str(spec.height),
        "linewatch.input_width": str(spec.width), "linewatch.input_channels": str(spec.channels),
        "linewatch.threshold": str(threshold),
        # The band on the defect probability, written on p(good) = 1 - p(defect) so it fits any label set.
        "linewatch.class_bands": json.dumps({labels[0]: [round(1 - band[1], 6), round(1 - band[0], 6)]}),
        "linewatch.reference_stats": json.dumps({
            "mean": [float(means.mean()), float(means.std()) or 1.0],
            "std": [float(stds.mean()), float(stds.std()) or 1.0],
            "sharpness": [float(sharp.mean()), float(sharp.std()) or 1.0],
            "score_quantiles": [round(float(q), 4) for q in np.quantile(p_defect_good, [0.05, 0.25, 0.5, 0.75, 0.95])],
        }),
        "linewatch.dataset_sha256": dataset_sha256,
        "linewatch.preprocess": f"in graph: uint8 -> float, {'avgpool ' + str(spec.pool) if spec.pool else 'bilinear'}"
                                f" to {spec.net_size}px, (x - {spec.mean:.3f}) / {spec.std:.3f}",
    }


def provenance_metadata(opts: Any, snapshot: str | None) -> dict[str, str]:
    """What made the model, for lineage (docs/models.md): the training options as JSON, the code version and,
    when the data was a snapshot of the data registry, its id (a plain folder has only `linewatch.dataset_sha256`)."""
    meta = {"linewatch.train_params": json.dumps(train_params(opts), sort_keys=True),
            "linewatch.code_version": code_version()}
    if snapshot:
        meta["linewatch.dataset_snapshot"] = snapshot
    return meta


def snapshot_field(ds: Dataset) -> dict[str, str]:
    """The card's `data.snapshot` when the data came from the data registry; nothing for a plain folder."""
    return {"snapshot": ds.snapshot} if ds.snapshot else {}


def train_params(opts: Any) -> dict[str, Any]:
    """The `TrainOptions` as plain JSON values (a frame size as [width, height])."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(opts).items()}


# The side each kind's network sees when --net-size is not given (capped at the frame's): the compact networks
# are sized for 64 px; the pretrained backbone learnt ImageNet at 224; PatchCore at 256 px found label and
# round-part defects at image AUROC 0.999-1.0 where 128 px gave 0.98 (benchmarks/goodonly.py).
DEFAULT_NET_SIZE = {"classifier": 64, "anomaly": 64, "backbone": 224, "patchcore": 256}


def input_spec(images: np.ndarray, train_idx: np.ndarray, net_size: int | None, channels: int,
               default: int = 64) -> InputSpec:
    """The frames the model takes, normalised with the training images' mean and std; the side the network sees
    is `net_size`, else the kind's `default` (never more than the frame's shorter side)."""
    sample = images[train_idx].astype(np.float32)
    h, w = images.shape[1:3]
    side = net_size if net_size is not None else min(default, h, w)
    return InputSpec(h, w, channels, side, float(sample.mean()), float(sample.std()) or 1.0)


def prepared(torch: Any, images: np.ndarray, idx: np.ndarray, spec: InputSpec) -> Any:
    """Frames `idx` through the graph's own preprocessing, in slices to bound memory."""
    with torch.no_grad():
        return torch.cat([preprocess(torch, torch.from_numpy(images[idx[i:i + 256]]), spec)
                          for i in range(0, len(idx), 256)])


def real_defect_metrics(model: Any, ds: Any, good_idx: np.ndarray, defect_idx: np.ndarray,
                        band: tuple[float, float]) -> dict[str, Any]:
    """A good-only model's export (`Model`) on held-out good images and the dataset's real defects, at its band:
    the card's `real_defects` section."""
    from linewatch.training.evaluate import evaluate

    idx = np.concatenate([good_idx, defect_idx])
    probs = np.concatenate([model.run(ds.images[idx[i:i + 64]]) for i in range(0, len(idx), 64)])
    return evaluate(probs, (ds.targets[idx] != 0).astype(np.int64), ["good", "defect"], band)
