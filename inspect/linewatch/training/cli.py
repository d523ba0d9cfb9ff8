"""`linewatch train`: train, calibrate and export a model with its card (needs the `train` extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: training needs the train extra: pip install -e '.[train]'", file=sys.stderr)
        return 2
    from linewatch.training.backbone import BackboneError
    from linewatch.training.dataset import DatasetError
    from linewatch.training.trainer import TrainOptions, train

    size = tuple(int(v) for v in args.frame_size.lower().split("x")) if args.frame_size else None
    opts = TrainOptions(name=args.name, kind=args.kind, net_size=args.net_size, arch=args.arch,
                        backbone=args.backbone, channels=args.channels,
                        frame_size=size,  # type: ignore[arg-type]
                        epochs=args.epochs, batch=args.batch, lr=args.lr, label_smoothing=args.label_smoothing,
                        class_weights=not args.no_class_weights, soft_targets=args.soft_targets,
                        patience=args.patience, max_minutes=args.max_minutes,
                        val_fraction=args.val_fraction, seed=args.seed, flips=not args.no_flips,
                        rotate90=args.rotate90, shift_px=args.shift, target_escape=args.target_escape,
                        max_review=args.max_review, coreset=args.coreset)
    try:
        card = train(Path(args.data), Path(args.out), opts)
    except (DatasetError, BackboneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = card["metrics"]
    print(f"wrote {Path(args.out) / card['file']} sha256 {card['sha256'][:12]}: accuracy {m['accuracy']}, "
          f"escape {m['escape_rate']}, false reject {m['false_reject_rate']}, review {m['review_rate']}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("train", help="train a classifier or a good-only anomaly model from folders or a manifest")
    p.add_argument("data", help="folder with good/ and defect subfolders, or manifest.csv/.json (path,label,...)")
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
    p.set_defaults(func=_cmd_train)
