"""The QA export: inspections of a time window (optionally one lot or camera) as CSV, JSON or a PDF report.

Rows are read through a read-only connection, so an export never blocks the line. The column names
of CSV and JSON are the stable contract documented in docs/export.md; add columns, never rename.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from linewatch.store import JSON_COLUMNS, open_reader

FORMATS = ("csv", "json", "pdf")

#: Export columns in order: the inspections columns, the capture time as ISO 8601, and the latest review.
EXPORT_COLUMNS = (
    "id", "camera", "stream", "seq", "part_id", "lot", "shift", "recipe", "captured_at",
    "final", "decided_by", "reasons", "label", "score", "probs", "model_hash", "model_name", "ruleset_hash",
    "t_capture_ns", "t_sent_ns", "t_received_ns", "t_decided_ns", "t_recorded_ns",
    "queue_ms", "preprocess_ms", "inference_ms", "failsafe_ms", "latency_ms", "worker",
    "image", "image_pruned_ns", "truth_label", "truth",
    "review_decision", "review_label", "reviewed_by", "reviewed_ns",
    "acquire_ms", "transport_ms", "commit_id", "t_committed_ns", "record_ms", "event_ms",
)

class ReportError(ValueError):
    """The export cannot be made as asked (bad time, unknown format, empty store); the text says why."""


def parse_time(text: str, name: str) -> int:
    """ISO 8601 date or date-time (local time when it has no offset) to ns since the epoch."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{name}: not an ISO 8601 date or time: {text!r} (e.g. 2026-11-27 or "
                          "2026-11-27T06:00)") from None
    return int(t.astimezone().timestamp() * 1e9)


def iso(t_ns: int | None) -> str | None:
    return datetime.fromtimestamp(t_ns / 1e9).astimezone().isoformat(timespec="milliseconds") if t_ns else None


@dataclass(frozen=True)
class Query:
    t_from_ns: int
    t_to_ns: int
    lot: str | None = None
    camera: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"from": iso(self.t_from_ns), "to": iso(self.t_to_ns), "lot": self.lot, "camera": self.camera}


@dataclass
class Extract:
    """What a report shows: the rows of the window plus the alarms and models in force."""

    query: Query
    rows: list[dict[str, Any]]
    alarms: list[dict[str, Any]] = field(default_factory=list)


def _open(data_dir: Path, q: Query) -> sqlite3.Connection:
    if q.t_to_ns <= q.t_from_ns:
        raise ReportError(f"--to ({iso(q.t_to_ns)}) must be after --from ({iso(q.t_from_ns)})")
    try:
        conn = open_reader(data_dir)
        conn.execute("SELECT 1 FROM inspections LIMIT 1")
    except sqlite3.OperationalError as exc:
        raise ReportError(f"no store to report on in {data_dir}: {exc}") from None
    return conn


def iter_rows(conn: sqlite3.Connection, q: Query) -> Iterator[dict[str, Any]]:
    """The window's inspections in capture order as export rows, streamed (a shift can be 500k rows)."""
    commits = ("c.t_committed_ns AS t_committed_ns, CASE WHEN i.t_decided_ns > 0 THEN "
               "(c.t_committed_ns - i.t_decided_ns) / 1e6 END AS record_ms, "
               "(c.t_published_ns - c.t_committed_ns) / 1e6 AS event_ms FROM inspections i "
               "LEFT JOIN commits c ON c.id = i.commit_id" if _has_commits(conn) else "NULL AS t_committed_ns, "
               "NULL AS record_ms, NULL AS event_ms FROM inspections i")
    sql = ("SELECT i.*, r.decision AS review_decision, r.label AS review_label, r.reviewer AS reviewed_by, "
           f"r.t_ns AS reviewed_ns, {commits} LEFT JOIN review_decisions r ON r.id = "
           "(SELECT max(id) FROM review_decisions WHERE inspection_id = i.id) "
           "WHERE i.t_capture_ns >= ? AND i.t_capture_ns < ?")
    params: list[Any] = [q.t_from_ns, q.t_to_ns]
    if q.lot is not None:
        sql += " AND i.lot = ?"
        params.append(q.lot)
    if q.camera is not None:
        sql += " AND i.camera = ?"
        params.append(q.camera)
    for r in conn.execute(sql + " ORDER BY i.t_capture_ns, i.id", params):
        d = dict(r)
        d["captured_at"] = iso(d["t_capture_ns"])
        yield {c: d.get(c) for c in EXPORT_COLUMNS}


def _has_commits(conn: sqlite3.Connection) -> bool:
    """A store from before schema 3 (not yet opened by this record) has no commit times."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'commits'").fetchone() is not None


def load(data_dir: Path, q: Query) -> Extract:
    """Rows and alarms of the window in memory (the PDF needs them all)."""
    conn = _open(data_dir, q)
    try:
        rows = list(iter_rows(conn, q))
        alarms = [dict(a) for a in conn.execute(
            "SELECT * FROM alarms WHERE t_ns >= ? AND t_ns < ? ORDER BY t_ns", [q.t_from_ns, q.t_to_ns])]
    finally:
        conn.close()
    return Extract(q, rows, alarms)


def write_csv(rows: Iterable[dict[str, Any]], out: Path) -> int:
    """One row per inspection; JSON-valued columns (reasons, probs, truth) stay JSON text."""
    n = 0
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow(row)
            n += 1
    return n


def write_json(q: Query, rows: Iterable[dict[str, Any]], out: Path) -> int:
    """`{"filters", "inspections": [...], "count"}` with JSON-valued columns as objects, streamed."""
    n = 0
    with out.open("w", encoding="utf-8") as f:
        f.write('{"filters": ' + json.dumps(q.describe()) + ',\n "inspections": [')
        for row in rows:
            parsed = {k: (json.loads(v) if k in JSON_COLUMNS and v else v) for k, v in row.items()}
            f.write((",\n  " if n else "\n  ") + json.dumps(parsed, ensure_ascii=False))
            n += 1
        f.write(f'\n ],\n "count": {n}\n}}\n')
    return n


def defect_type(row: dict[str, Any]) -> str:
    """What a non-PASS part is filed under: the operator's label, the deciding rule, the truth, the model label."""
    if row.get("review_label"):
        return str(row["review_label"])
    if row["decided_by"] != "model":
        return str(row["decided_by"])
    truth = json.loads(row["truth"]) if row.get("truth") else {}
    return str(truth.get("type") or row.get("label") or "unknown")


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Parts, verdict counts, yield (finally good, after review) and first-pass yield (PASS at inspection)."""
    counts = Counter(r["final"] for r in rows)
    parts = len(rows)
    good = sum(1 for r in rows if (r["review_decision"] or r["final"]) == "PASS")
    return {"parts": parts, "PASS": counts["PASS"], "FAIL": counts["FAIL"], "REVIEW": counts["REVIEW"],
            "reviewed": sum(1 for r in rows if r["review_decision"]),
            "yield": good / parts if parts else None, "first_pass_yield": counts["PASS"] / parts if parts else None}


def pareto(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return Counter(defect_type(r) for r in rows if r["final"] != "PASS").most_common()


def overrides(rows: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """Verdicts the fail-safe decided instead of the model, by rule and verdict."""
    c = Counter((r["decided_by"], r["final"]) for r in rows if str(r["decided_by"]).startswith("rule:"))
    return [(rule, final, n) for (rule, final), n in sorted(c.items())]


def versions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model and rule-set versions in force: parts decided with each, first and last capture."""
    seen: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for r in rows:
        key = (r["model_name"], r["model_hash"], r["ruleset_hash"])
        v = seen.setdefault(key, {"model_name": key[0], "model_hash": key[1], "ruleset_hash": key[2], "parts": 0,
                                  "first": r["t_capture_ns"], "last": r["t_capture_ns"]})
        v["parts"] += 1
        v["last"] = r["t_capture_ns"]
    return list(seen.values())


def export(data_dir: Path, q: Query, fmt: str, out: Path) -> int:
    """Write the report in `fmt` to `out`; returns the number of inspections in it."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "pdf":
        from linewatch.reports.pdf import write_pdf  # matplotlib and fpdf2 load only for PDFs

        ex = load(data_dir, q)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_pdf(ex, data_dir, out)
        return len(ex.rows)
    conn = _open(data_dir, q)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_csv(iter_rows(conn, q), out) if fmt == "csv" else write_json(q, iter_rows(conn, q), out)
    finally:
        conn.close()
