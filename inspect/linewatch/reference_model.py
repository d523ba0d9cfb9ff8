"""Train the bundled reference classifier on emulator parts and export it to ONNX.

Needs the `train` extra (PyTorch CPU, onnx). The graph is written op by op from the trained
weights (no exporter magic), takes uint8 frames as the camera delivers them and does the
downsampling and normalisation itself. Run: `linewatch models build-reference`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.emulator import PartEmulator

POOL = 4  # 256 px frames -> 64 px inside the graph
LABELS = ["good", "defect"]
CHANNELS = (8, 16, 32, 32)
STRIDES = (2, 2, 2, 1)
ONNX_IR_VERSION = 10  # onnxruntime 1.20+ loads it; onnx 1.23 would write 14 by default
ONNX_OPSET = 17


def _dataset(seed: int, count: int, size: int, defect_rate: float) -> tuple[np.ndarray, np.ndarray, str]:
    emu = PartEmulator(size, size, seed=seed, defect_rate=defect_rate)
    parts = [emu.render(i) for i in range(count)]
    x = np.stack([p.pixels for p in parts])
    y = np.array([int(p.truth["label"] == "defect") for p in parts], np.int64)
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    return x, y, digest


def _build_torch(torch: Any) -> Any:
    nn = torch.nn
    layers: list[Any] = [nn.AvgPool2d(POOL)]
    cin = 1
    for cout, stride in zip(CHANNELS, STRIDES, strict=True):
        layers += [nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU()]
        cin = cout
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(cin, len(LABELS))]
    return nn.Sequential(*layers)


def _export_onnx(net: Any, size: int, mean: float, std: float, meta: dict[str, str], out: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    nodes += [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", const("axis1", np.array([1], np.int64))], ["x0"]),
        helper.make_node("AveragePool", ["x0"], ["p"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Sub", ["p", const("mean", np.array(mean, np.float32))], ["c"]),
        helper.make_node("Mul", ["c", const("inv_std", np.array(1.0 / std, np.float32))], ["x"]),
    ]
    cur, conv_i = "x", 0
    for mod in net:
        if mod.__class__.__name__ == "Conv2d":
            w = const(f"conv{conv_i}.w", mod.weight.detach().numpy())
            b = const(f"conv{conv_i}.b", mod.bias.detach().numpy())
            s = mod.stride[0]
            nodes += [
                helper.make_node("Conv", [cur, w, b], [f"conv{conv_i}"], kernel_shape=[3, 3],
                                 strides=[s, s], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", [f"conv{conv_i}"], [f"relu{conv_i}"]),
            ]
            cur, conv_i = f"relu{conv_i}", conv_i + 1
        elif mod.__class__.__name__ == "Linear":
            w = const("fc.w", mod.weight.detach().numpy())
            b = const("fc.b", mod.bias.detach().numpy())
            nodes += [
                helper.make_node("GlobalMaxPool", [cur], ["gmp"]),
                helper.make_node("Flatten", ["gmp"], ["feat"]),
                helper.make_node("Gemm", ["feat", w, b], ["logits"], transB=1),
                helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
            ]
    graph = helper.make_graph(
        nodes, "linewatch_reference",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(LABELS)])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="linewatch")
    model.ir_version = ONNX_IR_VERSION
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))


def build_reference(out_dir: Path, size: int = 256, train_count: int = 3000, holdout_count: int = 1000,
                    epochs: int = 20, seed: int = 7) -> dict[str, Any]:
    """Train, export, check parity and write `reference.onnx` + `card.json` + `CARD.md`."""
    import torch

    from linewatch.model import Model

    t0 = time.monotonic()
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    x_tr, y_tr, h_tr = _dataset(seed=1000 + seed, count=train_count, size=size, defect_rate=0.5)
    x_ho, y_ho, h_ho = _dataset(seed=2000 + seed, count=holdout_count, size=size, defect_rate=0.2)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    net = _build_torch(torch)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt = torch.from_numpy(x_tr).float().unsqueeze(1)
    xt = (xt - mean) / std
    yt = torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), 32):
            idx = perm[i:i + 32]
            xb = xt[idx]
            if torch.rand(1, generator=gen).item() < 0.5:  # the part is round: flips are free data
                xb = torch.flip(xb, dims=[3])
            loss = torch.nn.functional.cross_entropy(net(xb), yt[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{epochs}  loss {total / len(xt):.4f}", flush=True)
    net.eval()

    out = out_dir / "reference.onnx"
    meta = {
        "linewatch.name": "reference", "linewatch.kind": "classifier",
        "linewatch.labels": json.dumps(LABELS), "linewatch.defect_labels": json.dumps(["defect"]),
        "linewatch.input_layout": "NHW", "linewatch.input_height": str(size),
        "linewatch.input_width": str(size), "linewatch.input_channels": "1",
        "linewatch.preprocess": f"in graph: uint8 -> float, avgpool {POOL}, (x - {mean:.3f}) / {std:.3f}",
        "linewatch.dataset_sha256": h_tr,
    }
    net_seq = list(net)
    _export_onnx(net_seq, size, mean, std, meta, out)

    with torch.no_grad():
        xh = (torch.from_numpy(x_ho[:64]).float().unsqueeze(1) - mean) / std
        ref = torch.softmax(net(xh), dim=1).numpy()
    model = Model(out, providers="cpu")
    got = model.run(x_ho[:64])
    parity = float(np.abs(ref - got).max())
    if parity > 1e-4:
        raise RuntimeError(f"ONNX and PyTorch disagree by {parity:.2e} (> 1e-4)")
    probs = np.concatenate([model.run(x_ho[i:i + 100]) for i in range(0, len(x_ho), 100)])
    pred = (probs[:, 1] >= 0.5).astype(np.int64)
    tp = int(((pred == 1) & (y_ho == 1)).sum())
    fn = int(((pred == 0) & (y_ho == 1)).sum())
    fp = int(((pred == 1) & (y_ho == 0)).sum())
    card: dict[str, Any] = {
        "name": "reference", "sha256": model.info.sha256, "file": out.name, "kind": "classifier",
        "labels": LABELS, "input": {"layout": "NHW", "height": size, "width": size, "dtype": "uint8"},
        "training": {"source": "linewatch emulator", "seed": 1000 + seed, "count": train_count,
                     "defect_rate": 0.5, "epochs": epochs, "dataset_sha256": h_tr,
                     "seconds": round(time.monotonic() - t0, 1), "torch": torch.__version__},
        "holdout": {"source": "linewatch emulator", "seed": 2000 + seed, "count": holdout_count,
                    "defect_rate": 0.2, "dataset_sha256": h_ho},
        "metrics": {"accuracy": round(float((pred == y_ho).mean()), 4),
                    "escape_rate": round(fn / max(1, tp + fn), 4),
                    "false_reject_rate": round(fp / max(1, int((y_ho == 0).sum())), 4),
                    "in_review_band_0.2_0.8": round(float(((probs[:, 1] >= 0.2) & (probs[:, 1] < 0.8)).mean()), 4),
                    "onnx_torch_max_abs_diff": parity},
    }
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    m = card["metrics"]
    (out_dir / "CARD.md").write_text(
        f"# Model card: reference\n\nSHA-256 `{card['sha256']}`\n\n"
        "Small CNN (4 conv layers, global max pool) classifying synthetic machined round parts as "
        "`good` or `defect` (dent, scratch, stain). Input: uint8 Mono8 frames 256x256 (N, H, W); "
        "downsampling and normalisation run inside the graph.\n\n"
        f"Trained from scratch on {train_count} emulator parts (seed {1000 + seed}, defect rate 0.5), "
        f"{epochs} epochs, in {card['training']['seconds']} s on CPU.\n\n"
        f"Holdout ({holdout_count} parts, seed {2000 + seed}, defect rate 0.2): accuracy {m['accuracy']}, "
        f"escape rate {m['escape_rate']}, false-reject rate {m['false_reject_rate']}, "
        f"share in the default REVIEW band {m['in_review_band_0.2_0.8']}. "
        f"ONNX vs PyTorch max difference {parity:.1e}.\n\n"
        "Limits: trained on emulator images only; not meant for real parts. Rebuild with "
        "`linewatch models build-reference` (needs `pip install -e .[train]`).\n"
    )
    return card
