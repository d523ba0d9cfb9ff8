"""Image archive and retention on real files and a real SQLite store: formats, quota, age, disk-low."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.config import RecordConfig, ShiftConfig
from linewatch.record.retention import DAY_NS, DiskLow, Pruned, Retention
from linewatch.shifts import shift_at
from linewatch.store.images import ImageWriter, archive_bytes, heatmap_relpath, image_relpath, load_overlay, save_kept
from linewatch.store.rows import verdict_row
from linewatch.store.schema import open_writer
from linewatch.store.writer import insert_verdicts, mark_pruned
from linewatch.wire import Verdict, now_ns
from tests.conftest import wait_for


def test_kept_images_png_is_lossless_and_jpeg_follows_quality(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (64, 80), dtype=np.uint8)
    writer = ImageWriter(tmp_path, quality=95, capacity=8)
    png, jpg = image_relpath("c", "s", 1, "FAIL", "png"), image_relpath("c", "s", 2, "FAIL", "jpeg")
    assert writer.submit(png, "c", pixels) and writer.submit(jpg, "c", pixels)
    writer.close()
    assert png.endswith(".png") and jpg.endswith(".jpg")
    assert np.array_equal(cv2.imread(str(tmp_path / png), cv2.IMREAD_UNCHANGED), pixels)
    back = cv2.imread(str(tmp_path / jpg), cv2.IMREAD_UNCHANGED)
    assert back.shape == pixels.shape and not np.array_equal(back, pixels)
    save_kept(tmp_path, "low.jpg", pixels, quality=10)
    assert (tmp_path / "low.jpg").stat().st_size < (tmp_path / jpg).stat().st_size


@pytest.mark.parametrize("shape, dtype", [((64, 80, 3), np.uint8), ((64, 80), np.uint16), ((33, 47, 3), np.uint16)])
def test_kept_png_is_lossless_for_colour_and_16_bit_frames(tmp_path: Path, shape: tuple[int, ...], dtype: type) -> None:
    """The fast PNG settings (SUB filter, run-length deflate) keep every pixel of every frame kind the line keeps."""
    pixels = np.random.default_rng(2).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    save_kept(tmp_path, "kept.png", pixels)
    back = cv2.imread(str(tmp_path / "kept.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back if back.ndim == 2 else cv2.cvtColor(back, cv2.COLOR_BGR2RGB), pixels)


def test_image_writer_refuses_when_full_instead_of_blocking(tmp_path: Path) -> None:
    writer = ImageWriter(tmp_path, 90, capacity=2)
    big = np.zeros((2000, 2000), np.uint8)
    results = [writer.submit(f"images/x/{i}.png", "x", big) for i in range(50)]
    assert not all(results) and results[0]
    writer.close(timeout=30)


def _archive(tmp_path: Path, finals: list[str], age_days: float = 0.0) -> None:
    db = open_writer(tmp_path)
    rows, t = [], now_ns() - int(age_days * DAY_NS)
    for seq, final in enumerate(finals):
        v = Verdict("cam0", "s", seq, f"p{seq}", final, "model", t_capture_ns=t + seq)  # type: ignore[arg-type]
        v.image = image_relpath("cam0", "s", seq, final)
        (tmp_path / v.image).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / v.image).write_bytes(b"x" * 100_000)
        rows.append(verdict_row(v, t + seq))
    insert_verdicts(db, rows)
    db.close()


def _events(r: Retention) -> list[Pruned | DiskLow]:
    out = []
    while not r.events.empty():
        out.append(r.events.get_nowait())
    return out


def test_quota_prunes_oldest_pass_first_never_fail_or_review_and_raises_then_clears_disk_low(tmp_path: Path) -> None:
    finals = ["PASS", "FAIL", "PASS", "REVIEW", "PASS", "PASS", "FAIL", "PASS"]  # 8 x 100 kB
    _archive(tmp_path, finals)
    cfg = RecordConfig(image_quota_mb=0.5, disk_low_free_mb=0)  # 524 kB: three PASS images must go
    r = Retention(tmp_path, cfg, threading.Event())
    r.run_once()
    events = _events(r)
    assert isinstance(events[0], Pruned) and events[0].ids == [1, 3, 5]  # row ids of the oldest PASS samples
    assert len(events) == 1  # under quota now: no alarm
    assert archive_bytes(tmp_path) == 5 * 100_000
    for seq, final in enumerate(finals):
        assert (tmp_path / image_relpath("cam0", "s", seq, final)).exists() == (seq not in (0, 2, 4))
    db = open_writer(tmp_path)
    mark_pruned(db, events[0].ids, events[0].t_ns)

    r.cfg = RecordConfig(image_quota_mb=0.2, disk_low_free_mb=0)  # 3 FAIL/REVIEW alone exceed it
    r.run_once()
    events = _events(r)
    assert isinstance(events[0], Pruned) and events[0].ids == [6, 8]
    alarm = events[-1]
    assert isinstance(alarm, DiskLow) and alarm.alarm is not None and alarm.alarm.kind == "disk_low"
    assert "only FAIL/REVIEW images left" in alarm.alarm.message
    assert archive_bytes(tmp_path) == 3 * 100_000  # evidence kept
    mark_pruned(db, events[0].ids, events[0].t_ns)
    r.run_once()
    assert _events(r) == []  # still low: raised once, not again
    r.cfg = RecordConfig(image_quota_mb=10, disk_low_free_mb=0)
    r.run_once()
    assert _events(r) == [DiskLow(None)]


def test_age_limits_and_free_space_alarm(tmp_path: Path) -> None:
    _archive(tmp_path, ["PASS", "FAIL", "PASS"], age_days=3)
    r = Retention(tmp_path, RecordConfig(pass_max_age_days=2, image_quota_mb=0, disk_low_free_mb=1e12),
                  threading.Event())
    r.run_once()
    pruned, low = _events(r)
    assert isinstance(pruned, Pruned) and pruned.ids == [1, 3]
    assert isinstance(low, DiskLow) and low.alarm is not None and "free on the data disk" in low.alarm.message
    db = open_writer(tmp_path)
    mark_pruned(db, pruned.ids, pruned.t_ns)
    r.cfg = RecordConfig(pass_max_age_days=0, image_max_age_days=2.5, image_quota_mb=0, disk_low_free_mb=1e12)
    r.run_once()
    assert [e.ids for e in _events(r) if isinstance(e, Pruned)] == [[2]]  # the FAIL too, by its own age limit
    assert archive_bytes(tmp_path) == 0


def _local_ns(hour: int, minute: int) -> int:
    return int(datetime(2026, 3, 4, hour, minute).timestamp() * 1e9)  # naive: local time


@pytest.mark.parametrize(("hhmm", "shift"), [((6, 0), "early"), ((13, 59), "early"), ((14, 0), "late"),
                                            ((23, 30), "night"), ((0, 10), "night"), ((5, 59), "night")])
def test_shift_follows_the_schedule_and_wraps_past_midnight(hhmm: tuple[int, int], shift: str) -> None:
    schedule = [ShiftConfig(name="late", start="14:00"), ShiftConfig(name="early", start="06:00"),
                ShiftConfig(name="night", start="22:00")]
    assert shift_at(schedule, _local_ns(*hhmm)) == shift


def test_retention_thread_stops_with_the_stop_event(tmp_path: Path) -> None:
    _archive(tmp_path, ["PASS"], age_days=40)
    stop = threading.Event()
    r = Retention(tmp_path, RecordConfig(retention_interval_s=0.05, disk_low_free_mb=0), stop)
    r.start()
    wait_for(lambda: not r.events.empty(), 5, "a retention pass", interval=0.02)
    stop.set()
    r._thread.join(2)
    assert not r._thread.is_alive()
    assert isinstance(r.events.get_nowait(), Pruned)  # the default 30-day PASS age limit applied


def test_a_heatmap_is_pruned_with_its_image_and_blends_over_it(tmp_path: Path) -> None:
    _archive(tmp_path, ["PASS", "FAIL"], age_days=40)
    frame = np.full((64, 64), 100, np.uint8)
    heat = np.zeros((8, 8), np.uint8)
    heat[2:4, 2:4] = 255  # one hot spot
    for seq, final in enumerate(["PASS", "FAIL"]):
        save_kept(tmp_path, image_relpath("cam0", "s", seq, final), frame)
        save_kept(tmp_path, heatmap_relpath(image_relpath("cam0", "s", seq, final)), heat)
    overlay = load_overlay(tmp_path, image_relpath("cam0", "s", 1, "FAIL"))
    assert overlay is not None and overlay.shape == (64, 64, 3)
    assert overlay[20, 20, 0] > overlay[20, 20, 2]  # hot: red over the grey frame
    assert overlay[60, 60, 2] > overlay[60, 60, 0]  # cold: blue
    r = Retention(tmp_path, RecordConfig(pass_max_age_days=30, disk_low_free_mb=0), threading.Event())
    r.run_once()
    assert [e.ids for e in _events(r) if isinstance(e, Pruned)] == [[1]]
    assert not (tmp_path / heatmap_relpath(image_relpath("cam0", "s", 0, "PASS"))).exists()
    assert (tmp_path / heatmap_relpath(image_relpath("cam0", "s", 1, "FAIL"))).exists()
