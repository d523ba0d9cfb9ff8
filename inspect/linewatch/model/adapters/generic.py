"""Any classifier described by a `<model>.yaml` sidecar: labels, input layout and size, scale, mean/std,
output activation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from linewatch.model.adapters.base import (
    Adapter,
    AdapterError,
    Format,
    ModelFile,
    fixed_hw,
    float_input,
    sidecar_band,
    split_labels,
)


@dataclass(frozen=True)
class GenericAdapter(Adapter):
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1 / 255
    activation: str = "softmax"
    model_layout: str = "NCHW"

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        x = float_input(frames, self.height, self.width, (0, 0, 0), (1, 1, 1), self.scale)
        if self.channels == 1:
            x = x[:, :1]
        x = (x - np.asarray(self.mean, np.float32)[:, None, None]) / np.asarray(self.std, np.float32)[:, None, None]
        return {self.input_name: np.ascontiguousarray(x if self.model_layout == "NCHW" else x.transpose(0, 2, 3, 1))}

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        y = np.asarray(next(iter(outputs.values())), np.float32)
        if self.activation == "softmax":
            e = np.exp(y - y.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]
        if self.activation == "sigmoid":
            return 1 / (1 + np.exp(-y))
        return y


def _recognises(f: ModelFile) -> bool:
    return bool(f.sidecar)


def _create(f: ModelFile) -> Adapter:
    spec, inputs, where = f.sidecar, f.inputs, f.where
    try:
        labels = [str(x) for x in spec["labels"]]
        inp = spec.get("input", {})
        layout = str(inp.get("layout", "NCHW")).upper()
        shape = inputs[0].shape
        h, w = (fixed_hw(shape, where) if layout == "NCHW" else fixed_hw(shape[:-1], where))
        channels = int(inp.get("channels", shape[1] if layout == "NCHW" else shape[-1]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"{where}: sidecar YAML needs labels and a valid input section ({exc})") from None
    names, defects = split_labels(labels, spec.get("defect_labels"), where)
    return GenericAdapter(
        "generic", names, defects, "NHW" if channels == 1 else "NHWC", h, w, channels, False, inputs[0].name,
        sidecar_band(spec, where),
        mean=tuple(float(x) for x in inp.get("mean", [0.0] * channels)),
        std=tuple(float(x) for x in inp.get("std", [1.0] * channels)),
        scale=float(inp.get("scale", 1 / 255)),
        activation=str(spec.get("output", {}).get("activation", "softmax")),
        model_layout=layout,
    )


GENERIC = Format("generic", _recognises, _create)
