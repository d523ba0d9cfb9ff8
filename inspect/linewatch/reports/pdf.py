"""The PDF shift/lot report a quality engineer signs: fpdf2 for the document, matplotlib for the charts.

Sections: a header naming line, recipe, period and who generated it when; summary; the defect Pareto
(what the line decided and what reviewers said, never the emulator's ground truth); yield and FAIL
rate over time; fail-safe overrides by rule; model and rule-set versions in force and their bias
audit; parts no model looked at, with why; alarms; the audit log of the window; a gallery of
FAIL/REVIEW images that says how it chose them and how many it leaves out; a sign-off block. Tables
size their columns to their words, so none breaks mid-word.
"""

from __future__ import annotations

import io
import json
import logging
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from fpdf import FPDF
from PIL import Image

from linewatch.reports.bias_page import bias_section
from linewatch.reports.export import (
    Extract,
    Issuer,
    line_defect_type,
    not_inspected,
    overrides,
    pareto,
    summary,
    versions,
)
from linewatch.store.images import load_overlay

logging.getLogger("fontTools").setLevel(logging.WARNING)  # its per-font subsetting INFO lines are not the line's news

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf"  # DejaVu: Unicode reasons print as they are
GALLERY_MAX = 24
GALLERY_CHOICE = "one per defect type (the most recent of each), then the most recent others"
_BUCKETS = 24


def _png(fig: Any) -> io.BytesIO:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return buf


def _pareto_chart(items: list[tuple[str, int]]) -> io.BytesIO:
    fig, ax = plt.subplots(figsize=(7, 3))
    names, counts = [n for n, _ in items[:10]], [c for _, c in items[:10]]
    ax.bar(names, counts, color="#c0392b")
    total, run, cum = sum(counts) or 1, 0, []
    for c in counts:
        run += c
        cum.append(100 * run / total)
    ax2 = ax.twinx()
    ax2.plot(names, cum, color="#2c3e50", marker="o")
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("cumulative %")
    ax.set_ylabel("parts after review")
    ax.tick_params(axis="x", rotation=20)
    return _png(fig)


def _trend_chart(rows: list[dict[str, Any]]) -> io.BytesIO:
    t0, t1 = rows[0]["t_capture_ns"], rows[-1]["t_capture_ns"]
    width = max(1, (t1 - t0) // _BUCKETS + 1)
    buckets: dict[int, list[str]] = defaultdict(list)
    for r in rows:
        buckets[(r["t_capture_ns"] - t0) // width].append(r["final"])
    xs = sorted(buckets)
    times: list[Any] = [_dt(t0 + x * width) for x in xs]  # matplotlib dates
    yields = [100 * b.count("PASS") / len(b) for b in (buckets[x] for x in xs)]
    fails = [100 * b.count("FAIL") / len(b) for b in (buckets[x] for x in xs)]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot(times, yields, label="first-pass yield %", color="#27ae60", marker=".")
    ax.plot(times, fails, label="FAIL rate %", color="#c0392b", marker=".")
    ax.set_ylim(0, 105)
    ax.legend(loc="center right")
    fig.autofmt_xdate()
    return _png(fig)


def _dt(t_ns: int) -> datetime:
    return datetime.fromtimestamp(t_ns / 1e9).astimezone()


def _when(t_ns: int | None) -> str:
    """A time as a table shows it: local date and time to the second (the header names the zone)."""
    return _dt(t_ns).strftime("%Y-%m-%d %H:%M:%S") if t_ns else "—"


class _Report(FPDF):
    title_line = "linewatch QA inspection report"

    def header(self) -> None:
        self.set_font("dejavu", "B", 9)
        self.cell(0, 6, self.title_line, align="L")
        self.ln(8)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("dejavu", "", 8)
        self.cell(0, 6, f"page {self.page_no()}/{{nb}}", align="C")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def _heading(pdf: FPDF, text: str, room: float = 40) -> None:
    """A section heading, on a new page when less than `room` mm of this one is left for what comes under it."""
    if pdf.will_page_break(room):
        pdf.add_page()
    pdf.ln(3)
    pdf.set_font("dejavu", "B", 13)
    pdf.cell(0, 8, text, new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.set_font("dejavu", "", 9)


def _fit_widths(pdf: FPDF, texts: list[list[str]], header: bool) -> list[float] | None:
    """Column widths (mm) over the page's text width: each column at least as wide as its longest word,
    the rest shared by how much text each column holds, so no word is broken across lines. None when the
    longest words do not fit side by side in the current font size. A header row is measured in bold."""
    pad = 2 * pdf.c_margin + 1
    words: list[list[float]] = [[] for _ in texts[0]]
    full: list[float] = [0.0] * len(texts[0])
    style = pdf.font_style
    for n, row in enumerate(texts):
        pdf.set_font(style="B" if header and n == 0 else style)
        for i, text in enumerate(row):
            words[i] += [pdf.get_string_width(w) for w in text.split()]
            full[i] = max(full[i], pdf.get_string_width(text) + pad)
    pdf.set_font(style=style)
    longest_word = [max(w, default=0.0) + pad for w in words]
    spare = pdf.epw - sum(longest_word)
    if spare < 0:
        return None
    want = [max(f - w, 0.0) for f, w in zip(full, longest_word, strict=True)]
    grow = sum(want)
    if grow <= spare:  # everything fits on one line: share what is left by content width
        return [w + g + (spare - grow) * f / sum(full) for w, g, f in zip(longest_word, want, full, strict=True)]
    return [w + spare * g / grow for w, g in zip(longest_word, want, strict=True)]


_MIN_TABLE_PT = 6.0


def _table(pdf: FPDF, header: list[str] | None, rows: list[list[Any]]) -> None:
    """A table whose columns fit their words: the font steps down (to 6 pt) until the longest words fit.
    Without a header, the first column names each row."""
    texts = ([[str(h) for h in header]] if header else []) + [["" if v is None else str(v) for v in r] for r in rows]
    size = pdf.font_size_pt
    widths = _fit_widths(pdf, texts, header is not None)
    while widths is None and pdf.font_size_pt > _MIN_TABLE_PT:
        pdf.set_font_size(pdf.font_size_pt - 0.5)
        widths = _fit_widths(pdf, texts, header is not None)
    with pdf.table(col_widths=widths, width=pdf.epw, text_align="LEFT", line_height=pdf.font_size + 1.8,
                   first_row_as_headings=header is not None) as t:
        for r in texts:
            t.row(r)
    pdf.set_font_size(size)


def write_pdf(ex: Extract, data_dir: Path, out: Path, issuer: Issuer) -> None:
    rows = ex.rows
    s = summary(rows)
    pdf = _Report(format="A4")
    pdf.add_font("dejavu", "", str(FONT / "DejaVuSans.ttf"))
    pdf.add_font("dejavu", "B", str(FONT / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(True, margin=15)
    f = ex.query.describe()
    pdf.title_line = f"linewatch QA inspection report — line {issuer.line}, {_when(ex.query.t_from_ns)} to " \
                     f"{_when(ex.query.t_to_ns)}"
    pdf.add_page()
    _heading(pdf, "Report")
    recipes = sorted({str(r["recipe"]) for r in rows if r.get("recipe")}) or ["none recorded"]
    zone = datetime.now().astimezone().strftime("%Z (UTC%z)")
    _table(pdf, None, [
        ["line", issuer.line], ["recipe", ", ".join(recipes)],
        ["period", f"{_when(ex.query.t_from_ns)} to {_when(ex.query.t_to_ns)} (end exclusive), times in {zone}"],
        ["lot", f["lot"] or "all"], ["camera", f["camera"] or "all"],
        ["generated", f"{_when(int(datetime.now().timestamp() * 1e9))} by {issuer.by}"]])
    _heading(pdf, "Summary")
    _table(pdf, ["parts", "PASS", "FAIL", "REVIEW", "reviewed", "yield", "first-pass yield"],
           [[s["parts"], s["PASS"], s["FAIL"], s["REVIEW"], s["reviewed"], _pct(s["yield"]),
             _pct(s["first_pass_yield"])]])
    if not rows:
        pdf.multi_cell(0, 6, "No inspections in this window.", new_x="LMARGIN", new_y="NEXT", align="L")
    else:
        _sections(pdf, rows, data_dir)
    _heading(pdf, "Alarms")
    _table(pdf, ["raised", "kind", "severity", "message", "acknowledged by", "cleared"],
           [[_when(a["t_ns"]), a["kind"], a["severity"], a["message"], a.get("acknowledged_by") or "—",
             _when(a.get("t_cleared_ns"))] for a in ex.alarms] or [["none", "", "", "", "", ""]])
    _audit(pdf, ex)
    _gallery(pdf, rows, data_dir)
    _sign_off(pdf)
    pdf.output(str(out))


def _sections(pdf: FPDF, rows: list[dict[str, Any]], data_dir: Path) -> None:
    items = pareto(rows)
    _heading(pdf, "Defect Pareto by type", room=100)
    pdf.multi_cell(0, 5, "Rejected by the line: parts the line decided FAIL or REVIEW, filed under the deciding "
                   "rule or the model's label. After review: the reviewers' calls applied (a part reviewed as "
                   "good leaves the Pareto; a reviewer's defect type moves a part to it).",
                   new_x="LMARGIN", new_y="NEXT", align="L")
    if items:
        charted = [(n, after) for n, _, after in items if after]
        if charted:
            pdf.image(_pareto_chart(charted), w=170)
        _table(pdf, ["type", "rejected by the line", "after review"], [list(i) for i in items])
    _heading(pdf, "Yield and FAIL rate over time", room=80)
    pdf.image(_trend_chart(rows), w=170)
    _heading(pdf, "Fail-safe overrides by rule")
    _table(pdf, ["rule", "verdict", "parts"], [list(o) for o in overrides(rows)] or [["none", "", 0]])
    _heading(pdf, "Model and rule-set versions in force")
    _table(pdf, ["model", "model sha256", "rule set", "parts", "first", "last"],
           [[v["model_name"], (v["model_hash"] or "")[:12], (v["ruleset_hash"] or "")[:12], v["parts"],
             _when(v["first"]), _when(v["last"])] for v in versions(rows) if v["model_name"]]
           or [["none", "", "", 0, "", ""]])
    bias_section(pdf, versions(rows), data_dir, _heading, _table)
    _heading(pdf, "Parts no model looked at")
    _table(pdf, ["decided by", "why", "parts"], [list(n) for n in not_inspected(rows)] or [["none", "", 0]])


def _audit(pdf: FPDF, ex: Extract) -> None:
    """Who changed what on the line in the window (IEC 62443 CR 2.8): sign-ins, lot, reviews, acknowledgements,
    recipe and pause, user and token management; refusals too."""
    shown = len(ex.audit)
    more = f", the first {shown} listed (all in GET /api/audit)" if ex.audit_total > shown else ""
    _heading(pdf, f"Audit log ({ex.audit_total} entries{more})")
    _table(pdf, ["when", "who", "from", "what", "target", "outcome"],
           [[_when(a["t_ns"]), a["actor"], a.get("address") or "—", a["action"], a.get("target") or "—", a["outcome"]]
            for a in ex.audit] or [["none", "", "", "", "", ""]])


def gallery_pick(rows: list[dict[str, Any]], data_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """The FAIL/REVIEW parts the gallery shows (GALLERY_CHOICE, in capture order) and how many it leaves out."""
    rejected = [r for r in rows if r["final"] != "PASS"]
    kept = [r for r in rejected if r["image"] and not r["image_pruned_ns"] and (data_dir / r["image"]).is_file()]
    newest_first = kept[::-1]
    chosen: dict[int, dict[str, Any]] = {}
    for r in newest_first:
        if line_defect_type(r) not in {line_defect_type(c) for c in chosen.values()} and len(chosen) < GALLERY_MAX:
            chosen[r["id"]] = r
    for r in newest_first:
        if len(chosen) >= GALLERY_MAX:
            break
        chosen.setdefault(r["id"], r)
    shown = sorted(chosen.values(), key=lambda r: (r["t_capture_ns"], r["id"]))
    return shown, len(rejected) - len(shown)


def _gallery(pdf: FPDF, rows: list[dict[str, Any]], data_dir: Path) -> None:
    shown, left_out = gallery_pick(rows, data_dir)
    _heading(pdf, f"FAIL and REVIEW images ({len(shown)} shown, {left_out} left out)")
    pdf.multi_cell(0, 5, f"Chosen among the FAIL/REVIEW parts whose image is kept: {GALLERY_CHOICE}, at most "
                   f"{GALLERY_MAX}. Parts left out are in the CSV/JSON export.",
                   new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.ln(2)
    for i, r in enumerate(shown):
        if i % 2 == 0 and pdf.will_page_break(60):
            pdf.add_page()
        x = pdf.l_margin + (i % 2) * 95
        y = pdf.get_y()
        boxes = _boxes(r.get("detections"))
        pdf.image(_with_heatmap(data_dir, r["image"], boxes), x=x, y=y, w=40, h=40)
        pdf.set_xy(x + 42, y)
        reasons = "; ".join(json.loads(r["reasons"] or "[]")) or "—"
        found = "".join(f"\n{d['label']} {float(d['score']):.2f}" for d in boxes[:3])
        score = "—" if r["score"] is None else f"{float(r['score']):.3f}"
        pdf.multi_cell(50, 4, f"{r['final']} {r['camera']} seq {r['seq']}\npart {r['part_id']}\n"
                       f"{_when(r['t_capture_ns'])}\nscore {score} by {r['decided_by']}\n{reasons}{found}",
                       new_x="LMARGIN", new_y="NEXT", align="L")
        pdf.set_y(y if i % 2 == 0 else y + 44)
        if i % 2 == 0 and i == len(shown) - 1:
            pdf.set_y(y + 44)


def _sign_off(pdf: FPDF) -> None:
    if pdf.will_page_break(50):
        pdf.add_page()
    _heading(pdf, "Sign-off")
    pdf.multi_cell(0, 5, "I have reviewed this report and the parts it lists.",
                   new_x="LMARGIN", new_y="NEXT", align="L")
    with pdf.table(col_widths=(40, 140), text_align="LEFT", line_height=10) as t:
        for label in ("Quality engineer", "Signature", "Date"):
            t.row([label, ""])


def _boxes(detections: Any) -> list[dict[str, Any]]:
    """A row's `detections` (JSON text in the export's rows) as a list."""
    return list(json.loads(detections) if isinstance(detections, str) else detections or [])


def _with_heatmap(data_dir: Path, image: str, detections: list[dict[str, Any]]) -> Any:
    """The kept image, or the image with what the model saw: its anomaly map blended over it, its boxes."""
    overlay = load_overlay(data_dir, image, detections)
    return str(data_dir / image) if overlay is None else Image.fromarray(overlay)
