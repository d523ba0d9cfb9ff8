"""The QA export on a real store of thousands of rows: CSV/JSON parsed back field by field, the PDF
rendered with poppler (pdftoppm) and its text checked, filters, the review-queue dataset, errors."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linewatch.auth.db import audit
from linewatch.reports.export import EXPORT_COLUMNS, ReportError, iso, parse_time
from linewatch.reports.review_export import MANIFEST_COLUMNS
from linewatch.store.images import image_relpath, save_kept
from linewatch.store.queries import open_reader
from linewatch.store.rows import verdict_row
from linewatch.store.schema import open_writer
from linewatch.store.writer import apply_action, insert_alarm, insert_verdicts
from linewatch.wire import Alarm, OperatorAction, Verdict

T0 = parse_time("2026-03-04T06:00", "t0")
N = 3000
S = 10**9


def _final(i: int) -> str:
    return "FAIL" if i % 10 == 3 else "REVIEW" if i % 25 == 7 else "PASS"


def _decided_by(i: int) -> str:
    return ("rule:confidence_band" if _final(i) == "REVIEW" else "timeout" if i % 100 == 13
            else "not_inspected" if i % 100 == 23 else "model")


LONG_WORD = "thermal_interlock_overtemperature_condenser_fan_warning"  # wider than most columns would be


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("store")
    db = open_writer(d)
    rows = []
    for i in range(N):
        final, cam = _final(i), ("top", "side")[i % 2]
        kind = ("dent", "scratch", "stain")[i % 3] if final != "PASS" else None
        v = Verdict(cam, "s1", i, f"part-{i}", final, _decided_by(i),  # type: ignore[arg-type]
                    reasons=[f"score {i} in band [0.2, 0.8) → REVIEW"] if final == "REVIEW"
                    else ["dropped: the frame queue was full"] if _decided_by(i) == "not_inspected" else [],
                    recipe="flange-A", model_hash=("aa" if i < 2000 else "bb") * 32,
                    model_name="reference" if i < 2000 else "reference-v2", ruleset_hash="cc" * 32,
                    label=kind or "good", score=round((i % 100) / 100, 2),
                    probs={"good": 0.5, "defect": 0.5}, t_capture_ns=T0 + i * S, t_sent_ns=T0 + i * S + 1,
                    timings_ms={"queue": 0.5, "inference": 2.0}, worker="infer0",
                    truth={"label": "defect" if kind else "good", "type": f"ground-truth-{kind}" if kind else None})
        if final != "PASS" and i < 600:
            v.image = image_relpath(cam, "s1", i, final)
            save_kept(d, v.image, np.full((32, 32), i % 256, np.uint8))
        rows.append(verdict_row(v, T0 + i * S + 4_000_000, "LOT-A" if i < 1800 else "LOT-B", "early"))
    insert_verdicts(db, rows)
    insert_alarm(db, Alarm("record", "disk_low", "only 12 MB free on the data disk", "critical", T0 + 50 * S))
    insert_alarm(db, Alarm("acquire", "camera_warning", f"camera says {LONG_WORD}", "warning", T0 + 60 * S))
    insert_alarm(db, Alarm("supervisor", "process_restart", "outside the window", "warning", T0 - 3600 * S))
    audit(d, "ann", "sign_in", "ok", address="10.0.0.7", t_ns=T0 + 30 * S)  # the auth database's log (auth/db.py)
    audit(d, "ann", "PUT /api/lot", "ok", address="10.0.0.7", target="LOT-A", t_ns=T0 + 31 * S)
    audit(d, "mallory", "sign_in", "refused 401", address="10.0.0.66", t_ns=T0 + 32 * S)
    audit(d, "ben", "sign_in", "ok", address="10.0.0.8", t_ns=T0 - 7200 * S)  # before the window
    reviews = {8: ("PASS", None), 33: ("FAIL", "dent"), 4: ("PASS", None), 14: ("FAIL", "scratch")}  # id = seq + 1
    for n, (iid, (decision, label)) in enumerate(reviews.items()):
        apply_action(db, OperatorAction("review", "qa-anna", f"r{n}", {"inspection_id": iid, "decision": decision,
                                                                       "label": label, "note": f"note {iid}"}))
    db.close()
    return d


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linewatch", *args], capture_output=True, text=True, timeout=120)


def _report(store: Path, out: Path, fmt: str, *extra: str) -> Path:
    r = _cli("report", "--from", "2026-03-04T06:00", "--to", "2026-03-04T07:00", "--format", fmt,
             "--out", str(out), "--data-dir", str(store), *extra)
    assert r.returncode == 0, r.stderr
    return out


def _db_rows(store: Path, where: str = "1=1") -> list[dict[str, Any]]:
    conn = open_reader(store)
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM inspections WHERE {where} ORDER BY t_capture_ns")]
    finally:
        conn.close()


def test_csv_has_one_row_per_inspection_field_by_field(store: Path, tmp_path: Path) -> None:
    with _report(store, tmp_path / "r.csv", "csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == EXPORT_COLUMNS
        got = list(reader)
    expected = _db_rows(store, f"t_capture_ns < {T0 + 3600 * S}")
    assert len(got) == len(expected) == N
    for row, db in zip(got, expected, strict=True):
        for col, value in db.items():
            assert row[col] == ("" if value is None else str(value)), (col, row["id"])
        assert row["captured_at"] == iso(db["t_capture_ns"])
    by_id = {int(r["id"]): r for r in got}
    assert (by_id[33]["review_decision"], by_id[33]["review_label"], by_id[33]["reviewed_by"]) == (
        "FAIL", "dent", "qa-anna")
    assert by_id[34]["review_decision"] == "" and by_id[1]["lot"] == "LOT-A" and by_id[2000]["lot"] == "LOT-B"


def test_json_round_trips_with_parsed_fields_and_filters(store: Path, tmp_path: Path) -> None:
    doc = json.loads(_report(store, tmp_path / "r.json", "json", "--lot", "LOT-B", "--camera", "side").read_text())
    expected = _db_rows(store, "lot = 'LOT-B' AND camera = 'side'")
    assert doc["count"] == len(expected) == 600 and doc["filters"]["lot"] == "LOT-B"
    for row, db in zip(doc["inspections"], expected, strict=True):
        assert list(row) == list(EXPORT_COLUMNS)
        for col, value in db.items():
            want = json.loads(value) if col in ("reasons", "probs", "truth") and value else value
            assert row[col] == want, (col, row["id"])
    assert {r["camera"] for r in doc["inspections"]} == {"side"}


def test_pdf_pages_render_and_text_carries_every_section(store: Path, tmp_path: Path) -> None:
    pdf = _report(store, tmp_path / "r.pdf", "pdf", "--lot", "LOT-A", "--by", "qa-anna")
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 3
    for page in pages:
        img = cv2.imread(str(page))
        assert img is not None and img.shape[0] > img.shape[1] > 200 and img.std() > 5  # A4, not blank
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    rows = _db_rows(store, "lot = 'LOT-A'")
    c = Counter(r["final"] for r in rows)
    first_pass = f"{100 * c['PASS'] / len(rows):.2f} %"
    reviewed_good = 2  # inspections 4 and 8 (FAIL and REVIEW at inspection) were passed by the operator
    final_yield = f"{100 * (c['PASS'] + reviewed_good) / len(rows):.2f} %"
    kept = [r["seq"] for r in rows if r["final"] != "PASS" and r["image"]]  # the gallery shows the most recent
    newest, newest_review = max(kept), max(s for s in kept if _final(s) == "REVIEW")
    for needle in ("Summary", str(len(rows)), str(c["PASS"]), str(c["FAIL"]), str(c["REVIEW"]), first_pass,
                   final_yield, "Defect Pareto by type", "rule:confidence_band", "timeout", "dent", "scratch",
                   "stain", "Yield and FAIL rate over time", "Fail-safe overrides by rule",
                   "Model and rule-set versions in force", "reference", "aaaaaaaaaaaa", "cccccccccccc", "Alarms",
                   "only 12 MB free on the data disk", f"part-{newest}",
                   f"score {newest_review} in band [0.2, 0.8)", "LOT-A",
                   "flange-A", "line1", "by qa-anna", "Sign-off", "Quality engineer", "Signature",
                   "Parts no model looked at", "dropped: the frame queue was full", "no reason recorded"):
        assert needle in text, needle
    assert "outside the window" not in text and "reference-v2" not in text  # other window / other lot
    rejected = sum(1 for r in rows if r["final"] != "PASS")
    assert f"FAIL and REVIEW images (24 shown, {rejected - 24} left out)" in text
    assert "ground-truth" not in text  # the emulator's truth never reaches the customer's report
    assert "Audit log (3 entries)" in text  # the window's, not the sign-in two hours before
    assert "10.0.0.66" in text and "refused 401" in text and "mallory" in text and "10.0.0.8" not in text
    plain = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    words = plain.split()
    for word in (LONG_WORD, "acknowledged", "severity", "cleared", "first-pass"):
        assert word in words, word  # a table sizes its columns (its bold header too) so no word breaks


def test_pareto_counts_the_line_and_the_reviewers_not_the_truth(store: Path) -> None:
    from linewatch.reports.export import Query, load, pareto

    ex = load(store, Query(T0, T0 + 3600 * S))
    got = {t: (line, after) for t, line, after in pareto(ex.rows)}
    rows = _db_rows(store)
    rejected = [r for r in rows if r["final"] != "PASS"]
    by_line = Counter(r["decided_by"] if r["decided_by"] != "model" else r["label"] for r in rejected)
    assert {t: line for t, (line, _) in got.items()} == by_line
    # reviews: 4 (FAIL, model: scratch) and 8 (REVIEW, rule) passed; 14 (FAIL model: dent... ) relabelled scratch
    by_id = {r["id"]: r for r in rows}
    after = Counter(by_line)
    for iid, new in ((4, None), (8, None), (33, "dent"), (14, "scratch")):
        r = by_id[iid]
        after[r["decided_by"] if r["decided_by"] != "model" else r["label"]] -= 1
        if new:
            after[new] += 1
    assert {t: a for t, (_, a) in got.items()} == {t: n for t, n in after.items()}
    assert not any(t.startswith("ground-truth") for t in got)


def test_pdf_keeps_font_subsetting_out_of_the_log(store: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from linewatch.reports.export import Issuer, Query, export

    with caplog.at_level(logging.DEBUG):
        export(store, Query(T0, T0 + 120 * S), "pdf", tmp_path / "r.pdf", Issuer("line1", "qa-anna"))
    assert (tmp_path / "r.pdf").stat().st_size > 10_000
    assert not [r for r in caplog.records if r.name.startswith("fontTools") and r.levelno < logging.WARNING]


def test_rest_download_matches_the_cli(store: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from linewatch.api.app import create_app
    from linewatch.config import parse_config

    client = TestClient(create_app(parse_config({"data_dir": str(store), "runtime_dir": str(tmp_path / "run")})))
    r = client.get("/api/report", params={"from": "2026-03-04T06:00", "to": "2026-03-04T07:00", "format": "csv",
                                          "camera": "top"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    cli = _report(store, tmp_path / "c.csv", "csv", "--camera", "top").read_text()
    assert r.text == cli and cli.count("\n") == 1 + N // 2
    bad = client.get("/api/report", params={"from": "yesterday", "to": "2026-03-04", "format": "csv"})
    assert bad.status_code == 422 and "not an ISO 8601 date" in bad.json()["detail"][0]["msg"]
    assert client.get("/api/report", params={"from": "2026-03-04", "to": "2026-03-05", "format": "xls"}
                      ).status_code == 422


def test_review_export_is_a_labelled_dataset_with_manifest(store: Path, tmp_path: Path) -> None:
    r = _cli("review", "export", "--out", str(tmp_path / "ds"), "--data-dir", str(store))
    assert r.returncode == 0, r.stderr
    with (tmp_path / "ds" / "manifest.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        got = {int(m["inspection_id"]): m for m in reader}
    assert set(got) == {4, 8, 14, 33}  # every reviewed part with a kept image
    assert (got[4]["label"], got[8]["label"], got[33]["label"], got[14]["label"]) == ("good", "good", "dent", "scratch")
    for m in got.values():
        img = cv2.imread(str(tmp_path / "ds" / m["path"]), cv2.IMREAD_UNCHANGED)
        assert m["path"].startswith(m["label"] + "/") and img is not None
        assert int(img[0, 0]) == int(m["seq"]) % 256  # the part's own pixels
        assert m["reviewer"] == "qa-anna" and m["note"] == f"note {m['inspection_id']}"
    from linewatch.training.dataset import load_dataset  # the training command's reader takes it as it is

    ds = load_dataset(tmp_path / "ds")
    assert ds.labels == ["good", "dent", "scratch"] and len(ds.items) == 4


@pytest.mark.parametrize(("args", "message"), [
    (("--from", "soon", "--to", "2026-03-05"), "--from: not an ISO 8601 date"),
    (("--from", "2026-03-05", "--to", "2026-03-04"), "must be after --from"),
])
def test_bad_requests_exit_2_naming_the_problem(store: Path, tmp_path: Path, args: tuple[str, ...],
                                                message: str) -> None:
    r = _cli("report", *args, "--format", "csv", "--out", str(tmp_path / "x.csv"), "--data-dir", str(store))
    assert r.returncode == 2 and message in r.stderr


def test_no_store_is_a_clear_error(tmp_path: Path) -> None:
    from linewatch.reports.export import Query, export

    with pytest.raises(ReportError, match="no store to report on"):
        export(tmp_path, Query(0, 10), "csv", tmp_path / "x.csv")
