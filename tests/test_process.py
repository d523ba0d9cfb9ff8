"""What every child process shares: its ready file and its library settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from linewatch.wire.ready import mark_ready, read_ready, ready_dir


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
