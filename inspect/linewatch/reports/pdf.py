"""The PDF shift/lot report for the customer: fpdf2 for the document, matplotlib for the charts.

Sections: summary, defect Pareto, yield and FAIL rate over time, fail-safe overrides by rule, model
and rule-set versions in force, alarms, and a gallery of FAIL/REVIEW images with their reasons
(anomaly maps blended over them where the model gave one).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from fpdf import FPDF
from PIL import Image

from linewatch.reports.export import Extract, iso, overrides, pareto, summary, versions
from linewatch.store.images import load_overlay

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf"  # DejaVu: Unicode reasons print as they are
GALLERY_MAX = 24
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
    ax.set_ylabel("parts")
    ax.tick_params(axis="x", rotation=20)
    return _png(fig)


def _trend_chart(rows: list[dict[str, Any]]) -> io.BytesIO:
    t0, t1 = rows[0]["t_capture_ns"], rows[-1]["t_capture_ns"]
    width = max(1, (t1 - t0) // _BUCKETS + 1)
    buckets: dict[int, list[str]] = defaultdict(list)
    for r in rows:
        buckets[(r["t_capture_ns"] - t0) // width].append(r["final"])
    xs = sorted(buckets)
    times = [_dt(t0 + x * width) for x in xs]
    yields = [100 * b.count("PASS") / len(b) for b in (buckets[x] for x in xs)]
    fails = [100 * b.count("FAIL") / len(b) for b in (buckets[x] for x in xs)]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot(times, yields, label="first-pass yield %", color="#27ae60", marker=".")
    ax.plot(times, fails, label="FAIL rate %", color="#c0392b", marker=".")
    ax.set_ylim(0, 105)
    ax.legend(loc="center right")
    fig.autofmt_xdate()
    return _png(fig)


def _dt(t_ns: int) -> Any:
    from datetime import datetime

    return datetime.fromtimestamp(t_ns / 1e9).astimezone()


class _Report(FPDF):
    def header(self) -> None:
        self.set_font("dejavu", "B", 9)
        self.cell(0, 6, "linewatch — QA inspection report", align="L")
        self.ln(8)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("dejavu", "", 8)
        self.cell(0, 6, f"page {self.page_no()}/{{nb}}", align="C")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(3)
    pdf.set_font("dejavu", "B", 13)
    pdf.cell(0, 8, text, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("dejavu", "", 9)


def _table(pdf: FPDF, header: list[str], rows: list[list[Any]], widths: list[int] | None = None) -> None:
    with pdf.table(col_widths=widths, text_align="LEFT", line_height=5) as t:
        t.row([str(h) for h in header])
        for r in rows:
            t.row(["" if v is None else str(v) for v in r])


def write_pdf(ex: Extract, data_dir: Path, out: Path) -> None:
    rows = ex.rows
    s = summary(rows)
    pdf = _Report(format="A4")
    pdf.add_font("dejavu", "", str(FONT / "DejaVuSans.ttf"))
    pdf.add_font("dejavu", "B", str(FONT / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    f = ex.query.describe()
    _heading(pdf, "Summary")
    pdf.multi_cell(0, 5, f"From {f['from']} to {f['to']}; lot: {f['lot'] or 'all'}; camera: {f['camera'] or 'all'}",
                   new_x="LMARGIN", new_y="NEXT")
    _table(pdf, ["parts", "PASS", "FAIL", "REVIEW", "reviewed", "yield", "first-pass yield"],
           [[s["parts"], s["PASS"], s["FAIL"], s["REVIEW"], s["reviewed"], _pct(s["yield"]),
             _pct(s["first_pass_yield"])]])
    if not rows:
        pdf.multi_cell(0, 6, "No inspections in this window.", new_x="LMARGIN", new_y="NEXT")
    else:
        items = pareto(rows)
        _heading(pdf, "Defect Pareto by type")
        if items:
            pdf.image(_pareto_chart(items), w=170)
            _table(pdf, ["type", "parts"], [[n, c] for n, c in items], [120, 50])
        _heading(pdf, "Yield and FAIL rate over time")
        pdf.image(_trend_chart(rows), w=170)
        _heading(pdf, "Fail-safe overrides by rule")
        ov = overrides(rows)
        _table(pdf, ["rule", "verdict", "parts"], [list(o) for o in ov] or [["none", "", 0]], [100, 40, 30])
        _heading(pdf, "Model and rule-set versions in force")
        _table(pdf, ["model", "model sha256", "rule set", "parts", "first", "last"],
               [[v["model_name"], (v["model_hash"] or "")[:12], (v["ruleset_hash"] or "")[:12], v["parts"],
                 iso(v["first"]), iso(v["last"])] for v in versions(rows)], [26, 30, 30, 14, 45, 45])
        from linewatch.reports.bias_page import bias_section

        bias_section(pdf, versions(rows), data_dir, _heading, _table)
    _heading(pdf, "Alarms")
    _table(pdf, ["raised", "kind", "severity", "message", "acknowledged by", "cleared"],
           [[iso(a["t_ns"]), a["kind"], a["severity"], a["message"], a.get("acknowledged_by"),
             iso(a.get("t_cleared_ns"))] for a in ex.alarms] or [["none", "", "", "", "", ""]],
           [34, 24, 16, 66, 20, 30])
    _gallery(pdf, rows, data_dir)
    pdf.output(str(out))


def _gallery(pdf: FPDF, rows: list[dict[str, Any]], data_dir: Path) -> None:
    shown = [r for r in rows if r["final"] != "PASS" and r["image"] and not r["image_pruned_ns"]
             and (data_dir / r["image"]).is_file()][:GALLERY_MAX]
    _heading(pdf, f"FAIL and REVIEW images ({len(shown)} shown)")
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
        pdf.multi_cell(50, 4, f"{r['final']} {r['camera']} seq {r['seq']}\npart {r['part_id']}\n"
                       f"{r['decided_by']}\n{reasons}{found}", new_x="LMARGIN", new_y="NEXT")
        pdf.set_y(y if i % 2 == 0 else y + 44)
        if i % 2 == 0 and i == len(shown) - 1:
            pdf.set_y(y + 44)



def _boxes(detections: Any) -> list[dict[str, Any]]:
    """A row's `detections` (JSON text in the export's rows) as a list."""
    return list(json.loads(detections) if isinstance(detections, str) else detections or [])


def _with_heatmap(data_dir: Path, image: str, detections: list[dict[str, Any]]) -> Any:
    """The kept image, or the image with what the model saw: its anomaly map blended over it, its boxes."""
    overlay = load_overlay(data_dir, image, detections)
    return str(data_dir / image) if overlay is None else Image.fromarray(overlay)
