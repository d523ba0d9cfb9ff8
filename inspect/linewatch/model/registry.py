"""The model registry in `models/`: content-addressed versions, the active model per recipe, the gate.

A model is the SHA-256 of its ONNX file. `index.json` names the versions and records which is
active for each recipe and what was active before (for rollback). Nothing becomes active without
passing `validate` (file, metadata, input contract) and, when promoting over an active model, the
holdout comparison: worse escape rate or accuracy beyond the tolerance is refused, over the whole holdout and
within any segment of it (camera, lighting, lot...) with enough parts (training/bias.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.config import FailsafeConfig, GateConfig, LineConfig
from linewatch.model.bands import BandError, defect_band, threshold
from linewatch.model.files import model_files
from linewatch.model.onnx import Model, ModelError
from linewatch.model.runtime import SessionSettings, batch_sizes
from linewatch.paths import MODELS_DIR
from linewatch.training.dataset import Dataset

DEFAULT_ROOT = MODELS_DIR
_GATE = GateConfig()


class RegistryError(Exception):
    """A registry operation is refused; the message says why (and, for the gate, shows the comparison, which
    `report` holds as data)."""

    def __init__(self, message: str, report: dict[str, Any] | None = None):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Version:
    sha256: str
    name: str
    file: Path
    card: dict[str, Any]
    added: str


def holdout_metrics(model: Model, holdout: Path | Dataset, failsafe: FailsafeConfig | None = None,
                    min_samples: int = _GATE.segment_min_samples) -> dict[str, Any]:
    """PASS/FAIL/REVIEW metrics of `model` on a labelled holdout (folder, manifest, or a dataset already listed: a
    snapshot's), decided at the bands the line will use with `failsafe` (the default config's when None):
    model/bands.py; with the bias audit per segment of the holdout's manifest under `segments`."""
    from linewatch.training.bias import audit
    from linewatch.training.dataset import DatasetError, load_dataset
    from linewatch.training.evaluate import evaluate

    info = model.info
    try:
        ds = holdout if isinstance(holdout, Dataset) else load_dataset(holdout)
        ds.load((info.width, info.height), info.channels)
    except (DatasetError, OSError, ValueError) as exc:
        raise RegistryError(f"holdout {holdout}: {exc}") from None
    assert ds.images is not None and ds.targets is not None
    try:
        probs = np.concatenate([model.run(ds.images[i:i + 64]) for i in range(0, len(ds.images), 64)])
        band = defect_band(failsafe or FailsafeConfig(), info.metadata, info.labels, info.defect_labels)
    except (ModelError, BandError) as exc:
        raise RegistryError(f"holdout {holdout}: {exc}") from None
    defect_idx = [i for i, lab in enumerate(info.labels) if lab in info.defect_labels]
    p_defect = probs[:, defect_idx].sum(axis=1)
    binary = np.stack([1 - p_defect, p_defect], axis=1)
    is_defect = ds.targets != 0
    out = evaluate(binary, is_defect.astype(np.int64), ["good", "defect"], band, threshold(info.metadata))
    found = audit([i.segments for i in ds.items], p_defect, is_defect, band, threshold(info.metadata), min_samples)
    return {**out, "segments": found["segments"], "largest_gap": found["largest_gap"]}


class Registry:
    def __init__(self, root: Path = DEFAULT_ROOT):
        self.root = Path(root).resolve()
        self.index_path = self.root / "index.json"

    def _load(self) -> dict[str, Any]:
        if not self.index_path.exists():
            return {"versions": {}, "active": {}, "history": {}}
        try:
            data: dict[str, Any] = json.loads(self.index_path.read_text())
        except ValueError as exc:
            raise RegistryError(f"{self.index_path}: not valid JSON ({exc})") from None
        return data

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.index_path.with_name("index.json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.index_path)

    def versions(self) -> list[Version]:
        data = self._load()
        out = []
        for sha, v in data["versions"].items():
            card_path = self.root / v["card"] if v.get("card") else None
            card = json.loads(card_path.read_text()) if card_path and card_path.exists() else {}
            out.append(Version(sha, v["name"], self.root / v["file"], card, v["added"]))
        return sorted(out, key=lambda v: v.added)

    def active(self, recipe: str) -> Version | None:
        sha = self._load()["active"].get(recipe)
        return self.find(sha) if sha else None

    def active_by_recipe(self) -> dict[str, str]:
        return dict(self._load()["active"])

    def find(self, ref: str) -> Version:
        """A version by full or abbreviated hash, or by name (the newest of that name)."""
        matches = [v for v in self.versions() if v.sha256.startswith(ref.lower()) or v.name == ref]
        if not matches:
            raise RegistryError(f"no model {ref!r} in {self.root}")
        if len({v.sha256 for v in matches}) > 1 and not any(v.name == ref for v in matches):
            raise RegistryError(f"{ref!r} is ambiguous: " + ", ".join(v.sha256[:12] for v in matches))
        return matches[-1]

    def add(self, onnx_file: Path, max_batch: int | None = None) -> Version:
        """Validate a model and store all its files (graph, external weights, sidecars: model/files.py)
        content-addressed, with its card when one lies beside it."""
        model = validate(onnx_file, max_batch)
        sha, files = model.info.sha256, model.files
        data = self._load()
        if sha in data["versions"]:
            return self.find(sha)
        if files.graph.is_relative_to(self.root):
            folder = files.folder  # already inside the registry (e.g. the bundled model)
        else:
            folder = self.root / f"{model.info.name}-{sha[:12]}"
            folder.mkdir(parents=True, exist_ok=True)
            for name in files.names():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(files.folder / name, folder / name)
            for extra in ("card.json", "CARD.md"):
                if (files.folder / extra).exists():
                    shutil.copy2(files.folder / extra, folder / extra)
        card = folder / "card.json"
        stored = model_files(folder / files.graph.name).read_by(files.sidecars)
        if stored.version_hash() != sha:
            raise RegistryError(f"copy of {onnx_file} does not match its hash; disk problem?")
        data["versions"][sha] = {
            "name": model.info.name, "file": str((folder / files.graph.name).relative_to(self.root)),
            "files": list(files.names()),
            "card": str(card.relative_to(self.root)) if card.exists() else None,
            "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._save(data)
        return self.find(sha)

    def _forget(self, sha: str) -> None:
        """Remove a version this call added (a refused candidate): its index entry and its folder."""
        data = self._load()
        entry = data["versions"].pop(sha, None)
        if entry is None or sha in data["active"].values():
            return
        self._save(data)
        folder = (self.root / entry["file"]).parent
        if folder != self.root and folder.name.endswith(sha[:12]):
            shutil.rmtree(folder, ignore_errors=True)

    def promote(self, ref: str, recipe: str, holdout: Path | Dataset | None, tolerance: float = _GATE.tolerance,
                failsafe: FailsafeConfig | None = None, max_batch: int | None = None,
                gate: GateConfig = _GATE) -> dict[str, Any]:
        """Make a version active for a recipe if it passes the gate; returns the comparison. A candidate file
        this call added and the gate refused is removed again: a refused promotion leaves the registry as it was.
        `tolerance` is the whole holdout's, `gate` gives the segments' (`segment_tolerance`, `segment_min_samples`)."""
        path = Path(ref)
        is_file = path.suffix == ".onnx" and path.exists()
        known = set(self._load()["versions"])
        candidate = self.add(path, max_batch) if is_file else self.find(ref)
        try:
            return self._gate(candidate, recipe, holdout, tolerance, failsafe, max_batch, gate)
        except RegistryError as exc:
            if candidate.sha256 not in known:
                self._forget(candidate.sha256)
                raise RegistryError(f"{exc}\n{candidate.sha256[:12]} was not kept in the registry",
                                    exc.report) from None
            raise

    def _gate(self, candidate: Version, recipe: str, holdout: Path | Dataset | None, tolerance: float,
              failsafe: FailsafeConfig | None, max_batch: int | None, gate: GateConfig) -> dict[str, Any]:
        model = validate(candidate.file, max_batch)
        current = self.active(recipe)
        report: dict[str, Any] = {"recipe": recipe, "candidate": candidate.sha256, "active": None}
        if current is not None and current.sha256 == candidate.sha256:
            raise RegistryError(f"{candidate.sha256[:12]} is already active for recipe {recipe!r}")
        if current is not None:
            if holdout is None:
                raise RegistryError(f"recipe {recipe!r} has an active model: promotion needs --holdout to compare")
            report["active"] = current.sha256
            cand_m = holdout_metrics(model, holdout, failsafe, gate.segment_min_samples)
            curr_m = holdout_metrics(validate(current.file, max_batch), holdout, failsafe, gate.segment_min_samples)
            report["metrics"] = {"candidate": cand_m, "active": curr_m}
            worse = []
            if cand_m["escape_rate"] > curr_m["escape_rate"] + tolerance:
                worse.append(f"escape rate {cand_m['escape_rate']:.4f} > {curr_m['escape_rate']:.4f} + {tolerance}")
            if cand_m["accuracy"] < curr_m["accuracy"] - tolerance:
                worse.append(f"accuracy {cand_m['accuracy']:.4f} < {curr_m['accuracy']:.4f} - {tolerance}")
            if cand_m["review_rate"] > curr_m["review_rate"] + tolerance:
                worse.append(f"REVIEW rate {cand_m['review_rate']:.4f} > {curr_m['review_rate']:.4f} + {tolerance}")
            from linewatch.training.bias import regressions as segment_regressions

            worse += segment_regressions(cand_m, curr_m, gate.segment_tolerance, gate.segment_min_samples)
            if worse:
                report["refused"] = worse
                raise RegistryError("promotion refused: candidate is worse than the active model: " + "; ".join(worse)
                                    + "\n" + comparison_table(report), report)
        elif holdout is not None:
            report["metrics"] = {"candidate": holdout_metrics(model, holdout, failsafe, gate.segment_min_samples)}
        data = self._load()
        history = data["history"].setdefault(recipe, [])
        if current is not None:
            history.append(current.sha256)
        data["active"][recipe] = candidate.sha256
        self._save(data)
        self._link_active(recipe, data["versions"][candidate.sha256]["file"])
        return report

    def active_path(self, recipe: str) -> Path:
        """`models/active/<recipe>.onnx`: a link to the active version, the path a line's config names.
        Workers watch it, so promote and rollback swap the running line's model."""
        return self.root / "active" / f"{recipe}.onnx"

    def _link_active(self, recipe: str, version_file: str) -> None:
        link = self.active_path(recipe)
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path("..") / version_file)
        os.replace(tmp, link)

    def rollback(self, recipe: str) -> Version:
        data = self._load()
        history = data["history"].get(recipe) or []
        if not history:
            raise RegistryError(f"recipe {recipe!r} has no earlier model to roll back to")
        previous = history.pop()
        validate(self.root / data["versions"][previous]["file"])
        data["active"][recipe] = previous
        self._save(data)
        self._link_active(recipe, data["versions"][previous]["file"])
        return self.find(previous)


def validate(onnx_file: Path, max_batch: int | None = None) -> Model:
    """Load the model as the worker would and run every batch size the worker will use (up to `max_batch`,
    the default line config's `infer.max_batch` when None); RegistryError if anything fails."""
    sizes = batch_sizes(max_batch if max_batch is not None else LineConfig().infer.max_batch)
    try:
        model = Model(onnx_file, settings=SessionSettings(providers="cpu", batch_sizes=sizes))
        model.warm_up()
    except ModelError as exc:
        raise RegistryError(f"{exc} (tried batch sizes {list(sizes)})") from None
    return model


def comparison_table(report: dict[str, Any]) -> str:
    """The holdout's metrics side by side, then each segment's accuracy and escape rate (with its part count)."""
    metrics = report.get("metrics", {})
    names = [n for n in ("candidate", "active") if n in metrics]

    def cell(m: dict[str, Any], key: str) -> str:
        return (f"{m[key]:.4f}" if m.get(key) is not None else "n/a").rjust(12)

    rows = ["metric".ljust(28) + "".join(n.rjust(12) for n in names)]
    for key in ("accuracy", "escape_rate", "false_reject_rate", "review_rate", "f1", "auroc"):
        rows.append(key.ljust(28) + "".join(cell(metrics[n], key) for n in names))
    first = metrics[names[0]] if names else {}
    for col, values in first.get("segments", {}).items():
        for value, seg in values.items():
            for key in ("accuracy", "escape_rate"):
                label = f"{col}={value} {key} (n {seg['count']})"
                rows.append(label[:27].ljust(28) + "".join(
                    cell(metrics[n].get("segments", {}).get(col, {}).get(value, {}), key) for n in names))
    return "\n".join(rows)
