"""The fleet's monitoring in deploy/: each line's Prometheus, the plant's Prometheus federating them, and the
Grafana fleet dashboard: valid for promtool and Grafana, and naming only metrics linewatch exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.test_deploy_monitoring import _NAME, DATASOURCE, _exprs, _panels, assert_valid_promql, exported

FLEET = REPO / "deploy" / "grafana" / "fleet.json"
LINE_PROMETHEUS = REPO / "deploy" / "prometheus" / "line.yml"
FEDERATION = REPO / "deploy" / "prometheus" / "federation.yml"


@pytest.mark.parametrize("config", [LINE_PROMETHEUS, FEDERATION], ids=["line", "federation"])
def test_promtool_accepts_the_prometheus_configs(config: Path) -> None:
    out = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_federation_takes_every_linewatch_series_with_its_line() -> None:
    line = yaml.safe_load(LINE_PROMETHEUS.read_text())
    assert "line" in line["global"]["external_labels"], "each line's series must carry its line name"
    assert [j for j in line["scrape_configs"] if j["job_name"] == "linewatch"]
    (job,) = yaml.safe_load(FEDERATION.read_text())["scrape_configs"]
    assert job["metrics_path"] == "/federate" and job["honor_labels"] is True
    (match,) = job["params"]["match[]"]
    pattern = re.fullmatch(r'\{__name__=~"(.+)"\}', match)
    assert pattern is not None, match
    missed = [name for name in exported() if not re.fullmatch(pattern.group(1), name)]
    assert not missed, f"the federation leaves out {missed}"


def test_fleet_dashboard_is_importable_and_follows_the_line_variable() -> None:
    dash = json.loads(FLEET.read_text())
    assert [(i["name"], i["type"], i["pluginId"]) for i in dash["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")]
    assert dash["uid"] and dash["uid"] != json.loads((REPO / "deploy" / "grafana" / "linewatch.json").read_text())[
        "uid"], "a uid of its own: both dashboards import into one Grafana"
    (variable,) = dash["templating"]["list"]
    assert variable["name"] == "line" and variable["datasource"] == DATASOURCE and "line)" in variable["definition"]
    panels = _panels(dash)
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    series = exported()
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == DATASOURCE and p["targets"], p["title"]
    for title, expr in _exprs(dash):
        unknown = [n for n in _NAME.findall(expr) if n not in series]
        assert not unknown, f"panel {title!r} uses metrics linewatch does not export: {unknown}"
        for name, selector in re.findall(r"\b(linewatch_[a-z0-9_]+)\{([^}]*)\}", expr):
            assert 'line=~"$line"' in selector, f"panel {title!r}: {name} ignores the line variable"
        assert "by (line" in expr, f"panel {title!r} does not tell the lines apart"


def test_fleet_dashboard_covers_each_line_and_its_shipping() -> None:
    used = {name for _, expr in _exprs(json.loads(FLEET.read_text())) for name in _NAME.findall(expr)}
    wanted = {"linewatch_verdicts_total", "linewatch_end_to_end_seconds_bucket", "linewatch_frames_dropped_total",
              "linewatch_rules_only", "linewatch_drift_active", "linewatch_rows_lost_total",
              "linewatch_estimated_accuracy", "linewatch_alarms_total", "linewatch_ship_lag_seconds",
              "linewatch_ship_connected", "linewatch_ship_rows_total", "linewatch_ship_errors_total"}
    assert wanted - used == set(), "the fleet dashboard has no panel for these"


def test_fleet_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    assert_valid_promql(FLEET, {"$__rate_interval": "5m", "$__range": "24h", "$line": ".*"}, tmp_path)
