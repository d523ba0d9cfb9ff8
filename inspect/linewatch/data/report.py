"""The check's summary: counts per class and segment, then each flagged item with its reason; as text for
the terminal and as one self-contained HTML page with small thumbnails (base64 PNG)."""

from __future__ import annotations

import base64
import html
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from linewatch.data.check import CheckResult
from linewatch.data.items import Entry

MAX_SEGMENT_VALUES = 20  # a column with more values is an id (seq, frame), not a segment worth counting
THUMB_PX = 96


def counts(entries: list[Entry]) -> dict[str, dict[str, int]]:
    """`class` -> label -> n, and per segment column with few enough values: column -> value -> n."""
    out = {"class": dict(sorted(Counter(e.label for e in entries).items()))}
    for col in sorted({k for e in entries for k in e.segments}):
        values = Counter(e.segments.get(col, "") for e in entries)
        if len(values) <= MAX_SEGMENT_VALUES:
            out[col] = dict(sorted(values.items()))
    return out


def summary(result: CheckResult, title: str) -> str:
    lines = [f"{title}: {len(result.entries)} item(s), {len(result.errors)} error(s), "
             f"{len(result.warnings)} warning(s)"]
    for col, values in counts(result.entries).items():
        lines.append(f"  {col}: " + ", ".join(f"{v or '(none)'} {n}" for v, n in values.items()))
    lines += [f"{f.level}: {f.message}" for f in (*result.errors, *result.warnings)]
    return "\n".join(lines)


def _thumbnail(path: Path) -> str:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return ""
    scale = THUMB_PX / max(img.shape[:2])
    small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img
    ok, png = cv2.imencode(".png", small)
    return f'<img src="data:image/png;base64,{base64.b64encode(png.tobytes()).decode()}">' if ok else ""


def write_html(result: CheckResult, title: str, out: Path) -> None:
    """One page: the counts, then every finding with a thumbnail of each item it names (up to four)."""
    files = {e.key: e.file for e in result.entries}
    esc = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}.error{color:#b00}"
             ".warning{color:#a60}img{margin:2px;image-rendering:pixelated}</style>",
             f"<h1>{esc(title)}</h1><p>{len(result.entries)} item(s), {len(result.errors)} error(s), "
             f"{len(result.warnings)} warning(s)</p>"]
    for col, values in counts(result.entries).items():
        parts.append(f"<h2>{esc(col)}</h2><table>" + "".join(
            f"<tr><td>{esc(v or '(none)')}</td><td>{n}</td></tr>" for v, n in values.items()) + "</table>")
    parts.append("<h2>Findings</h2><table><tr><th>level</th><th>finding</th><th>images</th></tr>")
    for f in (*result.errors, *result.warnings):
        thumbs = "".join(_thumbnail(files[k]) for k in f.items[:4] if k in files)
        parts.append(f"<tr><td class='{f.level}'>{f.level}</td><td>{esc(f.message)}</td><td>{thumbs}</td></tr>")
    parts.append("</table>")
    if result.stats:
        med = {m: float(np.median([s[m] for s in result.stats.values()]))
               for m in ("brightness", "contrast", "sharpness")}
        parts.append("<p>Medians: " + ", ".join(f"{m} {v:.4g}" for m, v in med.items()) + "</p>")
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")
