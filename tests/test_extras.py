"""The appliance image has no training extras: `linewatch train` and `linewatch retrain` then say which extra to
install and exit 2, instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# `import torch` (or rich) fails in the child as it would where the package is not installed
WITHOUT = "import runpy, sys; sys.modules[{name!r}] = None; sys.argv = ['linewatch', *sys.argv[1:]]; " \
          "runpy.run_module('linewatch', run_name='__main__')"


@pytest.mark.parametrize(("command", "absent"), [
    (["train", "DATA", "--out", "OUT"], "torch"),
    (["retrain", "--recipe", "default"], "torch"),
    (["retrain", "--recipe", "default"], "rich"),
])
def test_training_without_its_extras_names_the_extra(tmp_path: Path, command: list[str], absent: str) -> None:
    args = [str(tmp_path / a) if a in ("DATA", "OUT") else a for a in command]
    out = subprocess.run([sys.executable, "-c", WITHOUT.format(name=absent), *args], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "pip install -e '.[train,data]'" in out.stderr and "Traceback" not in out.stderr, out.stderr
    if command[0] == "retrain":
        assert f"{absent} not installed" in out.stderr
