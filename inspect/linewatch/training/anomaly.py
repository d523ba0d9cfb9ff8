"""Anomaly model from good images only: most lines have few defect samples.

Synthetic anomalies (DRAEM / CutPaste style: dark or bright blobs, and patches cut from elsewhere
in the part and pasted) teach a small fully convolutional network to mark pixels that do not
belong. Its map is the heatmap; the image score is the map's maximum, calibrated (Platt scaling on
validation good images with synthetic anomalies) into a probability. Real defect images in the
data, if any, are used only to evaluate.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.training.card import write_card
from linewatch.training.common import (
    DEFAULT_NET_SIZE,
    EarlyStopping,
    contract_metadata,
    input_spec,
    prepared,
    real_defect_metrics,
    snapshot_field,
)
from linewatch.training.dataset import Dataset, load_good_only
from linewatch.training.evaluate import choose_band, evaluate
from linewatch.training.network import GraphBuilder, InputSpec

MAP_STRIDE = 4
WIDTHS = ((16, 2), (32, 2), (64, 1), (64, 1))


def build_anomaly_net(torch: Any, channels: int) -> Any:
    nn = torch.nn
    layers: list[Any] = []
    cin = channels
    for cout, stride in WIDTHS:
        layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    layers.append(nn.Conv2d(cin, 1, 1))  # per-location anomaly logit
    return nn.Sequential(*layers)


def synthesize(torch: Any, x: Any, gen: Any, share: float = 0.5) -> tuple[Any, Any, Any]:
    """(images with synthetic anomalies on `share` of them, masks at map resolution, image labels)."""
    n, _, h, w = x.shape
    x = x.clone()
    masks = torch.zeros(n, 1, h, w)
    labels = (torch.rand(n, generator=gen) < share).float()
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for i in torch.nonzero(labels).flatten().tolist():
        cy, cx = (torch.rand(2, generator=gen) * torch.tensor([h * 0.8, w * 0.8]) + torch.tensor([h * 0.1, w * 0.1]))
        ry, rx = (torch.rand(2, generator=gen) * 0.08 + 0.02) * torch.tensor([h, w]).float()
        blob = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).float()
        if torch.rand(1, generator=gen).item() < 0.5:
            sign = 1.0 if torch.rand(1, generator=gen).item() < 0.3 else -1.0
            x[i] += blob * sign * (1.0 + 2.0 * torch.rand(1, generator=gen))
        else:  # CutPaste: the same part's texture from elsewhere, where it does not belong
            shift = torch.randint(h // 8, h // 2, (2,), generator=gen).tolist()
            source = torch.roll(x[i], shifts=tuple(shift), dims=(1, 2))
            x[i] = x[i] * (1 - blob) + source * blob
        masks[i, 0] = blob
    small = torch.nn.functional.max_pool2d(masks, MAP_STRIDE)
    return x, small, labels


def _platt(torch: Any, scores: Any, labels: Any) -> tuple[float, float]:
    """a, b for p = sigmoid(a * score + b), fitted on validation scores."""
    a = torch.ones(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], lr=0.5, max_iter=100)

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * scores + b, labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(a.detach()), float(b.detach())


def export_anomaly(net: Any, spec: InputSpec, platt: tuple[float, float], meta: dict[str, str], out: Path) -> None:
    g = GraphBuilder(spec)
    mods = list(net)
    feat = g.conv_stack(mods[:-1], g.preprocess())
    head = mods[-1]
    logit = g.node("Conv", [feat, g.const("head.w", head.weight.detach().numpy()),
                            g.const("head.b", head.bias.detach().numpy())], "map_logit", kernel_shape=[1, 1])
    g.node("Sigmoid", [logit], "anomaly_map")
    g.node("GlobalMaxPool", [logit], "max_logit")
    g.node("Flatten", ["max_logit"], "score_logit")
    g.node("Mul", ["score_logit", g.const("platt.a", np.array(platt[0], np.float32))], "scaled")
    g.node("Add", ["scaled", g.const("platt.b", np.array(platt[1], np.float32))], "calibrated")
    g.node("Sigmoid", ["calibrated"], "p_defect")
    g.node("Sub", [g.const("one", np.array(1.0, np.float32)), "p_defect"], "p_good")
    g.node("Concat", ["p_good", "p_defect"], "probs", axis=1)
    size = spec.net_size // MAP_STRIDE
    g.save([("probs", ["N", 2]), ("anomaly_map", ["N", 1, size, size])], meta, out)


def train_anomaly(data: Path | Dataset, out_dir: Path, opts: Any, log: Any = print) -> dict[str, Any]:
    """Train on the good images of `data`; evaluate on synthetic anomalies and on real defects if present."""
    import torch

    from linewatch.model.onnx import Model

    t0 = time.monotonic()
    torch.manual_seed(opts.seed)
    ds, train_idx, val_idx, real_defects = load_good_only(data, opts.frame_size, opts.channels, opts.val_fraction,
                                                          opts.seed)
    assert ds.images is not None and ds.targets is not None
    n_good = len(train_idx) + len(val_idx)
    spec = input_spec(ds.images, train_idx, opts.net_size, opts.channels, DEFAULT_NET_SIZE["anomaly"])
    h, w = spec.height, spec.width
    log(f"{n_good} good images {w}x{h} (train {len(train_idx)} / validation {len(val_idx)}), "
        f"{len(real_defects)} real defect images kept for evaluation only")
    xt, xv = prepared(torch, ds.images, train_idx, spec), prepared(torch, ds.images, val_idx, spec)
    gen = torch.Generator().manual_seed(opts.seed)
    xv_syn, mv, lv = synthesize(torch, xv.repeat(2, 1, 1, 1), torch.Generator().manual_seed(opts.seed + 1))
    net = build_anomaly_net(torch, opts.channels)
    optim = torch.optim.Adam(net.parameters(), lr=opts.lr)
    stopper = EarlyStopping(torch, net, opts.patience, out_dir / "checkpoint.pt", {"spec": asdict(spec)}, log)
    epoch, interrupted = 0, False

    def loss_of(x: Any, masks: Any, labels: Any) -> Any:
        logits = net(x)
        pixel = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks, pos_weight=torch.tensor(10.0))
        image = torch.nn.functional.binary_cross_entropy_with_logits(logits.amax(dim=(1, 2, 3)), labels)
        return pixel + image

    try:
        for epoch in range(1, opts.epochs + 1):
            net.train()
            perm = torch.randperm(len(xt), generator=gen)
            total = 0.0
            for i in range(0, len(xt), opts.batch):
                xb, mb, lb = synthesize(torch, xt[perm[i:i + opts.batch]], gen)
                if opts.flips and torch.rand(1, generator=gen).item() < 0.5:
                    xb, mb = xb.flip(3), mb.flip(3)
                loss = loss_of(xb, mb, lb)
                optim.zero_grad()
                loss.backward()
                optim.step()
                total += float(loss.detach()) * len(xb)
            net.eval()
            with torch.no_grad():
                val = float(loss_of(xv_syn, mv, lv))
            log(f"epoch {epoch}/{opts.epochs}  loss {total / len(xt):.4f}  val_loss {val:.4f}")
            if stopper.update(epoch, val):
                break
    except KeyboardInterrupt:
        interrupted = True
        log(f"interrupted: exporting the best model so far (epoch {stopper.best_epoch})")
    stopper.restore()
    with torch.no_grad():
        val_scores = net(xv_syn).amax(dim=(1, 2, 3))
    platt = _platt(torch, val_scores, lv)
    p_val = torch.sigmoid(platt[0] * val_scores + platt[1]).detach().numpy()
    band = choose_band(p_val, lv.numpy() > 0.5, 0.5, opts.target_escape, opts.max_review)
    synthetic = evaluate(np.stack([1 - p_val, p_val], 1), lv.numpy().astype(np.int64), ["good", "defect"], band)
    meta = contract_metadata(opts.name, "anomaly", spec, ["good", "defect"], ["defect"], band, ds.images[train_idx],
                             p_val[lv.numpy() < 0.5], ds.content_hash(), opts, ds.snapshot)
    meta["linewatch.outputs"] = "probs, anomaly_map"
    onnx_path = out_dir / f"{opts.name}.onnx"
    export_anomaly(net, spec, platt, meta, onnx_path)
    model = Model(onnx_path, providers="cpu")
    with torch.no_grad():
        scores = net(prepared(torch, ds.images, val_idx[:32], spec)).amax(dim=(1, 2, 3))
        ref = torch.sigmoid(platt[0] * scores + platt[1]).numpy()
    parity = float(np.abs(model.run(ds.images[val_idx[:32]])[:, 1] - ref).max())
    if parity > 1e-4:
        onnx_path.unlink()
        raise RuntimeError(f"ONNX export disagrees with PyTorch by {parity:.2e} (> 1e-4); model not written")
    metrics: dict[str, Any] = {**synthetic, "evaluated_on": "validation good images with synthetic anomalies",
                               "onnx_torch_max_abs_diff": parity}
    if len(real_defects):
        metrics["real_defects"] = real_defect_metrics(model, ds, val_idx, real_defects, band)
    card = {
        "name": opts.name, "kind": "anomaly", "file": onnx_path.name, "labels": ["good", "defect"],
        "input": {"layout": spec.layout, "height": h, "width": w, "channels": opts.channels, "dtype": "uint8",
                  "net_size": spec.net_size},
        "data": {"source": ds.source, "dataset_sha256": meta["linewatch.dataset_sha256"], **snapshot_field(ds),
                 "count": len(ds.items),
                 "class_counts": {"good (trained on)": n_good, "defect (evaluation only)": len(real_defects)},
                 "split": {"train": len(train_idx), "validation": len(val_idx), "seed": opts.seed,
                           "stratified_by": "good images only"}},
        "training": {"epochs_run": epoch if not interrupted else stopper.best_epoch, "best_epoch": stopper.best_epoch,
                     "interrupted": interrupted, "seconds": round(time.monotonic() - t0, 1), "seed": opts.seed,
                     "options": {k: v for k, v in asdict(opts).items() if k != "frame_size"},
                     "code_version": meta["linewatch.code_version"], "torch": torch.__version__},
        "calibration": {"platt": list(platt), "band": list(band), "target_escape": opts.target_escape,
                        "max_review": opts.max_review},
        "metrics": metrics,
    }
    return write_card(card, onnx_path)
