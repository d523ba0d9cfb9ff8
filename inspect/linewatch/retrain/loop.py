"""One retrain run: the recipe's base snapshot plus the parts reviewed since it -> data check -> snapshot -> train
with the recipe's settings -> the gate against the active model on the recipe's holdout snapshot -> promote (the
running line's workers follow the registry's active link and swap between batches) or refuse with the comparison.

The holdout is read, never written: reviewed parts only ever join the training side, and a training image that is
also in the holdout refuses the run (a leak) before anything trains.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from linewatch.config import LineConfig, RetrainRecipe
from linewatch.data.check import Finding, Recipe, check, holdout_leaks
from linewatch.data.items import DataError, Entry, Source, read_source
from linewatch.data.registry import DataRegistry, Snapshot
from linewatch.data.trainset import snapshot_dataset
from linewatch.model.registry import Registry, RegistryError
from linewatch.reports.export import ReportError
from linewatch.reports.review_export import export_reviews
from linewatch.retrain.runs import RunLog
from linewatch.training.backbone import BackboneError

_EPOCH = re.compile(r"^epoch (\d+)/(\d+)\s")  # the trainer's line after each epoch (training/trainer.py)
REVIEWS_SOURCE = "reviews"  # the reviewed parts' source name inside the new snapshot


class RetrainError(Exception):
    """The run cannot start: no settings for the recipe, an unknown snapshot; the message says which."""


def settings(cfg: LineConfig, recipe: str) -> tuple[RetrainRecipe, DataRegistry, Snapshot, Snapshot]:
    """The recipe's retrain settings, the data registry and its base and holdout snapshots, or RetrainError."""
    got = cfg.retrain.recipes.get(recipe)
    if got is None:
        known = ", ".join(cfg.retrain.recipes) or "none"
        raise RetrainError(f"no retrain settings for recipe {recipe!r} (retrain.recipes has: {known})")
    missing = [k for k in ("base_snapshot", "holdout_snapshot") if not getattr(got, k)]
    if missing:
        raise RetrainError(f"retrain.recipes.{recipe}: set {' and '.join(missing)} (a snapshot id of "
                           f"`linewatch data list`)")
    reg = DataRegistry(cfg.data_dir / "datasets")
    try:
        return got, reg, reg.find(got.base_snapshot), reg.find(got.holdout_snapshot)
    except DataError as exc:
        raise RetrainError(f"retrain.recipes.{recipe}: {exc}") from None


def _since_ns(created: str) -> int:
    """The base snapshot's creation second, in ns: reviews from then on are new to it."""
    return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()) * 1_000_000_000


def _reviewed(cfg: LineConfig, folder: Path, since_ns: int, taken: set[str]) -> tuple[list[Entry], list[Source]]:
    """The parts reviewed since `since_ns`, exported from the store (latest decision per part) as one source."""
    try:
        n = export_reviews(cfg.data_dir, folder, since_ns)
    except ReportError:
        return [], []  # no store or no review yet: nothing to add
    if n == 0:
        return [], []
    name, k = REVIEWS_SOURCE, 2
    while name in taken:
        name, k = f"{REVIEWS_SOURCE}-{k}", k + 1
    entries, source = read_source(folder, name)
    return entries, [source]


def training_set(cfg: LineConfig, reg: DataRegistry, base: Snapshot, folder: Path) -> tuple[list[Entry], list[Source]]:
    """The base snapshot's items plus the parts reviewed since it (exported into `folder`), in the manifest's order
    (the order the trainer's split is drawn in); the sources as the new snapshot's record lists them."""
    entries = reg.entries(base)
    added, sources = _reviewed(cfg, folder, _since_ns(base.created), {e.source for e in entries})
    base_source = Source(base.name, f"data:{base.id}", "snapshot", base.items)
    return sorted(entries + added, key=lambda e: (e.source, e.path)), [base_source, *sources]


def _frame(cfg: LineConfig) -> tuple[tuple[int, int], int]:
    cam = cfg.cameras[0]
    return (cam.width, cam.height), 1 if cam.pixel_format == "Mono8" else 3


def run_retrain(cfg: LineConfig, recipe: str, run: RunLog) -> dict[str, Any]:
    """Run the loop for `recipe`, recording each stage in `run`; returns the run's final record (state promoted,
    refused or failed). RetrainError before anything starts when the settings cannot be used."""
    rs, reg, base, holdout = settings(cfg, recipe)
    run.update(stage="reviews", base_snapshot=base.id, holdout_snapshot=holdout.id)
    size, channels = _frame(cfg)
    try:
        with tempfile.TemporaryDirectory(prefix=".retrain-", dir=_mkdir(reg.root)) as tmp:  # same fs: hard links
            entries, sources = training_set(cfg, reg, base, Path(tmp) / REVIEWS_SOURCE)
            run.update(stage="check", reviews=sum(s.items for s in sources[1:]), items=len(entries))
            result = check(entries, Recipe(size, channels, rs.val_fraction, rs.seed))
            leaks = holdout_leaks(entries, reg.entries(holdout))
            errors = result.errors + [f for f in leaks if f.level == "error"]
            run.update(warnings=[f.message for f in result.warnings + leaks if f.level == "warning"][:50])
            if errors:
                return _refused(run, errors, {e.key: e.review["inspection_id"] for e in entries
                                              if "inspection_id" in e.review})
            run.update(stage="snapshot")
            snap, _ = reg.snapshot(entries, sources, f"{recipe}-retrain-{run.id}", base.id)
        run.update(stage="train", snapshot=snap.id)
        card = _train(cfg, recipe, rs, reg, snap, run, size, channels)
        run.update(stage="gate", model=card["sha256"])
        return _gate(cfg, recipe, reg, holdout, run, run.folder / run.id / card["file"])
    except (RegistryError, BackboneError, RuntimeError, ValueError) as exc:  # DataError, DatasetError: ValueErrors
        return run.finish("failed", str(exc))


def _refused(run: RunLog, errors: list[Finding], inspections: dict[str, str]) -> dict[str, Any]:
    """Refuse on the check's errors, naming the items and, for a reviewed part, its inspection row (its file in
    the run's export is gone once the run ends; the row and its kept image stay)."""
    def named(f: Finding) -> str:
        rows = [inspections[k] for k in f.items if k in inspections]
        return f.message + (f" [inspection {', '.join(rows)}]" if rows else "")

    first = "; ".join(named(f) for f in errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
    return run.finish("refused", f"not trained: the data fails its check ({first})",
                      findings=[{"code": f.code, "message": named(f), "items": list(f.items)} for f in errors])


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _train(cfg: LineConfig, recipe: str, rs: RetrainRecipe, reg: DataRegistry, snap: Snapshot, run: RunLog,
           size: tuple[int, int], channels: int) -> dict[str, Any]:
    from linewatch.training.trainer import TrainOptions, train

    opts = TrainOptions(name=f"{recipe}-retrain", kind=rs.kind, net_size=rs.net_size, arch=rs.arch,
                        backbone=rs.backbone, channels=channels, frame_size=size, epochs=rs.epochs, batch=rs.batch,
                        lr=rs.lr, patience=rs.patience, max_minutes=rs.max_minutes, val_fraction=rs.val_fraction,
                        seed=rs.seed)
    run.update(options={k: v for k, v in asdict(opts).items() if k != "frame_size"})

    def log(line: str) -> None:
        if m := _EPOCH.match(line):
            run.epoch(int(m.group(1)), int(m.group(2)))

    dataset = snapshot_dataset(reg, snap, require_defects=rs.kind == "classifier")
    return train(dataset, run.folder / run.id, opts, log)


def _gate(cfg: LineConfig, recipe: str, reg: DataRegistry, holdout: Snapshot, run: RunLog,
          onnx: Path) -> dict[str, Any]:
    models = Registry(cfg.retrain.models)
    gate = cfg.retrain.gate
    try:
        report = models.promote(str(onnx), recipe, snapshot_dataset(reg, holdout, require_defects=False),
                                gate.tolerance, cfg.failsafe, cfg.infer.max_batch, gate)
    except RegistryError as exc:
        if exc.report is None:
            raise
        return run.finish("refused", f"not promoted: {exc}", comparison=exc.report)
    run.update(stage="promote", comparison=report)
    link = models.active_path(recipe)
    if Path(cfg.model.path).absolute() == link.absolute():
        swap = "the running line's workers swap to it between batches"
    else:
        swap = (f"the line runs {cfg.model.path}, not the registry's active link {link}: it keeps its model until "
                "restarted with that model.path")
    was = f" (was {report['active'][:12]})" if report.get("active") else ""
    return run.finish("promoted", f"promoted {report['candidate'][:12]} for recipe {recipe!r}{was}; {swap}",
                      model=report["candidate"])
