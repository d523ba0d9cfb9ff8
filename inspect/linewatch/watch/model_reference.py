"""Image signals' references a model brings: `linewatch.reference_stats` in its metadata (its training images).

linewatch's trainer writes the training images' grey-level mean and standard deviation there (mean and spread of
each over the images: `training/common.py`); they are the reference of `brightness`, and of `contrast` for a
one-channel model (a colour model's std is over its channels, not over the grey image the line measures). Taken
only when the model file is the very version the verdicts name; a normal distribution with those moments stands
for the training images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from statistics import NormalDist

import numpy as np

from linewatch.model.files import ModelFilesError, metadata_props, model_files
from linewatch.watch.reference import SignalReference, from_quantiles

log = logging.getLogger("watch")
_PROBABILITIES = np.linspace(0.0025, 0.9975, 201)  # the quantiles a normal distribution is stored as


def model_signals(path: Path, model_hash: str, k: float, target_arl: float, parts: int) -> dict[str, SignalReference]:
    """The references the model at `path` supplies, if it is version `model_hash` and carries reference_stats;
    counted as `parts` parts (the training set's size is not in the metadata: the line's reference size)."""
    try:
        graph = path.resolve().read_bytes()
        if model_files(path, graph).read_by(()).version_hash(hashlib.sha256(graph).hexdigest()) != model_hash:
            return {}  # the file changed since: the line's own parts are learnt instead
        meta = metadata_props(graph)
    except (OSError, ModelFilesError, ValueError) as exc:
        log.warning("model %s: no drift reference read from its metadata (%s); learning it on the line", path, exc)
        return {}
    try:
        stats = json.loads(meta.get("linewatch.reference_stats", "null"))
        if stats is None:
            return {}
        pairs = {"brightness": stats["mean"]}
        if meta.get("linewatch.input_channels", "1") == "1":
            pairs["contrast"] = stats["std"]
        out = {}
        for name, (mean, sd) in pairs.items():
            normal = NormalDist(float(mean), float(sd))
            quantiles = [normal.inv_cdf(float(q)) for q in _PROBABILITIES]
            out[name] = from_quantiles(name, quantiles, parts, k, target_arl)
        return out
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("model %s: linewatch.reference_stats unreadable (%s); learning the reference on the line",
                    path, exc)
        return {}
