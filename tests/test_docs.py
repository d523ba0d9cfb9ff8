"""Docs that CI keeps honest: every metric, config field, CLI command, Modbus register, process and socket is
documented, and the benchmark results show what their results files hold."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re

import pytest

from linewatch import metrics
from linewatch.api import resources
from linewatch.cli import build_parser, config_reference
from linewatch.line.child import ROLES
from linewatch.plc import register_map as pm
from linewatch.wire import Endpoints
from tests.conftest import REPO


def test_every_metric_is_documented() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text()
    names = {m._name for m in metrics.ALL} | {f.name for f in resources.families()}  # and those read at scrape
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"document these metrics in docs/metrics.md: {missing}"


def test_config_reference_is_current() -> None:
    assert (REPO / "docs" / "config.md").read_text().strip() == config_reference().strip(), (
        "docs/config.md is stale: run `linewatch config docs > docs/config.md`"
    )


INTERNAL_COMMANDS = {"child"}  # how the supervisor starts its processes; not for users, no help text


def _usage(action: argparse.Action) -> str:
    """One argument as the README shows it: positionals and required options in full, optional flags by name
    (with their choices, where they have any)."""
    choices = "|".join(map(str, action.choices)) if action.choices else None
    if not action.option_strings:
        name = choices or action.metavar or action.dest.upper()
        return f"[{name}]" if action.nargs in ("?", "*") else str(name)
    flag = max(action.option_strings, key=len)
    if action.required:
        return f"{flag} {choices or action.metavar or flag.lstrip('-').upper()}"
    return f"[{flag} {choices}]" if choices else f"[{flag}]"


def _cli_commands(parser: argparse.ArgumentParser, prefix: str = "linewatch") -> dict[str, tuple[str, str]]:
    """Every user-facing command and subcommand of the parser: its arguments and its one-line help."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    commands: dict[str, tuple[str, str]] = {}
    for name, p in sub.choices.items():
        if name in INTERNAL_COMMANDS:
            continue
        own = [a for a in p._actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]
        commands[f"{prefix} {name}"] = (" ".join(map(_usage, own)), helps.get(name, ""))
        if any(isinstance(a, argparse._SubParsersAction) for a in p._actions):
            commands |= _cli_commands(p, f"{prefix} {name}")
    return commands


def _readme_cli_table() -> dict[str, tuple[str, str]]:
    """The rows of the README's "CLI reference" table: command -> (arguments, help)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## CLI reference\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0].startswith("`linewatch"):
            assert len(cells) == 3, f"README.md CLI table: want | command | arguments | help |, got {line!r}"
            command, args, help_ = (c.strip("`") for c in cells)
            assert command not in rows, f"README.md: `{command}` is in the CLI table twice"
            rows[command] = (args, help_)
    return rows


def _row(command: str, args: str, help_: str) -> str:
    cell = f"`{args}`".replace("|", "\\|") if args else ""
    return f"| `{command}` | {cell} | {help_} |"


def test_readme_cli_table_matches_the_cli() -> None:
    cli, readme = _cli_commands(build_parser()), _readme_cli_table()
    problems = [f"missing from README.md: {_row(c, *cli[c])}" for c in cli if c not in readme]
    problems += [f"in README.md but not in the CLI: `{c}`" for c in readme if c not in cli]
    problems += [f"`{c}` differs: README.md has {_row(c, *readme[c])}, the CLI gives {_row(c, *cli[c])}"
                 for c in cli if c in readme and readme[c] != cli[c]]
    assert not problems, "README.md's CLI reference table is stale:\n" + "\n".join(problems)


def test_internal_commands_have_no_help() -> None:
    """An internal command stays out of `linewatch --help`: a command with help text belongs in the README."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) >= INTERNAL_COMMANDS
    assert not INTERNAL_COMMANDS & {a.dest for a in sub._choices_actions}


def test_every_modbus_register_is_documented() -> None:
    doc = (REPO / "docs" / "modbus.md").read_text()
    rows = [f"| {r.table} | {r.address} | `{r.name}` |" for r in pm.FIXED]
    rows += [f"| input | {pm.CAMERA_BASE} + {pm.CAMERA_STRIDE}·i + {r.address} | `{r.name}` |" if r.table == "input"
             else f"| {r.table} | {r.address} + i | `{r.name}` |" for r in pm.CAMERA_FIELDS]
    rows += [f"| {bit} | `{name}` |" for name, bit in pm.STATUS_BITS.items()]
    rows += [f"| {code} | `{name}` |" for name, code in pm.ERRORS.items()]
    for r in pm.HANDSHAKE:
        base, stride = pm.HS_BLOCKS[r.table]
        rows.append(f"| {r.table} | {base} + {stride}·i + {r.address} | `{r.name}` |" if stride > 1
                    else f"| {r.table} | {base} + i | `{r.name}` |")
    rows += [f"| {bit} | `{name}` |" for name, bit in pm.HANDSHAKE_BITS.items()]
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


RESULTS = REPO / "benchmarks" / "RESULTS.md"


def test_results_cite_files_that_exist() -> None:
    text = RESULTS.read_text()
    links = re.findall(r"\]\((results/[^)]+)\)", text)
    missing = [link for link in links if not (RESULTS.parent / link).is_file()]
    assert links and not missing, f"benchmarks/RESULTS.md links to missing results files: {missing}"


@pytest.mark.parametrize("name", ["pipeline", "pipeline_realistic"])
def test_pipeline_results_match_their_json(name: str) -> None:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    expected = pipeline.table(json.loads((REPO / "benchmarks" / "results" / f"{name}.json").read_text()))
    assert expected in RESULTS.read_text(), (
        f"benchmarks/RESULTS.md's tables differ from benchmarks/results/{name}.json: paste the table "
        f"that benchmarks/{name}.py printed (its `table()`):\n{expected}")


def test_results_tables_copied_from_results_files_match_them() -> None:
    text = RESULTS.read_text()
    for link in re.findall(r"\]\((results/[^)]+\.md)\)", text):
        rows = [line for line in (RESULTS.parent / link).read_text().splitlines() if line.startswith("|")]
        missing = [row for row in rows if row not in text]
        assert rows and not missing, f"benchmarks/RESULTS.md: these rows of {link} are missing or changed: {missing}"


def test_results_are_reference_not_a_log() -> None:
    """Each benchmark says what it measures, on which machine, with which command, and its known limits;
    no dates of runs (history is in git)."""
    sections = re.split(r"^## ", RESULTS.read_text(), flags=re.M)[1:]
    assert sections
    for section in sections:
        title = section.splitlines()[0]
        missing = [f for f in ("**Measures**", "**Machine**", "**Command**", "**Known limits**") if f not in section]
        assert not missing, f"benchmarks/RESULTS.md, section {title!r}: add {missing}"
        scripts = re.findall(r"benchmarks/[\w./-]+\.(?:py|sh)", section.split("**Command**", 1)[1].split("\n\n")[0])
        assert scripts and all((REPO / s).is_file() for s in scripts), f"{title!r}: its command names no script here"
    dates = re.findall(r"\b20\d\d-\d\d-\d\d\b", RESULTS.read_text())
    assert not dates, f"benchmarks/RESULTS.md is reference, not a log: remove the dates {dates}"
