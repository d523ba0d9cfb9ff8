"""The QA report's bias audit: for each model in force in the window, its card's per-segment metrics (camera,
lighting, lot...: the columns of its training data) with their bootstrap intervals, and the largest gap between
two segments named (the card's `bias.summary`, training/bias.py).

A model's card is found through the store: the `models` table says which file the line loaded it from; the card
is the `card.json` beside that file when its hash is the model's, else the registry folder named for the model's
hash (`<registry>/<name>-<sha12>/card.json`), where an active link's target may since have moved.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fpdf import FPDF

from linewatch.store.queries import read_rows


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def find_card(data_dir: Path, sha256: str) -> dict[str, Any] | None:
    """The card of the model with this hash, from where the line loaded it (None: not found)."""
    for row in read_rows(data_dir, "SELECT path FROM models WHERE sha256 = ?", (sha256,)):
        folder = Path(row["path"]).resolve().parent
        for card in (folder / "card.json", *folder.parent.glob(f"*-{sha256[:12]}/card.json")):
            try:
                data: dict[str, Any] = json.loads(card.read_text())
            except (OSError, ValueError):
                continue
            if data.get("sha256") == sha256:
                return data
    return None


def bias_section(pdf: FPDF, versions: list[dict[str, Any]], data_dir: Path,
                 heading: Callable[[FPDF, str], None], table: Callable[..., None]) -> None:
    """The section, after the versions in force; `heading` and `table` are the report's own (reports/pdf.py)."""
    heading(pdf, "Bias audit of the models in force")
    seen = set()
    for v in versions:
        sha = v["model_hash"]
        if not sha or sha in seen:
            continue
        seen.add(sha)
        card = find_card(data_dir, sha)
        name = f"{v['model_name']} {sha[:12]}"
        if card is None or not card.get("segments"):
            pdf.multi_cell(0, 5, f"{name}: " + ("no model card found" if card is None else
                                                "its card has no per-segment metrics (no segment columns)"),
                           new_x="LMARGIN", new_y="NEXT", align="L")
            continue
        bias = card.get("bias", {})
        conf = f"{100 * bias['confidence']:.0f} %" if "confidence" in bias else "no"
        pdf.multi_cell(0, 5, f"{name} on its validation split, {conf} bootstrap intervals in brackets; "
                       + bias.get("summary", "largest gap: not computed") + ".",
                       new_x="LMARGIN", new_y="NEXT", align="L")
        for col, values in card["segments"].items():
            table(pdf, [col, "parts", "accuracy", "escape rate", "false-reject rate"],
                  [[value, s["count"], _pct(s["accuracy"]) + _ci(s.get("accuracy_ci")),
                    _pct(s["escape_rate"]) + _ci(s.get("escape_rate_ci")),
                    _pct(s["false_reject_rate"]) + _ci(s.get("false_reject_rate_ci"))] for value, s in values.items()])
