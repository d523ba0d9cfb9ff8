"""The disk reserve and the test for a full disk, on real files and a real SQLite store."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import threading
from pathlib import Path

from linewatch.config import RecordConfig
from linewatch.record.retention import Pruned, Retention
from linewatch.store.disk import DiskReserve, is_disk_full
from linewatch.store.images import image_relpath
from tests.test_retention import _archive, _events


def _sqlite_full(tmp_path: Path) -> sqlite3.Error:
    """A real SQLITE_FULL: the database may not grow past its page limit."""
    conn = sqlite3.connect(tmp_path / "small.db")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0] + 1}")
    try:
        for _ in range(10):
            conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("the page limit did not stop the insert")


def test_a_full_store_or_disk_is_told_apart_from_a_bug(tmp_path: Path) -> None:
    assert is_disk_full(_sqlite_full(tmp_path))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_disk_full(sqlite3.OperationalError("no such table: inspections"))
    assert not is_disk_full(OSError(errno.ENOENT, "No such file"))
    assert not is_disk_full(ValueError("bad frame"))


def test_the_reserve_holds_real_blocks_and_gives_them_back(tmp_path: Path) -> None:
    reserve = DiskReserve(tmp_path, reserve_mb=1, floor_mb=0)
    assert reserve.allocate() and reserve.held
    assert reserve.path.stat().st_blocks * 512 >= 2**20  # allocated, not a sparse file
    assert reserve.release() and not reserve.held
    assert not reserve.release()  # nothing left to give
    assert reserve.allocate(after_full=True)


def test_no_reserve_allocates_nothing_and_still_tells_room(tmp_path: Path) -> None:
    reserve = DiskReserve(tmp_path, reserve_mb=0, floor_mb=0)
    assert reserve.size == 0 and reserve.allocate(after_full=True) and not reserve.held


def test_the_reserve_never_takes_more_than_a_tenth_of_the_disk(tmp_path: Path) -> None:
    total = shutil.disk_usage(tmp_path).total
    reserve = DiskReserve(tmp_path, reserve_mb=1_000_000, floor_mb=1_000_000)
    assert reserve.size <= total * 0.1 and reserve.headroom <= total * 0.1


def test_below_the_free_space_floor_pass_samples_go_whatever_the_quota(tmp_path: Path) -> None:
    finals = ["PASS", "FAIL", "PASS", "REVIEW", "PASS"]
    _archive(tmp_path, finals)
    r = Retention(tmp_path, RecordConfig(image_quota_mb=0, disk_low_free_mb=1e12), threading.Event())
    r.run_once()
    pruned = [e for e in _events(r) if isinstance(e, Pruned)]
    assert [e.ids for e in pruned] == [[1, 3, 5]], "each PASS sample pruned once, evidence kept"
    for seq, final in enumerate(finals):
        assert (tmp_path / image_relpath("cam0", "s", seq, final)).exists() == (final != "PASS")


def test_an_image_pruned_by_age_is_not_pruned_again_for_space_in_the_same_pass(tmp_path: Path) -> None:
    _archive(tmp_path, ["PASS", "FAIL", "PASS"], age_days=3)
    r = Retention(tmp_path, RecordConfig(pass_max_age_days=2, image_quota_mb=0, disk_low_free_mb=1e12),
                  threading.Event())
    r.run_once()
    assert [e.ids for e in _events(r) if isinstance(e, Pruned)] == [[1, 3]]
