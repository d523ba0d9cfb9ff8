"""Resource figures on /metrics: real processes, files and disks read at scrape time; GPU readings as samples."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from linewatch.api.gpu import GpuReading, Nvml, gpu_families
from linewatch.api.resources import SUPERVISOR, ArchiveSize, ResourceCollector, families, store_bytes
from linewatch.store import DB_NAME
from linewatch.store.images import archive_bytes
from linewatch.wire.ready import mark_ready
from tests.conftest import Line, count_rows, http_text, metric, wait_for

MB = 2**20
#: An H100 80GB HBM3 as NVML reports it (nvidia-smi: 81559MiB total) under load, and a MIG slice that gives
#: no utilisation.
H100 = GpuReading(0, 37.0, 1_234 * MB, 81_559 * MB, 41.0)
MIG = GpuReading(1, None, 512 * MB, 9_984 * MB, 44.0)


class _Fixed:
    def __init__(self, metrics: Iterable[Metric]):
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def exposition(collector: object) -> str:
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def promtool_check(text: str) -> None:
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_gpu_readings_become_samples_in_base_units() -> None:
    text = exposition(_Fixed(gpu_families([H100, MIG])))
    assert metric(text, "linewatch_gpu_utilization_ratio", gpu="0") == pytest.approx(0.37)
    assert 'linewatch_gpu_utilization_ratio{gpu="1"}' not in text  # not reported: no sample, never a 0
    assert metric(text, "linewatch_gpu_memory_used_bytes", gpu="0") == 1_234 * MB
    assert metric(text, "linewatch_gpu_memory_total_bytes", gpu="0") == 85_520_809_984
    assert metric(text, "linewatch_gpu_memory_total_bytes", gpu="1") == 9_984 * MB
    assert metric(text, "linewatch_gpu_temperature_celsius", gpu="1") == 44.0
    promtool_check(text)


def test_without_nvml_there_are_no_gpu_readings_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """Real NVML: on this machine (no NVIDIA GPU) it does not start; on one with a GPU, it reads each."""
    nvml = Nvml()
    with caplog.at_level(logging.INFO, logger="api.gpu"):
        first, second = nvml.readings(), nvml.readings()
    if not first:
        assert second == []
        assert len([r for r in caplog.records if "no GPU metrics" in r.message]) == 1
    else:
        assert [r.index for r in first] == list(range(len(first)))
        assert all(r.memory_total_bytes and r.memory_total_bytes > MB for r in first)


def test_archive_size_is_every_file_under_the_archive(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for rel, size in (("cam0/s1/000000001-FAIL.png", 1000), ("cam0/s1/000000001-FAIL.heat.png", 200),
                      ("cam1/s2/000000007-REVIEW.jpg", 3000)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * size)
    assert archive_bytes(tmp_path) == 4200
    assert archive_bytes(tmp_path / "none") == 0

    cached, fresh = ArchiveSize(tmp_path, refresh_s=3600, wait_s=10), ArchiveSize(tmp_path, refresh_s=0, wait_s=10)
    assert cached.read() == fresh.read() == 4200
    (root / "cam1/s2/000000008-FAIL.jpg").write_bytes(b"x" * 800)
    assert fresh.read() == 5000
    assert cached.read() == 4200, "walked again before refresh_s"


def test_collector_reads_each_process_the_disk_and_the_store(tmp_path: Path) -> None:
    data_dir, run_dir = tmp_path / "data", tmp_path / "data" / "run"
    data_dir.mkdir()
    conn = sqlite3.connect(data_dir / DB_NAME)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    conn.commit()
    children = {name: subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                                       stdout=subprocess.PIPE) for name in ("record", "infer[0]")}
    try:
        for proc in children.values():  # measured once Python is up, not while the process is still exec'ing
            assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        for name, proc in children.items():
            mark_ready(run_dir, name, pid=proc.pid)
        text = exposition(ResourceCollector(data_dir, run_dir))
        for name in ("record", "infer[0]", SUPERVISOR):  # the supervisor: their common parent, this test
            assert metric(text, "linewatch_process_resident_memory_bytes", process=name) > MB, name
            assert metric(text, "linewatch_process_open_fds", process=name) >= 3, name
            assert f'linewatch_process_cpu_seconds_total{{process="{name}"}}' in text, name
        files = os.path.getsize(data_dir / DB_NAME) + os.path.getsize(data_dir / f"{DB_NAME}-wal")
        assert metric(text, "linewatch_store_size_bytes") == store_bytes(data_dir) == files > 100_000
        assert 0 < metric(text, "linewatch_data_disk_free_bytes") <= metric(text, "linewatch_data_disk_size_bytes")
        assert "linewatch_gpu_" not in text or metric(text, "linewatch_gpu_memory_total_bytes") > 0
        promtool_check(text)

        children["infer[0]"].kill()
        children["infer[0]"].wait()
        text = exposition(ResourceCollector(data_dir, run_dir))
        assert 'process="infer[0]"' not in text, "a process that exited has no figures"
        assert metric(text, "linewatch_process_resident_memory_bytes", process="record") > MB
    finally:
        conn.close()
        for proc in children.values():
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def test_collector_describes_what_it_collects(tmp_path: Path) -> None:
    """describe() (the registry's names, the docs test) lists every family collect() may give."""
    (tmp_path / "images").mkdir()
    described = {f.name for f in families()}
    collected = {f.name for f in ResourceCollector(tmp_path, tmp_path / "run").collect()}
    assert collected <= described
    assert {f.name for f in gpu_families([H100])} <= described


@pytest.mark.slow
def test_a_running_line_exports_its_resources(line: Callable[..., Line]) -> None:
    frames = 120
    ln = line(cameras=[{"name": "cam0", "fps": 60, "max_frames": frames}]).start()
    wait_for(lambda: count_rows(ln.data_dir) >= frames, 60, f"{frames} verdicts")
    store_before, archive_before = store_bytes(ln.data_dir), archive_bytes(ln.data_dir)
    text = http_text(f"{ln.url}/metrics")
    store_after, archive_after = store_bytes(ln.data_dir), archive_bytes(ln.data_dir)

    for name in ("record", "api", "infer[0]", "acquire[cam0]", "plc", SUPERVISOR):
        assert metric(text, "linewatch_process_resident_memory_bytes", process=name) > MB, name
        assert metric(text, "linewatch_process_open_fds", process=name) > 0, name
    assert metric(text, "linewatch_process_cpu_seconds_total", process="infer[0]") > 0
    assert 0 < metric(text, "linewatch_data_disk_free_bytes") <= metric(text, "linewatch_data_disk_size_bytes")
    assert store_before <= metric(text, "linewatch_store_size_bytes") <= store_after
    assert store_before > 0
    assert archive_before <= metric(text, "linewatch_image_archive_bytes") <= archive_after
    promtool_check(text)
    assert ln.stop() < 5.0
