"""A snapshot as the trainer's input: its items read in place from the registry's objects, checked first.

The trainer takes a `Dataset` (training/dataset.py): a list of (image file, label, segments). A snapshot's
items already are that, with the file being the content-addressed object, so nothing is copied or exported;
OpenCV recognises an object's format by its bytes, not by a suffix. The items keep the manifest's order,
which is also the order `data check ID` judges the trainer's split in.
"""

from __future__ import annotations

from dataclasses import dataclass

from linewatch.data.check import CheckResult, Recipe, check
from linewatch.data.items import DataError
from linewatch.data.registry import DataRegistry, Snapshot
from linewatch.training.dataset import Dataset, DatasetError, Item, order_labels

PREFIX = "data:"  # `linewatch train data:<id>`: DATA names a snapshot, not a folder


@dataclass(frozen=True)
class SnapshotData:
    snapshot: Snapshot
    dataset: Dataset
    check: CheckResult


def snapshot_dataset(reg: DataRegistry, snap: Snapshot, require_defects: bool = True) -> Dataset:
    """The snapshot's items as the trainer's dataset (source `data:<id>`); the labels ordered as the trainer
    orders a folder's (good first), refusing a set the trainer could not use."""
    entries = reg.entries(snap)
    items = [Item(e.file, e.label, dict(e.segments)) for e in entries]
    try:
        labels = order_labels({i.label for i in items}, f"snapshot {snap.id[:12]} ({snap.name})", require_defects)
    except DatasetError as exc:
        raise DataError(str(exc)) from None
    return Dataset(items, labels, f"{PREFIX}{snap.id}", snapshot=snap.id)


def checked_snapshot(reg: DataRegistry, ref: str, val_fraction: float, seed: int,
                     require_defects: bool = True) -> SnapshotData:
    """The snapshot `ref` (id or unique prefix) checked as `data check ID` would with the trainer's split, and its
    dataset; the caller refuses to train when `check.errors` is not empty."""
    snap = reg.find(ref)
    ds = snapshot_dataset(reg, snap, require_defects)
    result = check(reg.entries(snap), Recipe(val_fraction=val_fraction, seed=seed))
    return SnapshotData(snap, ds, result)
