"""PatchCore-style anomaly model: a memory of good patches, no gradient steps (Roth et al. 2022).

Patch features come from two mid-level stages of the frozen ImageNet EfficientNet-Lite0 (backbone.py,
hash-checked): the deeper map is upsampled to the shallower one and the two are concatenated. Each patch
is taken on its own: the paper's "locally aware" 3x3 average blurred away thin defects (on the
metal-surface scene, cracks along the brushing: AUROC 0.978 with it, 0.992 without;
benchmarks/goodonly.py). The features of the good training images are thinned to a greedy coreset
(k-center on a fixed random projection) that is the memory bank. Each patch also carries its place in the
frame (two channels: row and column in 1/32 of the frame, times `--position-weight` times the features'
typical spread), so it is compared mostly with good patches from about the same place: on a part with a
fixed layout, a printed mark left out leaves plain surface that good parts show elsewhere, and a
position-blind bank matched it there (the label scene's escapes; docs/models.md). A patch's anomaly is its
distance to the nearest bank entry, the image score the mean of the map's SCORE_PATCHES largest (a good part's
single odd patch weighs less than a defect's several); Platt scaling on held-out good
images (with synthetic anomalies, and half of the real defects when there are some) turns it into
p(defect). The exported graph holds all of it: backbone stages, patch features and their places,
||a||² - 2ab + ||b||² by MatMul, ReduceMin, TopK, so the worker runs one graph with the same outputs (`probs`,
`anomaly_map`) as the `anomaly` kind.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.training.anomaly import MAP_STRIDE, _platt, synthesize
from linewatch.training.backbone import GraphNet, build_backbone_net, same_pads
from linewatch.training.card import write_card
from linewatch.training.common import (
    DEFAULT_NET_SIZE,
    contract_metadata,
    input_spec,
    prepared,
    real_defect_metrics,
    snapshot_field,
)
from linewatch.training.dataset import Dataset, load_good_only
from linewatch.training.evaluate import choose_band, evaluate
from linewatch.training.network import GraphBuilder, InputSpec

# Last blocks of the two stages tapped: 24 channels at stride 4 and 40 at stride 8 for small nets, 40 at
# stride 8 and 112 at stride 16 above FINE_TAPS_UP_TO px, so the patch grid stays near 32x32.
FINE_TAPS, COARSE_TAPS, FINE_TAPS_UP_TO = (2, 4), (4, 10), 128
PROJECTION_DIMS = 64  # k-center greedy runs on this random projection of the features
POSITION_UNIT = 32  # a patch's place is counted in 1/32 of the frame, whatever the net size
MIN_BANK = 256
MAX_BANK = 8192
PARITY = 1e-3
# Good-only band: REVIEW from the worst held-out good part's distance to REVIEW_SPAN times it, FAIL beyond. With
# 1.25 the defects in between took label and metal-surface past 5 % REVIEW (7.1 and 6.5 %); 1.15 keeps both
# under it (4.8 %) with 0.4 % of good parts failed at most (benchmarks/goodonly.py).
REVIEW_SPAN = 1.15
EDGE_LOGIT = 8.0  # the good-only band's edges lie at most this far from p = 0.5 in logits (p 0.0003 / 0.9997)
# The image score is the mean of this many largest patch distances (of ~1,000 patches at the default size). Against
# the largest alone, on the same memory banks and 1,000-1,100 test parts (benchmarks/goodonly.py's features):
# label AUROC 0.9977 -> 0.9985 and escapes below the worst of 40 held-out good parts 2.1 -> 0.9 %, metal-surface
# 0.9959 -> 0.9964 and 4.5 -> 1.8 %; 3 and 8 did about as well on label, worse on metal-surface's thin cracks.
SCORE_PATCHES = 5


def taps_for(net_size: int) -> tuple[int, int]:
    return FINE_TAPS if net_size <= FINE_TAPS_UP_TO else COARSE_TAPS


def patch_features(torch: Any, net: Any, x: Any) -> Any:
    """(N, C, h, w) patch features of normalised frames `x`, at the shallower tap's stride."""
    F = torch.nn.functional
    y = _stem(torch, net, x * net.scale + net.shift)
    taps, wanted = [], taps_for(x.shape[2])
    for i, block in enumerate(net._blocks[:wanted[-1] + 1]):
        y = block(y)
        if i in wanted:
            taps.append(y)
    shallow, deep = taps
    deep = F.interpolate(deep, size=shallow.shape[2:], mode="bilinear", align_corners=False)
    return torch.cat([shallow, deep], 1)


def position_grid(h: int, w: int, weight: float) -> np.ndarray:
    """(1, 2, h, w) row and column of each patch's centre in 1/POSITION_UNIT of the frame, times `weight`."""
    rows = (np.arange(h, dtype=np.float32) + 0.5) * POSITION_UNIT / h
    cols = (np.arange(w, dtype=np.float32) + 0.5) * POSITION_UNIT / w
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"))[None]
    return (grid * np.float32(weight)).astype(np.float32)


def located(torch: Any, feats: Any, weight: float) -> Any:
    """Patch features with their place appended (two channels), as the memory bank holds them."""
    if not weight:
        return feats
    n, _, h, w = feats.shape
    return torch.cat([feats, torch.from_numpy(position_grid(h, w, weight)).expand(n, -1, -1, -1)], 1)


def _stem(torch: Any, net: Any, x: Any) -> Any:
    F = torch.nn.functional
    (t, b), (left, r) = same_pads(x.shape[2], 3, 2), same_pads(x.shape[3], 3, 2)
    return F.relu6(net._bn0(net._conv_stem(F.pad(x, (left, r, t, b)))))


def nearest_distance(torch: Any, feats: Any, bank: Any) -> Any:
    """(N, 1, h, w) distance of each patch to its nearest bank entry, as the graph computes it."""
    n, c, h, w = feats.shape
    a = feats.reshape(n, c, h * w).transpose(1, 2)
    d2 = (a * a).sum(2, keepdim=True) - 2 * a @ bank.T + (bank * bank).sum(1)
    return d2.amin(2).clamp_min(0).sqrt().reshape(n, 1, h, w)


def coreset(torch: Any, patches: Any, size: int, seed: int) -> Any:
    """Indices of `size` patches chosen by k-center greedy (each next one the farthest from those chosen)."""
    gen = torch.Generator().manual_seed(seed)
    dims = min(PROJECTION_DIMS, patches.shape[1])
    z = patches @ (torch.randn(patches.shape[1], dims, generator=gen) / dims ** 0.5)
    zz = (z * z).sum(1)
    chosen = [int(torch.randint(len(z), (1,), generator=gen))]
    dist = torch.addmv(zz, z, z[chosen[0]], alpha=-2).add_(zz[chosen[0]])
    for _ in range(size - 1):  # fused and in place: about ten times faster than the plain expression
        i = int(dist.argmax())
        chosen.append(i)
        torch.minimum(dist, torch.addmv(zz, z, z[i], alpha=-2).add_(zz[i]), out=dist)
    return torch.tensor(chosen)


def image_score(dist: Any) -> Any:
    """(N,) image scores of (N, 1, h, w) patch distances (or their logits: Platt's scaling is increasing)."""
    flat = dist.flatten(1)
    return flat.topk(min(SCORE_PATCHES, flat.shape[1]), 1).values.mean(1)


def score_map(torch: Any, net: Any, bank: Any, x: Any, platt: tuple[float, float],
              position_scale: float) -> tuple[Any, Any]:
    """(p_defect (N,), anomaly map (N, 1, net/MAP_STRIDE, net/MAP_STRIDE)) exactly as the graph computes them;
    `position_scale` is the position channels' absolute weight."""
    dist = nearest_distance(torch, located(torch, patch_features(torch, net, x), position_scale), bank)
    size = x.shape[2] // MAP_STRIDE
    logit = platt[0] * dist + platt[1]
    up = torch.nn.functional.interpolate(logit, size=(size, size), mode="bilinear", align_corners=False)
    return torch.sigmoid(image_score(logit)), torch.sigmoid(up)


def export_patchcore(net: Any, bank: np.ndarray, spec: InputSpec, platt: tuple[float, float], position_scale: float,
                     meta: dict[str, str], out: Path) -> None:
    g = GraphBuilder(spec)
    layers = GraphNet(g, net, spec)
    zero = layers.zero
    taps, sizes, wanted = [], [], taps_for(spec.net_size)
    for n, x in layers.blocks(upto=wanted[-1] + 1):
        if n in wanted:
            taps.append(x)
            sizes.append(layers.size)
    h = sizes[0]
    deep = _resize(g, taps[1], h, "deep_up")
    feats = g.node("Concat", [taps[0], deep], "patch", axis=1)
    c = bank.shape[1]
    located_feats = feats
    if position_scale:
        batch = g.node("Slice", [g.node("Shape", [feats], "patch.shape"), g.const("patch.0", np.array([0], np.int64)),
                                 g.const("patch.1", np.array([1], np.int64))], "patch.n")
        grid_shape = g.node("Concat", [batch, g.const("grid.chw", np.array([2, h, h], np.int64))], "grid.shape", axis=0)
        grid = g.node("Expand", [g.const("grid", position_grid(h, h, position_scale)), grid_shape], "grid.n")
        located_feats = g.node("Concat", [feats, grid], "patch_located", axis=1)
    a = g.node("Reshape", [located_feats, g.const("flat", np.array([0, c, -1], np.int64))], "patch_flat")
    a = g.node("Transpose", [a], "patches", perm=[0, 2, 1])  # (N, h*w, C)
    aa = g.node("ReduceSumSquare", [a], "aa", axes=[2], keepdims=1)
    ab = g.node("MatMul", [a, g.const("bank.t2", (-2 * bank.T).astype(np.float32))], "m2ab")
    d2 = g.node("Add", [g.node("Add", [aa, ab], "aa_m2ab"),
                        g.const("bank.bb", (bank.astype(np.float64) ** 2).sum(1).astype(np.float32))], "d2")
    d2 = g.node("ReduceMin", [d2], "d2_min", axes=[2], keepdims=0)
    d = g.node("Sqrt", [g.node("Clip", [d2, zero], "d2_pos")], "dist")
    d = g.node("Reshape", [d, g.const("map_shape", np.array([0, 1, h, h], np.int64))], "dist_map")
    logit = g.node("Add", [g.node("Mul", [d, g.const("platt.a", np.array(platt[0], np.float32))], "scaled_map"),
                           g.const("platt.b", np.array(platt[1], np.float32))], "map_logit")
    m = spec.net_size // MAP_STRIDE
    up = _resize(g, logit, m, "map_up")
    g.node("Sigmoid", [up], "anomaly_map")
    flat = g.node("Flatten", [logit], "map_logit_flat")  # (N, h*w)
    k = g.const("score_patches", np.array([min(SCORE_PATCHES, h * h)], np.int64))
    g.nodes.append(g.helper.make_node("TopK", [flat, k], ["top_logits", "top_patches"], axis=1))
    g.node("ReduceMean", ["top_logits"], "calibrated", axes=[1], keepdims=1)
    g.node("Sigmoid", ["calibrated"], "p_defect")
    g.node("Sub", [g.const("one", np.array(1.0, np.float32)), "p_defect"], "p_good")
    g.node("Concat", ["p_good", "p_defect"], "probs", axis=1)
    g.node("GlobalAveragePool", [feats], "patch_mean")
    g.node("Flatten", ["patch_mean"], "embedding")  # the image's mean patch feature: for drift detection
    embedding = c - (2 if position_scale else 0)  # the backbone's features, without the position channels
    g.save([("probs", ["N", 2]), ("anomaly_map", ["N", 1, m, m]), ("embedding", ["N", embedding])], meta, out)


def _resize(g: GraphBuilder, x: str, side: int, out: str) -> str:
    """Bilinear resize of (N, C, h, w) to (N, C, side, side), as torch's interpolate(size=...) does it."""
    nc = g.node("Slice", [g.node("Shape", [x], f"{out}.shape"), g.const(f"{out}.0", np.array([0], np.int64)),
                          g.const(f"{out}.2", np.array([2], np.int64))], f"{out}.nc")
    sizes = g.node("Concat", [nc, g.const(f"{out}.hw", np.array([side, side], np.int64))], f"{out}.sizes", axis=0)
    return g.node("Resize", [x, "", "", sizes], out, mode="linear", coordinate_transformation_mode="half_pixel")


def good_only_band(slope: float, worst_good: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """(Platt slope and intercept, REVIEW band) from good parts alone: REVIEW starts at the worst held-out good
    part's distance and FAIL at REVIEW_SPAN times it, with p(defect) = 0.5 halfway (geometrically) between.

    Synthetic anomalies set the slope but not the band: they are stronger than a line's subtle defects, and a
    band placed for them let 4-14 % of the emulator scenes' defects pass (benchmarks/goodonly.py). Anything
    farther from the good patches than every held-out good part is not passed: it goes to REVIEW, or FAIL."""
    middle = worst_good * REVIEW_SPAN ** 0.5
    # Synthetic anomalies that every held-out good part is far below make the fitted slope huge; the band's
    # edges would then round to p = 0 and 1 and every part would land in REVIEW.
    slope = min(slope, EDGE_LOGIT / max(middle - worst_good, 1e-12))
    intercept = -slope * middle
    low = 0.5 + 0.5 * np.tanh((slope * worst_good + intercept) / 2)  # the logistic, without overflow
    high = 0.5 + 0.5 * np.tanh((slope * worst_good * REVIEW_SPAN + intercept) / 2)
    return (slope, intercept), (round(float(low), 6), round(float(high), 6))


def _bank_size(patches: int, fraction: float) -> int:
    return min(patches, max(MIN_BANK, min(MAX_BANK, round(fraction * patches))))


def train_patchcore(data: Path | Dataset, out_dir: Path, opts: Any, log: Any = print) -> dict[str, Any]:
    """Fit the memory bank on the good images of `data`; calibrate and evaluate on held-out ones and real defects."""
    import torch

    from linewatch.model.onnx import Model

    t0 = time.monotonic()
    torch.manual_seed(opts.seed)
    ds, train_idx, val_idx, real = load_good_only(data, opts.frame_size, opts.channels, opts.val_fraction, opts.seed)
    assert ds.images is not None and ds.targets is not None
    n_good = len(train_idx) + len(val_idx)
    real = np.random.default_rng(opts.seed).permutation(real)
    cal_defects, eval_defects = (real[:len(real) // 2], real[len(real) // 2:]) if len(real) >= 4 else (real[:0], real)
    spec = input_spec(ds.images, train_idx, opts.net_size, opts.channels, DEFAULT_NET_SIZE["patchcore"])
    log(f"{n_good} good images {spec.width}x{spec.height} (memory bank from {len(train_idx)}, "
        f"calibration {len(val_idx)}), {len(real)} real defect images ({len(cal_defects)} calibrate, "
        f"{len(eval_defects)} evaluate)")
    net = build_backbone_net(torch, opts.channels, 2, spec).eval()
    with torch.no_grad():
        feats = torch.cat([patch_features(torch, net, prepared(torch, ds.images, train_idx[i:i + 16], spec))
                           for i in range(0, len(train_idx), 16)])
        # the position channels' weight: --position-weight times the features' typical spread (mean channel std)
        features = feats.shape[1]
        position_scale = opts.position_weight * float(feats.transpose(0, 1).reshape(features, -1).std(1).mean())
        feats = located(torch, feats, position_scale)
        patches = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
        size = _bank_size(len(patches), opts.coreset)
        bank = patches[coreset(torch, patches, size, opts.seed)].contiguous()
        log(f"memory bank: {size} of {len(patches)} patches ({feats.shape[1]} features) "
            f"in {time.monotonic() - t0:.1f} s")

        def raw_scores(x: Any) -> Any:
            return torch.cat([image_score(nearest_distance(
                torch, located(torch, patch_features(torch, net, x[i:i + 16]), position_scale), bank))
                for i in range(0, len(x), 16)])

        xv = prepared(torch, ds.images, val_idx, spec)
        xs, _, ls = synthesize(torch, xv.repeat(2, 1, 1, 1), torch.Generator().manual_seed(opts.seed + 1))
        scores, labels = raw_scores(xs), ls
        if len(cal_defects):
            scores = torch.cat([scores, raw_scores(prepared(torch, ds.images, cal_defects, spec))])
            labels = torch.cat([labels, torch.ones(len(cal_defects))])
    scale = float(scores.std()) or 1.0
    a, b = _platt(torch, scores / scale, labels)
    platt = (max(a, 1e-3) / scale, b)
    if len(cal_defects):  # real defects: the band that meets the escape target on them
        p_cal = torch.sigmoid(platt[0] * scores + platt[1]).numpy()
        band = choose_band(p_cal, labels.numpy() > 0.5, 0.5, opts.target_escape, opts.max_review)
    else:
        platt, band = good_only_band(platt[0], float(scores[labels < 0.5].max()))
        p_cal = torch.sigmoid(platt[0] * scores + platt[1]).numpy()
    calibration = evaluate(np.stack([1 - p_cal, p_cal], 1), labels.numpy().astype(np.int64), ["good", "defect"], band)
    meta = contract_metadata(opts.name, "patchcore", spec, ["good", "defect"], ["defect"], band,
                             ds.images[train_idx], p_cal[labels.numpy() < 0.5], ds.content_hash(), opts,
                             ds.snapshot)
    meta["linewatch.outputs"] = "probs, anomaly_map, embedding"
    meta["linewatch.memory_bank"] = str(size)
    meta["linewatch.position_weight"] = f"{opts.position_weight:g}"
    meta["linewatch.score_patches"] = str(SCORE_PATCHES)
    onnx_path = out_dir / f"{opts.name}.onnx"
    bank_np = bank.numpy()
    export_patchcore(net, bank_np, spec, platt, position_scale, meta, onnx_path)
    fit_seconds = round(time.monotonic() - t0, 1)
    model = Model(onnx_path, providers="cpu")
    with torch.no_grad():
        ref_p, ref_map = score_map(torch, net, bank, prepared(torch, ds.images, val_idx[:16], spec), platt,
                                   position_scale)
    pred = model.predict(ds.images[val_idx[:16]])
    assert pred.anomaly_maps is not None
    parity = max(float(np.abs(pred.probs[:, 1] - ref_p.numpy()).max()),
                 float(np.abs(pred.anomaly_maps - ref_map[:, 0].numpy()).max()))
    if parity > PARITY:
        onnx_path.unlink()
        raise RuntimeError(f"ONNX export disagrees with PyTorch by {parity:.2e} (> {PARITY}); model not written")
    metrics: dict[str, Any] = {**calibration, "onnx_torch_max_abs_diff": parity,
                               "evaluated_on": "validation good images with synthetic anomalies"
                                               + (" and half of the real defects" if len(cal_defects) else "")}
    if len(eval_defects):
        metrics["real_defects"] = real_defect_metrics(model, ds, val_idx, eval_defects, band)
    card = {
        "name": opts.name, "kind": "patchcore", "file": onnx_path.name, "labels": ["good", "defect"],
        "input": {"layout": spec.layout, "height": spec.height, "width": spec.width, "channels": opts.channels,
                  "dtype": "uint8", "net_size": spec.net_size},
        "backbone": net.weights.card(),
        "memory_bank": {"size": size, "patches": len(patches), "features": int(features),
                        "fraction": round(size / len(patches), 4), "taps": list(taps_for(spec.net_size)),
                        "position_weight": opts.position_weight, "position_channel_scale": round(position_scale, 6),
                        "score_patches": SCORE_PATCHES,
                        "projection_dims": PROJECTION_DIMS},
        "data": {"source": ds.source, "dataset_sha256": meta["linewatch.dataset_sha256"], **snapshot_field(ds),
                 "count": len(ds.items),
                 "class_counts": {"good (trained on)": n_good, "defect (calibration / evaluation)":
                                                                        f"{len(cal_defects)} / {len(eval_defects)}"},
                 "split": {"train": len(train_idx), "validation": len(val_idx), "seed": opts.seed,
                           "stratified_by": "good images only"}},
        "training": {"epochs_run": 0, "best_epoch": 0, "interrupted": False, "seconds": fit_seconds,
                     "seed": opts.seed, "options": {k: v for k, v in asdict(opts).items() if k != "frame_size"},
                     "code_version": meta["linewatch.code_version"], "torch": torch.__version__},
        "calibration": {"platt": list(platt), "band": list(band), "target_escape": opts.target_escape,
                        "max_review": opts.max_review},
        "metrics": metrics,
    }
    return write_card(card, onnx_path)
