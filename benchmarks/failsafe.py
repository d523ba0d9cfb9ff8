"""Fail-safe benchmark: escapes, false rejects and REVIEWs with and without the fail-safe.

    .venv/bin/python benchmarks/failsafe.py --frames 1500 [--results benchmarks/RESULTS.md]

A labelled emulator stream (PartEmulator 256x256, defect_rate 0.2) with injected hard cases:
image faults (black/lens cap, overexposed, defocused, part off position; a part that cannot be
seen must not pass, so these are labelled "must not pass") and subtle defects the model misses
(a small shallow dark spot on the face of a good part, labelled defect). "Model alone" is the
reference model at threshold 0.5; "with fail-safe" is the default rule set (`FailsafeConfig()`)
deciding over the same model outputs. Also measures spurious overrides on the clean default
stream (seed 0), the hard constraint of issue 5. `--results FILE` writes the section into
benchmarks/RESULTS.md in place.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from linewatch.config import FailsafeConfig
from linewatch.emulator.parts import PartEmulator
from linewatch.failsafe import FailSafe
from linewatch.model.onnx import Model
from linewatch.paths import DEFAULT_MODEL
from linewatch.wire import FrameHeader

HARD = ("black", "overexposed", "blurred", "shifted", "subtle")
SECTION = "## Fail-safe: escapes with and without the rules"


def _subtle(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 4-7 px dark spot, 45-70 grey levels deep, on the face of the part: below what the model sees."""
    ys, xs = np.nonzero(pixels > 120)
    cy, cx = ys.mean(), xs.mean()
    r = (xs.max() - xs.min()) / 2
    ang, dist, side = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 0.8) * r, int(rng.integers(4, 8))
    y, x = int(cy + dist * np.sin(ang)), int(cx + dist * np.cos(ang))
    out = pixels.astype(np.int16)
    out[y:y + side, x:x + side] -= int(rng.integers(45, 71))
    return np.clip(out, 0, 255).astype(np.uint8)


def _inject(kind: str, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "black":
        return np.clip(rng.normal(3, 1.5, pixels.shape), 0, 255).astype(np.uint8)
    if kind == "overexposed":
        return np.clip(pixels.astype(np.float32) * rng.uniform(2.2, 3.0), 0, 255).astype(np.uint8)
    if kind == "blurred":
        return cv2.GaussianBlur(pixels, (0, 0), rng.uniform(2.0, 3.5))
    if kind == "shifted":
        return np.roll(pixels, (int(rng.integers(45, 70)) * int(rng.choice([-1, 1])), int(rng.integers(30, 60))),
                       axis=(0, 1))
    return _subtle(pixels, rng)


def stream(frames: int, seed: int, hard_share: float) -> tuple[list[np.ndarray], list[str], list[bool]]:
    """Frames, their case ('clean-good', 'clean-defect' or a HARD kind) and must-not-pass labels."""
    emu, rng = PartEmulator(seed=seed, defect_rate=0.2), np.random.default_rng(seed)
    pixels, cases, bad = [], [], []
    for seq in range(frames):
        part = emu.render(seq)
        defect = part.truth["label"] == "defect"
        kind = str(rng.choice(HARD)) if rng.random() < hard_share else None
        if kind == "subtle" and defect:
            kind = None  # subtle defects go on good parts, so the label stays exact
        pixels.append(part.pixels if kind is None else _inject(kind, part.pixels, rng))
        cases.append(kind or ("clean-defect" if defect else "clean-good"))
        bad.append(defect or kind is not None)
    return pixels, cases, bad


def decide(pixels: list[np.ndarray], model: Model, fs: FailSafe | None) -> tuple[list[str], list[str], float]:
    """Final verdicts and deciders; the mean fail-safe time per frame in ms."""
    probs = np.concatenate([model.run(np.stack(pixels[i:i + 32])) for i in range(0, len(pixels), 32)])
    finals, deciders, spent = [], [], 0.0
    hdr = FrameHeader("cam0", "bench", 0, "p", 0, 0, 256, 256, 1, "uint8", "Mono8")
    for px, p in zip(pixels, probs, strict=True):
        if fs is None:
            finals.append("FAIL" if p[1] >= 0.5 else "PASS")
            deciders.append("model")
            continue
        t0 = time.perf_counter()
        d, view = fs.check_frame(hdr, px)
        d = d or fs.decide(view, {"good": float(p[0]), "defect": float(p[1])})
        spent += time.perf_counter() - t0
        finals.append(d.final)
        deciders.append(d.decided_by)
    return finals, deciders, spent / len(pixels) * 1e3


def rates(finals: list[str], bad: list[bool], cases: list[str]) -> dict[str, float]:
    must_not = [f for f, b in zip(finals, bad, strict=True) if b]
    good = [f for f, c in zip(finals, cases, strict=True) if c == "clean-good"]
    defects = [f for f, c in zip(finals, cases, strict=True) if c in ("clean-defect", "subtle")]
    return {"escape": must_not.count("PASS") / len(must_not), "false_reject": good.count("FAIL") / len(good),
            "escape_defects": defects.count("PASS") / len(defects),
            "review": finals.count("REVIEW") / len(finals)}


def _ratio(alone: float, safe: float) -> str:
    return f"{alone / safe:.1f}x fewer" if safe else ("all gone" if alone else "none either way")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--hard-share", type=float, default=0.25, help="share of frames turned into hard cases")
    ap.add_argument("--clean-frames", type=int, default=1000, help="default stream (seed 0) frames for overrides")
    ap.add_argument("--results", type=Path, help="write the section into this markdown file (e.g. RESULTS.md)")
    args = ap.parse_args()
    model, fs = Model(DEFAULT_MODEL, "cpu"), FailSafe(FailsafeConfig(), (256, 256))
    pixels, cases, bad = stream(args.frames, args.seed, args.hard_share)
    alone, _, _ = decide(pixels, model, None)
    safe, deciders, ms = decide(pixels, model, fs)
    no_backup, _, _ = decide(pixels, model, FailSafe(FailsafeConfig(dark_spot={"enabled": False}), (256, 256)))
    r_alone, r_safe = rates(alone, bad, cases), rates(safe, bad, cases)
    n_bad = sum(bad)

    emu = PartEmulator(seed=0, defect_rate=0.2)
    clean = [emu.render(s) for s in range(args.clean_frames)]
    c_finals, c_deciders, _ = decide([p.pixels for p in clean], model, fs)
    good_idx = [i for i, p in enumerate(clean) if p.truth["label"] == "good"]
    spurious = Counter(c_deciders[i] for i in good_idx if c_deciders[i] != "model")

    counts = Counter(cases)
    lines = [SECTION, "",
             "**Measures**: escapes (PASS on a part that must not pass), false rejects and REVIEWs of the reference "
             "model alone and of the default rule set (`FailsafeConfig()`) deciding over the same model outputs, on "
             "a labelled emulator stream with injected hard cases; spurious overrides on the clean default stream; "
             "the rules' cost per frame.", "",
             "**Machine**: the CPU VM.", "",
             f"**Command**: `.venv/bin/python benchmarks/failsafe.py --frames {args.frames} --seed {args.seed} "
             f"--hard-share {args.hard_share} --clean-frames {args.clean_frames} --results benchmarks/RESULTS.md` "
             "(rewrites this section).", "",
             f"Stream: {args.frames} emulator parts (defect_rate 0.2, seed {args.seed}), "
             + ", ".join(f"{k} {counts[k]}" for k in ("clean-good", "clean-defect", *HARD)) + ".", "",
             "| | escape rate | escape rate, defective parts only | false-reject rate | REVIEW rate |",
             "|---|---|---|---|---|",
             *(f"| {name} | {r['escape']:.4f} | {r['escape_defects']:.4f} | {r['false_reject']:.4f} | "
               f"{r['review']:.4f} |"
               for name, r in (("model alone", r_alone), ("with fail-safe", r_safe),
                               ("fail-safe without backup checks", rates(no_backup, bad, cases)))),
             "", "Escape rate: PASS among parts that must not pass (defective, or not visible as a part: "
             "image faults); the second column counts defective parts only (clean defects + subtle ones).", "",
             f"Escapes with the fail-safe: {round(r_alone['escape'] * n_bad)} -> {round(r_safe['escape'] * n_bad)} of "
             f"{n_bad} parts that must not pass, {_ratio(r_alone['escape'], r_safe['escape'])} "
             f"({_ratio(r_alone['escape_defects'], r_safe['escape_defects'])} on defective parts only) "
             f"({'meets' if r_alone['escape'] >= 5 * r_safe['escape'] and r_safe['review'] < 0.10 else 'MISSES'} "
             "the goal: >= 5x fewer, REVIEW < 10 %); fail-safe rules cost "
             f"{ms:.2f} ms per frame.", "",
             "| case | frames | PASS alone | PASS with fail-safe | deciders with fail-safe |", "|---|---|---|---|---|"]
    for case in ("clean-good", "clean-defect", *HARD):
        idx = [i for i, c in enumerate(cases) if c == case]
        who = Counter(deciders[i] for i in idx).most_common(3)
        lines.append(f"| {case} | {len(idx)} | {sum(alone[i] == 'PASS' for i in idx)} | "
                     f"{sum(safe[i] == 'PASS' for i in idx)} | {', '.join(f'{k} {n}' for k, n in who)} |")
    lines += ["", f"Default stream (seed 0, {args.clean_frames} parts, {len(good_idx)} good): "
              f"{sum(spurious.values())} good parts overridden by a rule"
              + (f" ({', '.join(f'{k} {n}' for k, n in spurious.items())})" if spurious else "")
              + f"; REVIEW rate {c_finals.count('REVIEW') / len(c_finals):.4f}.", "",
              "**Known limits**: every emulated defect (dent, scratch, stain, and the injected subtle spots) is darker "
              "than the part's face, which is exactly what the `dark_spot` backup check looks for; on a real line its "
              "ROI, `delta` and `min_area_px` are tuned per recipe and it will not be this clean. The row without "
              "backup checks shows what the input sanity rules and bands give on their own.", ""]
    text = "\n".join(lines)
    print(text)
    if args.results:
        old = args.results.read_text() if args.results.exists() else "# Benchmark results\n"
        pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
        new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
        args.results.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
