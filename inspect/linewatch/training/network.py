"""The compact classifier and its ONNX export, written op by op so the graph is exactly the network.

The exported graph takes uint8 frames as the camera delivers them ((N, H, W) or (N, H, W, C)) and
does the resize and normalisation itself; batch norm and the calibration temperature are folded
into the weights, so the file holds nothing but convolutions, pooling and one linear layer.

Two architectures: `compact` for coarse defects on small frames, and `fine` for thin defects
(cracks one or two pixels wide): it first folds each 2x2 block of pixels into channels
(space-to-depth, lossless, unlike a resize) and then runs a deeper stack at half resolution, so
it sees every pixel of the frame for about the cost of a network on the halved image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ONNX_IR_VERSION = 10  # onnxruntime >= 1.20 loads it (onnx 1.23 would write 14 by default)
ONNX_OPSET = 17
ARCHITECTURES: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {
    # name: (space-to-depth block, ((width, stride), ...))
    "compact": (1, ((16, 2), (32, 2), (64, 2), (64, 1))),
    "fine": (2, ((24, 2), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1))),
}


@dataclass(frozen=True)
class InputSpec:
    """The frames the model takes and the size the network sees."""

    height: int
    width: int
    channels: int
    net_size: int
    mean: float
    std: float

    @property
    def layout(self) -> str:
        return "NHW" if self.channels == 1 else "NHWC"

    @property
    def pool(self) -> int | None:
        """Integer downsampling factor when the frame divides evenly (area pooling), else None (bilinear)."""
        if self.height % self.net_size == 0 and self.width % self.net_size == 0 \
                and self.height // self.net_size == self.width // self.net_size:
            return self.height // self.net_size
        return None


def preprocess(torch: Any, frames: Any, spec: InputSpec) -> Any:
    """uint8 frames -> normalised float (N, C, net, net), the same arithmetic as the exported graph."""
    x = frames.float()
    x = x.unsqueeze(1) if spec.channels == 1 else x.permute(0, 3, 1, 2)
    if spec.pool:
        x = torch.nn.functional.avg_pool2d(x, spec.pool) if spec.pool > 1 else x
    else:
        x = torch.nn.functional.interpolate(
            x, scale_factor=(spec.net_size / spec.height, spec.net_size / spec.width), mode="bilinear",
            align_corners=False, recompute_scale_factor=False)
    return (x - spec.mean) / spec.std


def build_net(torch: Any, channels: int, classes: int, arch: str = "compact") -> Any:
    nn = torch.nn
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    block, widths = ARCHITECTURES[arch]
    layers: list[Any] = [nn.PixelUnshuffle(block)] if block > 1 else []
    cin = channels * block * block
    for cout, stride in widths:
        layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def _fold(conv: Any, bn: Any) -> tuple[np.ndarray, np.ndarray]:
    w = conv.weight.detach().numpy().astype(np.float64)
    scale = bn.weight.detach().numpy() / np.sqrt(bn.running_var.detach().numpy() + bn.eps)
    bias = bn.bias.detach().numpy() - bn.running_mean.detach().numpy() * scale
    return (w * scale[:, None, None, None]).astype(np.float32), bias.astype(np.float32)


class GraphBuilder:
    """Writes ONNX nodes for the pieces both model kinds share: uint8 input, preprocessing, conv stack."""

    def __init__(self, spec: InputSpec):
        from onnx import TensorProto, helper

        self.spec, self.helper, self.tp = spec, helper, TensorProto
        self.inits: list[Any] = []
        self.nodes: list[Any] = []

    def const(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], **attrs))
        return output

    def preprocess(self) -> str:
        """uint8 frames -> normalised float (N, C, net, net): the graph twin of `preprocess`."""
        spec = self.spec
        f = self.node("Cast", ["image"], "f", to=self.tp.FLOAT)
        if spec.channels == 1:
            x = self.node("Unsqueeze", [f, self.const("axis1", np.array([1], np.int64))], "nchw")
        else:
            x = self.node("Transpose", [f], "nchw", perm=[0, 3, 1, 2])
        if spec.pool and spec.pool > 1:
            x = self.node("AveragePool", [x], "small", kernel_shape=[spec.pool] * 2, strides=[spec.pool] * 2)
        elif not spec.pool:
            scales = np.array([1, 1, spec.net_size / spec.height, spec.net_size / spec.width], np.float32)
            x = self.node("Resize", [x, "", self.const("scales", scales)], "small", mode="linear",
                          coordinate_transformation_mode="half_pixel")
        x = self.node("Sub", [x, self.const("mean", np.array(spec.mean, np.float32))], "centred")
        return self.node("Mul", [x, self.const("inv_std", np.array(1 / spec.std, np.float32))], "x")

    def conv_stack(self, mods: list[Any], cur: str) -> str:
        """An optional PixelUnshuffle, then Conv + BatchNorm (folded) + ReLU triples from the front of `mods`."""
        i, block = 0, 1
        if mods and type(mods[0]).__name__ == "PixelUnshuffle":
            block, i = mods[0].downscale_factor, 1
            cur = self.node("SpaceToDepth", [cur], "s2d", blocksize=block)
        while i < len(mods) and type(mods[i]).__name__ == "Conv2d":
            w, b = _fold(mods[i], mods[i + 1])
            if block > 1:  # ONNX orders the folded channels (dy, dx, c); PyTorch (c, dy, dx)
                cin = w.shape[1] // (block * block)
                w = w[:, [ch * block * block + dy * block + dx
                          for dy in range(block) for dx in range(block) for ch in range(cin)]]
                block = 1
            s, k = mods[i].stride[0], mods[i].kernel_size[0]
            c = self.node("Conv", [cur, self.const(f"c{i}.w", w), self.const(f"c{i}.b", b)], f"c{i}",
                          kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4)
            cur = self.node("Relu", [c], f"r{i}")
            i += 3
        return cur

    def save(self, outputs: list[tuple[str, list[Any]]], metadata: dict[str, str], out: Path) -> None:
        import onnx

        spec = self.spec
        shape: list[Any] = ["N", spec.height, spec.width] + ([spec.channels] if spec.channels > 1 else [])
        graph = self.helper.make_graph(
            self.nodes, "linewatch", [self.helper.make_tensor_value_info("image", self.tp.UINT8, shape)],
            [self.helper.make_tensor_value_info(name, self.tp.FLOAT, dims) for name, dims in outputs],
            initializer=self.inits)
        model = self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", ONNX_OPSET)],
                                       producer_name="linewatch")
        model.ir_version = ONNX_IR_VERSION
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        onnx.save(model, str(tmp))
        tmp.replace(out)


def export_onnx(net: Any, spec: InputSpec, temperature: float, metadata: dict[str, str], out: Path) -> None:
    """Write the eval-mode classifier `net` (after preprocess) as ONNX computing softmax(logits / T)."""
    g = GraphBuilder(spec)
    mods = list(net)
    cur = g.conv_stack(mods, g.preprocess())
    fc = mods[-1]
    g.node("GlobalMaxPool", [cur], "gmp")
    g.node("Flatten", ["gmp"], "feat")
    g.node("Gemm", ["feat", g.const("fc.w", fc.weight.detach().numpy() / temperature),
                    g.const("fc.b", fc.bias.detach().numpy() / temperature)], "logits", transB=1)
    g.node("Softmax", ["logits"], "probs", axis=1)
    g.node("Identity", ["feat"], "embedding")  # the pooled features the head reads: for drift detection
    g.save([("probs", ["N", fc.out_features]), ("embedding", ["N", fc.in_features])],
           {**metadata, "linewatch.outputs": "probs, embedding"}, out)
