"""`linewatch train` on real images: it learns, exports a model the worker accepts, and writes its card."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.emulator.parts import PartEmulator
from linewatch.model.onnx import Model
from linewatch.training.dataset import DatasetError, load_dataset, stratified_split
from linewatch.training.evaluate import auroc, choose_band, evaluate
from linewatch.training.network import InputSpec, build_net, export_onnx, preprocess
from linewatch.training.trainer import TrainOptions, train

FRAME = 128


def write_parts(root: Path, count: int, seed: int, by_type: bool = False, manifest: bool = False) -> Path:
    """Emulator parts as PNG files: class subfolders, or one folder plus manifest.csv with a segment column."""
    emu = PartEmulator(FRAME, FRAME, seed=seed, defect_rate=0.5)
    rows = []
    for i in range(count):
        part = emu.render(i)
        label = "good" if part.truth["label"] == "good" else (part.truth["type"] if by_type else "defect")
        rel = Path("images" if manifest else label) / f"{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), part.pixels)
        rows.append({"path": str(rel), "label": label, "lighting": "dim" if i % 3 == 0 else "normal"})
    if manifest:
        with (root / "manifest.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, ["path", "label", "lighting"])
            writer.writeheader()
            writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = write_parts(tmp_path_factory.mktemp("data"), 500, seed=21, manifest=True)
    out = tmp_path_factory.mktemp("model")
    card = train(data, out, TrainOptions(name="unit", net_size=64, epochs=20, seed=1), log=lambda s: None)
    return {"card": card, "out": out, "data": data}


def test_training_learns_and_exports_what_the_worker_accepts(trained: dict) -> None:
    card, out = trained["card"], trained["out"]
    m = card["metrics"]
    assert m["accuracy"] >= 0.8, m  # a model that ignored its input would sit near 0.5
    assert m["auroc"] >= 0.9
    assert m["onnx_torch_max_abs_diff"] <= 1e-4
    model = Model(out / "unit.onnx", providers="cpu")
    assert model.info.sha256 == card["sha256"] == json.loads((out / "card.json").read_text())["sha256"]
    assert model.frame_shape == (FRAME, FRAME) and model.info.labels == ("good", "defect")
    meta = model.info.metadata
    stats = json.loads(meta["linewatch.reference_stats"])
    assert stats["mean"][0] > 0 and stats["std"][0] > 0 and stats["sharpness"][0] > 0
    assert len(stats["score_quantiles"]) == 5
    assert meta["linewatch.dataset_sha256"] == card["data"]["dataset_sha256"]
    band = json.loads(meta["linewatch.class_bands"])["good"]
    assert band == [round(1 - m["band"][1], 6), round(1 - m["band"][0], 6)]
    emu = PartEmulator(FRAME, FRAME, seed=99, defect_rate=0.5)
    parts = [emu.render(i) for i in range(60)]
    probs = model.run(np.stack([p.pixels for p in parts]))
    truth = np.array([p.truth["label"] == "defect" for p in parts])
    assert ((probs[:, 1] >= 0.5) == truth).mean() >= 0.75, "fresh parts, not only the validation split"
    pred = model.predict(np.stack([p.pixels for p in parts[:5]]))  # the pooled features, for the drift watch
    assert meta["linewatch.outputs"] == "probs, embedding"
    assert pred.embeddings is not None and pred.embeddings.shape == (5, 64) and np.all(pred.embeddings >= 0)


def test_card_has_split_confusion_and_segments(trained: dict) -> None:
    card, out = trained["card"], trained["out"]
    assert card["data"]["split"]["train"] + card["data"]["split"]["validation"] == 500
    matrix = np.array(card["metrics"]["confusion"]["matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == card["data"]["split"]["validation"]
    assert set(card["segments"]["lighting"]) == {"dim", "normal"}
    assert card["calibration"]["temperature"] > 0
    md = (out / "CARD.md").read_text()
    assert card["sha256"] in md and "### Per lighting" in md and "escape rate" in md
    dim = card["segments"]["lighting"]["dim"]
    assert dim["accuracy_ci"][0] <= dim["accuracy"] <= dim["accuracy_ci"][1], "the bootstrap interval holds the rate"
    assert card["bias"]["confidence"] == 0.95 and card["bias"]["summary"].startswith("largest gap: ")
    assert "## Bias audit" in md and card["bias"]["summary"] in md


def test_folder_of_defect_types(tmp_path: Path) -> None:
    data = write_parts(tmp_path / "d", 80, seed=3, by_type=True)
    ds = load_dataset(data)
    assert ds.labels[0] == "good" and set(ds.labels[1:]) == {"dent", "scratch", "stain"}
    card = train(data, tmp_path / "m", TrainOptions(name="types", net_size=32, epochs=1), log=lambda s: None)
    assert Model(tmp_path / "m" / "types.onnx").info.defect_labels == {"dent", "scratch", "stain"}
    assert len(card["metrics"]["confusion"]["matrix"]) == 4


def test_ctrl_c_leaves_a_usable_model(tmp_path: Path) -> None:
    data = write_parts(tmp_path / "d", 120, seed=4)
    proc = subprocess.Popen([sys.executable, "-m", "linewatch", "train", str(data), "--out", str(tmp_path / "m"),
                             "--epochs", "500", "--patience", "500", "--net-size", "32", "--name", "cc"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("epoch 2/"):
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, rest
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["interrupted"] is True
    Model(tmp_path / "m" / "cc.onnx").warm_up()
    assert (tmp_path / "m" / "checkpoint.pt").exists()


def test_time_budget_ends_training_on_time_with_a_usable_model(tmp_path: Path) -> None:
    data = write_parts(tmp_path / "d", 60, seed=6)
    card = train(data, tmp_path / "m", TrainOptions(name="tb", arch="fine", net_size=64, epochs=500, patience=500,
                                                    max_minutes=0.05, rotate90=True), log=lambda s: None)
    assert 1 <= card["training"]["epochs_run"] < 500 and not card["training"]["interrupted"]
    assert card["metrics"]["onnx_torch_max_abs_diff"] <= 1e-4
    Model(tmp_path / "m" / "tb.onnx").warm_up()


@pytest.mark.parametrize("channels", [1, 3])
def test_fine_network_exports_space_to_depth_exactly(tmp_path: Path, channels: int) -> None:
    """The folded channels' order differs between PyTorch and ONNX; distinct colour planes would expose a mix-up."""
    import torch

    torch.manual_seed(channels)
    net = build_net(torch, channels, 2, "fine")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    spec = InputSpec(96, 96, channels, 96, 100.0, 50.0)
    frames = np.random.default_rng(channels).integers(0, 256, (4, 96, 96, channels)[: 3 + (channels > 1)],
                                                      dtype=np.uint8)
    x = preprocess(torch, torch.from_numpy(frames), spec)
    with torch.no_grad():  # centre and scale the logit margins so the probabilities spread over (0, 1)
        margin = net(x) @ torch.tensor([-1.0, 1.0])
        net[-1].bias[1] -= margin.mean()
        temperature = float(margin.std())
        ref = torch.softmax(net(x) / temperature, dim=1).numpy()
        features = net[:-1](x).numpy()  # what the head reads: the embedding the drift watch measures
    assert ref[:, 1].std() > 0.05, "spread outputs: a channel mix-up would show"
    export_onnx(net, spec, temperature, {"linewatch.labels": '["good", "defect"]'}, tmp_path / "f.onnx")
    import onnxruntime

    got, embedding = onnxruntime.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": frames})
    assert np.abs(ref - got).max() <= 1e-4
    assert embedding.shape == (4, 128) and np.abs(features - embedding).max() <= 1e-4 * (1 + np.abs(features).max())


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"good/a.png": True}, "no defect class"),
        ({"defect/a.png": True, "scratch/b.png": True}, "need exactly one good class"),
        ({"manifest.csv": "path,label\nmissing.png,good\n"}, "row 1: image missing.png not found"),
        ({"manifest.csv": "file_name,cls\na.png,good\n"}, "row 1: needs 'path' and 'label'"),
        ({"manifest.json": "{oops"}, "not valid JSON"),
    ],
)
def test_dataset_errors_name_the_problem(tmp_path: Path, layout: dict, message: str) -> None:
    for rel, content in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if content is True:
            cv2.imwrite(str(tmp_path / rel), np.zeros((8, 8), np.uint8))
        else:
            (tmp_path / rel).write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path)


def test_split_is_stratified_and_seeded() -> None:
    targets = np.array([0] * 90 + [1] * 10)
    train_idx, hold = stratified_split(targets, 0.2, seed=5)
    assert (targets[hold] == 1).sum() == 2 and (targets[hold] == 0).sum() == 18
    assert not set(train_idx) & set(hold)
    assert np.array_equal(hold, stratified_split(targets, 0.2, seed=5)[1])


def test_metrics() -> None:
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True])) == 1.0
    assert auroc(np.array([0.5, 0.5]), np.array([False, True])) == 0.5
    p = np.array([0.02, 0.1, 0.45, 0.55, 0.9, 0.97])
    is_defect = np.array([False, False, True, False, True, True])
    low, high = choose_band(p, is_defect, max_review=0.5)
    assert low <= 0.45 and high > 0.55
    probs = np.stack([1 - p, p], axis=1)
    m = evaluate(probs, is_defect.astype(np.int64), ["good", "defect"], (low, high))
    assert m["escape_rate"] == 0.0 and m["false_reject_rate"] == 0.0
    assert m["review_rate"] == pytest.approx(2 / 6, abs=1e-3)
    assert m["model_alone"] == {"escape_rate": round(1 / 3, 4), "false_reject_rate": round(1 / 3, 4)}
    # A model perfect on its validation split still keeps a margin for parts unlike it.
    assert choose_band(np.array([0.001, 0.002, 0.999]), np.array([False, False, True])) == (0.2, 0.8)


def test_anomaly_model_from_good_images_only(tmp_path: Path) -> None:
    data = write_parts(tmp_path / "d", 240, seed=8)  # good/ is trained on; defect/ only evaluates
    card = train(data, tmp_path / "m", TrainOptions(name="anom", kind="anomaly", net_size=64, epochs=8, seed=3),
                 log=lambda s: None)
    m = card["metrics"]
    assert card["kind"] == "anomaly" and m["onnx_torch_max_abs_diff"] <= 1e-4
    assert m["auroc"] >= 0.75, "it separates synthetic anomalies from good parts"
    assert m["real_defects"]["count"] == card["data"]["split"]["validation"] + card["data"]["class_counts"][
        "defect (evaluation only)"]
    model = Model(tmp_path / "m" / "anom.onnx")
    assert model.info.metadata["linewatch.kind"] == "anomaly"
    outputs = {o.name: o.shape for o in model.session.get_outputs()}
    assert list(outputs) == ["probs", "anomaly_map"] and outputs["anomaly_map"][1:] == [1, 16, 16]
    probs = model.run(np.zeros((2, FRAME, FRAME), np.uint8))
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert "Real defects (never trained on)" in (tmp_path / "m" / "CARD.md").read_text()


def test_soft_targets_fit_the_experts_probabilities(tmp_path: Path) -> None:
    """Trained towards a defect probability of 0.5 for every part, the model cannot tell parts apart even
    though the labels can (dark good parts, bright defective ones); with probabilities that follow the
    labels the same run separates them."""
    rng = np.random.default_rng(5)
    labels = ["good", "defect"] * 80
    for i, label in enumerate(labels):
        level = 60 if label == "good" else 190
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), rng.normal(level, 20, (32, 32)).clip(0, 255).astype(np.uint8))
    spread = {}
    for name, probability in (("soft", lambda label: 0.5), ("hard", lambda label: float(label == "defect"))):
        manifest = tmp_path / f"{name}.csv"
        manifest.write_text("path,label,defect_probability\n" + "".join(
            f"{i:03d}.png,{label},{probability(label)}\n" for i, label in enumerate(labels)))
        ds = load_dataset(manifest)
        assert ds.soft_targets()[1].tolist() == [1 - probability("defect"), probability("defect")]
        card = train(manifest, tmp_path / name, TrainOptions(name=name, net_size=32, epochs=10, patience=10, seed=1,
                                                             soft_targets=True), log=lambda s: None)
        assert card["training"]["options"]["soft_targets"] is True
        ds.load(None, 1)
        assert ds.images is not None
        p = Model(tmp_path / name / f"{name}.onnx").run(ds.images)[:, 1].clip(1e-6, 1 - 1e-6)
        # what the network learnt, before the calibration's temperature (which sharpens any faint signal)
        fitted = 1 / (1 + np.exp(-np.log(p / (1 - p)) * card["calibration"]["temperature"]))
        spread[name] = float(np.abs(fitted - 0.5).mean())
        if name == "hard":
            assert card["metrics"]["accuracy"] >= 0.95
    assert spread["soft"] < 0.1 < 0.3 < spread["hard"], spread


@pytest.mark.parametrize(("column", "message"), [("", "need a number in column 'defect_probability'"),
                                                  ("1.5", "must be within \\[0, 1\\], got 1.5")])
def test_soft_target_errors_name_the_row(tmp_path: Path, column: str, message: str) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "manifest.csv").write_text(f"path,label,defect_probability\na.png,good,0\na.png,defect,{column}\n")
    with pytest.raises(DatasetError, match=f"row 2: .*{message}"):
        load_dataset(tmp_path).soft_targets()


def test_shift_augmentation_moves_parts_by_at_most_the_asked_pixels() -> None:
    import torch

    from linewatch.training.trainer import _augment

    x = torch.zeros(64, 1, 40, 40)
    x[:, 0, 20, 20] = 10.0
    out = _augment(torch, x, TrainOptions(flips=False, shift_px=3), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    where = out.flatten(1).argmax(1)
    dy, dx = where // 40 - 20, where % 40 - 20
    assert dy.abs().max() <= 3 and dx.abs().max() <= 3
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) >= 10  # not one shift for the whole batch


def test_soft_targets_need_a_single_defect_class(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "manifest.csv").write_text("path,label,defect_probability\na.png,good,0\na.png,scratch,1\n"
                                           "a.png,dent,1\n")
    with pytest.raises(DatasetError, match=r"soft targets need exactly one defect class, found \['dent', 'scratch'\]"):
        load_dataset(tmp_path).soft_targets()
