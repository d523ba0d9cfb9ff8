"""The inspection row: its columns in one place, built from a verdict, and one shape for every reader.

The REST API, the live event stream and the export show an inspection as `VIEW_COLUMNS`: what
record writes (`ROW_COLUMNS`), the store's `id` and pruning mark, and its group commit's stage times
(`COMMIT_TIMES`) with one meaning everywhere: `record_ms` verdict decided -> group committed,
`event_ms` committed -> the group's event handed to the socket. A live event is built before it is
sent, so there `event_ms` (and `id`, assigned by the store) are null; the export adds the capture time
as ISO 8601 and the latest review.
"""

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
    "truth_label", "truth", "acquire_ms", "transport_ms", "detections", "signals",
)
ROW_COLUMNS = (*VERDICT_COLUMNS, "t_recorded_ns", "latency_ms", "commit_id")
JSON_COLUMNS = ("reasons", "probs", "truth", "detections", "signals")  # JSON text in the row
COMMIT_TIMES = ("t_committed_ns", "record_ms", "event_ms")
VIEW_COLUMNS = ("id", *ROW_COLUMNS, "image_pruned_ns", *COMMIT_TIMES)



def select_inspections(more_columns: str = "", joins: str = "") -> str:
    """The SELECT every reader uses (`i`: inspections, `c`: their commits) to show `VIEW_COLUMNS`; a WHERE
    may follow. `more_columns`/`joins`: what a reader adds (the export: the latest review)."""
    return ("SELECT i.*, c.t_committed_ns AS t_committed_ns, "
            "CASE WHEN i.t_decided_ns > 0 THEN (c.t_committed_ns - i.t_decided_ns) / 1e6 END AS record_ms, "
            f"(c.t_published_ns - c.t_committed_ns) / 1e6 AS event_ms{', ' + more_columns if more_columns else ''} "
            f"FROM inspections i LEFT JOIN commits c ON c.id = i.commit_id {joins}")


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
            get("acquire"), get("transport"), _json_text(v.detections) if v.detections is not None else None,
            _json_text(v.signals) if v.signals else None)


def committed_values(values: tuple[Any, ...], t_recorded_ns: int, commit_id: int | None,
                     latency_ms: float | None) -> tuple[Any, ...]:
    """`verdict_values` completed to a whole row (`ROW_COLUMNS`) by its commit."""
    return (*values, t_recorded_ns, latency_ms, commit_id)


def verdict_row(v: Verdict, t_recorded_ns: int, lot: str | None = None, shift: str | None = None) -> dict[str, Any]:
    """The row as a dict (tests, tools); record keeps tuples."""
    latency = (t_recorded_ns - v.t_capture_ns) / 1e6 if v.t_capture_ns else None
    values = committed_values(verdict_values(v, lot, shift), t_recorded_ns, None, latency)
    return dict(zip(ROW_COLUMNS, values, strict=True))


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def row_to_api(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """An inspection as the REST API, the live events and the export show it: `VIEW_COLUMNS`, in
    that order (what a reader lacks is null), JSON columns parsed."""
    d = dict(row)
    out = {name: d.get(name) for name in VIEW_COLUMNS}
    for key in JSON_COLUMNS:
        value = out[key]
        if isinstance(value, str):  # stored as JSON text; a live event's are parsed already
            out[key] = json.loads(value) if value else None
    return out
