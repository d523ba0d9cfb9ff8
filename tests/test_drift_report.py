"""`GET /api/drift` and `linewatch drift report` on a real store: parts with signals over time, a stored reference,
the detectors' state, drift alarms (one acknowledged) and operator reviews, written as record writes them."""

from __future__ import annotations

import base64
import html
import io
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from linewatch.api.app import create_app
from linewatch.config import parse_config
from linewatch.reports.drift import CameraSeries
from linewatch.reports.drift_page import MAX_POINTS, rolling, thin
from linewatch.store.drift import insert_drift_alarm, save_reference, write_state
from linewatch.store.rows import verdict_row
from linewatch.store.schema import open_writer
from linewatch.store.writer import apply_action, insert_alarm, insert_verdicts
from linewatch.wire import Alarm, OperatorAction, Verdict

T0 = 1_790_000_000_000_000_000  # 2026-09-21, one part a second
S = 10**9
PARTS0, PARTS1 = 1200, 300  # cam0 drifts at part 800; cam1 is still learning its reference
DRIFT_AT = 800
IMAGE_SIGNALS = ("brightness", "contrast", "sharpness", "part_x")
PLOTTED = len(IMAGE_SIGNALS) + 3  # and score, defect_rate, override_rate
BRIGHTNESS_ALARM = ("drift: camera cam0, brightness mean 120 -> 108 (-10 %), CUSUM over 52 parts "
                    "(recipe default, reference of 1000 learned parts)")
SCORE_ALARM = "drift: camera cam0, model score 0.1 -> 0.16 (+60 %), CUSUM over 200 parts (recipe default, ...)"
T_SCORE_ALARM, T_BRIGHTNESS_ALARM = T0 + 500 * S, T0 + (DRIFT_AT + 52) * S


def _signal_ref(mean: float, sd: float, rate: bool = False) -> dict[str, Any]:
    quantiles = [mean] if rate else [round(mean + sd * float(q), 4) for q in np.linspace(-3, 3, 201)]
    return {"quantiles": quantiles, "parts": 1000, "source": "learned", "mean": mean, "sd": sd, "k": 0.125,
            "h_up": 9.5, "h_down": 9.4}


def _parts(camera: str, n: int, recipe: str, model: str, rng: np.random.Generator) -> list[Any]:
    rows = []
    for i in range(n):
        brightness = rng.normal(120 if i < DRIFT_AT else 108, 2)
        score = float(np.clip(rng.beta(1, 9), 0, 1))
        final, by = ("FAIL" if score > 0.5 else "PASS"), "model"
        if i % 50 == 7:
            final, by = "FAIL", "rule:exposure"
        if i % 100 == 99:
            final, by = "FAIL", "timeout"  # not watched: never plotted, never counted
        v = Verdict(camera, "s", i, f"{camera}-{i}", final, by, recipe=recipe, model_hash=model,  # type: ignore[arg-type]
                    score=None if by == "timeout" else round(score, 4), t_capture_ns=T0 + i * S)
        if by != "timeout":
            v.signals = {"brightness": round(brightness, 3), "contrast": round(rng.normal(30, 1), 3),
                         "sharpness": round(rng.normal(400, 20), 2), "part_x": round(rng.normal(0.5, 0.01), 4)}
        rows.append(verdict_row(v, v.t_capture_ns + 1000))
    return rows


def seed(data_dir: Path) -> None:
    """cam0: 1200 parts with a brightness step at part 800, its reference, state, two drift alarms (the score one
    acknowledged) and four reviews (three confirm the verdict); cam1: 300 parts of a new model, no reference."""
    rng = np.random.default_rng(7)
    db = open_writer(data_dir)
    insert_verdicts(db, _parts("cam0", PARTS0, "default", "m1", rng) + _parts("cam1", PARTS1, "r2", "m2", rng))
    save_reference(db, "cam0", "default", "m1", 1000, {
        "parts": 1000, "centroid": None, "scale": None,
        "signals": {"brightness": _signal_ref(120, 2), "contrast": _signal_ref(30, 1),
                    "sharpness": _signal_ref(400, 20), "part_x": _signal_ref(0.5, 0.01),
                    "score": _signal_ref(0.1, 0.09), "defect_rate": _signal_ref(0.03, 0.17, rate=True),
                    "override_rate": _signal_ref(0.02, 0.14, rate=True)}}, T0 + 1000 * S)
    for t, signal, text, direction, ref, cur, window in (
            (T_SCORE_ALARM, "score", SCORE_ALARM, "up", 0.1, 0.16, 200),
            (T_BRIGHTNESS_ALARM, "brightness", BRIGHTNESS_ALARM, "down", 120.0, 108.0, 52)):
        alarm_id = insert_alarm(db, Alarm("watch", "drift", text, t_ns=t))
        insert_drift_alarm(db, alarm_id, t, {"camera": "cam0", "recipe": "default", "model_hash": "m1",
                                              "signal": signal, "direction": direction, "reference": ref,
                                              "current": cur, "window_parts": window, "seq": (t - T0) // S})
    apply_action(db, OperatorAction("ack_alarm", "ada", "ack-1", {"alarm_id": 1}, t_ns=T0 + 600 * S))
    t_state = T0 + PARTS0 * S
    write_state(db, t_state, [
        {"camera": "cam0", "signal": "brightness", "recipe": "default", "model_hash": "m1", "reference": 120.0,
         "statistic_up": 0.0, "statistic_down": 0.4, "window_parts": 30, "window_mean": 108.2, "in_drift": 1},
        {"camera": "cam0", "signal": "score", "recipe": "default", "model_hash": "m1", "reference": 0.1,
         "statistic_up": 0.2, "statistic_down": 0.0, "window_parts": 12, "window_mean": 0.12, "in_drift": 0},
        {"camera": "cam0", "signal": "estimated_defect_rate", "recipe": "default", "model_hash": "m1",
         "window_parts": 500, "window_mean": 0.101},
        {"camera": "cam0", "signal": "estimated_accuracy", "recipe": "default", "model_hash": "m1",
         "window_parts": 480, "window_mean": 0.912},
        {"camera": "cam1", "signal": "estimated_defect_rate", "recipe": "r2", "model_hash": "m2",
         "window_parts": 297, "window_mean": 0.097}])
    for i, (seq, decision) in enumerate(((1, "PASS"), (2, "PASS"), (7, "FAIL"), (3, "FAIL"))):  # seq 3 PASS: refuted
        part = db.execute("SELECT id, final FROM inspections WHERE camera = 'cam0' AND seq = ?", [seq]).fetchone()
        assert decision == part[1] or seq == 3
        apply_action(db, OperatorAction("review", "bob", f"review-{i}",
                                        {"inspection_id": part[0], "decision": decision}, t_ns=T0 + 2000 * S))
    db.close()


def _iso(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / 1e9).isoformat(timespec="seconds")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    seed(tmp_path)
    return tmp_path


def _client(data_dir: Path) -> TestClient:
    cfg = parse_config({"data_dir": str(data_dir), "runtime_dir": str(data_dir / "run"),
                        "cameras": [{"name": "cam0"}, {"name": "cam1"}]})
    return TestClient(create_app(cfg))


# --- GET /api/drift ---------------------------------------------------------------------------------------------

def test_the_api_gives_reference_state_estimates_and_alarms(store: Path) -> None:
    r = _client(store).get("/api/drift")
    assert r.status_code == 200, r.text
    cams = {c["camera"]: c for c in r.json()["cameras"]}
    assert list(cams) == ["cam0", "cam1"]
    cam0 = cams["cam0"]
    assert (cam0["recipe"], cam0["model_hash"], cam0["learning"]) == ("default", "m1", None)
    ref = cam0["reference"]
    assert (ref["recipe"], ref["model_hash"], ref["parts"]) == ("default", "m1", 1000)
    brightness = ref["signals"]["brightness"]
    assert brightness["mean"] == 120 and brightness["sd"] == 2 and brightness["h_up"] == 9.5
    assert brightness["what"] == "brightness mean" and brightness["unit"] == "grey level"
    assert brightness["quantiles"] is None  # only when asked for
    assert ref["signals"]["defect_rate"]["rate"] is True
    state = cam0["state"]["brightness"]
    assert state["in_drift"] is True and state["statistic_down"] == 0.4 and state["window_parts"] == 30
    assert set(cam0["state"]) == {"brightness", "score"}  # the estimates are not detectors
    est = cam0["estimates"]
    assert est["defect_rate"]["value"] == 0.101 and est["accuracy"] == {
        "value": 0.912, "parts": 480, "t_ns": T0 + PARTS0 * S, "at": est["accuracy"]["at"]}
    assert est["realised_accuracy"] == {"value": 0.75, "parts": 4, "t_ns": None, "at": None}
    alarms = cam0["alarms"]
    assert [a["signal"] for a in alarms] == ["score", "brightness"] and cam0["alarms_in_window"] == 2
    assert alarms[1]["message"] == BRIGHTNESS_ALARM and alarms[1]["acknowledged_by"] is None
    assert alarms[1]["direction"] == "down" and alarms[1]["current"] == 108 and alarms[1]["window_parts"] == 52
    assert alarms[0]["acknowledged_by"] == "ada" and alarms[0]["acknowledged_at"]


def test_a_camera_without_a_reference_says_so_and_counts_its_parts(store: Path) -> None:
    cam1 = _client(store).get("/api/drift", params={"camera": "cam1"}).json()["cameras"]
    assert [c["camera"] for c in cam1] == ["cam1"]
    assert cam1[0]["reference"] is None and cam1[0]["state"] == {} and cam1[0]["alarms"] == []
    # 300 parts of the new model, 3 of them timed out (not watched); the watch learns from 1000
    assert cam1[0]["learning"] == {"parts": PARTS1 - 3, "of": 1000}
    assert (cam1[0]["recipe"], cam1[0]["model_hash"]) == ("r2", "m2")
    assert cam1[0]["estimates"]["defect_rate"]["value"] == 0.097 and cam1[0]["estimates"]["accuracy"] is None


def test_the_api_filters_alarms_by_time_and_can_show_quantiles(store: Path) -> None:
    client = _client(store)
    late = client.get("/api/drift", params={"camera": "cam0", "from": _iso(T0 + 700 * S),
                                            "to": _iso(T0 + 5000 * S)}).json()
    assert [a["signal"] for a in late["cameras"][0]["alarms"]] == ["brightness"]
    assert late["from"] and late["to"]
    early = client.get("/api/drift", params={"camera": "cam0", "to": _iso(T0 + 700 * S)}).json()
    assert [a["signal"] for a in early["cameras"][0]["alarms"]] == ["score"] and early["from"] is None
    newest = client.get("/api/drift", params={"camera": "cam0", "limit": 1}).json()["cameras"][0]
    assert [a["signal"] for a in newest["alarms"]] == ["brightness"] and newest["alarms_in_window"] == 2
    q = client.get("/api/drift", params={"camera": "cam0", "quantiles": "true"}).json()["cameras"][0]
    assert len(q["reference"]["signals"]["brightness"]["quantiles"]) == 201
    assert q["reference"]["signals"]["defect_rate"]["quantiles"] == [0.03]


@pytest.mark.parametrize(("params", "status", "where", "text"), [
    ({"from": "yesterday"}, 422, "from", "not an ISO 8601 date or time"),
    ({"to": "2026-13-01"}, 422, "to", "not an ISO 8601 date or time"),
    ({"from": "2026-11-27T06:00", "to": "2026-11-27"}, 422, "to", "must be after from"),
    ({"camera": "x" * 65}, 422, "camera", "at most 64 characters"),
    ({"limit": 0}, 422, "limit", "greater than or equal to 1"),
    ({"quantiles": "maybe"}, 422, "quantiles", "valid boolean"),
    ({"camera": "cam9"}, 404, None, "unknown camera 'cam9' (known: cam0, cam1)"),
])
def test_bad_parameters_are_refused_naming_them(store: Path, params: dict[str, Any], status: int, where: str | None,
                                                text: str) -> None:
    r = _client(store).get("/api/drift", params=params)
    assert r.status_code == status and text in r.text, r.text
    if where:
        assert r.json()["detail"][0]["loc"] == ["query", where]


def test_the_api_on_a_line_that_has_not_run(tmp_path: Path) -> None:
    cams = _client(tmp_path).get("/api/drift").json()["cameras"]
    assert [(c["camera"], c["reference"], c["learning"], c["alarms"]) for c in cams] == [
        ("cam0", None, {"parts": 0, "of": 1000}, []), ("cam1", None, {"parts": 0, "of": 1000}, [])]


def test_the_route_is_in_the_openapi_schema_with_its_codes(tmp_path: Path) -> None:
    op = _client(tmp_path).get("/api/openapi.json").json()["paths"]["/api/drift"]["get"]
    assert {"200", "404", "422"} <= set(op["responses"])
    assert {p["name"] for p in op["parameters"]} == {"camera", "from", "to", "quantiles", "limit"}


# --- linewatch drift report -------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linewatch", "drift", "report", *args], capture_output=True,
                          text=True, timeout=180)


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_the_report_plots_every_signal_with_alarms_and_estimates(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report" / "drift.html"
    r = _cli("--data-dir", str(store), "--from", _iso(T0 - S), "--to", _iso(T0 + 3600 * S), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out)
    page = out.read_text()
    pngs = _pngs(page)
    assert len(pngs) == 2 * PLOTTED  # one per camera and signal with values
    img = Image.open(io.BytesIO(pngs[0]))
    assert img.format == "PNG" and img.size[0] > 0 and img.size[1] > 0
    assert html.escape(BRIGHTNESS_ALARM) in page and html.escape(SCORE_ALARM) in page
    assert "acknowledged by ada" in page and "not acknowledged" in page
    assert "estimated accuracy (CBPE)" in page and "realised accuracy (reviews)" in page
    assert "75.00 %" in page and "91.20 %" in page  # reviews over the window; the line's latest estimate
    assert "in drift" in page
    assert "No reference yet for recipe r2" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained


def test_the_report_of_one_camera_and_the_default_window(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "cam1.html"
    r = _cli("--data-dir", str(store), "--camera", "cam1", "--out", str(out))  # the 24 h up to the latest part
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert len(_pngs(page)) == PLOTTED and "Camera cam1" in page and "Camera cam0" not in page
    assert "drift: camera cam0" not in page


@pytest.mark.parametrize(("setup", "args", "text"), [
    ("none", [], "no store to report on in"),
    ("store", ["--from", "2020-01-01", "--to", "2020-01-02"], "nothing to report: no inspected part"),
    ("store", ["--camera", "cam7", "--from", "2020-01-01", "--to", "2030-01-02"], "on camera cam7"),
    ("store", ["--from", "soon"], "--from: not an ISO 8601 date or time"),
    ("store", ["--from", "2026-11-27", "--to", "2026-11-26"], "must be after --from"),
])
def test_nothing_to_report_is_a_clear_error(tmp_path: Path, setup: str, args: list[str], text: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if setup == "store":
        open_writer(data).close()
    out = tmp_path / "out.html"
    r = _cli("--data-dir", str(data), "--out", str(out), *args)
    assert r.returncode == 2 and text in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


# --- thinning -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 1999, 2000, 2001, 100_000])
def test_plots_draw_at_most_max_points_per_line(n: int) -> None:
    t, v = np.arange(n, dtype=np.int64) * S, np.arange(n, dtype=np.float64)
    bt, bv = thin(t, v)
    assert len(bt) == len(bv) == min(n, MAX_POINTS)
    assert bv.mean() == pytest.approx(v.mean(), rel=1e-3)  # bins average, not sample
    w = max(1, min(500, n // 5))
    rt, rv = rolling(t, v, w)
    assert len(rt) == len(rv) <= MAX_POINTS and rt[-1] == t[-1]
    assert rv[-1] == pytest.approx(v[-w:].mean())


def test_the_window_estimates_are_the_watch_cbpe() -> None:
    """Expected defect rate: mean p over scored parts; expected accuracy: p over the model's FAILs, 1 - p over its
    PASSes (a rule's verdict and a REVIEW are not the model's PASS/FAIL)."""
    cs = CameraSeries()
    for p, final, by_model in ((0.9, "FAIL", True), (0.2, "PASS", True), (0.6, "REVIEW", True), (0.1, "FAIL", False)):
        cs.estimates.add(p, final, by_model)
    rate, accuracy = cs.cbpe()
    assert rate is not None and rate.value == pytest.approx(0.45) and rate.parts == 4
    assert accuracy is not None and accuracy.value == pytest.approx(0.85) and accuracy.parts == 2
    assert CameraSeries().cbpe() == (None, None)
