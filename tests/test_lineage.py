"""Training from a dataset snapshot and the lineage from an inspection row back to it (docs/data.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from linewatch.cli import main
from linewatch.data.items import read_sources
from linewatch.data.registry import DataRegistry
from linewatch.model.onnx import Model
from linewatch.model.registry import Registry
from linewatch.store.schema import open_writer
from linewatch.store.writer import register_model
from linewatch.training.trainer import TrainOptions, train
from tests.conftest import emulated_parts

SIZE = 64
TINY = ["--backbone", "none", "--net-size", "32", "--epochs", "2", "--patience", "2", "--max-minutes", "0.5"]


def _parts(root: Path, n: int = 40, seed: int = 0) -> Path:
    """Class subfolders with `n` emulated parts, at least 4 of each class."""
    return emulated_parts(root, n, seed, SIZE, at_least=4)


def _snapshot(reg: DataRegistry, src: Path, name: str) -> str:
    entries, sources = read_sources([src])
    return reg.snapshot(entries, sources, name)[0].id


def _lineage(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linewatch", "lineage", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("lineage")
    var = root / "var"
    reg = DataRegistry(var / "datasets")
    sid = _snapshot(reg, _parts(root / "parts"), "parts")
    out = root / "model"
    rc = main(["train", f"data:{sid[:12]}", "--out", str(out), "--name", "snap", "--data-dir", str(var), *TINY])
    assert rc == 0
    return {"root": root, "var": var, "sid": sid, "onnx": out / "snap.onnx", "card": json.loads(
        (out / "card.json").read_text())}


def test_training_from_a_snapshot_records_it_with_the_options_and_code_version(trained: dict) -> None:
    card, sid = trained["card"], trained["sid"]
    meta = Model(trained["onnx"], providers="cpu").info.metadata
    assert meta["linewatch.dataset_snapshot"] == card["data"]["snapshot"] == sid
    assert card["data"]["source"] == f"data:{sid}" and card["data"]["count"] == 40
    params = json.loads(meta["linewatch.train_params"])
    assert params["name"] == "snap" and params["net_size"] == 32 and params["epochs"] == 2
    assert params["backbone"] == "none" and params["max_minutes"] == 0.5
    assert re.fullmatch(r"linewatch \S+( \(git [0-9a-f]{40}\))?", meta["linewatch.code_version"])
    assert card["training"]["code_version"] == meta["linewatch.code_version"]
    card_md = (trained["onnx"].parent / "CARD.md").read_text()
    assert f"Snapshot `{sid}`" in card_md and '"net_size": 32' in card_md
    # nothing was copied out of the registry: the only images are the sources' and the objects
    assert not any(p.suffix == ".png" for p in trained["onnx"].parent.rglob("*"))


def test_a_folder_records_no_snapshot_but_its_options_and_code_version(tmp_path: Path) -> None:
    card = train(_parts(tmp_path / "parts", n=24, seed=3), tmp_path / "m",
                 TrainOptions(name="folder", net_size=32, epochs=1, patience=1), log=lambda s: None)
    meta = Model(tmp_path / "m" / "folder.onnx", providers="cpu").info.metadata
    assert "linewatch.dataset_snapshot" not in meta and "snapshot" not in card["data"]
    assert meta["linewatch.dataset_sha256"] == card["data"]["dataset_sha256"]
    assert json.loads(meta["linewatch.train_params"])["name"] == "folder"
    assert meta["linewatch.code_version"].startswith("linewatch ")


def test_a_folder_that_fails_its_check_is_not_trained_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _parts(tmp_path / "bad")
    cut = sorted((src / "good").iterdir())[1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    rc = main(["train", str(src), "--out", str(tmp_path / "m"), *TINY])
    err = capsys.readouterr().err
    assert rc == 1 and f"not trained: {src} fails its check" in err
    assert f"bad/good/{cut.name}: unreadable or truncated image" in err and not (tmp_path / "m").exists()


def test_a_snapshot_that_fails_its_check_is_not_trained_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _parts(tmp_path / "bad")
    cut = sorted((src / "good").iterdir())[1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    reg = DataRegistry(tmp_path / "reg")
    sid = _snapshot(reg, src, "bad")  # stored without its check, as `data snapshot --no-check` does
    rc = main(["train", "--snapshot", sid[:10], "--out", str(tmp_path / "m"), "--registry", str(reg.root), *TINY])
    err = capsys.readouterr().err
    assert rc == 1 and "not trained" in err and f"bad/good/{cut.name}: unreadable or truncated image" in err
    assert not (tmp_path / "m").exists()
    unknown = main(["train", "data:0123456789ab", "--out", str(tmp_path / "m"), "--registry", str(reg.root)])
    assert unknown == 2 and "unknown snapshot data:0123456789ab" in capsys.readouterr().err


def test_models_show_has_the_snapshot_options_and_code_version(trained: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    Registry(models).add(trained["onnx"])
    capsys.readouterr()
    assert main(["models", "--registry", str(models), "show", "snap"]) == 0
    shown = json.loads(capsys.readouterr().out)["provenance"]
    assert shown["dataset_snapshot"] == trained["sid"] and shown["params"]["epochs"] == 2
    assert shown["code_version"].startswith("linewatch ")


def test_lineage_goes_from_an_inspection_row_to_model_snapshot_code_and_options(trained: dict, tmp_path: Path) -> None:
    var, sid = tmp_path / "var", trained["sid"]
    shutil.copytree(trained["var"] / "datasets", var / "datasets")
    models = tmp_path / "models"
    version = Registry(models).add(trained["onnx"])
    sha = Model(trained["onnx"], providers="cpu").info.sha256
    assert version.sha256 == sha
    db = open_writer(var)
    row = {"camera": "cam0", "stream": "s1", "seq": 7, "part_id": "P-7", "recipe": "default", "final": "FAIL",
           "decided_by": "model", "label": "defect", "score": 0.93, "model_hash": sha, "model_name": "snap",
           "t_capture_ns": 1_700_000_000_000_000_000}
    inspection_id = db.table("inspections").insert(row).last_pk
    unknown_model = db.table("inspections").insert({**row, "seq": 8, "model_hash": "ab" * 32}).last_pk
    register_model(db, sha, "snap", "models/active/default.onnx")
    db.close()

    r = _lineage(inspection_id, "--data-dir", var, "--models", models, "--json")
    assert r.returncode == 0, r.stderr
    chain = json.loads(r.stdout)
    assert chain["inspection"]["id"] == inspection_id and chain["inspection"]["final"] == "FAIL"
    assert chain["model"]["sha256"] == sha and chain["model"]["name"] == "snap"
    assert chain["model"]["line_path"] == "models/active/default.onnx" and chain["model"]["first_seen"]
    assert chain["training"]["dataset_snapshot"] == sid
    assert chain["training"]["dataset_sha256"] == trained["card"]["data"]["dataset_sha256"]
    assert chain["training"]["params"]["net_size"] == 32
    assert chain["training"]["code_version"] == trained["card"]["training"]["code_version"]
    assert chain["snapshot"]["id"] == sid and chain["snapshot"]["name"] == "parts"
    assert chain["snapshot"]["items"] == 40 and chain["snapshot"]["sources"][0]["name"] == "parts"
    assert chain["missing"] == []

    text = _lineage(inspection_id, "--data-dir", var, "--models", models)
    assert text.returncode == 0 and f"snapshot {sid}" in text.stdout and "'parts': 40 item(s)" in text.stdout

    partial = _lineage(unknown_model, "--data-dir", var, "--models", models)
    assert partial.returncode == 1 and f"inspection {unknown_model}: FAIL" in partial.stdout
    assert f"missing: model {'ab' * 6} is not in the model registry" in partial.stdout

    bad = _lineage(999, "--data-dir", var, "--models", models)
    assert bad.returncode == 2 and f"no inspection 999 in {var}" in bad.stderr
