"""Docs that CI keeps honest: every metric, config field and CLI command is documented."""

from __future__ import annotations

from linewatch import metrics
from linewatch.cli import build_parser, config_reference
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
