"""The house rules, read from the code: lower layers never import higher ones, processes never import
each other, and no import circle exists (module-level imports, as Python runs them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCE = REPO / "inspect"
PROCESSES = {"acquire", "infer", "record", "api", "plc", "ship", "notify"}
_FOUNDATION = {"clock", "paths", "metrics", "config", "pixels", "shifts"}
#: what each library may import besides itself (CLI modules, `*.cli`, sit on top and may import anything)
BASE = {
    "clock": set(), "paths": set(), "metrics": set(), "config": {"paths"}, "pixels": set(), "shifts": {"config"},
    "wire": _FOUNDATION,
    "store": _FOUNDATION | {"wire"},
    "emulator": _FOUNDATION | {"wire"},
    "training": _FOUNDATION | {"wire", "model"},
    "model": _FOUNDATION | {"wire", "training"},
    "failsafe": _FOUNDATION | {"wire", "store", "model"},
    # the drift report names the watch's signals; the QA report lists the audit log
    "reports": _FOUNDATION | {"wire", "store", "failsafe", "watch", "auth"},
    "watch": _FOUNDATION | {"wire", "model"},
    "data": _FOUNDATION | {"training", "model", "store"},  # dataset reader; lineage: store -> model -> data
    "auth": _FOUNDATION | {"wire"},  # users, sessions, the permission table and guard, the audit log
    "operations": _FOUNDATION | {"wire", "store"},  # recipe switch and offline, shared by the plc and the api
    "retrain": _FOUNDATION | {"data", "training", "model", "reports", "store"},  # the loop over all of them
}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in SOURCE.rglob("*.py"):
        name = ".".join(f.relative_to(SOURCE).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = f
    return mods


def _imports(f: Path, mods: dict[str, Path], top_level: bool) -> set[str]:
    tree = ast.parse(f.read_text())
    out = set()
    for node in tree.body if top_level else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("linewatch"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in mods else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("linewatch"))
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_imports_a_higher_layer_or_another_process() -> None:
    mods = _modules()
    wrong = []
    for module, f in sorted(mods.items()):
        mine = _package(module)
        if module.endswith(".cli") or module == "linewatch.cli":
            continue
        for target in _imports(f, mods, top_level=False):
            theirs = _package(target)
            if theirs == mine or theirs == "":
                continue
            if mine in BASE:
                allowed = theirs in BASE[mine]
            else:  # a process: libraries only, never another process or the line above them
                allowed = mine not in PROCESSES or theirs not in (*PROCESSES, "line")
            if not allowed:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_no_import_circle() -> None:
    mods = _modules()
    graph = {m: {t for t in _imports(f, mods, top_level=True) if t in mods} for m, f in mods.items()}
    circles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in path:
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert circles == []


_STORE_WRITING = ("sqlite_utils", "linewatch.store.schema", "linewatch.store.writer")


@pytest.mark.parametrize(("process", "not_loaded"), [
    ("infer", _STORE_WRITING), ("acquire", _STORE_WRITING), ("plc", _STORE_WRITING),
    ("record", ("linewatch.failsafe", "linewatch.model.onnx", "onnxruntime")),
])
def test_a_process_starts_without_the_libraries_of_others(process: str, not_loaded: tuple[str, ...]) -> None:
    """The processes start on the path to the first verdict (record alone, then infer, acquire and plc together
    on shared cores): the store's readers do not load sqlite-utils and the migrations (record's alone, ~65 ms
    each), and record does not load the fail-safe's rules and model code (~150 ms)."""
    code = (f"import sys, linewatch.{process}.process; "
            f"print(sorted(m for m in {not_loaded!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
