"""The drift watch on the emulator scenes: false alarms, detection delays, CBPE's error, and what it costs.

    .venv/bin/python benchmarks/drift.py             # writes benchmarks/results/drift.json (~25 min, 2 cores)
    .venv/bin/python benchmarks/drift.py --table     # the RESULTS.md tables again, from the JSON

For each scene in cameras/scenes/ (label, metal-surface, round-part), at 256², with the scene's own
conveyor (a part every 0.4-0.5 s of scene time; the scene's own drifts and scenarios switched off):

- a compact classifier (`--backbone none`, 128 px) is trained on 1,200 rendered parts of the scene's
  defect types (seed 1), calibrated as `linewatch train` does;
- the line's own code runs each part: the fail-safe (`FailSafe.check_frame` and `decide`; exposure's
  saturation limit raised to 30 % for round-part's polished faces, the dark-spot check, made for the
  default part, off; on metal-surface no presence check and a blur floor of 10), the model
  (`Model.predict`), the frame's signals (`FrameView.signals`) and its embedding's sketch (the compact classifier
  exports its pooled features), and the real `DriftWatch` at its
  defaults (`watch` in the config: reference of the first 1,000 parts, ERT 10,000,000 parts, shift of
  interest 0.25 sd), as record feeds it;
- stationary: 20,000 parts after the reference, from the camera the model was trained on (seed 1,
  frames 100,000 on) with no drift: false alarms counted; CBPE's estimated defect rate (mean calibrated
  p over the parts the model scored) against the emulator's ground truth;
- scenarios, 10 seeds each (the parts of seeds 10-19, seen by the camera the model was trained on: another
  seed's camera has other dust on its lens, which metal-surface's model, seeing the sheet through it, takes for
  defects on every part): the change starts at part 1,200, 200 parts after the reference is complete:
  `lighting_step` (-10 % at once), `lighting_ramp` (-5 % over 10 minutes of scene time), `camera_bump` (the view
  shifts by round-part's own bump, 14 and -6 px), and `new_defect_type` (a flaw the model never saw in training
  appears on 10 % of the parts that had no defect: the scene's `add_defect_rate`). The delay is the parts from
  the change to the first drift alarm (any signal); not found within twice the goal is `null`. The top-level
  figure per scenario is the worst scene's median; for `new_defect_type` only scenes whose model separates
  defects (AUROC >= 0.8 on the stationary run)
  count: a model that sees none of a scene's defects cannot show a new one in its score or verdicts.

Cost, on a real line (`linewatch run`, default model and emulator at 256², 100 parts/s for 4,000
parts): `linewatch_watch_cpu_seconds_total` (infer: signals and embedding sketch; record: detectors,
estimates, state) over the CPU of all the line's processes, from one /metrics scrape at the end
(`linewatch_process_cpu_seconds_total`); also over the line without acquire (whose emulator rendering
a real camera does not cost).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from linewatch.config import FailsafeConfig, WatchConfig
from linewatch.config.watch import SIGNAL_NAMES
from linewatch.emulator.parts import SceneEmulator
from linewatch.emulator.scene import Scenario, Scene, load_scene
from linewatch.failsafe import FailSafe
from linewatch.model.onnx import Model
from linewatch.pixels import to_line_format
from linewatch.training.evaluate import auroc
from linewatch.training.trainer import TrainOptions, train
from linewatch.watch import DriftWatch, sketch
from linewatch.wire import FrameHeader, Verdict

ROOT = Path(__file__).resolve().parent.parent
SCENES = ROOT / "cameras" / "scenes"
SIZE = 256
NET_SIZE = 128  # the compact classifier at its 64 px default misses most of these scenes' small defects
STATIONARY_FROM = 100_000  # stationary parts: the training camera's (seed 1), long after its training parts
CHANGE_AT = 1200  # the scenarios' change: 200 parts after the default 1,000-part reference
NEW_TYPE = {"round-part": "crack", "label": "dent", "metal-surface": "hole"}  # a type each scene's model never saw
# The fail-safe as a line engineer sets it up for these scenes: round-part's polished faces saturate ~7 % of a
# frame (the default exposure rule refuses over 2 %), the dark-spot backup check is made for the default part, and
# metal-surface's sheet fills the frame (no part to find: presence off) and its brushed texture seen through motion
# blur has a Laplacian variance of ~50 (the blur rule's default floor is 200).
_FAILSAFE = {"exposure": {"max_saturated": 0.3}, "dark_spot": {"enabled": False}}
FAILSAFE = {name: FailsafeConfig.model_validate({**_FAILSAFE, **extra}) for name, extra in
            {"round-part": {}, "label": {},
             "metal-surface": {"presence": {"enabled": False}, "blur": {"min_laplacian_var": 10.0}}}.items()}
MIN_AUROC = 0.8  # a scene's model below this sees no defect: a new type cannot show in its score or verdicts
NEW_TYPE_SHARE = 0.1  # the new flaw's share of the parts that had none
GOALS = {"lighting_step": 500, "lighting_ramp": 2000, "camera_bump": 500, "new_defect_type": 1000}


def stationary_scene(path: Path) -> Scene:
    """The scene with its own drifts (slow lighting drift, scenarios) and frame losses switched off."""
    scene = load_scene(path)
    fx = scene.camera.model_copy(update={"drift": 0.0, "drop_rate": 0.0, "incomplete_rate": 0.0})
    return scene.model_copy(update={"scenarios": [], "camera": fx})


def scenario(scene: Scene, name: str, at_s: float, new_type: str) -> Scene:
    s = {"lighting_step": Scenario(at_s=at_s, lighting=0.9),
         "lighting_ramp": Scenario(at_s=at_s, over_s=600, lighting=0.95),
         "camera_bump": Scenario(at_s=at_s, shift_px=(14 * SIZE / 256, -6 * SIZE / 256)),
         "new_defect_type": Scenario(at_s=at_s, add_defect=new_type, add_defect_rate=NEW_TYPE_SHARE)}[name]  # type: ignore[arg-type]
    return scene.model_copy(update={"scenarios": [s]})


def emulator(scene: Scene, seed: int) -> SceneEmulator:
    """Parts of `seed` through the lens of the camera the model was trained on (seed 1: its dust)."""
    emu = SceneEmulator(scene, SIZE, SIZE, seed=seed)
    emu.camera = SceneEmulator(scene, SIZE, SIZE, seed=1).camera
    return emu


def mono(frame: Any) -> np.ndarray:
    px = frame.pixels
    return px if frame.pixel_format == "Mono8" else to_line_format(px, frame.pixel_format, "Mono8", None)


def train_model(scene: Scene, out: Path, parts: int) -> Path:
    emu = SceneEmulator(scene, SIZE, SIZE, seed=1)
    data = out / "data"
    for seq in range(parts):
        f = emu.render(seq)
        label = f.truth["label"]
        (data / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / label / f"{seq:05d}.png"), mono(f))
    card = train(data, out / "model", TrainOptions(name="drift-bench", kind="classifier", backbone="none", epochs=20,
                                                    net_size=NET_SIZE, seed=1), log=lambda _: None)
    return out / "model" / card["file"]


class Line:
    """The line's per-part code on one camera, as infer and record run it (no processes, no sockets)."""

    def __init__(self, model_path: Path, failsafe: FailsafeConfig):
        self.model = Model(model_path, providers="cpu", intra_op_threads=1)
        self.failsafe = FailSafe(failsafe, (SIZE, SIZE), self.model.info)
        self.blur_size = failsafe.blur.size
        self.signals_s = 0.0
        self.frames = 0

    def verdicts(self, emu: SceneEmulator, seqs: range, batch: int = 32) -> Any:
        """Each part's verdict (with signals) and its truth, in order."""
        info = self.model.info
        for start in range(seqs.start, seqs.stop, batch):
            frames = [(seq, emu.render(seq)) for seq in range(start, min(start + batch, seqs.stop))]
            views, pixels = [], []
            for seq, f in frames:
                px = mono(f)
                header = FrameHeader("cam0", "s", seq, f"p{seq}", 1, 1, SIZE, SIZE, 1, "uint8", "Mono8")
                decision, view = self.failsafe.check_frame(header, px)
                views.append((decision, view))
                pixels.append(px)
            pred = self.model.predict(np.stack(pixels))
            embeddings = pred.embeddings if pred.embeddings is not None else [None] * len(frames)
            for (seq, f), (decision, view), p, emb in zip(frames, views, pred.probs, embeddings, strict=True):
                t0 = time.thread_time()
                signals = view.signals(self.blur_size)
                embedding = sketch(emb) if emb is not None else None
                self.signals_s += time.thread_time() - t0
                self.frames += 1
                pd = {name: float(x) for name, x in zip(info.labels, p, strict=True)}
                score = None  # as in infer: a frame a rule refused never reaches the model
                if decision is None:
                    score = sum(pd[n] for n in info.defect_labels)
                    decision = self.failsafe.decide(view, pd)
                yield Verdict("cam0", "s", seq, f"p{seq}", decision.final, decision.decided_by, recipe="default",
                              model_hash=info.sha256, score=score, signals=signals,
                              embedding=embedding if score is not None else None), f.truth


def run_stationary(line: Line, scene: Scene, parts: int, cfg: WatchConfig) -> dict[str, Any]:
    watch = DriftWatch(cfg, lambda key: None)
    emu = SceneEmulator(scene, SIZE, SIZE, seed=1)  # the camera the model was trained on, later parts
    alarms, p_sum, truth_bad, right, decided, n = [], 0.0, 0, 0.0, 0, 0
    deciders: dict[str, int] = {}
    scores: list[float] = []
    truths: list[bool] = []
    t_watch = 0.0
    for v, truth in line.verdicts(emu, range(STATIONARY_FROM, STATIONARY_FROM + cfg.reference_parts + parts)):
        t0 = time.thread_time()
        _, found = watch.observe(v)
        t_watch += time.thread_time() - t0
        _wait_reference(watch)
        alarms += found
        if v.seq >= STATIONARY_FROM + cfg.reference_parts:
            deciders[v.decided_by] = deciders.get(v.decided_by, 0) + 1
        if v.seq >= STATIONARY_FROM + cfg.reference_parts and v.score is not None:  # CBPE: what the model scored
            n += 1
            p_sum += v.score
            bad = truth["label"] == "defect"
            truth_bad += bad
            scores.append(v.score)
            truths.append(bad)
            if v.decided_by == "model" and v.final in ("PASS", "FAIL"):
                decided += 1
                right += (v.final == "FAIL") == bad
    est = watch.estimates.get("cam0")
    watch.close()
    return {"parts": parts, "model_auroc": round(auroc(np.asarray(scores), np.asarray(truths, bool)), 4) if n else None,
            "scored_parts": n, "decided_by": deciders, "false_alarms": len(alarms),
            "alarms": [a.text for a in alarms],
            "estimated_defect_rate": round(p_sum / n, 4) if n else None,
            "true_defect_rate": round(truth_bad / n, 4) if n else None,
            "cbpe_abs_error_pp": round(abs(p_sum / n - truth_bad / n) * 100, 2) if n else None,
            "estimated_accuracy_last_window": round(est.accuracy or 0.0, 4) if est else None,
            "realised_accuracy": round(right / decided, 4) if decided else None,
            "watch_us_per_part": round(t_watch / (cfg.reference_parts + parts) * 1e6, 1)}


def _wait_reference(watch: DriftWatch) -> None:
    """The calibration thread's result before the next part: the same alarms as record, whatever the timing."""
    for by_key in watch._keys.values():
        for w in by_key.values():
            if w.pending is not None:
                w.pending.result()


def run_scenarios(line: Line, base: Scene, name: str, seeds: list[int], cfg: WatchConfig,
                  names: list[str]) -> dict[str, Any]:
    """For each seed: learn the reference once, then continue each scenario from the same detector state."""
    period = base.encoder_period_s or 0.05
    out: dict[str, list[int | None]] = {s: [] for s in names}
    texts: dict[str, str] = {}
    by: dict[str, list[str | None]] = {s: [] for s in names}  # the signal that alarmed first, per seed
    early_alarms = []
    for seed in seeds:
        watch = DriftWatch(cfg, lambda key: None)
        emu = emulator(base, seed)
        early = []
        for v, _ in line.verdicts(emu, range(CHANGE_AT)):
            early += watch.observe(v)[1]
            _wait_reference(watch)
        early_alarms += [a.text for a in early]  # false alarms before any change
        ref = watch.references("cam0")
        assert ref is not None
        for sc in names:
            goal = GOALS[sc]
            changed = scenario(base, sc, CHANGE_AT * period, NEW_TYPE[name])
            fork = DriftWatch(cfg, lambda key, r=ref: copy.deepcopy(r))  # type: ignore[misc]
            emu = emulator(changed, seed)
            delay = None
            for v, _ in line.verdicts(emu, range(CHANGE_AT, CHANGE_AT + 2 * goal)):
                found = fork.observe(v)[1]
                if found and delay is None:
                    delay = v.seq - CHANGE_AT + 1
                    texts.setdefault(sc, found[0].text)
                    by[sc].append(found[0].signal)
                    break
            out[sc].append(delay)
            if delay is None:
                by[sc].append(None)
            fork.close()
        watch.close()
    result = {}
    for sc, delays in out.items():
        found = sorted(d for d in delays if d is not None)
        median = float(np.median([d if d is not None else np.inf for d in delays]))
        result[sc] = {"delay_parts": None if not np.isfinite(median) else median, "goal": GOALS[sc],
                      "delays": delays, "detected": f"{len(found)}/{len(delays)}", "example": texts.get(sc),
                      "signals": by[sc]}
    result["before_change"] = {"parts": len(seeds) * CHANGE_AT, "false_alarms": early_alarms}
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(text: str, name: str, **labels: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                out[head] = float(value)
    return out


def _by_process(samples: dict[str, float]) -> dict[str, float]:
    return {k.split('process="')[1].split('"')[0]: v for k, v in samples.items()}


def line_cost(fps: float, frames: int) -> dict[str, Any]:
    """The watch's CPU over the whole line's, measured in one run of `linewatch run`."""
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        cfg = {"data_dir": str(Path(tmp) / "data"), "api": {"port": port}, "plc": {"port": _free_port()},
               "cameras": [{"name": "cam0", "fps": fps, "max_frames": frames}], "watch": {"state_interval_s": 1.0}}
        (Path(tmp) / "line.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "linewatch", "run", "--config", str(Path(tmp) / "line.yaml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + frames / fps + 120
            text = ""
            while time.monotonic() < deadline:
                time.sleep(2)
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                        text = r.read().decode()
                except OSError:
                    continue
                if sum(_metric(text, "linewatch_verdicts_total").values()) >= frames:
                    break
            time.sleep(2.5)  # the last counts flushed (infer every 1 s, record every state_interval_s)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    cpu = _by_process(_metric(text, "linewatch_process_cpu_seconds_total"))
    watch = _by_process(_metric(text, "linewatch_watch_cpu_seconds_total"))
    total = sum(cpu.values())
    without_acquire = sum(v for p, v in cpu.items() if not p.startswith("acquire"))
    spent = sum(watch.values())
    verdicts = sum(_metric(text, "linewatch_verdicts_total").values())
    return {"fps": fps, "parts": int(verdicts), "line_cpu_s": round(total, 2), "line_cpu_ms_per_part":
            round(total / verdicts * 1e3, 3), "watch_cpu_s": {p: round(v, 3) for p, v in watch.items()},
            "watch_us_per_part": round(spent / verdicts * 1e6, 1), "share_of_line_cpu": round(spent / total, 4),
            "share_without_acquire": round(spent / without_acquire, 4), "cpu_by_process_s":
            {p: round(v, 2) for p, v in sorted(cpu.items())}}


def _parts(delay: float | None) -> str:
    return "not found" if delay is None else f"{delay:g}"


def table(result: dict[str, Any]) -> str:
    """The tables RESULTS.md shows, from the JSON."""
    scenes = result["per_scene"]
    rows = ["| scene | model AUROC | stationary parts | false alarms | CBPE defect rate (true) | error pp | "
            + " | ".join(f"{sc} median (detected)" for sc in GOALS) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(GOALS)]
    for name, s in scenes.items():
        st = s["stationary"]
        cells = [f"{_parts(s['scenarios'][sc]['delay_parts'])} ({s['scenarios'][sc]['detected']})" for sc in GOALS]
        rows.append(f"| {name} | {st['model_auroc']:.3f} | {st['parts']} | {st['false_alarms']} | "
                    f"{st['estimated_defect_rate']:.3f} ({st['true_defect_rate']:.3f}) | {st['cbpe_abs_error_pp']} | "
                    + " | ".join(cells) + " |")
    top = result["scenarios"]
    rows += ["", "| scenario | goal (parts) | worst scene's median delay | scenes |", "|---|---|---|---|"]
    rows += [f"| {sc} | {v['goal']} | {_parts(v['delay_parts'])} | {', '.join(v['scenes'])} |" for sc, v in top.items()]
    c = result["cost"]
    rows += ["", "| line at 100 parts/s | parts | line CPU ms/part | watch µs/part | share of the line's CPU | "
             "share without acquire |", "|---|---|---|---|---|---|",
             f"| default model, 256² | {c['parts']} | {c['line_cpu_ms_per_part']} | {c['watch_us_per_part']} | "
             f"{c['share_of_line_cpu'] * 100:.2f} % | {c['share_without_acquire'] * 100:.2f} % |"]
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", nargs="*", default=None, help="scene names (default: all)")
    ap.add_argument("--stationary-parts", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--train-parts", type=int, default=1200)
    ap.add_argument("--scenarios", nargs="*", choices=list(GOALS), default=list(GOALS), help="scenarios run "
                    "(default: all; fewer only with --scene-only, for a quick look)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "drift.json")
    ap.add_argument("--signals", nargs="*", choices=SIGNAL_NAMES, default=None, help="signals watched (default: "
                    "the watch's own; fewer only with --scene-only, to see what one signal adds)")
    ap.add_argument("--table", action="store_true", help="print the tables from --out and exit")
    ap.add_argument("--scene-only", action="store_true", help="write this run's scenes to --out, no line cost (a "
                    "part of a run spread over processes; --merge joins them)")
    ap.add_argument("--merge", nargs="*", type=Path, default=None, help="scene-only JSON files to join: the line "
                    "cost is measured and the whole result written to --out")
    args = ap.parse_args()
    if (set(args.scenarios) != set(GOALS) or args.signals is not None) and not args.scene_only:
        ap.error("--scenarios and --signals need --scene-only: the result's tables are for the whole watch")
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return 0
    cfg = WatchConfig() if args.signals is None else WatchConfig(signals=args.signals)
    if args.merge:
        per_scene = {n: s for f in args.merge for n, s in json.loads(f.read_text())["per_scene"].items()}
        return finish(args, cfg, per_scene, 0.0)
    t_start = time.monotonic()
    per_scene: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(SCENES.glob("*.yaml")):
            if args.scenes and path.stem not in args.scenes:
                continue
            base = stationary_scene(path)
            t0 = time.monotonic()
            line = Line(train_model(base, Path(tmp) / path.stem, args.train_parts), FAILSAFE[path.stem])
            train_s = time.monotonic() - t0
            t0 = time.monotonic()
            stationary = run_stationary(line, base, args.stationary_parts, cfg)
            stationary_s = time.monotonic() - t0
            print(path.stem, "stationary", json.dumps({k: v for k, v in stationary.items() if k != "alarms"}),
                  flush=True)
            t0 = time.monotonic()
            scenarios = run_scenarios(line, base, path.stem, list(range(10, 10 + args.seeds)), cfg,
                                      args.scenarios)
            print(path.stem, "scenarios", json.dumps({k: v.get("delays", v) for k, v in scenarios.items()}), flush=True)
            per_scene[path.stem] = {"stationary": stationary, "scenarios": scenarios, "period_s": base.encoder_period_s,
                                    "signals_us_per_frame": round(line.signals_s / line.frames * 1e6, 1),
                                    "train_s": round(train_s, 1), "stationary_s": round(stationary_s, 1),
                                    "scenarios_s": round(time.monotonic() - t0, 1)}
    if args.scene_only:
        args.out.write_text(json.dumps({"per_scene": per_scene}, indent=2) + "\n")
        return 0
    return finish(args, cfg, per_scene, time.monotonic() - t_start)


def finish(args: argparse.Namespace, cfg: WatchConfig, per_scene: dict[str, Any], scenes_s: float) -> int:
    """The line's cost measured now, the figures over the scenes, the JSON and the tables."""
    load_before = os.getloadavg()
    cost = line_cost(100, 4000)
    print("cost", json.dumps(cost), flush=True)
    worst = {}
    for sc, goal in GOALS.items():
        # a new defect type shows in the model's score and defect rate only where the model sees defects at all
        scenes = {n: s for n, s in per_scene.items()
                  if sc != "new_defect_type" or s["stationary"]["model_auroc"] >= MIN_AUROC}
        delays = [s["scenarios"][sc]["delay_parts"] for s in scenes.values()]
        worst[sc] = {"delay_parts": None if not delays or any(d is None for d in delays) else max(delays),
                     "goal": goal, "by_scene": {n: s["scenarios"][sc]["delay_parts"] for n, s in per_scene.items()},
                     "scenes": sorted(scenes)}
    result = {
        "command": "python benchmarks/drift.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_before_cost": load_before},
        "watch": cfg.model_dump(mode="json"),
        "stationary": {"parts": sum(s["stationary"]["parts"] for s in per_scene.values()),
                       "false_alarms": sum(s["stationary"]["false_alarms"] for s in per_scene.values()),
                       "ert": cfg.ert_parts, "scenes": list(per_scene)},
        "scenarios": worst,
        "cbpe_abs_error_pp": max(s["stationary"]["cbpe_abs_error_pp"] for s in per_scene.values()),
        "cost": cost,
        "per_scene": per_scene,
        "scenes_s": round(scenes_s or sum(s["train_s"] + s["stationary_s"] + s["scenarios_s"]
                                          for s in per_scene.values()), 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
