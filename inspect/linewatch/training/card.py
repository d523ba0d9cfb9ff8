"""The model card: JSON for machines (registry, gate), Markdown for people, written beside the model."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any

import linewatch
from linewatch.model.files import file_sha256


def code_version() -> str:
    """linewatch's version (package metadata) and, when it runs from a git checkout, the commit: which code made
    a model. No git, or a package installed outside a checkout: the version alone."""
    try:
        version = importlib.metadata.version("linewatch")
    except importlib.metadata.PackageNotFoundError:
        version = linewatch.__version__
    package = Path(linewatch.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=package)
        top, rev = out.stdout.splitlines() if out.returncode == 0 else ("", "")
    except (OSError, subprocess.SubprocessError, ValueError):
        top, rev = "", ""
    from_checkout = bool(top) and package.is_relative_to(Path(top).resolve()) and "site-packages" not in package.parts
    return f"linewatch {version}" + (f" (git {rev})" if from_checkout and rev else "")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def segment_lines(card: dict[str, Any]) -> list[str]:
    """The bias audit as Markdown: a table per segment column, rates with their bootstrap interval, and the
    largest gap between two segments named."""
    segments = card.get("segments", {})
    if not segments:
        return []
    bias = card.get("bias", {})
    conf = f"{100 * bias['confidence']:.0f} %" if "confidence" in bias else "no"
    lines = ["## Bias audit", "", f"Per segment of the validation split, {conf} bootstrap intervals in brackets; "
             + bias.get("summary", "largest gap: not computed") + ".", ""]
    for col, values in segments.items():
        lines += [f"### Per {col}", "", "| value | n | accuracy | escape | false reject | review |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {v} | {s['count']} | {_pct(s['accuracy'])}{_ci(s.get('accuracy_ci'))} | "
                  f"{_pct(s['escape_rate'])}{_ci(s.get('escape_rate_ci'))} | "
                  f"{_pct(s['false_reject_rate'])}{_ci(s.get('false_reject_rate_ci'))} | {_pct(s['review_rate'])} |"
                  for v, s in values.items()]
        lines.append("")
    return lines


def write_card(card: dict[str, Any], onnx_path: Path) -> dict[str, Any]:
    """Add the file's SHA-256 (its identity) and write card.json + CARD.md next to it."""
    card = {"sha256": file_sha256(onnx_path), **card}
    out = onnx_path.parent
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    m, d, t = card["metrics"], card["data"], card["training"]
    lines = [
        f"# Model card: {card['name']}", "",
        f"SHA-256 `{card['sha256']}` — {card['kind']}, labels {', '.join(card['labels'])}.", "",
        f"Input: uint8 {card['input']['layout']} frames {card['input']['width']}x{card['input']['height']}, "
        f"resized to {card['input']['net_size']} px and normalised inside the graph.", "",
        "## Data", "",
        f"{d['count']} images from `{d['source']}` (SHA-256 `{d['dataset_sha256'][:16]}…`), classes "
        + ", ".join(f"{k}: {v}" for k, v in d["class_counts"].items())
        + f"; stratified split {d['split']['train']} train / {d['split']['validation']} validation, "
          f"seed {d['split']['seed']}."
        + (f" Snapshot `{d['snapshot']}` of the data registry." if d.get("snapshot") else ""), "",
        "## Validation metrics", "",
        "| metric | value |", "|---|---|",
        f"| accuracy (PASS/FAIL) | {_pct(m['accuracy'])} |",
        f"| F1 (defect) | {m['f1']:.3f} |",
        f"| AUROC | {'n/a' if m['auroc'] is None else format(m['auroc'], '.4f')} |",
        f"| REVIEW band on p(defect) | [{m['band'][0]:.3f}, {m['band'][1]:.3f}) |",
        f"| escape rate with band | {_pct(m['escape_rate'])} (model alone {_pct(m['model_alone']['escape_rate'])}) |",
        f"| false-reject rate with band | {_pct(m['false_reject_rate'])} "
        f"(model alone {_pct(m['model_alone']['false_reject_rate'])}) |",
        f"| REVIEW rate | {_pct(m['review_rate'])} |",
        f"| ONNX vs PyTorch max difference | {m['onnx_torch_max_abs_diff']:.1e} |", "",
        f"Confusion (rows true, columns predicted, {', '.join(m['confusion']['labels'])}): "
        f"`{m['confusion']['matrix']}`", "",
        "## Training", "",
        f"{t['epochs_run']} epochs (best {t['best_epoch']}{', interrupted' if t['interrupted'] else ''}) in "
        f"{t['seconds']} s on CPU, seed {t['seed']}, {t['code_version']}, torch {t['torch']}; "
        "calibration " + ", ".join(f"{k} {v}" for k, v in card["calibration"].items() if k in ("temperature", "platt"))
        + ".", "",
    ]
    if "options" in t:
        lines[-1:-1] = ["Options: `" + json.dumps(t["options"], sort_keys=True) + "`.", ""]
    if "backbone" in card:
        b = card["backbone"]
        lines[-1:-1] = [f"Backbone {b['name']} (ImageNet weights `{b['file']}` from {b['package']} {b['version']}, "
                        f"SHA-256 `{b['sha256']}`), {'frozen' if card['kind'] == 'patchcore' else 'fine-tuned'}.", ""]
    if "real_defects" in m:
        r = m["real_defects"]
        lines += ["## Real defects (never trained on)", "",
                  f"Validation good images plus {r['count'] - d['split']['validation']} real defect images: accuracy "
                  f"{_pct(r['accuracy'])}, AUROC {r['auroc']}, escape rate {_pct(r['escape_rate'])}, false-reject "
                  f"rate {_pct(r['false_reject_rate'])}, REVIEW rate {_pct(r['review_rate'])}.", ""]
    if "evaluated_on" in m:
        lines.insert(lines.index("## Validation metrics") + 2, f"Evaluated on {m['evaluated_on']}.")
        lines.insert(lines.index("## Validation metrics") + 3, "")
    lines += segment_lines(card)
    (out / "CARD.md").write_text("\n".join(lines))
    return card
