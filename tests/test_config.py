"""Config: the embedded default needs no file; every error is reported with its path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from linewatch.config import ConfigError, LineConfig, load_config, parse_config
from linewatch.config.line import cpu_plan


def test_default_needs_no_file() -> None:
    cfg = load_config(None)
    assert cfg == LineConfig()
    assert cfg.cameras[0].source.type == "emulator"
    assert cfg.model.path.is_file(), "the bundled reference model ships with the default"
    assert cfg.run_dir == Path("var/run")


@pytest.mark.parametrize(("workers", "threads", "cores", "plan"), [
    ("auto", "auto", 1, (1, 1)), ("auto", "auto", 2, (2, 1)), ("auto", "auto", 8, (8, 1)),
    ("auto", "auto", 12, (6, 2)), ("auto", "auto", 64, (8, 8)),  # past 8 workers, threads fill the cores
    (1, "auto", 4, (1, 4)), ("auto", 2, 4, (2, 2)), (3, 1, 2, (3, 1)),
])
def test_auto_uses_every_core(workers: int | str, threads: int | str, cores: int, plan: tuple[int, int]) -> None:
    got = cpu_plan(workers, threads, cores)
    assert (got.workers, got.threads) == plan
    assert got.cores == cores


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"cameras": [{"exposure_us": -5}]}, "cameras[0].exposure_us: must be > 0"),
        ({"cameras": [{"fps": 0}]}, "cameras[0].fps: must be > 0"),
        ({"cameras": [{"name": "a b"}]}, "cameras[0].name: must match"),
        ({"cameras": [{"source": {"type": "emulator", "defect_rate": 2}}]},
         "cameras[0].source.defect_rate: must be <= 1"),
        ({"cameras": [{"source": {"type": "ftp"}}]}, "cameras[0].source"),
        ({"cameras": []}, "cameras: needs at least 1 item"),
        ({"cameras": [{"name": "a"}, {"name": "a"}]}, "camera names must be unique, repeated: a"),
        ({"infer": {"workers": -1}}, "infer.workers: must be >= 0 or must be one of 'auto' (got -1)"),
        ({"model": {"intra_op_threads": "many"}}, "model.intra_op_threads: Input should be a valid integer"),
        ({"infer": {"wrokers": 2}}, "infer.wrokers: unknown field"),
        ({"failsafe": {"review_band": [0.9, 0.1]}}, "failsafe.review_band: must satisfy"),
        ({"failsafe": {"uncertain_verdict": "MAYBE"}}, "failsafe.uncertain_verdict: must be one of"),
        ({"model": {"providers": "tpu"}}, "model.providers: must be one of"),
        ({"api": {"port": 70000}}, "api.port: must be <= 65535 (got 70000)"),
    ],
)
def test_errors_name_the_path_and_value(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"infer": {"workers": -1, "max_batch": 0}, "api": {"port": -1}})
    assert len(err.value.problems) == 3


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linewatch", *args], capture_output=True, text=True, timeout=60)


def test_config_check_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("line: press3\ncameras:\n  - name: top\n    fps: 30\n")
    out = _cli("config", "check", str(good))
    assert out.returncode == 0 and "ok" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  - exposure_us: -5\n    bogus: 1\n")
    out = _cli("config", "check", str(bad))
    assert out.returncode == 2
    assert "cameras[0].exposure_us: must be > 0.0 (got -5) [line 2]" in out.stderr
    assert "cameras[0].bogus: unknown field (got 1) [line 3]" in out.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("cameras: [\n")
    out = _cli("config", "check", str(broken))
    assert out.returncode == 2 and "not valid YAML" in out.stderr
    out = _cli("config", "check", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "cannot read file" in out.stderr


def test_config_show_round_trips(tmp_path: Path) -> None:
    out = _cli("config", "show")
    assert out.returncode == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(out.stdout)
    assert load_config(shown) == LineConfig()
