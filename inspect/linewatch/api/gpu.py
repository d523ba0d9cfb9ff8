"""GPU figures for /metrics through NVML (nvidia-ml-py): utilisation, memory and temperature per GPU.

Reading NVML and turning readings into Prometheus samples are kept apart, so the samples a GPU gives are
tested with real figures on any machine; on a host without a GPU (or its driver) NVML does not start,
the line exports no GPU series and says so once in the log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

log = logging.getLogger("api.gpu")
T = TypeVar("T")


@dataclass(frozen=True)
class GpuReading:
    """What NVML said about one GPU; None where the device does not report it (e.g. utilisation under MIG)."""

    index: int
    utilization_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_celsius: float | None


def gpu_families(readings: Iterable[GpuReading]) -> list[Metric]:
    """The GPU metric families (`gpu` label: NVML's device index) with one sample per reported figure."""
    util, used, total, temp = families()
    for r in readings:
        gpu = [str(r.index)]
        for family, value in ((util, None if r.utilization_percent is None else r.utilization_percent / 100),
                              (used, r.memory_used_bytes), (total, r.memory_total_bytes),
                              (temp, r.temperature_celsius)):
            if value is not None:
                family.add_metric(gpu, float(value))
    return [util, used, total, temp]


def families() -> list[GaugeMetricFamily]:
    """The GPU families without samples: what `describe()` announces and the docs test reads."""
    return [
        GaugeMetricFamily("linewatch_gpu_utilization_ratio", "Share of the last sample period in which a GPU "
                          "kernel ran (NVML utilisation), 0 to 1.", labels=["gpu"]),
        GaugeMetricFamily("linewatch_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=["gpu"]),
        GaugeMetricFamily("linewatch_gpu_memory_total_bytes", "GPU memory installed.", labels=["gpu"]),
        GaugeMetricFamily("linewatch_gpu_temperature_celsius", "GPU die temperature.", labels=["gpu"]),
    ]


class Nvml:
    """NVML, started on first use; no GPU, no driver or no nvidia-ml-py gives no readings and one log line."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._tried = False
        self._lock = threading.Lock()  # scrapes run on the web server's threads: NVML is started once
        self._failed: set[tuple[int, str]] = set()  # (gpu or -1, figure) already logged as unreadable

    def readings(self) -> list[GpuReading]:
        nvml = self._start()
        if nvml is None:
            return []
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            self._log_once(-1, "GPU count", exc)
            return []
        out = []
        for i in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
            except nvml.NVMLError as exc:
                self._log_once(i, "device", exc)
                continue
            memory = self._read(i, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
            util = self._read(i, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
            temp = self._read(i, "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
            out.append(GpuReading(i, None if util is None else float(util.gpu),
                                  None if memory is None else int(memory.used),
                                  None if memory is None else int(memory.total),
                                  None if temp is None else float(temp)))
        return out

    def _start(self) -> Any:
        with self._lock:
            return self._start_locked()

    def _start_locked(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                import pynvml
            except ImportError as exc:
                log.info("no GPU metrics: nvidia-ml-py is not installed (%s)", exc)
                return None
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                log.info("no GPU metrics: NVML does not start (%s); normal on a host without an NVIDIA GPU", exc)
                return None
            self._nvml = pynvml
        return self._nvml

    def _read(self, index: int, figure: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            self._log_once(index, figure, exc)
            return None

    def _log_once(self, index: int, figure: str, exc: Exception) -> None:
        if (index, figure) not in self._failed:
            self._failed.add((index, figure))
            where = "" if index < 0 else f"GPU {index}: "
            log.warning("%sNVML gives no %s (%s); its series is left out", where, figure, exc)
