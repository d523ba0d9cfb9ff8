"""The inspection row: its columns in one place, built from a verdict, and shown by the REST API and events."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import orjson

from linewatch.wire import Verdict

#: An inspection row as record builds it: the verdict's columns (`verdict_values`), then those set at commit.
VERDICT_COLUMNS = (
    "lot", "shift", "camera", "stream", "seq", "part_id", "recipe", "final", "decided_by", "reasons", "label",
    "score", "probs", "model_hash", "model_name", "ruleset_hash", "t_capture_ns", "t_sent_ns", "t_received_ns",
    "t_decided_ns", "queue_ms", "preprocess_ms", "inference_ms", "failsafe_ms", "worker", "image",
    "truth_label", "truth", "acquire_ms", "transport_ms",
)
ROW_COLUMNS = (*VERDICT_COLUMNS, "t_recorded_ns", "latency_ms", "commit_id")
JSON_COLUMNS = ("reasons", "probs", "truth")  # JSON text in the row
_CAPTURE = VERDICT_COLUMNS.index("t_capture_ns")


def verdict_values(v: Verdict, lot: str | None = None, shift: str | None = None) -> tuple[Any, ...]:
    """The verdict's part of its row, in `VERDICT_COLUMNS` order (a tuple: record builds one per verdict)."""
    t = v.timings_ms
    get = t.get
    return (lot, shift, v.camera, v.stream, v.seq, v.part_id, v.recipe, v.final, v.decided_by,
            _json_text(v.reasons) if v.reasons else "[]", v.label, v.score,
            _json_text(v.probs) if v.probs is not None else None, v.model_hash, v.model_name, v.ruleset_hash,
            v.t_capture_ns, v.t_sent_ns, v.t_received_ns, v.t_decided_ns,
            get("queue"), get("preprocess"), get("inference"), get("failsafe"), v.worker, v.image,
            v.truth.get("label") if v.truth else None, _json_text(v.truth) if v.truth else None,
            get("acquire"), get("transport"))


def committed_values(values: tuple[Any, ...], t_recorded_ns: int, commit_id: int | None) -> tuple[Any, ...]:
    """`verdict_values` completed to a whole row (`ROW_COLUMNS`) by its commit."""
    capture = values[_CAPTURE]
    return (*values, t_recorded_ns, (t_recorded_ns - capture) / 1e6 if capture else None, commit_id)


def verdict_row(v: Verdict, t_recorded_ns: int, lot: str | None = None, shift: str | None = None) -> dict[str, Any]:
    """The row as a dict (tests, tools); record keeps tuples."""
    return dict(zip(ROW_COLUMNS, committed_values(verdict_values(v, lot, shift), t_recorded_ns, None), strict=True))


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def row_to_api(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """A stored row as the REST API and the live event stream show it."""
    d = dict(row)
    for key in JSON_COLUMNS:
        if d.get(key):
            d[key] = json.loads(d[key])
    return d
