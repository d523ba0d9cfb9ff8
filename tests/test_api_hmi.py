"""The routes behind the operator's screens on real stores: counters per period equal the database, the
shift's start across midnight, the review queue, one part in full with its decision log and image, and
the audited counter reset through record."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from linewatch.api.app import create_app
from linewatch.api.hmi import counters
from linewatch.config import ShiftConfig, parse_config
from linewatch.shifts import current_shift
from linewatch.store.images import image_relpath, save_kept
from linewatch.store.queries import open_reader
from linewatch.store.rows import verdict_row
from linewatch.store.schema import open_writer
from linewatch.store.writer import apply_action, insert_verdicts
from linewatch.wire import OperatorAction, Verdict
from tests.api_harness import bearer, served_api

S = 10**9


def _local_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone().timestamp()) * S


def test_the_shift_in_force_and_its_start_wrap_past_midnight() -> None:
    shifts = [ShiftConfig(name="early", start="06:00"), ShiftConfig(name="late", start="14:00"),
              ShiftConfig(name="night", start="22:00")]
    assert current_shift(shifts, _local_ns("2026-03-04T05:59")) == ("night", _local_ns("2026-03-03T22:00"))
    assert current_shift(shifts, _local_ns("2026-03-04T06:00")) == ("early", _local_ns("2026-03-04T06:00"))
    assert current_shift(shifts, _local_ns("2026-03-04T23:30")) == ("night", _local_ns("2026-03-04T22:00"))


def _insert(db: Any, rows: list[tuple[int, str, str]], seq0: int = 0) -> None:
    """(capture ns, final, lot) rows."""
    insert_verdicts(db, [verdict_row(Verdict("cam0", "s", seq0 + i, f"p{seq0 + i}", final, "model",  # type: ignore[arg-type]
                                             t_capture_ns=t), t + 1000, lot)
                         for i, (t, final, lot) in enumerate(rows)])


def _sql_counts(data_dir: Path, where: str, params: tuple[Any, ...] = ()) -> dict[str, int]:
    conn = open_reader(data_dir)
    try:
        got = dict(conn.execute(f"SELECT final, count(*) FROM inspections WHERE {where} GROUP BY final", params))
    finally:
        conn.close()
    return {f: got.get(f, 0) for f in ("PASS", "FAIL", "REVIEW")}


def test_counters_per_period_equal_the_store(tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path)})
    now = time.time_ns()
    _, shift_from = current_shift(cfg.shifts, now)
    db = open_writer(tmp_path)
    rng = np.random.default_rng(3)
    finals = ["PASS", "FAIL", "REVIEW"]
    before = [(shift_from - int(rng.integers(1, 10**6)) * S, finals[int(rng.integers(3))], "OLD") for _ in range(40)]
    _insert(db, before)
    lot_at = shift_from + (now - shift_from) // 3
    apply_action(db, OperatorAction("set_lot", "anna", "r1", {"lot": "LOT-7"}, t_ns=lot_at))
    reset_at = shift_from + 2 * (now - shift_from) // 3
    apply_action(db, OperatorAction("reset_counters", "ben", "r2", {}, t_ns=reset_at))
    during = [(shift_from + int(rng.integers(0, now - shift_from)), finals[int(rng.integers(3))],
               "LOT-7" if i % 2 else "OLD") for i in range(90)]
    _insert(db, during, seq0=100)
    db.close()
    got = counters(cfg, now)["periods"]
    expect = {"shift": _sql_counts(tmp_path, "t_capture_ns >= ?", (shift_from,)),
              "lot": _sql_counts(tmp_path, "t_capture_ns >= ? AND lot = 'LOT-7'", (lot_at,)),
              "reset": _sql_counts(tmp_path, "t_capture_ns >= ?", (reset_at,)),
              "all": _sql_counts(tmp_path, "1=1")}
    for period, counts in expect.items():
        assert {f: got[period][f] for f in counts} == counts, period
        assert got[period]["total"] == sum(counts.values())
    assert got["all"]["total"] == 130 and got["lot"]["name"] == "LOT-7" and got["lot"]["from_ns"] == lot_at
    assert got["reset"]["name"] == "since reset by ben" and got["shift"]["from_ns"] == shift_from


def test_a_part_in_full_with_its_decision_log_and_image(tmp_path: Path) -> None:
    db = open_writer(tmp_path)
    v = Verdict("cam0", "s", 1, "p1", "FAIL", "rule:blur", reasons=["blur: Laplacian variance 12 < threshold 200"],  # type: ignore[arg-type]
                score=0.2, t_capture_ns=time.time_ns(),
                signals={"brightness": 120.0, "contrast": 30.0, "sharpness": 12.0, "saturation": 0.0, "part_size": 0.3})
    v.image = image_relpath("cam0", "s", 1, "FAIL")
    save_kept(tmp_path, v.image, np.full((16, 16), 7, np.uint8))
    insert_verdicts(db, [verdict_row(v, v.t_capture_ns + 1)])
    db.close()
    client = TestClient(create_app(parse_config({"data_dir": str(tmp_path), "runtime_dir": str(tmp_path / "run")})))
    part = client.get("/api/inspections/1").json()
    log = part["decision_log"]
    assert part["image"] is True and log["decided_by"] == "rule:blur" and log["measured"] is True
    checks = {(c["rule"], c["check"], c["limit"]): c for c in log["checks"]}
    blur = checks[("blur", "Laplacian variance", ">= 200")]
    assert blur["value"] == 12.0 and blur["held"] is False  # the check that decided
    assert checks[("exposure", "mean grey level", ">= 20")]["held"] is True
    assert checks[("presence", "part area share", "<= 0.5")]["held"] is True
    img = client.get("/api/inspections/1/image")
    assert img.status_code == 200 and img.content == (tmp_path / v.image).read_bytes()
    assert client.get("/api/inspections/2").status_code == 404
    assert client.get("/api/inspections/2/image").status_code == 404


def _post(url: str, body: dict[str, Any] | None, headers: dict[str, str]) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json", **headers}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return dict(json.loads(r.read()))


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return dict(json.loads(r.read()))


def test_review_queue_and_counter_reset_go_through_record(tmp_path: Path) -> None:
    with served_api(tmp_path) as (url, _):
        anna, ben = bearer(tmp_path, "operator", "anna"), bearer(tmp_path, "operator", "ben")
        queue = _get(url + "/api/review/queue")
        assert queue["waiting"] == 1 and [p["id"] for p in queue["items"]] == [4]  # the seeded REVIEW part
        _post(url + "/api/inspections/4/review", {"decision": "PASS"}, anna)
        assert _get(url + "/api/review/queue") == {"waiting": 0, "items": []}
        before = _get(url + "/api/counters")["periods"]["reset"]
        assert before["total"] == 5 and before["from_ns"] is None
        audit_id = _post(url + "/api/counters/reset", None, ben)["audit_id"]
        after = _get(url + "/api/counters")["periods"]
        assert after["reset"]["total"] == 0 and after["reset"]["name"] == "since reset by token:ben"
        assert after["all"]["total"] == 5  # all time is unchanged
    conn = open_reader(tmp_path)
    try:
        actor, action = conn.execute("SELECT actor, action FROM operator_actions WHERE id = ?", (audit_id,)).fetchone()
    finally:
        conn.close()
    assert (actor, action) == ("token:ben", "reset_counters")
