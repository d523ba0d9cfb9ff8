"""Good-only anomaly detection on the emulator scenes, and what each model kind costs per frame on the CPU.

    .venv/bin/python benchmarks/goodonly.py                     # writes benchmarks/results/goodonly.json

For each scene in cameras/scenes/ (label, metal-surface, round-part): renders GOOD training parts
(the first good frames of seed 1) and a labelled test stream (frames 100,000 on of the same camera,
seed 1: a new seed is a new camera, other dust; the scene's own defect rate, types and severity range,
so its subtle low-severity defects are in it), fits `--kind patchcore` and `--kind anomaly` on the
same good parts with the trainer `linewatch train` calls, at the CLI's defaults (net size: 256 px for
patchcore, 64 for anomaly; `--net-size` sets one for both), then
runs each exported ONNX through the line's `Model.predict` and decides PASS / REVIEW / FAIL at the
model's calibrated band the way the fail-safe does (`defect_band` + `evaluate`, as `holdout_metrics`
does): image AUROC, escape rate (defective parts decided PASS), REVIEW rate, fit seconds. The
scenes' scenarios (lighting ramps, camera bumps: the fail-safe's business) are switched off; a
defect type a scenario adds later (round-part's cracks) is in the test stream from the start.
Dropped and torn frames are skipped. `subtle_auroc` / `subtle_escape` count only the defects in the
lowest third of the scene's severity range.

Cost: each model kind (classifier from scratch `--backbone none`, classifier on
`--backbone efficientnet-lite0`, anomaly, patchcore; net size as above, one epoch where there are
epochs: the weights do not change the cost) fitted on 24 emulated parts at 256² and 512²,
then timed through `Model` with one ONNX Runtime thread using benchmarks/ort_session.py's
`latency` (p50 of single frames) and `throughput` (frames/s at batch 1, 4, 8), plus file sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.config import FailsafeConfig
from linewatch.emulator.parts import PartEmulator, SceneEmulator
from linewatch.emulator.scene import load_scene
from linewatch.model.bands import defect_band
from linewatch.model.onnx import Model
from linewatch.training.evaluate import auroc, evaluate
from linewatch.training.trainer import TrainOptions, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_session import latency, throughput

ROOT = Path(__file__).resolve().parent.parent
SCENES = ROOT / "cameras" / "scenes"
KINDS = ("patchcore", "anomaly")
TEST_FROM = 100_000  # test parts are frames from here on, training parts the first good ones
COST_KINDS = {"classifier (--backbone none)": {"kind": "classifier", "backbone": "none"},
              "classifier (--backbone efficientnet-lite0)": {"kind": "classifier", "backbone": "efficientnet-lite0"},
              "anomaly": {"kind": "anomaly"}, "patchcore": {"kind": "patchcore"}}


def _write(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))


def scene_parts(path: Path, size: int, goods: int, tests: int) -> tuple[list[np.ndarray], list[np.ndarray],
                                                                        list[dict[str, Any]]]:
    """Good training frames and later test frames with their truth of one scene (seed 1), scenarios off."""
    scene = load_scene(path)
    types = list(dict.fromkeys([*scene.defects.types, *(s.add_defect for s in scene.scenarios if s.add_defect)]))
    scene = scene.model_copy(update={"scenarios": [], "defects": scene.defects.model_copy(update={"types": types})})
    train_px: list[np.ndarray] = []
    emu, seq = SceneEmulator(scene, size, size, seed=1), 0
    while len(train_px) < goods:
        f = emu.render(seq)
        seq += 1
        if f.pixels is not None and not f.incomplete and f.truth["label"] == "good":
            train_px.append(f.pixels)
    test_px, truth = [], []
    seq = TEST_FROM  # the same camera (seed: its dust, noise pattern) as the training parts, later parts
    while len(test_px) < tests:
        f = emu.render(seq)
        seq += 1
        if f.pixels is not None and not f.incomplete:
            test_px.append(f.pixels)
            truth.append(f.truth)
    return train_px, test_px, truth


def score(model_path: Path, pixels: list[np.ndarray], truth: list[dict[str, Any]],
          severity: tuple[float, float]) -> dict[str, Any]:
    """The line's model on the test frames, decided at its calibrated band."""
    model = Model(model_path, "cpu", intra_op_threads=1)
    probs = np.concatenate([model.predict(np.stack(pixels[i:i + 32])).probs for i in range(0, len(pixels), 32)])
    p_defect = probs[:, 1]
    is_defect = np.array([t["label"] == "defect" for t in truth])
    info = model.info
    band = defect_band(FailsafeConfig(), info.metadata, info.labels, info.defect_labels)
    m = evaluate(np.stack([1 - p_defect, p_defect], 1), is_defect.astype(np.int64), ["good", "defect"], band)
    cut = severity[0] + (severity[1] - severity[0]) / 3
    subtle = np.array([t["label"] == "defect" and t["severity"] <= cut for t in truth])
    keep = subtle | ~is_defect
    sub_auc = auroc(p_defect[keep], subtle[keep])
    t = latency(_Timed(model, pixels[0].shape[0], pixels[0]), 30, 1.0)
    return {"auroc": m["auroc"], "escape": m["escape_rate"], "review": m["review_rate"],
            "false_reject": m["false_reject_rate"], "band": m["band"],
            "subtle_auroc": None if sub_auc is None else round(sub_auc, 4),
            "subtle_escape": round(float((subtle & (p_defect < band[0])).sum()) / max(1, int(subtle.sum())), 4),
            "test_parts": len(pixels), "test_defects": int(is_defect.sum()), "subtle_defects": int(subtle.sum()),
            "p50_ms_b1": round(float(np.percentile(t, 50)), 2), "file_mb": round(model_path.stat().st_size / 1e6, 3)}


def goodonly(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {k: {} for k in args.kinds}
    for path in sorted(SCENES.glob("*.yaml")):
        if args.scenes and path.stem not in args.scenes:
            continue
        scene = load_scene(path)
        t0 = time.monotonic()
        train_px, test_px, truth = scene_parts(path, args.size, args.goods, args.test_parts)
        render_s = time.monotonic() - t0
        data = tmp / path.stem / "data"
        for i, px in enumerate(train_px):
            _write(data / "good" / f"{i:04d}.png", px)
        channels = 3 if train_px[0].ndim == 3 else 1
        for kind in args.kinds:
            t0 = time.monotonic()
            card = train(data, tmp / path.stem / kind,
                         TrainOptions(name=kind, kind=kind, net_size=args.net_size, channels=channels,
                                      backbone="efficientnet-lite0", epochs=args.epochs), log=lambda _: None)
            fit_s = time.monotonic() - t0
            row = {**score(tmp / path.stem / kind / card["file"], test_px, truth, scene.defects.severity),
                   "net_size": card["input"]["net_size"], "fit_s": round(fit_s, 1), "train_goods": len(train_px),
                   "render_s": round(render_s, 1)}
            out[kind][path.stem] = row
            print(f"{path.stem} {kind}: {json.dumps(row)}", flush=True)
    return out


class _Timed:
    """A `Model` shaped like ort_session's Runner, so its `latency` / `throughput` time it unchanged."""

    def __init__(self, model: Model, size: int, frame: np.ndarray | None = None):
        self.model, self.size, self.frame = model, size, frame

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if self.frame is not None:  # a scene's own frame (RGB or Bayer) instead of ort_session's Mono8 noise
            frames = np.repeat(self.frame[None], len(frames), 0)
        return self.model.predict(frames).probs


def cost(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for size in args.cost_sizes:
        data = tmp / f"cost{size}"
        emu, seq, want = PartEmulator(size, size, seed=3, defect_rate=0.5), 0, {"good": 12, "defect": 12}
        while any(want.values()):
            part = emu.render(seq)
            label = part.truth["label"]
            if want[label]:
                want[label] -= 1
                _write(data / label / f"{seq:04d}.png", part.pixels)
            seq += 1
        for name, kw in COST_KINDS.items():
            out = tmp / f"cost{size}-{kw['kind']}-{kw.get('backbone', '')}"
            card, refused = None, []
            for seed in range(4):  # the export's parity check (1e-3 on the backbone) refuses some seeds
                try:
                    card = train(data, out, TrainOptions(name="m", epochs=1, patience=1, seed=seed,
                                                         net_size=args.net_size, **kw),
                                 log=lambda _: None)
                    break
                except RuntimeError as exc:
                    refused.append(str(exc))
            if card is None:
                rows[f"{name} {size}"] = {"size": size, "kind": name, "error": refused}
                continue
            path = out / card["file"]
            model = Model(path, "cpu", intra_op_threads=1)
            run = _Timed(model, size)
            for n in (1, *args.batches):
                run(np.zeros((n, size, size), np.uint8))
            fps = {n: throughput(run, n, args.seconds) for n in args.batches}
            best = max(fps, key=lambda n: fps[n])
            t = latency(run, 30, args.seconds)
            row = {"size": size, "kind": name, "net_size": card["input"]["net_size"],
                   "p50_ms_b1": round(float(np.percentile(t, 50)), 2),
                   "fps_b1": round(fps[1], 1) if 1 in fps else None, "best_batch": best,
                   "fps_best": round(fps[best], 1), "ms_per_frame_best": round(1e3 / fps[best], 2),
                   "file_mb": round(path.stat().st_size / 1e6, 3), "exports_refused": len(refused)}
            rows[f"{name} {size}"] = row
            print(json.dumps(row), flush=True)
    return rows


def fit_time(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """`linewatch train DATA --kind patchcore` as a user runs it, on 160 `linewatch emulate` parts (the CLI's
    default scene and size; the memory bank from their good ones), timed from start to exit."""
    data, out = tmp / "fit160-data", tmp / "fit160-model"
    cli = [sys.executable, "-m", "linewatch"]
    subprocess.run([*cli, "emulate", "--count", "160", "--out", str(data)], check=True, capture_output=True)
    command = [*cli, "train", str(data), "--kind", "patchcore", "--out", str(out), *args.fit_args]
    t0 = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.monotonic() - t0
    card = json.loads((out / "card.json").read_text())
    return {"seconds": round(seconds, 1), "parts": 160, "good_parts": card["data"]["class_counts"]["good (trained on)"],
            "frame": [card["input"]["width"], card["input"]["height"]], "net_size": card["input"]["net_size"],
            "memory_bank": card["memory_bank"]["size"],
            "command": " ".join(["linewatch", "train", "DATA", "--kind", "patchcore", "--out", "OUT", *args.fit_args])}


def _cpu() -> str:
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (info.read_text().splitlines() if info.exists() else [])
             if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def _f(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def table(result: dict[str, Any]) -> str:
    """The two tables of the RESULTS.md section, from the JSON."""
    lines = ["| scene | kind (net) | AUROC | escape | REVIEW | false reject | band | subtle AUROC / escape (n) "
             "| test parts (defects) | fit s | p50 ms | MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        for scene, r in result.get(kind, {}).items():
            net = r.get("net_size", result.get("net_size"))
            lines.append(f"| {scene} | {kind} ({net}) | {_f(r['auroc'], '.4f')} | {r['escape']:.4f} | "
                         f"{r['review']:.4f} | {r['false_reject']:.4f} | [{r['band'][0]:.3f}, {r['band'][1]:.3f}) | "
                         f"{_f(r['subtle_auroc'], '.4f')} / {r['subtle_escape']:.4f} ({r['subtle_defects']}) | "
                         f"{r['test_parts']} ({r['test_defects']}) | {r['fit_s']} | {r['p50_ms_b1']} | "
                         f"{r['file_mb']} |")
    if result.get("cost"):
        lines += ["", "| kind | frame (net) | p50 ms, batch 1 | frames/s, batch 1 | best batch: frames/s (ms/frame) | "
                  "file MB |", "|---|---|---|---|---|---|"]
        for r in result["cost"].values():
            if "error" in r:
                lines.append(f"| {r['kind']} | {r['size']}² | export refused | | | |")
                continue
            lines.append(f"| {r['kind']} | {r['size']}² ({r['net_size']}) | {r['p50_ms_b1']} | {r['fps_b1']} | "
                         f"{r['best_batch']}: {r['fps_best']} ({r['ms_per_frame_best']}) | {r['file_mb']} |")
    fit = result.get("fit_160")
    if fit:
        lines += ["", f"`{fit['command']}` on {fit['parts']} emulated parts ({fit['good_parts']} good, "
                      f"{fit['frame'][0]}x{fit['frame'][1]}, net size {fit['net_size']}, memory bank "
                      f"{fit['memory_bank']}): {fit['seconds']} s from start to exit."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--goods", type=int, default=200, help="good training parts per scene (<= 200)")
    ap.add_argument("--test-parts", type=int, default=2000, help="test parts per scene")
    ap.add_argument("--size", type=int, default=256, help="frame side of the scenes")
    ap.add_argument("--net-size", type=int, help="as `linewatch train --net-size` (default: each kind's own)")
    ap.add_argument("--epochs", type=int, default=30, help="anomaly kind: as `linewatch train --epochs`")
    ap.add_argument("--cost-sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per batch size and model")
    ap.add_argument("--scenes", nargs="+", help="only these scenes (file stems)")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--fit-args", nargs="*", default=[], help="more `linewatch train` arguments for the 160-part fit")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "goodonly.json")
    ap.add_argument("--table", action="store_true", help="only print the tables of --out")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return 0
    cv2.setNumThreads(1)
    load_before, t0 = os.getloadavg(), time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = goodonly(args, Path(tmp))
        result["cost"] = {} if args.skip_cost else cost(args, Path(tmp))
        result["fit_160"] = fit_time(args, Path(tmp))
        print(f"fit 160 parts: {json.dumps(result['fit_160'])}", flush=True)
    result.update({
        "test_parts": args.test_parts, "train_goods": args.goods, "frame": args.size, "net_size": args.net_size,
        "machine": f"{_cpu()}, {os.cpu_count()} cores, "
                   f"load average before {[round(v, 2) for v in load_before]}, "
                   f"after {[round(v, 2) for v in os.getloadavg()]}",
        "command": " ".join([".venv/bin/python", "benchmarks/goodonly.py", *sys.argv[1:]]),
        "total_s": round(time.monotonic() - t0),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {args.out} in {result['total_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
