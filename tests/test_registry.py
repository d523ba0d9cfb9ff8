"""The model registry: content-addressed versions, the validation gate, promotion and rollback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from linewatch.model.registry import Registry, RegistryError
from linewatch.training.trainer import TrainOptions, train
from tests.test_training import write_parts


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reg")
    data = write_parts(root / "train", 400, seed=31)
    holdout = write_parts(root / "holdout", 120, seed=32)
    out = {"holdout": holdout}
    for name, epochs in (("good", 20), ("weak", 1)):
        train(data, root / name, TrainOptions(name=name, net_size=64, epochs=epochs, seed=2), log=lambda s: None)
        out[name] = root / name / f"{name}.onnx"
    return out


def test_promotion_gate_refuses_a_worse_model_and_rollback_restores(models: dict[str, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "models")
    first = reg.promote(str(models["good"]), "default", models["holdout"])
    assert first["active"] is None and first["metrics"]["candidate"]["accuracy"] >= 0.75
    good_sha = first["candidate"]
    assert reg.active("default").sha256 == good_sha  # type: ignore[union-attr]
    stored = reg.find("good")
    assert stored.file.is_file() and stored.file.parent.name == f"good-{good_sha[:12]}"
    assert stored.card["sha256"] == good_sha

    before = sorted(p.name for p in (tmp_path / "models").iterdir())
    with pytest.raises(RegistryError, match="promotion refused") as err:
        reg.promote(str(models["weak"]), "default", models["holdout"])
    assert "accuracy" in str(err.value) and "candidate" in str(err.value)  # the comparison is shown
    assert "not kept in the registry" in str(err.value)
    assert reg.active("default").sha256 == good_sha  # type: ignore[union-attr]
    # A refused candidate leaves the registry as it was: no index entry, no copy of its files.
    assert [v.name for v in reg.versions()] == ["good"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == before

    with pytest.raises(RegistryError, match="needs --holdout"):
        reg.promote(str(models["weak"]), "default", None)
    assert [v.name for v in reg.versions()] == ["good"]
    reg.promote(str(models["weak"]), "other-recipe", None)  # no active model there: nothing to compare with
    assert reg.active("other-recipe").name == "weak"  # type: ignore[union-attr]

    # A looser tolerance lets the weak model through; rollback brings the good one back.
    reg.promote("weak", "default", models["holdout"], tolerance=1.0)
    assert reg.active("default").name == "weak"  # type: ignore[union-attr]
    assert reg.rollback("default").sha256 == good_sha
    link = reg.active_path("default")
    assert link.is_symlink() and link.resolve() == reg.find(good_sha).file.resolve()
    with pytest.raises(RegistryError, match="no earlier model"):
        reg.rollback("default")


def test_corrupt_or_foreign_files_never_become_active(models: dict[str, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "models")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(models["good"].read_bytes()[:3000])
    with pytest.raises(RegistryError, match="cannot load"):
        reg.promote(str(bad), "default", None)
    assert reg.versions() == [] and reg.active("default") is None
    with pytest.raises(RegistryError, match="no model 'nope'"):
        reg.find("nope")


def test_cli(models: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "models"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "linewatch", "models", "--registry", str(root), *args],
                              capture_output=True, text=True, timeout=120)

    out = cli("validate", str(models["good"]), "--holdout", str(models["holdout"]))
    assert out.returncode == 0 and "input NHW 128x128x1 uint8" in out.stdout and "escape_rate" in out.stdout
    assert cli("promote", str(models["good"])).returncode == 0
    refused = cli("promote", str(models["weak"]), "--holdout", str(models["holdout"]))
    assert refused.returncode == 2 and "promotion refused" in refused.stderr
    assert "was not kept in the registry" in refused.stderr
    listing = cli("list")
    assert listing.returncode == 0 and "default" in listing.stdout and "weak" not in listing.stdout
    shown = json.loads(cli("show", "good").stdout)
    assert shown["card"]["name"] == "good"
    assert cli("promote", str(models["weak"]), "--recipe", "y").returncode == 0
    shutil.rmtree(root / next(p.name for p in root.iterdir() if p.name.startswith("weak")))
    assert cli("promote", "weak", "--recipe", "x").returncode == 2  # its file is gone: refused, not trusted


def test_a_model_change_for_a_line_goes_into_its_audit_log(models: dict[str, Path], tmp_path: Path) -> None:
    from linewatch.auth.db import audit_rows

    line = tmp_path / "line.yaml"
    line.write_text(f"data_dir: {tmp_path / 'data'}\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "linewatch", "models", "--registry", str(tmp_path / "models"),
                               *args, "--config", str(line)], capture_output=True, text=True, timeout=120)

    assert cli("promote", str(models["good"])).returncode == 0
    assert cli("promote", str(models["weak"])).returncode == 2  # refused: no holdout for a second model
    assert cli("rollback").returncode == 2  # nothing earlier to go back to: refused, not audited
    rows = list(reversed(audit_rows(tmp_path / "data")))
    assert [(r["action"], r["target"], r["outcome"]) for r in rows] == [("models promote", "default", "ok")]
    assert rows[0]["actor"].startswith("cli:") and rows[0]["detail"]["was"] is None
    assert len(rows[0]["detail"]["sha256"]) == 64
