"""`linewatch train`: a classifier on a plain CPU, calibrated, exported with its card.

The network is the pretrained EfficientNet-Lite0 (backbone.py) fine-tuned with a new head: the
backbone stays frozen for the first FREEZE_FRACTION of training while the head learns, then all
layers train, the backbone at BACKBONE_LR_FACTOR of the head's learning rate. `backbone="none"`
trains a compact CNN from scratch instead (network.py).

AdamW with a one-cycle learning-rate schedule (over the epochs, or over a wall-clock budget when
one is given, so a busy CPU trains fewer epochs but still anneals and finishes on time); early
stopping on a stratified validation split keeps the best epoch; Ctrl-C stops training and still
exports the best model so far. Temperature scaling makes the scores probabilities, and the
fail-safe's band is chosen on the validation split for a target escape rate and REVIEW rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.training.backbone import (
    BACKBONES,
    FIXED_BLOCKS,
    STAGES,
    VIEWS,
    Weights,
    build_backbone_net,
    export_backbone_onnx,
)
from linewatch.training.bias import card_fields
from linewatch.training.card import write_card
from linewatch.training.common import (
    DEFAULT_NET_SIZE,
    EarlyStopping,
    contract_metadata,
    input_spec,
    prepared,
    snapshot_field,
)
from linewatch.training.dataset import Dataset, load_dataset, stratified_split
from linewatch.training.evaluate import choose_band, evaluate
from linewatch.training.network import InputSpec, build_net, export_onnx, preprocess

BN_IMAGES = 512
FREEZE_FRACTION = 0.3
BACKBONE_LR_FACTOR = 0.1
# Largest |PyTorch - ONNX Runtime| on probabilities before an export is refused. The backbone's sixty-odd
# float32 layers run in a different order in ONNX Runtime, so it gets a wider (still negligible) tolerance.
PARITY = {"none": 1e-4, "efficientnet-lite0": 1e-3}  # probabilities; float32 rounding grows with depth
MAP_PARITY = 1e-2  # a backbone classifier's CAM: about 2.5 grey levels of its PNG


@dataclass(frozen=True)
class TrainOptions:
    name: str = "model"
    kind: str = "classifier"  # or "anomaly" / "patchcore": from good images only
    net_size: int | None = None  # None: the kind's default (DEFAULT_NET_SIZE)
    arch: str = "compact"  # or "fine": thin defects, see network.py (only with backbone "none")
    backbone: str = "none"  # or "efficientnet-lite0": ImageNet-pretrained (the CLI's default), see backbone.py
    channels: int = 1
    frame_size: tuple[int, int] | None = None  # (width, height); None = the first image's
    epochs: int = 30
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    class_weights: bool = True  # rare defects weigh more: fewer escapes, a little lower accuracy
    soft_targets: bool = False  # train towards the manifest's `defect_probability` instead of the hard label
    patience: int = 6
    max_minutes: float | None = None  # wall-clock budget for the training loop
    val_fraction: float = 0.2
    seed: int = 0
    flips: bool = True
    rotate90: bool = False
    shift_px: int = 0  # random translation up to this many pixels (edges replicated): parts move on a belt
    target_escape: float = 0.01
    max_review: float = 0.05
    coreset: float = 0.02  # patchcore: share of the good patches kept in the memory bank
    position_weight: float = 2.0  # patchcore: how much a patch's place counts (0: anywhere on the part)
    freeze_fraction: float = FREEZE_FRACTION  # backbone: share of training with only the new head learning
    fixed_blocks: int = FIXED_BLOCKS  # backbone: its first blocks keep their ImageNet weights (faster steps)
    tta: int = 1  # backbone classifier: test-time orientations averaged in the exported graph (1, 2, 4, 8)


def options_error(opts: TrainOptions) -> str | None:
    """Why `opts` cannot train, in one line; None when they can."""
    blocks = sum(stage[0] for stage in STAGES)
    if opts.tta not in VIEWS:
        return f"--tta {opts.tta}: choose one of {list(VIEWS)}"
    if opts.tta > 1 and (opts.kind != "classifier" or opts.backbone == "none"):
        return "--tta needs a classifier on the pretrained backbone (--kind classifier --backbone efficientnet-lite0)"
    if opts.tta > 1 and not opts.flips:
        return f"--tta {opts.tta} shows the model mirrored parts, but --no-flips says the part is not symmetric"
    if opts.tta == 8 and not opts.rotate90:
        return "--tta 8 shows the model transposed parts: it needs --rotate90 (the part may lie turned)"
    if not 0 <= opts.position_weight < 1000:
        return f"--position-weight {opts.position_weight:g}: give 0 (place does not count) or a positive weight"
    if not 0 <= opts.fixed_blocks <= blocks:
        return f"--fixed-blocks {opts.fixed_blocks}: the backbone has {blocks} blocks (0 trains them all)"
    return None


def _augment(torch: Any, x: Any, opts: TrainOptions, gen: Any) -> Any:
    """Industrial-camera variation: flips/rotations where the part allows, brightness, contrast, noise, blur."""
    n = x.shape[0]
    if opts.flips:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(2), x)
    if opts.rotate90 and x.shape[2] == x.shape[3]:  # with the flips, all eight 90-degree orientations
        turn = torch.rand(n, generator=gen) < 0.5
        x = torch.where(turn[:, None, None, None], x.transpose(2, 3), x)
    elif opts.rotate90 and torch.rand(1, generator=gen).item() < 0.5:
        x = x.rot90(1, dims=(2, 3))
    if opts.shift_px:
        s = opts.shift_px
        padded = torch.nn.functional.pad(x, (s, s, s, s), mode="replicate")
        dy, dx = (torch.randint(0, 2 * s + 1, (2, n), generator=gen)).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + x.shape[2], dx[i]:dx[i] + x.shape[3]] for i in range(n)])
    # Mild photometric jitter: strong per-image gain/offset made the network learn the jitter (measured).
    gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.1
    x = x * gain + torch.randn(x.shape, generator=gen) * 0.03
    blur = torch.rand(n, generator=gen) < 0.1
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
        blurred = torch.nn.functional.conv2d(x, kernel, padding=1, groups=x.shape[1])
        x = torch.where(blur[:, None, None, None], blurred, x)
    return x


def _recalibrate_bn(torch: Any, net: Any, x: Any) -> None:
    """Batch-norm statistics from clean (unaugmented) training images, so eval mode sees what the line sees."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass below
    net.train()
    with torch.no_grad():
        sample = x[torch.linspace(0, len(x) - 1, min(len(x), BN_IMAGES)).long()]  # spread over every class
        _predict(torch, net, sample)
    for m in bns:
        m.momentum = 0.1
    net.eval()


def _progress(step: int, total: int, seconds: float, max_minutes: float | None) -> float:
    """How far through training we are: by steps, or by the time budget if that runs out first."""
    by_steps = step / total
    return by_steps if max_minutes is None else max(by_steps, seconds / (60 * max_minutes))


def _one_cycle(lr: float, progress: float, warmup: float = 0.2) -> float:
    """Learning rate at `progress` (0..1): cosine warm-up from lr/25 to lr, then cosine annealing to ~0."""
    if progress < warmup:
        return lr / 25 + (lr - lr / 25) * (1 - math.cos(math.pi * progress / warmup)) / 2
    return lr * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup)))) / 2 + lr * 1e-4


def _fast(torch: Any, x: Any) -> Any:
    """NHWC memory for the CPU convolutions: the faster layout for oneDNN (figure in benchmarks/RESULTS.md, ELPV)."""
    return x.contiguous(memory_format=torch.channels_last)


def _weighted_threshold(weights: np.ndarray, counts: np.ndarray) -> float:
    """The defect probability at which the class weights' costs balance: w_good (1 - p) = w_defect p, w_defect the
    defect classes' weight averaged over their parts. With the weights taken out of the logits (calibrated
    probabilities), deciding FAIL above it keeps what the weights were for (fewer escapes); 0.5 without weights."""
    w_defect = float((weights[1:] * counts[1:]).sum() / max(counts[1:].sum(), 1.0))
    return round(min(max(float(weights[0]) / (float(weights[0]) + w_defect), 0.05), 0.95), 6)


def _temperature(torch: Any, logits: Any, targets: Any) -> float:
    """The temperature minimising validation NLL (grid search: robust with small splits)."""
    best, best_t = math.inf, 1.0
    for t in np.exp(np.linspace(np.log(0.25), np.log(10.0), 80)):
        nll = float(torch.nn.functional.cross_entropy(logits / float(t), targets))
        if nll < best:
            best, best_t = nll, float(t)
    return round(best_t, 4)


def train(data: Path | Dataset, out_dir: Path, opts: TrainOptions, log: Any = print) -> dict[str, Any]:
    """Train on `data` (a folder or manifest, or a dataset already listed: a snapshot's, data/trainset.py), write
    `<out_dir>/<name>.onnx`, `card.json`, `CARD.md`; return the card."""
    import torch

    problem = options_error(opts)
    if problem:
        raise ValueError(problem)
    if opts.kind == "anomaly":
        from linewatch.training.anomaly import train_anomaly

        return train_anomaly(data, out_dir, opts, log)
    if opts.kind == "patchcore":
        from linewatch.training.patchcore import train_patchcore

        return train_patchcore(data, out_dir, opts, log)
    t0 = time.monotonic()
    torch.manual_seed(opts.seed)
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    ds.load(opts.frame_size, opts.channels)
    assert ds.images is not None and ds.targets is not None
    train_idx, val_idx = stratified_split(ds.targets, opts.val_fraction, opts.seed)
    default = DEFAULT_NET_SIZE["backbone" if opts.backbone != "none" else "classifier"]
    spec = input_spec(ds.images, train_idx, opts.net_size, opts.channels, default)
    h, w = spec.height, spec.width
    log(f"{len(ds.items)} images {w}x{h}x{opts.channels}, labels {ds.labels}, "
        f"train {len(train_idx)} / validation {len(val_idx)}")
    xt, xv = prepared(torch, ds.images, train_idx, spec), prepared(torch, ds.images, val_idx, spec)
    yt, yv = torch.from_numpy(ds.targets[train_idx]), torch.from_numpy(ds.targets[val_idx])
    fit_to = torch.from_numpy(ds.soft_targets()[train_idx]) if opts.soft_targets else yt
    counts = torch.bincount(yt, minlength=len(ds.labels)).float().clamp(min=1)
    weights = counts.sum() / (len(ds.labels) * counts)  # class imbalance: rare defects weigh more
    if not opts.class_weights:
        weights = torch.ones_like(weights)
    net, groups = _build(torch, opts, spec, len(ds.labels))
    optim = torch.optim.AdamW(groups, lr=opts.lr, weight_decay=opts.weight_decay)
    frozen = len(groups) > 1 and opts.freeze_fraction > 0
    _freeze(groups, frozen)
    steps, step, progress, t_loop = math.ceil(len(xt) / opts.batch), 0, 0.0, time.monotonic()
    _set_lr(optim, opts.lr, progress)
    gen = torch.Generator().manual_seed(opts.seed)
    stopper = EarlyStopping(torch, net, opts.patience, out_dir / "checkpoint.pt",
                            {"spec": asdict(spec), "labels": ds.labels}, log)
    interrupted = False
    epoch = 0
    try:
        for epoch in range(1, opts.epochs + 1):
            net.train()
            perm = torch.randperm(len(xt), generator=gen)
            total, seen = 0.0, 0
            for i in range(0, len(xt), opts.batch):
                if progress >= 1:
                    break
                idx = perm[i:i + opts.batch]
                loss = torch.nn.functional.cross_entropy(net(_fast(torch, _augment(torch, xt[idx], opts, gen))),
                                                         fit_to[idx], weight=weights,
                                                         label_smoothing=opts.label_smoothing)
                optim.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optim.step()
                step += 1
                progress = _progress(step, steps * opts.epochs, time.monotonic() - t_loop, opts.max_minutes)
                _set_lr(optim, opts.lr, progress)
                if frozen and progress >= opts.freeze_fraction:
                    frozen = _freeze(groups, False)
                    log(f"backbone unfrozen at {100 * progress:.0f} % of training")
                total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
            _recalibrate_bn(torch, net, xt)
            with torch.no_grad():
                logits = _predict(torch, net, xv)
                val_loss = float(torch.nn.functional.cross_entropy(logits, yv, weight=weights))
                val_acc = float((logits.argmax(1) == yv).float().mean())
            log(f"epoch {epoch}/{opts.epochs}  loss {total / max(1, seen):.4f}  val_loss {val_loss:.4f}  "
                f"val_acc {val_acc:.4f}")
            if stopper.update(epoch, val_loss):
                break
            if progress >= 1 and epoch < opts.epochs:
                log(f"time budget of {opts.max_minutes} min spent after {epoch} epochs")
                break
    except KeyboardInterrupt:
        interrupted = True
        log(f"interrupted: exporting the best model so far (epoch {stopper.best_epoch})")
    stopper.restore()
    if opts.tta > 1:  # calibrated and exported as the line will run it: on every orientation
        net.views = opts.tta
    with torch.no_grad():
        # Weighted training moves each class's optimal logit by log(weight) (Menon et al. 2021, logit adjustment):
        # taken back out of the head's bias, so the calibrated probabilities estimate real defect rates (CBPE).
        head = net._fc if hasattr(net, "_fc") else list(net)[-1]
        head.bias -= torch.log(weights)
        logits = _predict(torch, net, xv)
    temperature = _temperature(torch, logits, yv)
    probs = torch.softmax(logits / temperature, dim=1).numpy()
    p_defect = probs[:, 1:].sum(axis=1)
    threshold = _weighted_threshold(weights.numpy(), counts.numpy())
    band = choose_band(p_defect, ds.targets[val_idx] != 0, threshold, opts.target_escape, opts.max_review)
    metrics = evaluate(probs, ds.targets[val_idx], ds.labels, band, threshold)
    dataset_hash = ds.content_hash()
    meta = contract_metadata(opts.name, "classifier", spec, ds.labels, ds.defect_labels, band,
                             ds.images[train_idx], p_defect, dataset_hash, opts, ds.snapshot, threshold)
    meta["linewatch.temperature"] = str(temperature)
    pretrained: Weights | None = getattr(net, "weights", None)
    if pretrained is not None:
        meta["linewatch.backbone"] = f"{pretrained.card()['name']} sha256 {pretrained.sha256}"
    onnx_path = out_dir / f"{opts.name}.onnx"
    (export_onnx if pretrained is None else export_backbone_onnx)(net, spec, temperature, meta, onnx_path)
    parity = _parity(torch, net, temperature, spec, ds.images[val_idx[:64]], onnx_path, PARITY[opts.backbone])
    card = {
        "name": opts.name, "kind": "classifier", "file": onnx_path.name, "labels": ds.labels,
        "input": {"layout": spec.layout, "height": h, "width": w, "channels": opts.channels, "dtype": "uint8",
                  "net_size": spec.net_size},
        "data": {"source": ds.source, "dataset_sha256": dataset_hash, **snapshot_field(ds), "count": len(ds.items),
                 "class_counts": {lab: int((ds.targets == i).sum()) for i, lab in enumerate(ds.labels)},
                 "split": {"train": len(train_idx), "validation": len(val_idx), "seed": opts.seed,
                           "stratified_by": "label"}},
        "training": {"epochs_run": epoch if not interrupted else stopper.best_epoch, "best_epoch": stopper.best_epoch,
                     "interrupted": interrupted, "seconds": round(time.monotonic() - t0, 1), "seed": opts.seed,
                     "options": {k: v for k, v in asdict(opts).items() if k != "frame_size"},
                     "code_version": meta["linewatch.code_version"], "torch": torch.__version__},
        "calibration": {"temperature": temperature, "band": list(band), "target_escape": opts.target_escape,
                        "max_review": opts.max_review},
        "metrics": {**metrics, "onnx_torch_max_abs_diff": parity},
    }
    card |= card_fields([ds.items[i].segments for i in val_idx], p_defect, ds.targets[val_idx] != 0, band, threshold)
    if pretrained is not None:
        card["backbone"] = pretrained.card()
    return write_card(card, onnx_path)


def _build(torch: Any, opts: TrainOptions, spec: InputSpec, classes: int) -> tuple[Any, list[dict[str, Any]]]:
    """The network and its optimiser groups: one, or the new head then the pretrained backbone."""
    if opts.backbone == "none":
        net = build_net(torch, opts.channels, classes, opts.arch).to(memory_format=torch.channels_last)
        return net, [{"params": list(net.parameters()), "lr_factor": 1.0}]
    if opts.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {opts.backbone!r}; choose one of {list(BACKBONES)}")
    net = build_backbone_net(torch, opts.channels, classes, spec, fixed_blocks=opts.fixed_blocks)
    net = net.to(memory_format=torch.channels_last)
    return net, [{"params": list(net._fc.parameters()), "lr_factor": 1.0},
                 {"params": net.backbone_parameters(), "lr_factor": BACKBONE_LR_FACTOR}]


def _freeze(groups: list[dict[str, Any]], frozen: bool) -> bool:
    """Freeze or release every group after the first (the pretrained backbone); returns `frozen`."""
    for group in groups[1:]:
        for p in group["params"]:
            p.requires_grad_(not frozen)
    return frozen


def _set_lr(optim: Any, lr: float, progress: float) -> None:
    for group in optim.param_groups:
        group["lr"] = _one_cycle(lr, progress) * group["lr_factor"]


def _predict(torch: Any, net: Any, x: Any) -> Any:
    """Logits in slices, so a large validation split at full resolution fits in memory."""
    return torch.cat([net(_fast(torch, x[i:i + 128])) for i in range(0, len(x), 128)])


def _parity(torch: Any, net: Any, temperature: float, spec: InputSpec, frames: np.ndarray, onnx_path: Path,
            tolerance: float) -> float:
    """PyTorch and ONNX Runtime must agree within `tolerance` on real images (probabilities, and the CAM of a
    backbone classifier), or the export is refused."""
    from linewatch.model.onnx import Model

    model = Model(onnx_path, providers="cpu")
    info = model.info
    with torch.no_grad():
        x = preprocess(torch, torch.from_numpy(frames), spec)
        ref = torch.softmax(net(x) / temperature, dim=1).numpy()
        cam = net.cam(x, [i for i, lab in enumerate(info.labels) if lab in info.defect_labels]) \
            if hasattr(net, "cam") else None
    got = model.predict(frames)
    diff = float(np.abs(ref - got.probs).max())
    if cam is not None and got.anomaly_maps is not None:
        # The map explains, it does not decide, and it is shown as an 8-bit PNG (steps of 1/255); normalised
        # by each frame's own peak, a faint map magnifies float32 rounding: held to MAP_PARITY instead.
        map_diff = float(np.abs(cam[:, 0].numpy() - got.anomaly_maps).max())
        if map_diff > MAP_PARITY:
            onnx_path.unlink()
            raise RuntimeError(f"ONNX export's CAM disagrees with PyTorch by {map_diff:.2e} (> {MAP_PARITY:.0e}); "
                               "model not written")
    if diff > tolerance:
        onnx_path.unlink()
        raise RuntimeError(f"ONNX export disagrees with PyTorch by {diff:.2e} (> {tolerance:.0e}); model not written")
    return diff
