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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from linewatch.auth.db import audit_window
from linewatch.store.queries import open_reader
from linewatch.store.rows import JSON_COLUMNS, VIEW_COLUMNS, select_inspections

FORMATS = ("csv", "json", "pdf")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1  # what the store's ns integers reach: 1677 to 2262

#: Export columns in order: an inspection as every reader shows it (`store.rows.VIEW_COLUMNS`), with its
#: capture time as ISO 8601 after the id, and its latest review.
REVIEW_COLUMNS = ("review_decision", "review_label", "reviewed_by", "reviewed_ns")
EXPORT_COLUMNS = (VIEW_COLUMNS[0], "captured_at", *VIEW_COLUMNS[1:], *REVIEW_COLUMNS)


class ReportError(ValueError):
    """The export cannot be made as asked (bad time, unknown format, empty store); the text says why."""


def parse_time(text: str, name: str) -> int:
    """ISO 8601 date or date-time (local time when it has no offset) to ns since the epoch, exactly; any year
    1-9999 is taken (a window past what the store holds covers what is there)."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{name}: not an ISO 8601 date or time: {text!r} (e.g. 2026-11-27 or "
                          "2026-11-27T06:00)") from None
    if t.tzinfo is None:
        try:
            t = t.astimezone()
        except (ValueError, OverflowError):  # year 1 or 9999, past the platform's local time: far enough as UTC
            t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000


def _stored(t_ns: int) -> int:
    """A window bound as the store can compare it (a bound past 1677-2262 would not fit its integers)."""
    return min(max(t_ns, _NS_MIN), _NS_MAX)


def iso(t_ns: int | None) -> str | None:
    return (datetime.fromtimestamp(_stored(t_ns) / 1e9).astimezone().isoformat(timespec="milliseconds")
            if t_ns else None)


@dataclass(frozen=True)
class Query:
    t_from_ns: int
    t_to_ns: int
    lot: str | None = None
    camera: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"from": iso(self.t_from_ns), "to": iso(self.t_to_ns), "lot": self.lot, "camera": self.camera}


@dataclass(frozen=True)
class Issuer:
    """Who a signed report is for and from: the line's name and the person (or account) who generated it."""

    line: str
    by: str


@dataclass
class Extract:
    """What a report shows: the rows of the window plus the alarms and models in force."""

    query: Query
    rows: list[dict[str, Any]]
    alarms: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)  # the window's audit log, oldest first (AUDIT_MAX)
    audit_total: int = 0  # entries the window holds in all


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
    review = ("r.decision AS review_decision, r.label AS review_label, r.reviewer AS reviewed_by, "
              "r.t_ns AS reviewed_ns")
    sql = select_inspections(review, "LEFT JOIN review_decisions r ON r.id = "
                             "(SELECT max(id) FROM review_decisions WHERE inspection_id = i.id)")
    sql += " WHERE i.t_capture_ns >= ? AND i.t_capture_ns < ?"
    params: list[Any] = [_stored(q.t_from_ns), _stored(q.t_to_ns)]
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


AUDIT_MAX = 300  # audit entries a PDF lists; `GET /api/audit` has them all


def load(data_dir: Path, q: Query) -> Extract:
    """Rows, alarms and audit entries of the window in memory (the PDF needs them all)."""
    conn = _open(data_dir, q)
    try:
        rows = list(iter_rows(conn, q))
        alarms = [dict(a) for a in conn.execute(
            "SELECT * FROM alarms WHERE t_ns >= ? AND t_ns < ? ORDER BY t_ns", [_stored(q.t_from_ns),
                                                                                 _stored(q.t_to_ns)])]
    finally:
        conn.close()
    audit, audit_total = audit_window(data_dir, _stored(q.t_from_ns), _stored(q.t_to_ns), AUDIT_MAX)
    return Extract(q, rows, alarms, audit, audit_total)


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


def line_defect_type(row: dict[str, Any]) -> str:
    """What the line filed a non-PASS part under when it decided: the deciding rule, else the model's label.

    Never the emulator's ground truth (`truth`): the report shows what the line and its reviewers said.
    """
    if row["decided_by"] != "model":
        return str(row["decided_by"])
    return str(row.get("label") or "unknown")


def defect_type(row: dict[str, Any]) -> str | None:
    """What a part is filed under after review: the reviewer's label, else the line's; None when the part is
    finally good (PASS and not reviewed as a defect, or reviewed as good)."""
    decision = row.get("review_decision")
    if decision == "PASS" or (decision is None and row["final"] == "PASS"):
        return None
    return str(row.get("review_label") or line_defect_type(row))


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Parts, verdict counts, yield (finally good, after review) and first-pass yield (PASS at inspection)."""
    counts = Counter(r["final"] for r in rows)
    parts = len(rows)
    good = sum(1 for r in rows if (r["review_decision"] or r["final"]) == "PASS")
    return {"parts": parts, "PASS": counts["PASS"], "FAIL": counts["FAIL"], "REVIEW": counts["REVIEW"],
            "reviewed": sum(1 for r in rows if r["review_decision"]),
            "yield": good / parts if parts else None, "first_pass_yield": counts["PASS"] / parts if parts else None}


def pareto(rows: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """Defect types, most frequent first: (type, parts the line rejected under it, parts under it after review).

    A part reviewed as good leaves the second count; a reviewed label moves a part to its type.
    """
    decided = Counter(line_defect_type(r) for r in rows if r["final"] != "PASS")
    reviewed = Counter(t for t in map(defect_type, rows) if t is not None)
    types = sorted(decided.keys() | reviewed.keys(), key=lambda t: (-reviewed[t], -decided[t], t))
    return [(t, decided[t], reviewed[t]) for t in types]


def not_inspected(rows: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """Parts no model looked at, by what decided them and why (the first reason): (decided_by, reason, parts)."""
    c = Counter((r["decided_by"], (json.loads(r["reasons"] or "[]") or ["no reason recorded"])[0])
                for r in rows if r["decided_by"] in ("timeout", "not_inspected"))
    return [(d, why, n) for (d, why), n in c.most_common()]


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


def export(data_dir: Path, q: Query, fmt: str, out: Path, issuer: Issuer | None = None) -> int:
    """Write the report in `fmt` to `out`; returns the number of inspections in it. The PDF's header names
    `issuer` (line and who generated it)."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "pdf":
        from linewatch.reports.pdf import write_pdf  # matplotlib and fpdf2 load only for PDFs

        ex = load(data_dir, q)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_pdf(ex, data_dir, out, issuer or Issuer("linewatch", "unknown"))
        return len(ex.rows)
    conn = _open(data_dir, q)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_csv(iter_rows(conn, q), out) if fmt == "csv" else write_json(q, iter_rows(conn, q), out)
    finally:
        conn.close()
