"""ELPV solar-cell benchmark: `linewatch train` on a real industrial dataset, on the CPU.

    .venv/bin/pip install -e '.[train,bench]'
    .venv/bin/python benchmarks/elpv.py --net-size 300 --label-smoothing 0.1   # the recorded run, <= 30 min
    .venv/bin/python benchmarks/elpv.py --backbone none --max-minutes 24       # from scratch

2,624 electroluminescence images (300x300 Mono8) of solar cells with a defect probability from
experts; defective = probability >= 0.5. Split 75/25 stratified by label and cell type
(mono/poly), as in Deitsch et al. 2019. Trains with the project's own trainer on the 75 % (its
validation split for early stopping and calibration comes out of that), then evaluates the exported
ONNX model on the untouched 25 %. Prints the figures and their row for the table in
benchmarks/RESULTS.md and writes them to benchmarks/results/elpv.json (a `--backbone none` run under
its `from_scratch` key).

Defaults: the ImageNet EfficientNet-Lite0 backbone at 224 px (its pretraining size; `--net-size 300`
keeps every pixel of the cell), the new head alone for the first 10 % of the budget, all eight
90-degree orientations, no class weights (the figure of merit is accuracy), and a wall-clock budget
for the training loop so the whole run, evaluation included, ends within 30 minutes however busy the
CPU. From scratch (`--backbone none`): the `fine` architecture at the full 300 px (cracks are one or
two pixels wide: halving the image erased them).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from linewatch.model.onnx import Model
from linewatch.model.registry import holdout_metrics
from linewatch.training.trainer import TrainOptions, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_session import latency

RESULTS = Path(__file__).resolve().parent / "results" / "elpv.json"


def _elpv_rows() -> list[dict[str, str]]:
    try:
        import elpv_dataset
    except ImportError:
        sys.exit("needs the dataset: .venv/bin/pip install elpv-dataset")
    data = Path(elpv_dataset.__file__).parent / "data"
    rows = []
    for line in (data / "labels.csv").read_text().split("\n"):
        if line.strip():
            path, prob, kind = line.split()
            rows.append({"path": str(data / path), "label": "defect" if float(prob) >= 0.5 else "good",
                         "cell_type": kind, "defect_probability": prob})
    return rows


def _split(rows: list[dict[str, str]], seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rng = np.random.default_rng(seed)
    train_rows, test_rows = [], []
    for key in sorted({(r["label"], r["cell_type"]) for r in rows}):
        group = [r for r in rows if (r["label"], r["cell_type"]) == key]
        order = rng.permutation(len(group))
        n_test = round(len(group) * 0.25)
        test_rows += [group[i] for i in order[:n_test]]
        train_rows += [group[i] for i in order[n_test:]]
    return train_rows, test_rows


def _manifest(rows: list[dict[str, str]], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "cell_type", "defect_probability"])
        writer.writeheader()
        writer.writerows(rows)
    return path


class _Cells:
    """The exported model shaped like ort_session's Runner (square Mono8 frames), so its `latency` times it."""

    def __init__(self, path: Path):
        self.model = Model(path, providers="cpu", intra_op_threads=1)
        self.size = self.model.info.width

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.model.run(frames)


def _frame_ms(path: Path) -> float:
    """The exported model's p50 per cell on one ONNX Runtime thread (what test-time orientations cost)."""
    return round(float(np.percentile(latency(_Cells(path), 30, 1.0), 50)), 2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="efficientnet-lite0", choices=["efficientnet-lite0", "none"])
    ap.add_argument("--arch", default="fine", choices=["compact", "fine"], help="with --backbone none")
    ap.add_argument("--net-size", type=int, help="default: 224 on the backbone (its pretraining size), 300 without")
    ap.add_argument("--freeze", type=float, default=0.1, help="share of training with the backbone frozen")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--max-minutes", type=float, default=26.0, help="budget for the training loop")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--class-weights", action="store_true")
    ap.add_argument("--soft-targets", action="store_true", help="fit the experts' defect probabilities")
    ap.add_argument("--shift", type=int, default=0, help="random translation augmentation, pixels")
    ap.add_argument("--tta", type=int, default=1, help="as `linewatch train --tta`: orientations averaged (1-8)")
    ap.add_argument("--fixed-blocks", type=int, default=3, help="as `linewatch train --fixed-blocks`")
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="keep the model, its card and checkpoint here (default: discarded)")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="JSON to update: the backbone run at the top level, --backbone none under `from_scratch`")
    args = ap.parse_args()
    if args.net_size is None:
        args.net_size = 224 if args.backbone != "none" else 300
    rows = _elpv_rows()
    train_rows, test_rows = _split(rows, args.seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        model_dir = args.keep or Path(tmp) / "model"
        card = train(_manifest(train_rows, Path(tmp) / "train.csv"), model_dir,
                     TrainOptions(name="elpv", backbone=args.backbone, arch=args.arch,
                                  freeze_fraction=args.freeze, val_fraction=args.val_fraction,
                                  net_size=args.net_size, epochs=args.epochs,
                                  max_minutes=args.max_minutes, batch=args.batch, lr=args.lr,
                                  label_smoothing=args.label_smoothing, class_weights=args.class_weights,
                                  soft_targets=args.soft_targets, shift_px=args.shift,
                                  patience=args.patience, seed=args.seed, flips=True, rotate90=True,
                                  tta=args.tta, fixed_blocks=args.fixed_blocks), log=print)
        seconds = time.monotonic() - t0
        model = Model(model_dir / "elpv.onnx", providers="cpu")
        test = holdout_metrics(model, _manifest(test_rows, Path(tmp) / "test.csv"))
        total = time.monotonic() - t0
        frame_ms = _frame_ms(model_dir / "elpv.onnx")
    load = os.getloadavg()
    command = " ".join([".venv/bin/python", "benchmarks/elpv.py", *sys.argv[1:]])
    result = {
        **{k: test[k] for k in ("accuracy", "f1", "auroc")},
        "escape_rate": test["escape_rate"], "false_reject_rate": test["false_reject_rate"],
        "review_rate": test["review_rate"], "band": test["band"], "model_alone": test["model_alone"],
        "minutes": round(total / 60, 1), "train_minutes": round(seconds / 60, 1), "command": command,
        "tta": args.tta, "fixed_blocks": args.fixed_blocks if args.backbone != "none" else None,
        "ms_per_cell_1_thread": frame_ms,
        "backbone": args.backbone, "arch": args.arch if args.backbone == "none" else None, "net_size": args.net_size,
        "images": len(rows), "train_count": len(train_rows), "test_count": len(test_rows),
        "epochs_run": card["training"]["epochs_run"], "best_epoch": card["training"]["best_epoch"],
        "machine": f"{os.cpu_count()} cores, load average before {[round(v, 2) for v in load_before]}, "
                   f"after {[round(v, 2) for v in load]}",
        "sha256": card["sha256"][:12],
    }
    saved = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.backbone == "none":
        saved["from_scratch"] = result
    else:
        saved = {**result, "from_scratch": saved.get("from_scratch")}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(saved, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    t, alone = result, result["model_alone"]
    print(f"\nwrote {args.results}; the row for the table in benchmarks/RESULTS.md:")
    print(f"| `{command}` | {result['epochs_run']} ({result['best_epoch']}) "
          f"| {result['train_minutes']} | {t['accuracy']:.3f} | {t['f1']:.3f} | {t['auroc']:.3f} "
          f"| [{t['band'][0]:.3f}, {t['band'][1]:.3f}] | {t['escape_rate']:.3f} / {t['false_reject_rate']:.3f} / "
          f"{t['review_rate']:.3f} | {alone['escape_rate']:.3f} / {alone['false_reject_rate']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
