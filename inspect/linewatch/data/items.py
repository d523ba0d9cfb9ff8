"""A labelled dataset as snapshot items: read from folders, manifests, `emulate` output or review exports
(through the trainer's own reader), each image named by its SHA-256, and the canonical manifest they make.

An item is identified inside a snapshot by its source's short name and its path within that source, so
a union of several sources keeps every image apart, and the manifest does not depend on where the data
lies on disk. An exported snapshot (`linewatch data export`) carries `source` and `source_path` columns:
snapshotting it again keeps the items' provenance and gives the same id.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linewatch.training.dataset import MANIFEST_NAMES, DatasetError, load_dataset

FORMAT = "linewatch.dataset/1"
#: columns of `linewatch review export` (reports/review_export.py) that say who decided a part and how:
#: kept as the item's review provenance, not as segments (`camera` stays a segment)
REVIEW_COLUMNS = ("decision", "inspection_id", "stream", "seq", "part_id", "final", "decided_by", "score",
                  "model_hash", "reviewer", "reviewed_at", "note")
#: what makes a manifest a review export: these columns are present
_REVIEW_MARKERS = {"inspection_id", "decision", "reviewer"}
REVIEW_PREFIX = "review."  # an exported snapshot's review provenance columns
#: columns an exported snapshot adds: where the item came from, and the hash it must still have
PROVENANCE_COLUMNS = ("source", "source_path", "sha256")


class DataError(ValueError):
    """A dataset or snapshot cannot be read or stored; the message names the file, item or id."""


@dataclass(frozen=True)
class Entry:
    """One labelled image: where its bytes are now (`file`) and what the snapshot records about it."""

    file: Path
    source: str
    path: str  # posix path within its source
    label: str
    sha256: str
    segments: dict[str, str] = field(default_factory=dict)
    review: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """`source/path`: unique within a snapshot, and how people see an item."""
        return f"{self.source}/{self.path}"

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "path": self.path, "segments": dict(self.segments),
                               "sha256": self.sha256, "source": self.source}
        if self.review:
            out["review"] = dict(self.review)
        return out


@dataclass(frozen=True)
class Source:
    """One SRC of a snapshot, as described in its record (outside the hashed manifest)."""

    name: str
    path: str
    kind: str  # folder | manifest | emulate | review-export | snapshot-export
    items: int

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "kind": self.kind, "items": self.items}


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _root_and_kind(src: Path) -> tuple[Path, str, Path | None]:
    """The folder item paths are relative to, the source's kind, and its manifest file (None: class folders)."""
    manifest = next((src / n for n in MANIFEST_NAMES if (src / n).is_file()), None) if src.is_dir() else src
    if manifest is None:
        return src, "folder", None
    kind = "emulate" if manifest.suffix.lower() == ".jsonl" else "manifest"
    return manifest.parent.resolve(), kind, manifest


def _source_names(srcs: list[Path]) -> list[str]:
    """Each source's short name (its folder's name; a manifest's folder), made unique in argument order."""
    names: list[str] = []
    for src in srcs:
        base = (src if src.is_dir() else src.parent).resolve().name or "data"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _relative(path: Path, root: Path) -> str:
    rel = Path(os.path.relpath(path, root))
    return "/".join("_up" if part == ".." else part for part in rel.parts)  # never outside an export folder


def read_source(src: Path, name: str) -> tuple[list[Entry], Source]:
    """Every image of one source, hashed; the trainer's reader decides what a folder or manifest holds."""
    try:
        ds = load_dataset(src, require_defects=False, require_good=False)
    except DatasetError as exc:
        raise DataError(str(exc)) from None
    root, kind, _ = _root_and_kind(src)
    columns = {k for item in ds.items for k in item.segments}
    if columns >= _REVIEW_MARKERS:
        kind = "review-export"
    if columns >= {"source", "source_path"}:
        kind = "snapshot-export"
    entries = []
    for item in ds.items:
        seg = dict(item.segments)
        sha = file_sha256(item.path)
        expected = seg.pop("sha256", None)
        if expected is not None and expected != sha:
            raise DataError(f"{item.path}: the manifest says sha256 {expected[:12]}…, the file has {sha[:12]}… "
                            "(changed since it was exported)")
        source, path = seg.pop("source", name), seg.pop("source_path", None)
        if path is None:
            path = _relative(item.path, root)
        if kind == "review-export":
            review = {k: seg.pop(k) for k in REVIEW_COLUMNS if k in seg}
        else:  # an exported snapshot writes its items' review provenance as `review.<column>`
            review = {k.removeprefix(REVIEW_PREFIX): seg.pop(k) for k in sorted(seg) if k.startswith(REVIEW_PREFIX)}
        entries.append(Entry(item.path, source, path, item.label, sha, seg, review))
    return entries, Source(name, str(src.resolve()), kind, len(entries))


def read_sources(srcs: list[Path], sort: bool = True) -> tuple[list[Entry], list[Source]]:
    """The union of several sources, in the manifest's order (by source, then path; `sort=False`: in the
    order the trainer reads one source, which its split depends on); refuses two items that would have
    the same place in the snapshot."""
    entries: list[Entry] = []
    sources = []
    for src, name in zip(srcs, _source_names(srcs), strict=True):
        got, source = read_source(Path(src), name)
        entries.extend(got)
        sources.append(source)
    ordered = sorted(entries, key=lambda e: (e.source, e.path))
    for a, b in itertools.pairwise(ordered):
        if a.key == b.key:
            raise DataError(f"{a.key}: two items with the same source and path ({a.file} and {b.file})")
    return (ordered if sort else entries), sources


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8: the same content always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_bytes(entries: list[Entry]) -> bytes:
    """The hashed manifest of a snapshot: only what the data is, never when or by whom it was taken."""
    ordered = sorted(entries, key=lambda e: (e.source, e.path))
    return canonical({"format": FORMAT, "items": [e.record() for e in ordered]})


def snapshot_id(manifest: bytes) -> str:
    return hashlib.sha256(manifest).hexdigest()
