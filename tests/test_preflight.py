"""Start-up faults a newcomer meets end in one clear line naming the setting, never a traceback:
`linewatch run` itself is started, with a data directory it cannot write and with ports another
program holds."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linewatch", "run", *args], capture_output=True, text=True,
                          timeout=60)


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.mark.parametrize(("data_dir", "why"), [
    ("/sys/linewatch-data", "is read-only"),  # sysfs refuses new directories, even to root
    ("/proc/linewatch/data", "cannot be used (No such file or directory)"),
])
def test_a_data_dir_it_cannot_write_is_one_line(data_dir: str, why: str, tmp_path: Path) -> None:
    line = _one_line_error(_run("--data-dir", data_dir, "--port", "0"))
    assert f"data_dir {data_dir} {why}" in line and "--data-dir" in line


def _held_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_web_port_in_use_suggests_port(tmp_path: Path) -> None:
    with _held_port() as held:
        port = held.getsockname()[1]
        line = _one_line_error(_run("--data-dir", str(tmp_path / "data"), "--port", str(port)))
    assert f"api.port {port} on 127.0.0.1 is in use by another program" in line and "--port" in line
    assert not (tmp_path / "data" / "linewatch.db").exists()  # nothing started


def test_a_modbus_port_in_use_names_plc_port(tmp_path: Path) -> None:
    with _held_port() as held:
        port = held.getsockname()[1]
        cfg = tmp_path / "line.yaml"
        cfg.write_text(f"data_dir: {tmp_path / 'data'}\napi:\n  port: 0\nplc:\n  port: {port}\n")
        line = _one_line_error(_run("--config", str(cfg)))
    assert f"plc.port {port} on 127.0.0.1 is in use by another program" in line and "plc.port in the config" in line
