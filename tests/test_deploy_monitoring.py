"""The Grafana dashboard and the Prometheus alert rules in deploy/: valid, tested with promtool, and naming only
metrics linewatch exports (a renamed metric breaks this test, not the dashboard on the line)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from linewatch import metrics
from linewatch.api import resources
from tests.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "linewatch.json"
RULES = REPO / "deploy" / "prometheus" / "linewatch-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "linewatch-rules.test.yml"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
_NAME = re.compile(r"\blinewatch_[a-z0-9_]+")


def exported() -> dict[str, set[str]]:
    """Every series name on linewatch's /metrics (counters with `_total`, histograms' parts) -> its labels."""
    series: dict[str, set[str]] = {}
    for m in metrics.ALL:
        for suffix in _SUFFIXES[m._type]:
            series[m._name + suffix] = set(m._labelnames) | ({"le"} if suffix == "_bucket" else set())
    for f in resources.families():
        for suffix in _SUFFIXES[f.type]:
            series[f.name + suffix] = set(f._labelnames)  # type: ignore[attr-defined]
    return series


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(dashboard) if p["type"] != "row" for t in p["targets"]]


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert [(i["name"], i["type"], i["pluginId"]) for i in dash["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")]
    assert any(r["id"] == "grafana" and int(r["version"].split(".")[0]) >= 10 for r in dash["__requires"])
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["camera"]["type"] == "query" and variables["camera"]["datasource"] == DATASOURCE
    assert "camera)" in variables["camera"]["definition"]

    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        assert all(t["datasource"] == DATASOURCE and t["expr"].strip() for t in p["targets"]), p["title"]


def test_dashboard_covers_the_line() -> None:
    """Throughput, latency, drops, overrides, drift, estimated accuracy and every resource have a panel."""
    used = {name for _, expr in _exprs(json.loads(DASHBOARD.read_text())) for name in _NAME.findall(expr)}
    wanted = {"linewatch_verdicts_total", "linewatch_end_to_end_seconds_bucket", "linewatch_stage_seconds_bucket",
              "linewatch_frames_dropped_total", "linewatch_failsafe_overrides_total", "linewatch_drift_statistic",
              "linewatch_drift_active", "linewatch_alarms_total", "linewatch_estimated_accuracy",
              "linewatch_estimated_defect_rate", "linewatch_realised_accuracy", "linewatch_rules_only",
              "linewatch_rows_lost_total"}
    wanted |= {name for name in exported() if any(name.startswith(f.name) for f in resources.families())}
    assert wanted - used == set(), "the dashboard has no panel for these"


def test_dashboard_names_only_exported_metrics_and_follows_the_camera_variable() -> None:
    series = exported()
    for title, expr in _exprs(json.loads(DASHBOARD.read_text())):
        unknown = [n for n in _NAME.findall(expr) if n not in series]
        assert not unknown, f"panel {title!r} uses metrics linewatch does not export: {unknown}"
        for name, selector in re.findall(r"\b(linewatch_[a-z0-9_]+)\{([^}]*)\}", expr):
            if "camera" in series[name]:
                assert 'camera=~"$camera"' in selector, f"panel {title!r}: {name} ignores the camera variable"


def assert_valid_promql(dashboard: Path, fill: dict[str, str], tmp_path: Path) -> None:
    """Each panel's query, with Grafana's variables filled in, parses: promtool checks it as a recording rule."""
    rules = []
    for i, (title, expr) in enumerate(_exprs(json.loads(dashboard.read_text()))):
        for variable, value in fill.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"panel {title!r}: a Grafana variable this test does not know: {expr}"
        rules.append({"record": f"dashboard:panel_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    assert_valid_promql(DASHBOARD, {"$__rate_interval": "5m", "$__range": "6h", "$camera": ".*", "$instance": ".*"},
                        tmp_path)


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_alert_rules_name_only_exported_metrics() -> None:
    series = exported()
    for rule in _rules():
        unknown = [n for n in _NAME.findall(rule["expr"]) if n not in series]
        assert not unknown, f"rule {rule['alert']} uses metrics linewatch does not export: {unknown}"
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    for name in {n for t in tests for s in t["input_series"] for n in _NAME.findall(s["series"])}:
        assert name in series, f"{RULE_TESTS.name} feeds a series linewatch does not export: {name}"


def test_every_alert_has_a_duration_a_severity_and_says_where() -> None:
    for rule in _rules():
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        assert re.search(r"\$labels\.(camera|process|worker|instance|gpu|rule)", text), rule["alert"]


@pytest.mark.parametrize("command", [["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]],
                         ids=["check", "test"])
def test_promtool_accepts_the_rules(command: list[str]) -> None:
    out = subprocess.run(["promtool", *command], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
