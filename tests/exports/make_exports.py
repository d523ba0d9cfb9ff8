#!/usr/bin/env python3
"""Make the reference ONNX exports under tests/exports/ with the real libraries.

The files next to this script were written by Ultralytics' and anomalib's own
export calls, so the project's tests can check its model adapters against what
those libraries really write (input/output names and shapes, metadata_props,
external-data layout, IR/opset versions, raw outputs on known images).

Nothing here is post-processed: every .onnx file is copied byte for byte from
where the library wrote it.

How to run (from the repository root; ~2 minutes on 2 CPU cores)
----------------------------------------------------------------
Use a throwaway venv OUTSIDE the repo (never the project's .venv):

    python3 -m venv /tmp/byom
    /tmp/byom/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        "ultralytics==8.4.*" "anomalib==2.7.*" onnx onnxslim onnxruntime onnxscript
    OMP_NUM_THREADS=1 nice -n 10 /tmp/byom/bin/python tests/exports/make_exports.py

Why torch 2.14.1 and not the project's 2.13.0+cpu: both Ultralytics and
anomalib import torchvision, and PyPI's torchvision wheels are CUDA builds that
fail to import beside the CPU torch 2.13.0 wheel ("operator torchvision::nms
does not exist": libc10_cuda.so missing). torch 2.14.1 + torchvision 0.29.1
(CUDA builds, ~5.5 GB in the venv, run on the CPU) are what pip finds on this
machine's disk. Pin both in every pip call: an unpinned resolve pulls other
CUDA builds. onnxscript is needed by anomalib, whose export uses torch's
dynamo exporter; onnxslim and onnxruntime by Ultralytics' default simplify=True.

The script
  1. runs the project's emulator (`.venv/bin/linewatch emulate --count 120
     --width 128 --height 128 --seed 7`) unless --parts names its output,
  2. lays that out as an ImageFolder classify set, a YOLO detect set (boxes from
     the emulator's truth region, classes dent/scratch/stain) and an anomalib
     Folder set (good/, defect/, mask/ from the truth region),
  3. trains each model briefly on the CPU at a tiny size (anomalib: 1 epoch;
     Ultralytics: 10 epochs classify, 30 detect, ~1 minute in all, because
     after 1 epoch every sample gave the same output) and exports it with
     the library's own call,
  4. copies 2 good and 2 defect samples to samples/,
  5. runs every export with onnxruntime in the PROJECT's venv
     (`.venv/bin/python make_exports.py --reference ...`, which needs only
     numpy, pillow, onnx, onnxruntime) and writes manifest.json and
     reference_outputs.npz.

Ultralytics models are built from the library's own yaml (yolov8-cls.yaml,
yolov8.yaml, yolo26.yaml) with one extra width scale "t" = [0.33, 0.125, 256]
(the stock "n" scale is [0.33, 0.25, 1024]) so the files stay small; the
graph structure is otherwise the library's.

What came out (ultralytics 8.4.190, anomalib 2.7.0; manifest.json has it all)
  yolo-cls-static.onnx       images [1,3,64,64] -> output0 [1,2] (softmax)
  yolo-cls-dynamic.onnx      images [batch,3,height,width] -> output0 [Softmaxoutput0_dim_0,2]
  yolo-det.onnx              images [1,3,128,128] -> output0 [1,7,336] (cx,cy,w,h + 3 class scores)
  yolo-det-nms.onnx          nms=True -> output0 [1,300,6] (x1,y1,x2,y2,score,class; conf 0.25 baked in)
  yolo-det-nms-conf001.onnx  nms=True, conf=0.001: same layout, with some rows filled
  yolo26-default.onnx        YOLO26 with export defaults: NOT end2end in 8.4.190 (nms=None means external
                             NMS) -> output0 [1,7,336], metadata end2end 'False'
  yolo26-e2e.onnx            nms=False -> end2end head, output0 [1,300,6], metadata end2end 'True'
  anomalib-padim/            model.onnx + model.onnx.data (external weights), input [batch_size,3,height,width]
  anomalib-patchcore/        model.onnx + model.onnx.data, input [batch_size,3,128,128] (input_size given)
  Ultralytics files: IR 8, opset 18, metadata_props description/author/date/version/license/docs/stride/
  task/head/batch/imgsz/names/args/channels/end2end. anomalib files: IR 10, opset 18 (anomalib asks for 14;
  torch's conversion fails and keeps 18), no metadata_props, no sidecar file; outputs pred_score,
  pred_label (bool), anomaly_map, pred_mask (bool) with resize+normalise and normalisation+threshold inside.
  The Ultralytics 'date' metadata changes on every run, so their sha256 do too; anomalib's files and all
  outputs came out identical on reruns.

Last run with: torch 2.14.1+cu130 (on the CPU), torchvision 0.29.1, ultralytics 8.4.190,
anomalib 2.7.0, lightning 2.6.6, timm 1.0.31, onnx 1.23.2, onnxslim 0.1.98,
onnxscript 0.7.2, onnx-ir 1.1.0, onnxruntime 1.32.0 (export side);
reference outputs from the project's onnxruntime-gpu 1.31.1 (CPU provider).
manifest.json records the versions actually used.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
IMGSZ_CLS = 64  # Ultralytics classify train/export size (the 128 px parts are resized)
IMGSZ_DET = 128  # detect: the parts' own size; 16x16+8x8+4x4 = 336 anchors >= max_det 300, so end2end/NMS heads
#                 give their usual [1, 300, 6] (at 64 px an end2end head gives [1, min(300, 84), 6])
ANOMALIB_SIZE = (64, 64)  # anomalib pre-processor resize (inside the exported graph)
SEED = 7
# Ultralytics epochs: enough that outputs differ between the sample images (after 1 epoch every
# image gave the same numbers, so reference outputs could not catch a preprocessing mistake)
EPOCHS = {"cls": 10, "det": 30}
DET_NAMES = ["dent", "scratch", "stain"]
TINY_SCALE = [0.33, 0.125, 256]  # depth, width, max_channels


# ----------------------------------------------------------------------------- helpers


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"[make_exports] {msg}", flush=True)


def read_truth(parts: Path) -> list[dict]:
    return [json.loads(line) for line in (parts / "manifest.jsonl").read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- datasets


def make_datasets(parts: Path, work: Path) -> dict[str, Path]:
    """Arrange the emulator's frames as each library wants them."""
    from PIL import Image

    rows = read_truth(parts)
    good = [r for r in rows if r["truth"]["label"] == "good"]
    bad = [r for r in rows if r["truth"]["label"] == "defect"]
    log(f"emulator: {len(good)} good, {len(bad)} defect")

    def split(items):  # every 5th frame to val
        return [r for i, r in enumerate(items) if i % 5], [r for i, r in enumerate(items) if not i % 5]

    # Ultralytics classify: <root>/{train,val}/{defect,good}/*.png
    cls_root = work / "data-cls"
    for sub, items in (("train", split(good)[0] + split(bad)[0]), ("val", split(good)[1] + split(bad)[1])):
        for r in items:
            d = cls_root / sub / r["truth"]["label"]
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(parts / r["file"], d / r["file"])

    # Ultralytics detect: images/{train,val}, labels/{train,val} (cls cx cy w h, normalised); good frames as background
    det_root = work / "data-det"
    for sub, items in (("train", split(good)[0] + split(bad)[0]), ("val", split(good)[1] + split(bad)[1])):
        (det_root / "images" / sub).mkdir(parents=True, exist_ok=True)
        (det_root / "labels" / sub).mkdir(parents=True, exist_ok=True)
        for r in items:
            shutil.copy(parts / r["file"], det_root / "images" / sub / r["file"])
            lines = []
            t = r["truth"]
            if t["label"] == "defect" and t.get("region"):
                w_img, h_img = Image.open(parts / r["file"]).size
                x, y, w, h = t["region"]
                lines.append(
                    f"{DET_NAMES.index(t['type'])} {(x + w / 2) / w_img:.6f} {(y + h / 2) / h_img:.6f} "
                    f"{w / w_img:.6f} {h / h_img:.6f}"
                )
            label = det_root / "labels" / sub / (Path(r["file"]).stem + ".txt")
            label.write_text("".join(f"{line}\n" for line in lines))
    det_yaml = work / "data-det.yaml"
    det_yaml.write_text(
        f"path: {det_root}\ntrain: images/train\nval: images/val\nnames:\n"
        + "".join(f"  {i}: {n}\n" for i, n in enumerate(DET_NAMES))
    )

    # anomalib Folder: good/, defect/, mask/ (same file names as defect/)
    ano_root = work / "data-anomalib"
    for sub in ("good", "defect", "mask"):
        (ano_root / sub).mkdir(parents=True, exist_ok=True)
    for r in good:
        shutil.copy(parts / r["file"], ano_root / "good" / r["file"])
    for r in bad:
        shutil.copy(parts / r["file"], ano_root / "defect" / r["file"])
        im = Image.open(parts / r["file"])
        mask = Image.new("L", im.size, 0)
        if r["truth"].get("region"):
            x, y, w, h = r["truth"]["region"]
            mask.paste(255, (x, y, x + w, y + h))
        mask.save(ano_root / "mask" / r["file"])

    return {"cls": cls_root, "det": det_yaml, "anomalib": ano_root}


def copy_samples(parts: Path, out: Path) -> list[dict]:
    rows = read_truth(parts)
    good = [r for r in rows if r["truth"]["label"] == "good"][:2]
    bad = [r for r in rows if r["truth"]["label"] == "defect"][:2]
    sdir = out / "samples"
    if sdir.exists():
        shutil.rmtree(sdir)
    sdir.mkdir(parents=True)
    samples = []
    for i, r in enumerate(good + bad):
        name = f"{r['truth']['label']}-{i % 2 + 1}.png"
        shutil.copy(parts / r["file"], sdir / name)
        samples.append({"file": f"samples/{name}", "emulator_file": r["file"], "truth": r["truth"]})
    return samples


# ----------------------------------------------------------------------------- Ultralytics


def tiny_yaml(stock: str, name: str, work: Path) -> Path:
    """The library's own model yaml with the extra small width scale 't' (and nothing else changed)."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    d = yaml_model_load(stock)
    d.pop("scale", None)
    d.pop("yaml_file", None)
    d["scales"] = {"t": TINY_SCALE}
    d["scale"] = "t"
    path = work / name
    header = f"# {stock} from ultralytics with scales replaced by t: {TINY_SCALE}\n"
    path.write_text(header + yaml.safe_dump(d, sort_keys=False))
    return path


def yolo_train(cfg: Path, data: Path | str, run: str, work: Path, imgsz: int, epochs: int) -> Path:
    from ultralytics import YOLO

    model = YOLO(str(cfg))
    model.train(
        data=str(data), epochs=epochs, imgsz=imgsz, batch=16, device="cpu", workers=0, plots=False,
        project=str(work / "runs"), name=run, exist_ok=True, seed=SEED, deterministic=True, verbose=False,
        pretrained=False, amp=False,
    )
    best = work / "runs" / run / "weights" / "best.pt"
    assert best.exists(), best
    return best


def yolo_export(best: Path, dest: Path, **kwargs) -> dict:
    """YOLO(best.pt).export(format='onnx', **kwargs); copy the written file to dest unchanged."""
    from ultralytics import YOLO

    written = Path(YOLO(str(best)).export(format="onnx", **kwargs))
    shutil.copy(written, dest)
    written.unlink()  # the next export of the same weights writes the same path
    call = "YOLO('{}').export(format='onnx'{})".format(
        best.name, "".join(f", {k}={v!r}" for k, v in kwargs.items())
    )
    return {"export_call": call, "export_kwargs": {"format": "onnx", **kwargs}}


def run_ultralytics(data: dict[str, Path], work: Path, out: Path) -> dict[str, dict]:
    import ultralytics

    info: dict[str, dict] = {}
    common = {"library": "ultralytics", "library_version": ultralytics.__version__}

    def train(imgsz, epochs):
        return {"train": {"call": f"YOLO(yaml).train(data=..., epochs={epochs}, imgsz={imgsz}, batch=16, device='cpu', "
                                  f"workers=0, plots=False, seed={SEED}, deterministic=True, pretrained=False, "
                                  "amp=False)",
                          "epochs": epochs, "imgsz": imgsz}}

    cfg = tiny_yaml("yolov8n-cls.yaml", "yolov8t-cls.yaml", work)
    best = yolo_train(cfg, data["cls"], "cls", work, IMGSZ_CLS, EPOCHS["cls"])
    for fname, kw in (("yolo-cls-static.onnx", {}), ("yolo-cls-dynamic.onnx", {"dynamic": True})):
        info[fname] = {**common, **train(IMGSZ_CLS, EPOCHS["cls"]), "task": "classify",
                       "model_yaml": f"yolov8-cls.yaml, scale t={TINY_SCALE}",
                       "dataset": "ImageFolder train/val with classes defect, good",
                       **yolo_export(best, out / fname, **kw)}

    cfg = tiny_yaml("yolov8n.yaml", "yolov8t.yaml", work)
    best = yolo_train(cfg, data["det"], "det", work, IMGSZ_DET, EPOCHS["det"])
    # nms=True bakes conf=0.25 in; these briefly trained models score ~0.005, so that file gives all-zero rows on the
    # samples. The conf=0.001 copy (a documented export argument) shows real rows followed by zero padding.
    for fname, kw in (("yolo-det.onnx", {}), ("yolo-det-nms.onnx", {"nms": True}),
                      ("yolo-det-nms-conf001.onnx", {"nms": True, "conf": 0.001})):
        info[fname] = {**common, **train(IMGSZ_DET, EPOCHS["det"]), "task": "detect",
                       "model_yaml": f"yolov8.yaml, scale t={TINY_SCALE}",
                       "dataset": f"YOLO detect, names {DET_NAMES}", **yolo_export(best, out / fname, **kw)}

    cfg = tiny_yaml("yolo26n.yaml", "yolo26t.yaml", work)
    best = yolo_train(cfg, data["det"], "det26", work, IMGSZ_DET, EPOCHS["det"])
    # ultralytics 8.4.190: export's nms=None (the default) means "external NMS", which turns YOLO26's end2end head
    # off (output [1, 4+nc, anchors] like yolov8); nms=False asks for the NMS-free end2end head ([1, 300, 6]).
    for fname, kw in (("yolo26-default.onnx", {}), ("yolo26-e2e.onnx", {"nms": False})):
        info[fname] = {**common, **train(IMGSZ_DET, EPOCHS["det"]), "task": "detect",
                       "model_yaml": f"yolo26.yaml, scale t={TINY_SCALE}",
                       "dataset": f"YOLO detect, names {DET_NAMES}", **yolo_export(best, out / fname, **kw)}
    return info


# ----------------------------------------------------------------------------- anomalib


def run_anomalib(root: Path, work: Path, out: Path) -> dict[str, dict]:
    import anomalib
    from anomalib.data import Folder
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine
    from anomalib.models import Padim, Patchcore
    from lightning.pytorch import seed_everything

    info: dict[str, dict] = {}
    specs = [
        ("anomalib-padim", Padim,
         dict(backbone="resnet18", layers=["layer1", "layer2"], pre_trained=False, n_features=32),
         None),
        ("anomalib-patchcore", Patchcore, dict(backbone="resnet18", layers=["layer1", "layer2"], pre_trained=False,
                                              coreset_sampling_ratio=0.02, num_neighbors=9), (128, 128)),
    ]
    for folder, cls, kwargs, input_size in specs:
        seed_everything(SEED, workers=True)
        datamodule = Folder(
            name="parts", root=root, normal_dir="good", abnormal_dir="defect", mask_dir="mask",
            train_batch_size=16, eval_batch_size=16, num_workers=0, seed=SEED,
        )
        model = cls(**kwargs, pre_processor=cls.configure_pre_processor(image_size=ANOMALIB_SIZE), visualizer=False)
        engine = Engine(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=str(work / folder),
                        logger=False, enable_progress_bar=False)
        engine.fit(model=model, datamodule=datamodule)
        export_root = work / f"{folder}-export"
        if export_root.exists():
            shutil.rmtree(export_root)
        written = Path(engine.export(model=model, export_type=ExportType.ONNX, export_root=export_root,
                                     input_size=input_size))
        dest = out / folder
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        files = sorted(p for p in written.parent.iterdir() if p.is_file())
        for p in files:  # everything anomalib wrote next to model.onnx (e.g. model.onnx.data), unchanged
            shutil.copy(p, dest / p.name)
        written_tree = sorted(str(p.relative_to(export_root)) for p in export_root.rglob("*") if p.is_file())
        pp = model.post_processor
        post = {k: float(getattr(pp, k)) for k in ("image_threshold", "pixel_threshold", "image_min", "image_max",
                                                   "pixel_min", "pixel_max", "normalized_image_threshold",
                                                   "normalized_pixel_threshold") if hasattr(pp, k)}
        post["in_graph"] = ("pre_processor (Resize antialias + ImageNet Normalize), model, post_processor: "
                            "score = clamp((raw - threshold) / (max - min) + 0.5, 0, 1), same for anomaly_map with "
                            "the pixel stats; pred_label = pred_score > normalized_image_threshold, "
                            "pred_mask = anomaly_map > normalized_pixel_threshold")
        call = (f"Engine(max_epochs=1, accelerator='cpu').export(model, ExportType.ONNX, export_root=..., "
                f"input_size={input_size!r})")
        info[f"{folder}/model.onnx"] = {
            "library": "anomalib", "library_version": anomalib.__version__, "model": cls.__name__,
            "model_kwargs": kwargs,
            "pre_processor": f"{cls.__name__}.configure_pre_processor(image_size={ANOMALIB_SIZE})",
            "train": {"engine": "Engine(max_epochs=1, accelerator='cpu', devices=1)",
                      "datamodule": "Folder(normal_dir='good', abnormal_dir='defect', mask_dir='mask')", "seed": SEED},
            "export_call": call,
            "export_kwargs": {"export_type": "onnx", "input_size": input_size, "model_file_name": "model"},
            "written_by_library": written_tree,
            "post_processor_state_at_export": post,
        }
    return info


# ----------------------------------------------------------------------------- reference run (project venv)


def onnx_description(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def dims(vi):
        return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
                for d in vi.type.tensor_type.shape.dim]

    def dtype(vi):
        return onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()

    inits = {i.name for i in m.graph.initializer}
    external = sorted({e.value for i in m.graph.initializer for e in i.external_data if e.key == "location"})
    return {
        "ir_version": m.ir_version,
        "opset_imports": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "inputs": [{"name": i.name, "shape": dims(i), "dtype": dtype(i)} for i in m.graph.input if i.name not in inits],
        "outputs": [{"name": o.name, "shape": dims(o), "dtype": dtype(o)} for o in m.graph.output],
        "metadata_props": {p.key: p.value for p in m.metadata_props},
        "external_data_files": external,
        "node_count": len(m.graph.node),
    }


def reference(out: Path, info_path: Path) -> None:
    """Runs in the project's venv: describe every export and record onnxruntime outputs on the samples."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from PIL import Image

    info = json.loads(info_path.read_text())
    arrays: dict[str, np.ndarray] = {}
    max_ir = 13  # what the project's onnxruntime is known to load
    for fname, entry in info["files"].items():
        path = out / fname
        desc = onnx_description(path)
        entry.update(desc)
        folder_files = [path] + [path.parent / f for f in desc["external_data_files"]]
        entry["files_on_disk"] = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
                                  for p in folder_files}
        entry["ir_version_above_project_max_13"] = desc["ir_version"] > max_ir
        try:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # record, don't fix
            entry["onnxruntime_load_error"] = f"{type(exc).__name__}: {exc}"
            continue
        inp = sess.get_inputs()[0]
        is_yolo = entry["library"] == "ultralytics"
        runs = []
        for s in info["samples"]:
            img = Image.open(out / s["file"]).convert("RGB")
            if is_yolo:
                # square 128 -> 64: letterbox is a plain resize; Ultralytics feeds RGB / 255, NCHW float32
                h = w = int(entry["metadata_props"].get("imgsz", "[64, 64]").strip("[]").split(",")[0])
                pre = f"PIL RGB, resize to {w}x{h} bilinear, /255, NCHW float32"
                img = img.resize((w, h), Image.BILINEAR)
            else:
                # anomalib: the graph resizes and normalises itself; feed RGB in [0, 1] at the native size
                pre = "PIL RGB at native size, /255, NCHW float32 (resize+ImageNet normalise are inside the graph)"
            x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
            x = np.ascontiguousarray(x)
            outs = sess.run(None, {inp.name: x})
            key = f"{fname}|{s['file']}"
            arrays[f"{key}|input:{inp.name}"] = x
            rec = {"sample": s["file"], "preprocess": pre, "input_shape": list(x.shape), "outputs": {}}
            for meta, val in zip(sess.get_outputs(), outs, strict=True):
                val = np.asarray(val)
                arrays[f"{key}|output:{meta.name}"] = val
                o = {"shape": list(val.shape), "dtype": str(val.dtype), "npz_key": f"{key}|output:{meta.name}"}
                if val.size <= 64:
                    o["values"] = val.tolist()
                else:
                    v = val.astype(np.float64)
                    o["summary"] = {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean())}
                rec["outputs"][meta.name] = o
            runs.append(rec)
        if any(d is None or isinstance(d, str) for d in entry["inputs"][0]["shape"][:1]):
            # dynamic batch: also one run with all four samples stacked
            xs = np.concatenate([arrays[f"{fname}|{s['file']}|input:{inp.name}"] for s in info["samples"]])
            outs = sess.run(None, {inp.name: xs})
            rec = {"sample": "all four, stacked in samples order", "input_shape": list(xs.shape), "outputs": {}}
            for meta, val in zip(sess.get_outputs(), outs, strict=True):
                arrays[f"{fname}|batch4|output:{meta.name}"] = np.asarray(val)
                rec["outputs"][meta.name] = {"shape": list(np.shape(val)),
                                             "npz_key": f"{fname}|batch4|output:{meta.name}"}
            runs.append(rec)
        entry["onnxruntime_reference"] = {"onnxruntime": ort.__version__, "provider": "CPUExecutionProvider",
                                          "runs": runs}
    info["reference_env"] = {"python": sys.version.split()[0], "onnxruntime": ort.__version__,
                             "onnx": onnx.__version__, "numpy": np.__version__}
    np.savez_compressed(out / "reference_outputs.npz", **arrays)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    info["total_bytes_of_tests_exports"] = total
    (out / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"manifest.json written; tests/exports holds {total / 1e6:.2f} MB")


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=Path, help="emulator output (default: run the project's emulator)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/linewatch-exports-work"))
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--project-python", type=Path, default=REPO / ".venv" / "bin" / "python")
    ap.add_argument("--only", choices=["ultralytics", "anomalib"], help="skip the other library (keeps its old info)")
    ap.add_argument("--reference", type=Path, help=argparse.SUPPRESS)  # internal: run in the project venv
    args = ap.parse_args()
    out = args.out.resolve()

    if args.reference:
        reference(out, args.reference)
        return

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.work / "ultralytics-settings"))
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    parts = args.parts
    if parts is None:
        parts = work / "parts"
        linewatch = args.project_python.parent / "linewatch"
        subprocess.run([str(linewatch), "emulate", "--count", "120", "--out", str(parts), "--width", "128",
                        "--height", "128", "--seed", str(SEED)], check=True)
    data = make_datasets(parts.resolve(), work)

    import numpy
    import onnx
    import torch

    old = {}
    info_file = out / "manifest.json"
    if args.only and info_file.exists():
        old = json.loads(info_file.read_text()).get("files", {})
    files: dict[str, dict] = {}
    if args.only != "anomalib":
        files.update(run_ultralytics(data, work, out))
    if args.only != "ultralytics":
        files.update(run_anomalib(data["anomalib"], work, out))
    for k, v in old.items():
        files.setdefault(k, v)

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "onnx": onnx.__version__,
                "numpy": numpy.__version__}
    for mod in ("torchvision", "ultralytics", "anomalib", "lightning", "timm", "onnxslim", "onnxscript", "onnx_ir",
                "onnxruntime"):
        with contextlib.suppress(ImportError):
            versions[mod] = __import__(mod).__version__
    for v in files.values():
        v["torch_version"] = torch.__version__
    info = {
        "generated_by": "tests/exports/make_exports.py",
        "export_env": versions,
        "emulator": {"command": f"linewatch emulate --count 120 --width 128 --height 128 --seed {SEED}",
                     "parts": "Mono8 PNG 128x128; truth region is [x, y, w, h]"},
        "samples": copy_samples(parts.resolve(), out),
        "files": dict(sorted(files.items())),
    }
    tmp = work / "export-info.json"
    tmp.write_text(json.dumps(info, indent=2))
    me = str(Path(__file__).resolve())
    subprocess.run([str(args.project_python), me, "--out", str(out), "--reference", str(tmp)], check=True)


if __name__ == "__main__":
    main()
