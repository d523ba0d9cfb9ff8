"""Training data: a folder of class subfolders, or a manifest (CSV/JSON) with path, label and segments.

The good class is the one named like a good part (`good`, `ok`, `pass`, `normal`); every other label
is a defect. Images are read once, as the camera would deliver them (uint8), and resized to one
frame size so the exported model takes exactly the line's frames.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

GOOD_NAMES = ("good", "ok", "pass", "normal")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
RESERVED_COLUMNS = {"path", "label", "image", "file", "truth"}
MANIFEST_NAMES = ("manifest.csv", "manifest.json", "manifest.jsonl")  # in a folder, the first found is the dataset
SOFT_COLUMN = "defect_probability"  # optional manifest column: how sure the experts are that a part is defective


class DatasetError(ValueError):
    """The training data cannot be used; the message names the file or row."""


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    segments: dict[str, str] = field(default_factory=dict)


@dataclass
class Dataset:
    items: list[Item]
    labels: list[str]  # good label first
    source: str
    images: np.ndarray | None = None  # (N, H, W) or (N, H, W, C) uint8, after load()
    targets: np.ndarray | None = None  # (N,) int64 index into labels
    snapshot: str | None = None  # the data registry's snapshot id when read from one (data/trainset.py)

    @property
    def good_label(self) -> str:
        return self.labels[0]

    @property
    def defect_labels(self) -> list[str]:
        return self.labels[1:]

    def load(self, size: tuple[int, int] | None, channels: int) -> None:
        """Read every image as uint8 with `channels` channels, resized to `size` (W, H) if given."""
        flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
        frames = []
        for item in self.items:
            img = cv2.imread(str(item.path), flag)
            if img is None:
                raise DatasetError(f"{item.path}: not a readable image")
            if channels == 3:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            if size is None:
                size = (img.shape[1], img.shape[0])
            if (img.shape[1], img.shape[0]) != size:
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            frames.append(img)
        self.images = np.stack(frames)
        index = {name: i for i, name in enumerate(self.labels)}
        self.targets = np.array([index[item.label] for item in self.items], np.int64)

    def soft_targets(self, column: str = SOFT_COLUMN) -> np.ndarray:
        """(N, labels) target distributions from a manifest's defect-probability column (experts' confidence,
        e.g. ELPV's 0, 1/3, 2/3, 1): good gets 1 - p, the one defect class p. The label stays the decision
        that validation, calibration and the band are judged on."""
        if len(self.defect_labels) != 1:
            raise DatasetError(f"{self.source}: soft targets need exactly one defect class, found {self.defect_labels}")
        out = np.zeros((len(self.items), 2), np.float32)
        for n, item in enumerate(self.items, start=1):
            try:
                p = float(item.segments[column])
            except (KeyError, ValueError):
                raise DatasetError(f"{self.source} row {n}: soft targets need a number in column '{column}', "
                                   f"got {item.segments.get(column)!r}") from None
            if not 0 <= p <= 1:
                raise DatasetError(f"{self.source} row {n}: '{column}' must be within [0, 1], got {p}")
            out[n - 1] = (1 - p, p)
        return out

    def content_hash(self) -> str:
        """SHA-256 over every image's bytes and label: the card's `dataset_sha256`."""
        h = hashlib.sha256()
        for item in sorted(self.items, key=lambda i: str(i.path)):
            h.update(item.label.encode() + b"\0" + item.path.read_bytes())
        return h.hexdigest()


def order_labels(found: set[str], where: str, require_defects: bool = True, require_good: bool = True) -> list[str]:
    good = [name for name in found if name.lower() in GOOD_NAMES]
    if not good and not require_good:  # one part of a union (`linewatch data snapshot A B`): defects only is fine
        return sorted(found)
    if len(good) != 1:
        raise DatasetError(f"{where}: need exactly one good class named one of {GOOD_NAMES}, found {sorted(found)}")
    defects = sorted(found - set(good))
    if not defects and require_defects:
        raise DatasetError(f"{where}: no defect class besides {good[0]!r}")
    return [good[0], *defects]


def _from_folder(root: Path, require_defects: bool, require_good: bool = True) -> Dataset:
    items = [Item(p, sub.name) for sub in sorted(root.iterdir()) if sub.is_dir()
             for p in sorted(sub.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise DatasetError(f"{root}: no images in class subfolders (e.g. {root}/good/*.png, {root}/defect/*.png)")
    return Dataset(items, order_labels({i.label for i in items}, str(root), require_defects, require_good), str(root))


def _from_manifest(path: Path, require_defects: bool, require_good: bool = True) -> Dataset:
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text())
        except ValueError as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from None
        rows = rows.get("items", rows) if isinstance(rows, dict) else rows
    elif path.suffix.lower() == ".jsonl":  # `linewatch emulate --out`: one object per line, truth inside
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path} line {n}: not valid JSON ({exc})") from None
            truth = row.get("truth") if isinstance(row, dict) else None
            if isinstance(truth, dict):
                row = {**row, "label": row.get("label") or truth.get("label"), "defect_type": truth.get("type")}
            rows.append(row)
    else:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    if not isinstance(rows, list) or not rows:
        raise DatasetError(f"{path}: no rows")
    items = []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DatasetError(f"{path} row {n}: must be an object with path and label")
        rel = row.get("path") or row.get("image") or row.get("file")
        label = row.get("label")
        if not rel or not label:
            raise DatasetError(f"{path} row {n}: needs 'path' and 'label', got {sorted(row)}")
        img = (path.parent / str(rel)).resolve()
        if not img.is_file():
            raise DatasetError(f"{path} row {n}: image {rel} not found")
        segments = {k: str(v) for k, v in row.items() if k not in RESERVED_COLUMNS and v not in (None, "")
                    and not isinstance(v, dict | list)}
        items.append(Item(img, str(label), segments))
    return Dataset(items, order_labels({i.label for i in items}, str(path), require_defects, require_good), str(path))


def load_dataset(path: Path, require_defects: bool = True, require_good: bool = True) -> Dataset:
    """A dataset from a folder of class subfolders or a manifest file (a folder holding manifest.csv counts).
    `require_defects=False` accepts good images only (anomaly training); `require_good=False` defect images
    only (one part of a union; its labels are then just sorted)."""
    path = Path(path)
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return _from_manifest(path / name, require_defects, require_good)
        return _from_folder(path, require_defects, require_good)
    if path.is_file():
        return _from_manifest(path, require_defects, require_good)
    raise DatasetError(f"{path}: no such folder or manifest")


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, holdout) with `fraction` of every class in the holdout (at least one each)."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    hold: list[int] = []
    for cls in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == cls))
        n = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        hold.extend(idx[:n])
        train.extend(idx[n:])
    return np.sort(np.array(train, np.int64)), np.sort(np.array(hold, np.int64))


def sharpness(images: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian per image (on a 256 px copy, so it does not depend on resolution)."""
    out = np.empty(len(images), np.float64)
    for i, img in enumerate(images):
        gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        out[i] = cv2.Laplacian(cv2.resize(gray, (256, 256), interpolation=cv2.INTER_AREA), cv2.CV_64F).var()
    return out


def load_good_only(path: Path | Dataset, frame_size: tuple[int, int] | None, channels: int, val_fraction: float,
                   seed: int) -> tuple[Dataset, np.ndarray, np.ndarray, np.ndarray]:
    """A good-only fit's data: the dataset loaded, its good images split into fit and validation indices,
    and the indices of its real defects (kept for evaluation: a good-only model never fits on them). `path`
    may be a dataset already listed (a snapshot's, data/trainset.py)."""
    ds = path if isinstance(path, Dataset) else load_dataset(path, require_defects=False)
    ds.load(frame_size, channels)
    assert ds.images is not None and ds.targets is not None
    good = np.flatnonzero(ds.targets == 0)
    fit, val = stratified_split(np.zeros(len(good), np.int64), val_fraction, seed)
    return ds, good[fit], good[val], np.flatnonzero(ds.targets != 0)
