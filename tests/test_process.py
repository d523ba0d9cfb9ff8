"""What every child process shares: its ready file and its library settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from linewatch.config.line import cpu_plan
from linewatch.wire.ready import STALE_S, mark_ready, read_ready, ready_dir
from tests.conftest import wait_for


def test_ready_files_are_read_back_by_name_skipping_one_being_written(tmp_path: Path) -> None:
    mark_ready(tmp_path, "infer[0]", model="reference", rules_only=False)
    mark_ready(tmp_path, "record")
    (ready_dir(tmp_path) / ".infer[1].tmp").write_text('{"name": "infer[1]"}')  # mid-replace
    (ready_dir(tmp_path) / "acquire[cam0]").write_text('{"name": ')  # torn: skipped, read next time
    ready = read_ready(tmp_path)
    assert sorted(ready) == ["infer[0]", "record"]
    assert ready["infer[0]"]["model"] == "reference" and ready["infer[0]"]["pid"] > 0
    assert read_ready(tmp_path / "never-started") == {}


def test_children_run_opencv_on_one_thread() -> None:
    code = ("import cv2; cv2.setNumThreads(4); from linewatch.line.child import single_threaded_opencv; "
            "single_threaded_opencv(); print(cv2.getNumThreads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1"


def test_children_keep_their_startup_objects_out_of_full_collections() -> None:
    code = ("import gc, linewatch.infer.process; from linewatch.line.child import freeze_startup_objects; "
            "before = gc.get_freeze_count(); freeze_startup_objects(); print(before, gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    before, after = map(int, out.stdout.split())
    assert before == 0 and after > 10_000


def test_ready_files_carry_what_the_bootstrap_left_in_the_process_not_what_it_claims(tmp_path: Path) -> None:
    code = f"""
import json, threading, cv2
from pathlib import Path
from linewatch.line.child import freeze_startup_objects, single_threaded_opencv
from linewatch.wire.ready import bootstrap_facts, start_heartbeat
cv2.setNumThreads(4)
before = bootstrap_facts()
single_threaded_opencv()
start_heartbeat(Path({str(tmp_path)!r}), "x", threading.Event())
freeze_startup_objects()
print(json.dumps([before, bootstrap_facts()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    before, after = json.loads(out.stdout)
    assert (before["gc_frozen"], before["opencv_threads"], before["heartbeat"]) == (0, 4, False)
    assert after["gc_frozen"] > 0 and (after["opencv_threads"], after["heartbeat"]) == (1, True)


@pytest.mark.slow
def test_every_child_of_a_real_line_runs_the_bootstrap(line: Any) -> None:
    # on `auto` (the default): one single-threaded worker per core this machine lets the line use, up to 8
    ln = line(cameras=[{"name": "cam0", "fps": 10}], infer={"workers": "auto"}).start()
    run_dir = ln.data_dir / "run"
    ready = read_ready(run_dir)
    plan = cpu_plan("auto", "auto", len(os.sched_getaffinity(0)))
    workers = [f"infer[{i}]" for i in range(plan.workers)]
    assert sorted(ready) == sorted(["acquire[cam0]", "api", *workers, "plc", "record"])
    assert all(ready[w]["threads"] == plan.threads for w in workers)
    children = {p.pid for p in psutil.Process(ln.proc.pid).children() if p.status() != psutil.STATUS_ZOMBIE}
    for name, info in ready.items():
        assert info["pid"] in children, f"{name} is not a live child of the line's supervisor"
        assert info["gc_frozen"] > 0, f"{name} did not freeze its startup objects"
        assert info["opencv_threads"] == 1, f"{name} runs OpenCV on {info['opencv_threads']} threads"
        assert info["heartbeat"] is True, f"{name} has no heartbeat thread"
    written = {name: (ready_dir(run_dir) / name).stat().st_mtime_ns for name in ready}
    wait_for(lambda: all((ready_dir(run_dir) / name).stat().st_mtime_ns > t for name, t in written.items()),
             STALE_S, "every child's heartbeat to touch its ready file")
    ln.stop()
