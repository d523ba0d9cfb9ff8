"""Resource figures on /metrics, read when Prometheus scrapes: CPU, memory and open files of every process
of the line, the data disk, the store and the image archive on it, and the GPUs (`api/gpu.py`).

The processes count their own events into the multiprocess directory; these figures are read from the
outside instead (psutil on the pids in the ready files, the file system), so a hung process still shows
its memory and one that died drops out of the scrape.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from linewatch.api import gpu
from linewatch.store import DB_NAME
from linewatch.store.images import archive_bytes
from linewatch.wire.ready import read_ready

log = logging.getLogger("api.resources")
#: The image archive is walked at most this often (a stat per file): its figure is up to this old.
ARCHIVE_REFRESH_S = 60.0
#: How long a scrape waits for a walk it started; a bigger archive shows the previous walk's figure.
ARCHIVE_WAIT_S = 0.5
SUPERVISOR = "supervisor"


def _process_families() -> tuple[CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        CounterMetricFamily("linewatch_process_cpu_seconds", "CPU time (user + system) of a process of the line "
                            "since it started.", labels=["process"]),
        GaugeMetricFamily("linewatch_process_resident_memory_bytes", "Resident memory (RSS) of a process of the "
                          "line.", labels=["process"]),
        GaugeMetricFamily("linewatch_process_open_fds", "File descriptors a process of the line holds open.",
                          labels=["process"]),
    )


def _storage_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily("linewatch_data_disk_free_bytes", "Bytes free for the line (not root) on the data "
                          "directory's file system."),
        GaugeMetricFamily("linewatch_data_disk_size_bytes", "Size of the data directory's file system."),
        GaugeMetricFamily("linewatch_store_size_bytes", "The SQLite store on disk: database file plus WAL."),
        GaugeMetricFamily("linewatch_image_archive_bytes", "Bytes of the kept-image archive (images, heatmaps), "
                          f"as of a walk at most {ARCHIVE_REFRESH_S:.0f} s old."),
    )


def families() -> list[Metric]:
    """Every family the collector exports, without samples (what `describe()` announces; docs are tested on it)."""
    return [*_process_families(), *_storage_families(), *gpu.families()]


class ArchiveSize:
    """The archive's bytes from a walk on a thread, started by a read when the last one is `refresh_s` old.

    A read waits at most `wait_s` for the walk it started: a small archive is always current, a large
    one (a million kept images is seconds of stat calls) shows the previous walk's figure and never
    holds up the scrape. Nobody scraping costs nothing."""

    def __init__(self, root: Path, refresh_s: float = ARCHIVE_REFRESH_S, wait_s: float = ARCHIVE_WAIT_S):
        self.root, self.refresh_s, self.wait_s = root, refresh_s, wait_s
        self._bytes: int | None = None
        self._started = -math.inf  # monotonic start of the latest walk
        self._done = threading.Event()
        self._done.set()
        self._lock = threading.Lock()

    def read(self) -> int | None:
        """The latest walk's bytes; None before the first walk has finished."""
        with self._lock:
            if self._done.is_set() and time.monotonic() - self._started >= self.refresh_s:
                self._started = time.monotonic()
                self._done.clear()
                threading.Thread(target=self._walk, name="archive-size", daemon=True).start()
        self._done.wait(self.wait_s)
        return self._bytes

    def _walk(self) -> None:
        try:
            self._bytes = archive_bytes(self.root)
        except OSError as exc:  # os.walk skips unreadable folders itself; anything else keeps the old figure
            log.warning("cannot measure the image archive %s: %s", self.root, exc)
        finally:
            self._done.set()


def line_pids(run_dir: Path) -> dict[str, int]:
    """Each serving child's pid by its name (from its ready file), and the supervisor's: the one parent the
    children share (no ready file of its own)."""
    pids = {name: info["pid"] for name, info in read_ready(run_dir).items() if isinstance(info.get("pid"), int)}
    parents = set()
    for pid in pids.values():
        try:
            parents.add(psutil.Process(pid).ppid())
        except psutil.Error:  # gone since its ready file was read: the supervisor is about to remove the file
            continue
    if len(parents) == 1 and (parent := parents.pop()) > 1 and parent not in pids.values():
        pids[SUPERVISOR] = parent
    return pids


class ResourceCollector:
    """A prometheus-client collector: register it in the registry /metrics renders."""

    def __init__(self, data_dir: Path, run_dir: Path, nvml: gpu.Nvml | None = None):
        self.data_dir, self.run_dir = data_dir, run_dir
        self.archive = ArchiveSize(data_dir)
        self.nvml = nvml or gpu.Nvml()

    def describe(self) -> list[Metric]:
        return families()

    def collect(self) -> Iterator[Metric]:
        """The families that have samples now: no GPU, no GPU series (not even their HELP lines)."""
        for family in (*self._processes(), *self._storage(), *gpu.gpu_families(self.nvml.readings())):
            if family.samples:
                yield family

    def _processes(self) -> tuple[Metric, ...]:
        cpu, rss, fds = _process_families()
        for name, pid in sorted(line_pids(self.run_dir).items()):
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    times, memory, open_fds = proc.cpu_times(), proc.memory_info(), proc.num_fds()
            except psutil.Error:  # exited since the ready files were read: it has no figures now
                continue
            cpu.add_metric([name], times.user + times.system)
            rss.add_metric([name], memory.rss)
            fds.add_metric([name], open_fds)
        return cpu, rss, fds

    def _storage(self) -> tuple[Metric, ...]:
        free, size, store, archive = _storage_families()
        try:
            usage = shutil.disk_usage(self.data_dir)
        except OSError as exc:
            log.warning("cannot read the data disk's usage at %s: %s", self.data_dir, exc)
        else:
            free.add_metric([], usage.free)
            size.add_metric([], usage.total)
        store.add_metric([], store_bytes(self.data_dir))
        archived = self.archive.read()
        if archived is not None:
            archive.add_metric([], archived)
        return free, size, store, archive


def store_bytes(data_dir: Path) -> int:
    """The database file and its WAL (which SQLite removes when the last connection closes cleanly)."""
    total = 0
    for name in (DB_NAME, f"{DB_NAME}-wal"):
        try:
            total += (data_dir / name).stat().st_size
        except FileNotFoundError:
            continue
    return total
