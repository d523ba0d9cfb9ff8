"""The review-queue export: parts an operator decided, as a labelled dataset folder for retraining.

Layout: `DIR/<label>/<camera>-<stream>-<seq>.<ext>` plus `DIR/manifest.csv` (path relative to DIR,
label, ...). The label is `good` for a part the operator passed, else the operator's defect label
(or `defect`), which is the model's class vocabulary.
"""

from __future__ import annotations

import csv
import shutil
import sqlite3
from pathlib import Path

from linewatch.reports.export import ReportError, iso
from linewatch.store.queries import open_reader

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "decision", "inspection_id", "camera", "stream", "seq", "part_id", "final",
                    "decided_by", "score", "model_hash", "reviewer", "reviewed_at", "note")


def export_reviews(data_dir: Path, out: Path, t_from_ns: int = 0, t_to_ns: int = 2**63 - 1) -> int:
    """Copy each reviewed part's image (latest decision wins) and write the manifest; returns the row count.

    Parts whose image was pruned or never kept are left out of the folder (a dataset needs pixels).
    """
    try:
        conn = open_reader(data_dir)
        rows = conn.execute(
            "SELECT r.*, i.part_id, i.final, i.decided_by, i.score, i.model_hash, i.image, i.image_pruned_ns "
            "FROM review_decisions r JOIN inspections i ON i.id = r.inspection_id "
            "WHERE r.id IN (SELECT max(id) FROM review_decisions GROUP BY inspection_id) "
            "AND r.t_ns >= ? AND r.t_ns < ? ORDER BY r.id", [t_from_ns, t_to_ns]).fetchall()
        conn.close()
    except sqlite3.OperationalError as exc:
        raise ReportError(f"no review decisions to export in {data_dir}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with (out / MANIFEST).open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            src = data_dir / r["image"] if r["image"] else None
            if src is None or r["image_pruned_ns"] or not src.is_file():
                continue
            label = "good" if r["decision"] == "PASS" else (r["label"] or "defect")
            rel = f"{label}/{r['camera']}-{r['stream']}-{r['seq']:09d}{src.suffix}"
            (out / label).mkdir(exist_ok=True)
            shutil.copyfile(src, out / rel)
            w.writerow({"path": rel, "label": label, "decision": r["decision"], "inspection_id": r["inspection_id"],
                        "camera": r["camera"], "stream": r["stream"], "seq": r["seq"], "part_id": r["part_id"],
                        "final": r["final"], "decided_by": r["decided_by"], "score": r["score"],
                        "model_hash": r["model_hash"], "reviewer": r["reviewer"], "reviewed_at": iso(r["t_ns"]),
                        "note": r["note"]})
            written += 1
    return written
