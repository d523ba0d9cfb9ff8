"""`linewatch lineage ID`: from an inspection row to the model that judged it, the data it was trained on, the
code and the options that trained it.

Each link is read where it is kept: the row (store, read-only) names the model's version hash; the model
registry finds that version, its card and its ONNX metadata (`linewatch.dataset_snapshot`,
`linewatch.dataset_sha256`, `linewatch.train_params`, `linewatch.code_version`); the data registry holds the
snapshot's record. A link that cannot be followed is reported with what is known up to it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from linewatch.data.items import DataError
from linewatch.data.registry import DataRegistry
from linewatch.model.onnx import Model, ModelError
from linewatch.model.registry import Registry, RegistryError
from linewatch.store.queries import read_rows

#: the row's columns the chain shows (the rest of the row is in the HMI and the API)
ROW_FIELDS = ("id", "camera", "stream", "seq", "part_id", "recipe", "lot", "final", "decided_by", "label", "score",
              "model_hash", "model_name")


class LineageError(Exception):
    """The inspection cannot be found: nothing to trace (exit 2)."""


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _inspection(data_dir: Path, inspection_id: int) -> dict[str, Any]:
    rows = read_rows(data_dir, "SELECT * FROM inspections WHERE id = ?", (inspection_id,))
    if not rows:
        raise LineageError(f"no inspection {inspection_id} in {data_dir}")
    row = dict(rows[0])
    out = {k: row.get(k) for k in ROW_FIELDS}
    out["captured"] = _iso(row.get("t_capture_ns"))
    return out


def _metadata(file: Path) -> dict[str, str]:
    """The model's metadata as the runtime reads it."""
    return dict(Model(file, providers="cpu").info.metadata)


def provenance(card: dict[str, Any], meta: dict[str, str]) -> dict[str, Any]:
    """What trained the model: the ONNX metadata first (it travels with the file), the card where it is silent."""
    data, training = card.get("data", {}), card.get("training", {})
    params = json.loads(meta["linewatch.train_params"]) if "linewatch.train_params" in meta \
        else training.get("options")
    return {"dataset_snapshot": meta.get("linewatch.dataset_snapshot") or data.get("snapshot"),
            "dataset_sha256": meta.get("linewatch.dataset_sha256") or data.get("dataset_sha256"),
            "data_source": data.get("source"),
            "code_version": meta.get("linewatch.code_version") or training.get("code_version"),
            "params": params}


def trace(inspection_id: int, data_dir: Path, models: Registry, datasets: DataRegistry) -> dict[str, Any]:
    """The chain inspection -> model -> training -> snapshot; `missing` names every link not found."""
    chain: dict[str, Any] = {"inspection": _inspection(data_dir, inspection_id), "model": None, "training": None,
                             "snapshot": None, "missing": []}
    missing: list[str] = chain["missing"]
    sha = chain["inspection"]["model_hash"]
    if not sha:
        missing.append("the row records no model (decided without one)")
        return chain
    model: dict[str, Any] = {"sha256": sha, "name": chain["inspection"]["model_name"]}
    seen = read_rows(data_dir, "SELECT path, first_seen_ns FROM models WHERE sha256 = ?", (sha,))
    if seen:
        model["line_path"], model["first_seen"] = seen[0]["path"], _iso(seen[0]["first_seen_ns"])
    chain["model"] = model
    version = next((v for v in _versions(models, missing) if v.sha256 == sha), None)
    if version is None:
        missing.append(f"model {sha[:12]} is not in the model registry {models.root}")
        return chain
    model.update(name=version.name, file=str(version.file), added=version.added)
    meta: dict[str, str] = {}
    try:
        meta = _metadata(version.file)
    except ModelError as exc:
        missing.append(f"model file {version.file}: {exc}")
    if not version.card:
        missing.append(f"model {sha[:12]} has no card in the registry")
    chain["training"] = training = provenance(version.card, meta)
    sid = training["dataset_snapshot"]
    if not sid:
        return chain  # trained from a plain folder: only its dataset hash is known, nothing is missing
    try:
        snap = datasets.find(sid)
    except DataError:
        missing.append(f"snapshot {sid[:12]} is not in the data registry {datasets.root}")
        return chain
    chain["snapshot"] = {"id": snap.id, "name": snap.name, "parent": snap.parent, "created": snap.created,
                         "items": snap.items, "classes": snap.classes, "sources": snap.sources}
    return chain


def _versions(models: Registry, missing: list[str]) -> list[Any]:
    try:
        return models.versions()
    except RegistryError as exc:
        missing.append(str(exc))
        return []


def render(chain: dict[str, Any]) -> str:
    """The chain for people: one block per link, then what is missing."""
    i = chain["inspection"]
    lines = [f"inspection {i['id']}: {i['final']} by {i['decided_by']} (label {i['label']}, score {i['score']}), "
             f"camera {i['camera']} seq {i['seq']}" + (f", part {i['part_id']}" if i["part_id"] else "")
             + f", recipe {i['recipe']}" + (f", lot {i['lot']}" if i["lot"] else "") + f", {i['captured']}"]
    if (m := chain["model"]) is not None:
        lines.append(f"  model     {m['sha256']} ({m['name']})")
        if "file" in m:
            lines.append(f"            registry {m['file']}, added {m['added']}")
        if "line_path" in m:
            lines.append(f"            on the line as {m['line_path']}, first seen {m['first_seen']}")
    if (t := chain["training"]) is not None:
        lines.append(f"  data      snapshot {t['dataset_snapshot']}" if t["dataset_snapshot"]
                     else f"  data      {t['data_source'] or 'a folder'} (no snapshot)")
        lines.append(f"            dataset sha256 {t['dataset_sha256']}")
        lines.append(f"  code      {t['code_version'] or '(not recorded)'}")
        params = json.dumps(t["params"], sort_keys=True) if t["params"] is not None else "(not recorded)"
        lines.append(f"  params    {params}")
    if (s := chain["snapshot"]) is not None:
        lines.append(f"  snapshot  {s['name']!r}: {s['items']} item(s), classes "
                     + ", ".join(f"{k} {v}" for k, v in s["classes"].items())
                     + f", created {s['created']}, parent {s['parent'] or '-'}")
        lines += [f"            source {src['name']}: {src['items']} item(s), {src['kind']}, {src['path']}"
                  for src in s["sources"]]
    lines += [f"missing: {m}" for m in chain["missing"]]
    return "\n".join(lines)
