"""The bias audit's numbers (per-segment rates, bootstrap intervals, the largest gap, the gate's per-segment
regressions), the retrain API's refusals on a served app with record running, and a run whose process died."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linewatch.retrain.runs import RunLog, read_run, running
from linewatch.training.bias import NO_VALUE, audit, describe_gap, regressions
from tests.api_harness import bearer, served_api

BAND = (0.2, 0.8)


def _line(n_good: int, n_defect: int, escapes: int, rejects: int) -> tuple[np.ndarray, np.ndarray]:
    """p(defect) and truth for parts of one segment: `escapes` defects passed outright, `rejects` goods failed."""
    p = np.array([0.05] * (n_good - rejects) + [0.95] * rejects + [0.95] * (n_defect - escapes) + [0.05] * escapes)
    return p, np.array([False] * n_good + [True] * n_defect)


def _segmented(spec: dict[str, tuple[int, int, int, int]]) -> tuple[list[dict[str, str]], np.ndarray, np.ndarray]:
    segs, ps, ts = [], [], []
    for value, counts in spec.items():
        p, t = _line(*counts)
        ps.append(p)
        ts.append(t)
        segs += [{"camera": value, "seq": str(len(segs) + i)} for i in range(len(p))]
    return segs, np.concatenate(ps), np.concatenate(ts)


def test_per_segment_rates_carry_bootstrap_intervals_and_the_largest_gap_is_named() -> None:
    segs, p, t = _segmented({"cam0": (30, 30, 0, 0), "cam1": (30, 30, 12, 0), "cam2": (4, 4, 4, 0)})
    segs[0] = {"seq": "0"}  # a part without the column
    found = audit(segs, p, t, BAND)
    assert set(found["segments"]) == {"camera"}, "seq (an id, 124 values) is not a segment"
    cam1 = found["segments"]["camera"]["cam1"]
    assert cam1["count"] == 60 and cam1["defects"] == 30 and cam1["escape_rate"] == 0.4
    low, high = cam1["escape_rate_ci"]
    assert low < 0.4 < high and high - low > 0.1, "a 30-part rate is uncertain"
    assert found["segments"]["camera"]["cam0"]["escape_rate_ci"] == [0.0, 0.0]
    assert found["segments"]["camera"][NO_VALUE]["count"] == 1 and found["segments"]["camera"][NO_VALUE][
        "accuracy_ci"] is None
    gap = found["largest_gap"]
    # cam2 misses every defect but has 8 parts (< 10): it takes no part in the gap
    assert (gap["column"], gap["metric"], gap["worse"], gap["better"]) == ("camera", "escape_rate", "cam1", "cam0")
    assert gap["difference"] == 0.4 and gap["overlap"] is False
    assert describe_gap(gap) == ("largest gap: camera cam1 vs cam0, escape rate 40.0 % vs 0.0 % "
                                 "(40.0 points; the intervals do not overlap)")
    assert audit(segs, p, t, BAND, min_samples=1000)["largest_gap"] is None


def test_regressions_name_the_segment_and_by_how_much_and_skip_small_ones() -> None:
    segs, p, t = _segmented({"cam0": (30, 30, 0, 0), "cam1": (30, 30, 0, 0), "cam2": (4, 4, 0, 0)})
    active = audit(segs, p, t, BAND)
    segs_c, p_c, t_c = _segmented({"cam0": (30, 30, 0, 0), "cam1": (30, 30, 6, 0), "cam2": (4, 4, 4, 0)})
    candidate = audit(segs_c, p_c, t_c, BAND)
    worse = regressions(candidate, active, tolerance=0.05, min_samples=20)
    assert worse == ["segment camera=cam1 (60 parts): accuracy 0.9000 < 1.0000 - 0.05 (by 0.1000)",
                     "segment camera=cam1 (60 parts): escape rate 0.2000 > 0.0000 + 0.05 (by 0.2000)"]
    assert regressions(candidate, active, tolerance=0.25, min_samples=20) == []


def _call(method: str, url: str, body: dict[str, Any] | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_retrain_api_refuses_a_recipe_without_settings_and_an_unknown_run(tmp_path: Path) -> None:
    with served_api(tmp_path) as (url, _):
        eng = bearer(tmp_path, "engineer", "eng")
        status, body = _call("POST", f"{url}/api/retrain", {}, eng)
        assert status == 404 and "no retrain settings for recipe 'default'" in json.dumps(body)
        status, _ = _call("GET", f"{url}/api/retrain/20261207T051500Z-3fa9")
        assert status == 404
        status, runs = _call("GET", f"{url}/api/retrain")
        assert status == 200 and runs == []
        status, _ = _call("POST", f"{url}/api/retrain", {"recipe": "x" * 65}, eng)
        assert status == 422


@pytest.mark.parametrize("bad", ["xyz", "12345"])
def test_retrain_settings_refuse_a_snapshot_that_is_not_an_id(bad: str) -> None:
    from pydantic import ValidationError

    from linewatch.config import RetrainRecipe

    with pytest.raises(ValidationError, match="base_snapshot"):
        RetrainRecipe(base_snapshot=bad)


def test_a_run_whose_process_died_reads_as_failed_and_does_not_block_the_next(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = RunLog(tmp_path, "20261207T051500Z-3fa9", "default", "eng")
    run.update(stage="train", pid=gone.pid)
    got = read_run(tmp_path, run.id)
    assert got is not None and got["state"] == "failed" and f"({gone.pid}) ended without an outcome" in got["message"]
    assert running(tmp_path) is None
    live = RunLog(tmp_path, "20261207T051600Z-0a0b", "default", "eng")
    live.update(stage="reviews")  # this process: alive
    assert running(tmp_path) == read_run(tmp_path, live.id)
