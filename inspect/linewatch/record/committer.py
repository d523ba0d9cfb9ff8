"""The group committer: verdict rows gathered into groups, one transaction each, and store writes held
while a full disk refuses them.

A group is what has arrived: nothing waiting means commit now (a lone verdict does not wait for
company); under load groups grow by themselves, up to `commit_rows` or `commit_ms`. Each group's
`commits` row (when it was committed and published) is written in the next group's transaction, or
alone after `commit_ms` without one: no second commit per group. When the disk refuses a write, the
rows stay gathered (up to `held_rows`; past that a row is lost, counted and logged) and every other
write waits in order, retried each second until the store takes writes again.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from operator import itemgetter
from typing import Any

import sqlite_utils

from linewatch import metrics
from linewatch.clock import mono_ns, now_ns
from linewatch.config.line import RecordConfig
from linewatch.store.disk import is_disk_full
from linewatch.store.rows import ROW_COLUMNS, committed_values
from linewatch.store.writer import CommitRow, insert_commit, insert_rows, register_model

log = logging.getLogger("record")
_COL = {name: i for i, name in enumerate(ROW_COLUMNS)}
_CAPTURE = _COL["t_capture_ns"]
_MODEL = itemgetter(_COL["model_hash"], _COL["model_name"])

Row = tuple[Any, ...]
#: Hands a committed group on (commit_id, its rows, when committed): record publishes it as one `verdicts` event.
Publish = Callable[[int, list[Row], int], None]


class GroupCommitter:
    def __init__(self, db: sqlite_utils.Database, rc: RecordConfig, model_path: str, commit_id: int,
                 publish: Publish, on_refused: Callable[[sqlite3.Error], bool]):
        """`on_refused` is told when the disk refuses a write; True if it made room (retry at once)."""
        self.db, self.rc, self.model_path, self.commit_id = db, rc, model_path, commit_id
        self.publish, self.on_refused = publish, on_refused
        self.gathered: list[tuple[Row, int | None]] = []  # (`verdict_values`, monotonic capture time)
        self.gathered_since = 0.0
        self.unwritten_commit: CommitRow | None = None  # the last group's commit row, written with the next
        self.published_at = 0.0
        self.models_seen: set[str] = set()
        self.store_down: str | None = None  # why the store refuses writes (None: it takes them)
        self.held: list[Callable[[], object]] = []  # writes refused by a full disk, retried in order
        self.retry_at = 0.0
        self.rows_lost = 0

    def add(self, values: Row, t_capture_mono_ns: int | None) -> None:
        """Gather one verdict's row for the next group (lost, counted, only past `held_rows` while the store
        refuses writes)."""
        if len(self.gathered) >= self.rc.held_rows:
            self.rows_lost += 1
            metrics.ROWS_LOST.inc()
            if self.rows_lost % 1000 == 1:
                log.critical("verdict row %s lost: the store refuses writes (%s) and %d rows are held; %d lost "
                             "so far", values[_COL["camera"]:_COL["seq"] + 1], self.store_down, len(self.gathered),
                             self.rows_lost)
            return
        if not self.gathered:
            self.gathered_since = time.monotonic()
        self.gathered.append((values, t_capture_mono_ns))

    def wait_ms(self) -> int:
        """How long record may wait for messages before something here is due (at most 50 ms)."""
        if self.store_down is not None:
            left = self.retry_at - time.monotonic()
        elif not self.gathered:
            return 50
        else:
            left = self.rc.commit_ms / 1e3 - (time.monotonic() - self.gathered_since)
        return max(0, min(50, math.ceil(left * 1e3)))  # rounding down would spin on poll(0) until due

    def tick(self, drained: bool) -> None:
        """Commit when a group is due (`drained`: nothing more is waiting); retry a refusing store each second."""
        now = time.monotonic()
        if self.store_down is not None:
            if now >= self.retry_at:
                self.retry()
        elif self.gathered and ((drained and self.rc.commit_when_drained) or len(self.gathered) >= self.rc.commit_rows
                                or now - self.gathered_since >= self.rc.commit_ms / 1e3):
            self.commit()
        elif not self.gathered and now - self.published_at >= self.rc.commit_ms / 1e3:
            self.write_commit()  # no next group came: the commit row goes on its own

    def commit(self) -> None:
        """Commit up to `commit_rows` gathered rows as one group, then hand them to `publish`.

        Each row's `t_recorded_ns` is its capture's wall time plus the monotonic time since, and its
        `latency_ms` is monotonic: a step of the wall clock does not change them."""
        if not self.gathered or self.store_down is not None:
            return
        group = self.gathered[:self.rc.commit_rows]
        commit_id, wall, mono = self.commit_id, now_ns(), mono_ns()
        rows = []
        for values, t_capture_mono in group:
            capture = values[_CAPTURE]
            if capture and t_capture_mono is not None:
                rows.append(committed_values(values, capture + (mono - t_capture_mono), commit_id,
                                             (mono - t_capture_mono) / 1e6))
            else:
                rows.append(committed_values(values, wall, commit_id, (wall - capture) / 1e6 if capture else None))
        try:
            for model_hash, model_name in set(map(_MODEL, rows)):
                if model_hash and model_hash not in self.models_seen:
                    register_model(self.db, model_hash, model_name or "", self.model_path)
                    self.models_seen.add(model_hash)
            insert_rows(self.db, rows, self.unwritten_commit)
        except sqlite3.Error as exc:  # the rows stay gathered
            if not is_disk_full(exc):
                raise
            self._refused(exc)
            return
        t_committed = now_ns()
        self.commit_id += 1
        del self.gathered[:len(group)]
        self.gathered_since = time.monotonic()
        self.unwritten_commit = None
        self.publish(commit_id, rows, t_committed)
        self.unwritten_commit = (commit_id, t_committed, now_ns(), len(rows))
        self.published_at = time.monotonic()

    def commit_all(self) -> None:
        while self.gathered and self.store_down is None:
            self.commit()

    def write_commit(self) -> None:
        if self.unwritten_commit is not None:
            self.write(partial(insert_commit, self.db, self.unwritten_commit))
            self.unwritten_commit = None

    def write(self, write: Callable[[], object]) -> None:
        """A store write other than the rows; refused for a full disk, it is held and retried in order."""
        if self.store_down is None:
            try:
                write()
                return
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise
                self._refused(exc)
        self.held.append(write)

    def retry(self) -> None:
        """Write what was held, then the rows, in groups; stay down (and retry later) if the disk is still full."""
        self.retry_at = time.monotonic() + 1.0
        try:
            while self.held:
                self.held[0]()
                self.held.pop(0)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            return
        log.warning("the store takes writes again: committing %d held row(s)", len(self.gathered))
        self.store_down = None
        self.commit_all()

    def _refused(self, exc: sqlite3.Error) -> None:
        if self.store_down is None:
            log.error("the store refuses writes (%s): rows are held in memory and retried", exc)
        self.store_down = str(exc)
        self.retry_at = time.monotonic() + (0.0 if self.on_refused(exc) else 1.0)
