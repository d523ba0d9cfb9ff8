"""Retention of the image archive: disk quota, free space and age, oldest PASS samples first, and the disk-low alarm.

It runs as a thread inside record and only reads the store; what it removed and the alarms it wants
raised or cleared go back to record's loop (the single writer) through `events`. FAIL and REVIEW
images are never removed for the quota, only by `image_max_age_days` when that is set.
"""

from __future__ import annotations

import logging
import queue
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from linewatch.config import RecordConfig
from linewatch.store.images import archive_bytes, heatmap_relpath
from linewatch.store.queries import open_reader
from linewatch.wire import Alarm, now_ns

log = logging.getLogger("retention")
DAY_NS = 86_400 * 10**9
DISK_LOW = "disk_low"


@dataclass(frozen=True)
class Pruned:
    ids: list[int]
    t_ns: int


@dataclass(frozen=True)
class DiskLow:
    """raise: an alarm to store; clear: the condition is gone."""

    alarm: Alarm | None


class Retention:
    def __init__(self, data_dir: Path, cfg: RecordConfig, stop: threading.Event):
        self.data_dir, self.cfg, self.stop = data_dir, cfg, stop
        self.events: queue.SimpleQueue[Pruned | DiskLow] = queue.SimpleQueue()
        self.disk_low = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Run a pass now (the disk filled up, or the line stops)."""
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.cfg.retention_interval_s)
            self._wake.clear()
            if self.stop.is_set():
                return
            try:
                self.run_once()
            except (OSError, sqlite3.Error) as exc:  # retention must never take record down
                log.error("retention pass failed: %s", exc)

    def run_once(self) -> None:
        """One pass: age limits, then the quota and the free-space floor (PASS oldest first), then the disk-low
        check. Each image is pruned once a pass: record marks the rows after the pass."""
        now = now_ns()
        self._pruned: set[int] = set()
        conn = open_reader(self.data_dir)
        try:
            if self.cfg.pass_max_age_days:
                oldest = now - int(self.cfg.pass_max_age_days * DAY_NS)
                self._prune(conn, "final = 'PASS' AND t_capture_ns < ?", [oldest])
            if self.cfg.image_max_age_days:
                self._prune(conn, "t_capture_ns < ?", [now - int(self.cfg.image_max_age_days * DAY_NS)])
            over_quota = False
            if self.cfg.image_quota_mb:
                quota = int(self.cfg.image_quota_mb * 2**20)
                used = archive_bytes(self.data_dir)
                if used > quota:
                    used -= self._prune(conn, "final = 'PASS'", [], budget=used - quota)
                over_quota = used > quota
            floor = int(self.cfg.disk_low_free_mb * 2**20)
            free = shutil.disk_usage(self.data_dir).free
            if free < floor:  # the disk itself is short of room: PASS samples go first, whatever the quota
                self._prune(conn, "final = 'PASS'", [], budget=floor - free)
        finally:
            conn.close()
        free_mb = shutil.disk_usage(self.data_dir).free / 2**20
        low = over_quota or free_mb < self.cfg.disk_low_free_mb
        if low and not self.disk_low:
            why = (f"image archive over its {self.cfg.image_quota_mb:.0f} MB quota with only FAIL/REVIEW images left"
                   if over_quota else f"only {free_mb:.0f} MB free on the data disk (alarm below "
                   f"{self.cfg.disk_low_free_mb:.0f} MB)")
            self.events.put(DiskLow(Alarm("record", DISK_LOW, why, "critical")))
        elif not low and self.disk_low:
            self.events.put(DiskLow(None))
        self.disk_low = low

    def _prune(self, conn: sqlite3.Connection, where: str, params: list[object], budget: int | None = None) -> int:
        """Remove kept images matching `where`, oldest first, until `budget` bytes are freed (None: all)."""
        freed, ids = 0, []
        rows = conn.execute("SELECT id, image FROM inspections INDEXED BY idx_inspections_kept_images "
                            f"WHERE image IS NOT NULL AND image_pruned_ns IS NULL AND {where} ORDER BY id", params)
        for row_id, image in rows:
            if row_id in self._pruned:
                continue
            if budget is not None and freed >= budget:
                break
            for path in (self.data_dir / image, self.data_dir / heatmap_relpath(image)):
                try:
                    freed += path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    pass  # already gone (or never written, or no heatmap): the row still says so
            ids.append(row_id)
        self._pruned.update(ids)
        if ids:
            self.events.put(Pruned(ids, now_ns()))
            log.info("pruned %d image(s), %.1f MB (%s)", len(ids), freed / 2**20, where)
        return freed
