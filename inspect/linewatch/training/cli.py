"""`linewatch train`: train, calibrate and export a model with its card (needs the `train` extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


class _Refused(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _snapshot_ref(args: argparse.Namespace) -> str | None:
    """The snapshot DATA names (`data:<id>`), or `--snapshot`; None for a folder or manifest."""
    from linewatch.data.trainset import PREFIX

    if args.snapshot and args.data and not args.data.startswith(PREFIX):
        raise _Refused(f"give DATA or --snapshot, not both ({args.data!r} and --snapshot {args.snapshot})", 2)
    if args.data and args.data.startswith(PREFIX):
        return str(args.data)
    return str(args.snapshot) if args.snapshot else None


def _snapshot_data(args: argparse.Namespace, opts: Any) -> Any:
    """The snapshot's dataset, read in place from the data registry after `data check` passed on it."""
    from linewatch.data.items import DataError
    from linewatch.data.registry import open_registry
    from linewatch.data.trainset import checked_snapshot

    ref = _snapshot_ref(args)
    assert ref is not None
    try:
        got = checked_snapshot(open_registry(args.registry, args.config, args.data_dir), ref,
                               opts.val_fraction, opts.seed, require_defects=opts.kind == "classifier")
    except DataError as exc:
        raise _Refused(str(exc), 2) from None
    _refuse_on_errors(got.check, f"snapshot {got.snapshot.id[:12]}", f" ({got.snapshot.name})")
    print(f"training on snapshot {got.snapshot.id} ({got.snapshot.name}): {got.snapshot.items} item(s), "
          "read from the data registry")
    return got.dataset


def _refuse_on_errors(result: Any, what: str, detail: str = "") -> None:
    """Print the check's summary; refuse to train (exit 1) when it found errors, naming the first ones."""
    from linewatch.data.report import summary

    print(summary(result, f"check of {what}{detail}"))
    if result.errors:
        first = "; ".join(f.message for f in result.errors[:3])
        more = f"; and {len(result.errors) - 3} more" if len(result.errors) > 3 else ""
        raise _Refused(f"not trained: {what} fails its check ({first}{more})", 1)


def _folder_data(args: argparse.Namespace, opts: Any) -> Path:
    """DATA as a folder or manifest, after `data check` passed on it in the trainer's order (its split)."""
    from linewatch.data.check import Recipe, check
    from linewatch.data.items import DataError, read_sources

    data = Path(args.data)
    try:
        entries, _ = read_sources([data], sort=False)
        result = check(entries, Recipe(val_fraction=opts.val_fraction, seed=opts.seed))
    except DataError as exc:
        raise _Refused(str(exc), 2) from None
    _refuse_on_errors(result, str(data))
    return data


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: training needs the train and data extras: pip install -e '.[train,data]'", file=sys.stderr)
        return 2
    from linewatch.training.backbone import BackboneError
    from linewatch.training.dataset import DatasetError
    from linewatch.training.trainer import TrainOptions, options_error, train

    size = tuple(int(v) for v in args.frame_size.lower().split("x")) if args.frame_size else None
    opts = TrainOptions(name=args.name, kind=args.kind, net_size=args.net_size, arch=args.arch,
                        backbone=args.backbone, channels=args.channels,
                        frame_size=size,  # type: ignore[arg-type]
                        epochs=args.epochs, batch=args.batch, lr=args.lr, label_smoothing=args.label_smoothing,
                        class_weights=not args.no_class_weights, soft_targets=args.soft_targets,
                        patience=args.patience, max_minutes=args.max_minutes,
                        val_fraction=args.val_fraction, seed=args.seed, flips=not args.no_flips,
                        rotate90=args.rotate90, shift_px=args.shift, target_escape=args.target_escape,
                        max_review=args.max_review, coreset=args.coreset,
                        position_weight=args.position_weight, tta=args.tta,
                        fixed_blocks=args.fixed_blocks)
    problem = options_error(opts)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not args.data and not args.snapshot:
        print("error: give DATA (a folder, a manifest or data:ID) or --snapshot ID", file=sys.stderr)
        return 2
    try:
        data = _snapshot_data(args, opts) if _snapshot_ref(args) else _folder_data(args, opts)
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    try:
        card = train(data, Path(args.out), opts)
    except (DatasetError, BackboneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = card["metrics"]
    print(f"wrote {Path(args.out) / card['file']} sha256 {card['sha256'][:12]}: accuracy {m['accuracy']}, "
          f"escape {m['escape_rate']}, false reject {m['false_reject_rate']}, review {m['review_rate']}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("train", help="train a classifier or a good-only anomaly model from folders, a manifest or a "
                                            "dataset snapshot")
    p.add_argument("data", nargs="?",
                   help="folder with good/ and defect subfolders, manifest.csv/.json (path,label,...), or data:ID, "
                        "a snapshot of the data registry (id or unique prefix)")
    p.add_argument("--snapshot", help="train on this snapshot of the data registry (instead of DATA)")
    p.add_argument("--registry", help="the data registry folder (default: data_dir/datasets)")
    p.add_argument("--config", help="YAML config file (for data_dir)")
    p.add_argument("--data-dir", help="the line's data directory (overrides the config)")
    p.add_argument("--out", required=True, help="output folder for <name>.onnx, card.json, CARD.md")
    p.add_argument("--name", default="model", help="model name (file name and metadata)")
    p.add_argument("--kind", choices=["classifier", "anomaly", "patchcore"], default="classifier",
                   help="classifier (labelled good/defect); anomaly or patchcore (fitted on good images only)")
    p.add_argument("--net-size", type=int, help="side the network sees after in-graph resize (default by kind: 64; "
                                                "224 on the backbone; 256 for patchcore; at most the frame's)")
    p.add_argument("--arch", choices=["compact", "fine"], default="compact",
                   help="compact, or fine for thin defects such as cracks (deeper, sees every pixel; slower)")
    p.add_argument("--backbone", choices=["efficientnet-lite0", "none"], default="efficientnet-lite0",
                   help="classifier: fine-tune ImageNet EfficientNet-Lite0, or none = train --arch from scratch")
    p.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1 = Mono8 frames, 3 = RGB8")
    p.add_argument("--frame-size", help="WxH of the line's frames (default: the first image's size)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--label-smoothing", type=float, default=0.0, help="for labels that experts disagree on")
    p.add_argument("--soft-targets", action="store_true",
                   help="fit the manifest's defect_probability column (experts' confidence) instead of the label")
    p.add_argument("--no-class-weights", action="store_true",
                   help="do not weigh rare classes up (higher accuracy, more escapes)")
    p.add_argument("--patience", type=int, default=6, help="early stop after N epochs without improvement")
    p.add_argument("--max-minutes", type=float,
                   help="wall-clock budget: the learning-rate schedule ends on time even if fewer epochs fit")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-flips", action="store_true", help="the part is not symmetric: no flip augmentation")
    p.add_argument("--rotate90", action="store_true", help="the part may appear rotated by 90 degrees")
    p.add_argument("--shift", type=int, default=0, help="augment with random shifts of up to N pixels")
    p.add_argument("--target-escape", type=float, default=0.01, help="escape rate the REVIEW band aims for")
    p.add_argument("--max-review", type=float, default=0.05, help="largest share of parts sent to REVIEW")
    p.add_argument("--coreset", type=float, default=0.02,
                   help="patchcore: share of the good images' patches kept in the memory bank")
    p.add_argument("--position-weight", type=float, default=2.0,
                   help="patchcore: how much a patch's place in the frame counts when it is compared with the good "
                        "ones (0: a patch may match good patches anywhere; for textures and parts that turn freely)")
    p.add_argument("--tta", type=int, default=1,
                   help="backbone classifier: decide on 2 (mirrored), 4 (flipped) or 8 (and transposed, needs "
                        "--rotate90) orientations of each frame, averaged; costs that many times the inference")
    p.add_argument("--fixed-blocks", type=int, default=3,
                   help="backbone: its first N blocks keep their ImageNet weights (0: fine-tune every layer, "
                        "slower steps)")
    p.set_defaults(func=_cmd_train)
