"""The data registry: content-addressed images and immutable snapshots of labelled datasets.

Layout (docs/data.md):

    <registry>/objects/ab/abcdef…        every image once, named by its SHA-256 (hard link or read-only copy)
    <registry>/snapshots/<id>/manifest.json   canonical JSON of the items; its SHA-256 is <id>
    <registry>/snapshots/<id>/record.json     name, parent, created, sources, counts (not hashed)

A snapshot is written once into a temporary folder and renamed into place, then made read-only; the same
items give the same manifest bytes, hence the same id, and snapshotting them again returns that id.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from linewatch.data.items import (
    REVIEW_PREFIX,
    DataError,
    Entry,
    Source,
    file_sha256,
    manifest_bytes,
    snapshot_id,
)

MIN_PREFIX = 8  # hex characters of an id a user must give
_READ_ONLY = 0o444


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    parent: str | None
    created: str
    sources: list[dict[str, Any]]
    items: int
    classes: dict[str, int]


@dataclass(frozen=True)
class Diff:
    added: list[Entry]
    removed: list[Entry]
    relabelled: list[tuple[Entry, Entry]]  # (in A, in B)


class DataRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.snapshots_dir = self.root / "snapshots"

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    def _store_object(self, entry: Entry) -> bool:
        """Put the entry's image into the object store once; True when a copy was made (else linked/present)."""
        target = self.object_path(entry.sha256)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{entry.sha256}.{os.getpid()}.tmp")
        copied = False
        try:
            os.link(entry.file, tmp)  # same filesystem: no second copy of the bytes
        except OSError:
            shutil.copyfile(entry.file, tmp)
            tmp.chmod(_READ_ONLY)  # a copy is ours: read-only (a hard link is the user's file too: its mode stays)
            copied = True
        if file_sha256(tmp) != entry.sha256:
            tmp.unlink()
            raise DataError(f"{entry.file}: changed while it was being snapshotted; run the snapshot again")
        os.replace(tmp, target)
        return copied

    def snapshot(self, entries: list[Entry], sources: list[Source], name: str,
                 parent: str | None = None) -> tuple[Snapshot, bool]:
        """Store the entries as a snapshot; returns it and whether it is new (False: identical to one stored)."""
        if not entries:
            raise DataError("nothing to snapshot: the sources hold no images")
        parent_id = self.find(parent).id if parent else None
        manifest = manifest_bytes(entries)
        sid = snapshot_id(manifest)
        final = self.snapshots_dir / sid
        if (final / "record.json").is_file():
            return self.get(sid), False
        for entry in entries:
            self._store_object(entry)
        record = {"id": sid, "name": name, "parent": parent_id,
                  "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                  "sources": [s.record() for s in sources], "items": len(entries),
                  "classes": dict(sorted(Counter(e.label for e in entries).items()))}
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.snapshots_dir / f".{sid}.{os.getpid()}.tmp"
        tmp.mkdir()
        (tmp / "manifest.json").write_bytes(manifest)
        (tmp / "record.json").write_text(json.dumps(record, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(_READ_ONLY)
        try:
            tmp.rename(final)
        except OSError:  # written by another snapshot of the same data meanwhile: that one stands
            shutil.rmtree(tmp)
            return self.get(sid), False
        final.chmod(0o555)
        return self.get(sid), True

    def get(self, sid: str) -> Snapshot:
        try:
            r = json.loads((self.snapshots_dir / sid / "record.json").read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"snapshot {sid}: record unreadable ({exc})") from None
        return Snapshot(r["id"], r["name"], r.get("parent"), r["created"], r.get("sources", []), r["items"],
                        r.get("classes", {}))

    def snapshots(self) -> list[Snapshot]:
        if not self.snapshots_dir.is_dir():
            return []
        snaps = [self.get(d.name) for d in self.snapshots_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
        return sorted(snaps, key=lambda s: (s.created, s.id))

    def find(self, ref: str) -> Snapshot:
        """A snapshot by its id or a unique prefix of it (at least 8 hex characters)."""
        want = ref.lower().removeprefix("data:")
        if not re.fullmatch(f"[0-9a-f]{{{MIN_PREFIX},64}}", want):
            raise DataError(f"{ref!r} is not a snapshot id: give at least {MIN_PREFIX} hex characters of one")
        found = [s for s in self.snapshots() if s.id.startswith(want)]
        if not found:
            raise DataError(f"unknown snapshot {ref} in {self.root}")
        if len(found) > 1:
            raise DataError(f"ambiguous snapshot id {ref}: matches {', '.join(s.id[:16] for s in found)}")
        return found[0]

    def entries(self, snap: Snapshot) -> list[Entry]:
        """The snapshot's items, each reading its image from the object store; refuses a changed manifest."""
        data = (self.snapshots_dir / snap.id / "manifest.json").read_bytes()
        if snapshot_id(data) != snap.id:
            raise DataError(f"snapshot {snap.id[:12]}: manifest.json changed since it was written "
                            f"(its hash is now {snapshot_id(data)[:12]})")
        return [Entry(self.object_path(i["sha256"]), i["source"], i["path"], i["label"], i["sha256"],
                      i.get("segments", {}), i.get("review", {})) for i in json.loads(data)["items"]]

    def export(self, snap: Snapshot, out: Path) -> int:
        """A plain folder `out/<label>/<source>/<path>` plus `manifest.csv` that `linewatch train` reads as it
        is (copies: editing an export never touches the registry)."""
        if out.exists() and any(out.iterdir()):
            raise DataError(f"{out}: not empty; export into a new folder")
        entries = self.entries(snap)
        seg_cols = sorted({k for e in entries for k in e.segments})
        review_cols = sorted({k for e in entries for k in e.review})
        columns = ["path", "label", "source", "source_path", "sha256", *seg_cols,
                   *(REVIEW_PREFIX + k for k in review_cols)]
        out.mkdir(parents=True, exist_ok=True)
        with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            w.writeheader()
            for e in entries:
                rel = f"{e.label}/{e.source}/{e.path}"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(e.file, out / rel)
                w.writerow({"path": rel, "label": e.label, "source": e.source, "source_path": e.path,
                            "sha256": e.sha256, **e.segments, **{REVIEW_PREFIX + k: v for k, v in e.review.items()}})
        return len(entries)


def open_registry(registry: str | Path | None, config: str | Path | None, data_dir: str | Path | None) -> DataRegistry:
    """The registry a command names: `--registry`, else `data_dir/datasets` (`--data-dir`, else the config's)."""
    if registry:
        return DataRegistry(Path(registry))
    from linewatch.config import load_config

    root = Path(data_dir) if data_dir else load_config(config).data_dir
    return DataRegistry(root / "datasets")


def diff(a: list[Entry], b: list[Entry]) -> Diff:
    """Items added, removed and relabelled from A to B, matched by image hash (a moved file is the same item)."""
    by_a: dict[str, list[Entry]] = {}
    by_b: dict[str, list[Entry]] = {}
    for e in a:
        by_a.setdefault(e.sha256, []).append(e)
    for e in b:
        by_b.setdefault(e.sha256, []).append(e)
    added = [e for sha, es in by_b.items() if sha not in by_a for e in es]
    removed = [e for sha, es in by_a.items() if sha not in by_b for e in es]
    relabelled = [(by_a[sha][0], es[0]) for sha, es in by_b.items()
                  if sha in by_a and sorted({x.label for x in by_a[sha]}) != sorted({x.label for x in es})]
    return Diff(added, removed, relabelled)

