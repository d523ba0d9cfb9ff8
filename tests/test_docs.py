"""Docs that CI keeps honest: every metric, config field, CLI command and Modbus register is documented."""

from __future__ import annotations

from linewatch import metrics
from linewatch.cli import build_parser, config_reference
from linewatch.line.child import ROLES
from linewatch.plc import register_map as pm
from linewatch.wire import Endpoints
from tests.conftest import REPO


def test_every_metric_is_documented() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text()
    names = {m._name for m in metrics.ALL}
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"document these metrics in docs/metrics.md: {missing}"


def test_config_reference_is_current() -> None:
    assert (REPO / "docs" / "config.md").read_text().strip() == config_reference().strip(), (
        "docs/config.md is stale: run `linewatch config docs > docs/config.md`"
    )


def test_every_cli_command_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = []
    for name, p in sub.choices.items():
        if name == "child":  # internal: how the supervisor starts its processes
            continue
        nested = [a for a in p._actions if getattr(a, "choices", None) and a.dest.endswith("_command")]
        commands = [f"linewatch {name} {n}" for a in nested for n in a.choices] or [f"linewatch {name}"]
        missing += [c for c in commands if c not in readme]
    assert not missing, f"document these commands in README.md: {missing}"


def test_every_modbus_register_is_documented() -> None:
    doc = (REPO / "docs" / "modbus.md").read_text()
    rows = [f"| {r.table} | {r.address} | `{r.name}` |" for r in pm.FIXED]
    rows += [f"| input | {pm.CAMERA_BASE} + {pm.CAMERA_STRIDE}·i + {r.address} | `{r.name}` |" if r.table == "input"
             else f"| {r.table} | {r.address} + i | `{r.name}` |" for r in pm.CAMERA_FIELDS]
    rows += [f"| {bit} | `{name}` |" for name, bit in pm.STATUS_BITS.items()]
    rows += [f"| {code} | `{name}` |" for name, code in pm.ERRORS.items()]
    missing = [row for row in rows if row not in doc]
    assert not missing, f"document these Modbus registers, status bits or errors in docs/modbus.md: {missing}"
    assert f"Version of this register map ({pm.MAP_VERSION})" in doc


def test_architecture_names_every_process_and_socket() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text()
    missing = [f"process {role}" for role in ROLES if f"| `{role}` | `{role}/` |" not in doc]
    endpoints = [name for name, value in vars(Endpoints).items() if not name.startswith("_") and name != "run_dir"]
    for name in endpoints:
        shown = f"`{name}(camera)`" if callable(getattr(Endpoints, name)) else f"`{name}`"
        if f"| {shown} |" not in doc:
            missing.append(f"socket {shown}")
    assert endpoints and not missing, f"document these in docs/architecture.md: {missing}"
