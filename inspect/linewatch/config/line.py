"""A whole line: the top-level config and the sections of its processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from linewatch.config.base import _Strict, _unique
from linewatch.config.cameras import MAX_CAMERAS, CameraConfig
from linewatch.config.failsafe import FailsafeConfig
from linewatch.config.notify import NotifyConfig, unknown_cameras
from linewatch.config.plc import PlcConfig
from linewatch.config.remote import RemoteWorkersConfig
from linewatch.config.retrain import RetrainConfig
from linewatch.config.ship import ShipConfig
from linewatch.config.watch import WatchConfig
from linewatch.paths import DEFAULT_MODEL

# The line's processes run NumPy's BLAS (OpenBLAS in NumPy's wheels) on one thread (`line.supervisor.
# child_environment`); BLAS_DEFAULTED marks that default as the supervisor's, so a training run the api starts
# takes it off again (api/retrain.py). MKL's variable is left alone: it would hold torch to one thread too.
BLAS_THREADS = "OPENBLAS_NUM_THREADS"
BLAS_DEFAULTED = "LINEWATCH_BLAS_DEFAULTED"


@dataclass(frozen=True)
class CpuPlan:
    """How many inference workers the line starts and how many ONNX Runtime threads each runs."""

    workers: int
    threads: int
    cores: int


#: `auto` workers never exceed this: beyond it, more processes add memory (a model each) and frame slots
#: faster than throughput; a bigger machine gives each worker more threads instead.
MAX_AUTO_WORKERS = 8


def cpu_plan(workers: int | str, threads: int | str, cores: int | None = None) -> CpuPlan:
    """Resolve `auto` against the cores this process may use (its affinity: a container's or systemd's CPU
    set, not the machine's). Single-threaded workers, one per core, measured best on the CPU: 2 workers made
    140 parts/s of an EfficientNet-Lite0-class model on 2 cores where 1 worker made 80, and a worker's
    intra-op threads sync per operator. A given count is kept; the other fills the cores."""
    n = cores if cores is not None else len(os.sched_getaffinity(0))
    if workers == "auto" and threads == "auto":
        t = -(-n // MAX_AUTO_WORKERS)  # ceil: single-threaded up to MAX_AUTO_WORKERS cores
        return CpuPlan(max(1, min(MAX_AUTO_WORKERS, n // t)), t, n)
    if workers == "auto":
        assert isinstance(threads, int)
        return CpuPlan(max(1, min(MAX_AUTO_WORKERS, n // max(1, threads))), threads, n)
    assert isinstance(workers, int)
    t = threads if isinstance(threads, int) else max(1, n // max(1, workers))
    return CpuPlan(workers, t, n)


class ModelConfig(_Strict):
    path: Path = Field(DEFAULT_MODEL, description="ONNX model file (its metadata carries labels and input).")
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto", description="ONNX Runtime providers: auto tries TensorRT, CUDA, then CPU and keeps the first that "
        "really loads (a GPU fallback is logged as an error); cuda/tensorrt refuse to start without them."
    )
    intra_op_threads: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field(
        "auto", description="ORT threads per worker (0 = ORT default); auto: chosen with infer.workers from the "
        "cores this process may use (`LineConfig.cpu_plan`).")
    allow_spinning: bool = Field(
        False, description="ORT threads spin while waiting for work: lower latency, but they burn a core when idle."
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ORT graph optimisation level."
    )
    cache_optimized_graph: bool = Field(
        False, description="CPU: save the optimised graph under cache_dir and load it on the next start."
    )
    cache_dir: Path | None = Field(
        None, description="Optimised graphs and TensorRT engines (default data_dir/model-cache)."
    )
    io_binding: Literal["auto", "always", "never"] = Field(
        "auto", description="Run through IOBinding (reused buffers per batch size, inputs and outputs stay on the "
        "device); auto: on a GPU only, the CPU reads numpy memory directly anyway."
    )
    cuda_graph: bool = Field(True, description="CUDA: capture one CUDA graph per batch size (needs IOBinding).")
    fp16: bool = Field(False, description="TensorRT may run in half precision; only where the recipe allows it.")
    device_id: int = Field(0, ge=0, le=63, description="GPU the workers run on.")


class InferConfig(_Strict):
    workers: Annotated[int, Field(ge=0, le=32)] | Literal["auto"] = Field(
        "auto", description="Inference worker processes the line starts (0: only remote workers decide, "
        "infer.remote enabled); auto: every core used, one single-threaded worker per core up to 8 "
        "(`LineConfig.cpu_plan`).")
    max_batch: int = Field(4, ge=1, le=256, description="Frames run together when several are waiting.")
    frame_queue: int = Field(
        8, ge=1, le=1000, description="Frames queued per worker before acquire drops (deep enough to ride out "
        "a few ms of scheduling jitter; benchmarks/RESULTS.md).")
    batch_wait_ms: float | None = Field(
        None, ge=0, le=1000, description="Longest wait for a batch to fill after its first frame (0 = never "
        "wait); unset: adaptive, waits only when frames arrive faster than single-frame runs keep up with."
    )
    latency_target_ms: float = Field(
        50.0, gt=0, le=600_000, description="Capture-to-verdict share the adaptive batch wait plus a full "
        "batch's model time must stay within (below record.deadline_ms)."
    )
    cpus: list[Annotated[int, Field(ge=0, le=4095)]] = Field(
        default_factory=list, max_length=4096, description="CPU cores to pin workers to: worker k gets core "
        "cpus[k mod len] (empty = no pinning, the OS schedules).",
    )
    transport: Literal["shm", "inline"] = Field(
        "shm", description="Frame pixels to workers: shm = a shared-memory slot per frame (local workers, one "
        "copy), inline = inside the ZeroMQ message (workers on another host over tcp://)."
    )
    frame_slots: int = Field(
        0, ge=0, le=4096, description="Shared-memory frame slots per camera (0 = enough for every queue and "
        "batch: frame_queue x (workers + 1) + workers x max_batch + 2)."
    )
    remote: RemoteWorkersConfig = Field(default_factory=RemoteWorkersConfig,
                                        description="Workers in other processes or on other hosts, over TCP.")


class RecordConfig(_Strict):
    deadline_ms: float = Field(2000.0, gt=0, le=600_000, description="Verdict deadline after capture.")
    commit_ms: float = Field(10.0, gt=0, le=10_000, description="Longest a verdict waits for its group commit.")
    commit_rows: int = Field(200, ge=1, le=100_000, description="Rows that force a group commit.")
    commit_when_drained: bool = Field(
        True, description="Commit as soon as no verdict is waiting (groups form under load); false: always "
        "wait up to commit_ms or commit_rows (fewer, larger commits; more latency).")
    pass_sample_every: int = Field(20, ge=0, description="Keep one PASS image in N (0 = none).")
    live_view_hz: float = Field(4.0, ge=0, le=60, description="Live image refresh rate for the HMI.")
    image_format: Literal["png", "jpeg"] = Field("png", description="Kept images: lossless PNG or JPEG.")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of kept images (image_format jpeg).")
    image_queue: int = Field(
        256, ge=1, le=100_000, description="Images waiting to be encoded; when full a PASS sample is skipped, "
        "a FAIL/REVIEW image is dropped with an alarm (the verdict row is always kept)."
    )
    image_quota_mb: float = Field(
        4096.0, ge=0, description="Disk quota of kept images; over it the oldest PASS samples go first (0 = none)."
    )
    pass_max_age_days: float = Field(30.0, ge=0, description="PASS samples older than this are pruned (0 = never).")
    image_max_age_days: float = Field(
        0.0, ge=0, description="Any kept image (FAIL/REVIEW too) older than this is pruned (0 = never)."
    )
    disk_low_free_mb: float = Field(
        1024.0, ge=0, description="Free space on the data disk below this raises a disk_low alarm."
    )
    disk_reserve_mb: float = Field(
        64.0, ge=0, le=1_000_000, description="Space kept allocated on the data disk (at most a tenth of it) and "
        "released when the disk fills, so verdict rows keep committing while images pause (disk_full alarm)."
    )
    held_rows: int = Field(
        200_000, ge=1000, le=10_000_000, description="Verdict rows held in memory while the store refuses writes "
        "(disk full); they are committed when it takes writes again, rows beyond are counted as lost."
    )
    retention_interval_s: float = Field(30.0, gt=0, le=86_400, description="How often retention checks the archive.")


class ShiftConfig(_Strict):
    """One shift of the schedule; it runs from its start until the next shift's start (local time)."""

    name: str = Field("day", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Shift name stored on each row.")
    start: str = Field("06:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="Local start time, HH:MM.")


def _default_shifts() -> list[ShiftConfig]:
    return [ShiftConfig(name="early", start="06:00"), ShiftConfig(name="late", start="14:00"),
            ShiftConfig(name="night", start="22:00")]


class ApiConfig(_Strict):
    host: str = Field("127.0.0.1", description="Address the web app listens on: loopback unless set (e.g. 0.0.0.0 "
                      "for the plant network, with tls_cert and tls_key).")
    port: int = Field(8080, ge=0, le=65535, description="Port of the web app (HMI, REST, /metrics).")
    max_body_bytes: int = Field(
        1_048_576, ge=1024, le=16_777_216, description="Largest request body the web app takes; a larger one is "
        "refused with 413 before it is read (by its Content-Length, or counted as a chunked body arrives)."
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: the web app serves HTTPS with it (and marks "
                                  "its session cookie Secure); `linewatch tls self-signed` makes one.")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert (mode 0600).")

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self


class SecurityConfig(_Strict):
    """Sign-in, sessions and the audit log (docs/security.md)."""

    viewer: Literal["anonymous", "operator", "qa", "engineer", "admin"] = Field(
        "anonymous", description="Who may see the read-only views (run view, inspections, alarms, live image, "
        "events, reports, metrics): anonymous leaves them open to the line's status screen; a role asks for a "
        "sign-in of that role or above. Every change of state needs a role whatever this says.")
    idle_lock_s: float = Field(900.0, ge=1, le=86_400, description="A session unused this long is ended: the HMI "
                               "returns to its read-only run view and asks for a sign-in again.")
    session_max_s: float = Field(43_200.0, ge=60, le=604_800, description="A session ends this long after its "
                                 "sign-in, however busy (a shift and a half by default).")
    login_failures_per_minute: int = Field(5, ge=1, le=100, description="Failed sign-ins taken per minute for one "
                                           "user name and for one address; further tries are refused (429).")
    password_min_chars: int = Field(12, ge=8, le=128, description="Shortest password for qa, engineer and admin.")
    pin_min_digits: int = Field(4, ge=4, le=12, description="Shortest operator PIN (digits only).")
    first_admin_password_file: Path | None = Field(
        None, description="At the first start without users, the first admin (`admin`) takes its password from "
        "this file; unset, a generated password is printed once on a terminal, or written to "
        "data_dir/initial-admin-password (mode 0600) under a service manager.")
    audit_max_rows: int = Field(1_000_000, ge=100, le=1_000_000_000, description="Audit rows the auth database "
                                "is sized for: a warning alarm past 90 %. Audit rows are never deleted.")


class SupervisorConfig(_Strict):
    restart_backoff_s: tuple[float, float] = Field((0.5, 30.0), description="First and longest restart delay.")
    stop_timeout_s: float = Field(4.0, gt=0, le=60, description="Grace before a child is killed on stop.")
    hang_timeout_s: float = Field(
        8.0, ge=2, le=300, description="A child whose heartbeat (its ready file, touched every second) stops this "
        "long is hung (stopped, deadlocked): it is killed and restarted with a process_hang alarm. Also how stale "
        "a heartbeat may be before /livez fails."
    )


class RecipeConfig(_Strict):
    """A product the line inspects: what changes between parts when the PLC (or an operator) switches job."""

    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Recipe name recorded with "
                      "every verdict inspected under it.")
    job: int = Field(1, ge=1, le=65535, description="Job number the PLC writes to select this recipe "
                     "(register `job_number`, then coil `execute_command`).")
    model: ModelConfig | None = Field(None, description="The model this recipe runs (unset: the line's `model`).")
    failsafe: FailsafeConfig | None = Field(
        None, description="The fail-safe rules of this recipe, replacing the line's `failsafe` (unset: the line's).")


class LineConfig(_Strict):
    """A whole line: cameras, model, fail-safe, store and web app."""

    line: str = Field("line1", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Line name shown in the HMI.")
    recipe: str = Field("default", description="Product recipe in force when the line starts for the first time "
                        "(after that, the latest switch in the audit log); one of `recipes` when they are listed.")
    recipes: list[RecipeConfig] = Field(
        default_factory=list, max_length=256, description="Recipes the PLC, the HMI or the REST API can switch the "
        "line to between parts (docs/modbus.md, *Job change*).")
    data_dir: Path = Field(Path("var"), description="SQLite store and images.")
    runtime_dir: Path | None = Field(None, description="Sockets and metrics files (default data_dir/run).")
    cameras: list[CameraConfig] = Field(default_factory=lambda: [CameraConfig()], min_length=1, max_length=MAX_CAMERAS,
                                        description="Cameras; one acquire process each.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model the workers run.")
    infer: InferConfig = Field(default_factory=InferConfig, description="Inference workers.")
    failsafe: FailsafeConfig = Field(default_factory=FailsafeConfig, description="Rules over the model.")
    record: RecordConfig = Field(default_factory=RecordConfig, description="Store, deadline and images.")
    watch: WatchConfig = Field(default_factory=WatchConfig, description="Drift watch over every camera's signals.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="Web app: HMI, REST, metrics.")
    plc: PlcConfig = Field(default_factory=PlcConfig, description="Modbus TCP server for the line's PLC.")
    ship: ShipConfig = Field(default_factory=ShipConfig, description="Fleet results: the store shipped to a "
                             "central PostgreSQL.")
    notify: NotifyConfig = Field(default_factory=NotifyConfig, description="HTTP hooks and MQTT for plant systems.")
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="Sign-in, sessions, audit log.")
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig, description="Restarts, hangs and stopping.")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig,
                                   description="From reviewed parts to a better model: data, training, the gate.")
    shifts: list[ShiftConfig] = Field(default_factory=_default_shifts, min_length=1, max_length=24,
                                      description="Shift schedule; each row records the shift it was captured in.")

    @property
    def cpu_plan(self) -> CpuPlan:
        """Workers and ORT threads, `auto` resolved for this process's cores (the supervisor writes the
        result into the config its children read, so they all agree: `line.supervisor.resolve_paths`)."""
        return cpu_plan(self.infer.workers, self.model.intra_op_threads)

    @model_validator(mode="after")
    def _shift_starts_unique(self) -> LineConfig:
        starts = [s.start for s in self.shifts]
        if len(set(starts)) != len(starts):
            raise ValueError(f"shift start times must be unique, got {', '.join(starts)}")
        return self

    @model_validator(mode="after")
    def _batch_target_within_deadline(self) -> LineConfig:
        if self.infer.latency_target_ms >= self.record.deadline_ms:
            raise ValueError(f"infer.latency_target_ms ({self.infer.latency_target_ms:g}) must be below "
                             f"record.deadline_ms ({self.record.deadline_ms:g})")
        return self

    @model_validator(mode="after")
    def _plc_port_not_api_port(self) -> LineConfig:
        if self.plc.enabled and self.plc.port == self.api.port:
            raise ValueError(f"plc.port and api.port must differ, both are {self.api.port}")
        return self

    @model_validator(mode="after")
    def _camera_names_unique(self) -> LineConfig:
        _unique([c.name for c in self.cameras], "camera names")
        return self

    @model_validator(mode="after")
    def _hook_cameras_known(self) -> LineConfig:
        unknown = unknown_cameras(self.notify, [c.name for c in self.cameras])
        if unknown:
            raise ValueError(f"notify.hooks filter on cameras the line does not have: {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _remote_workers_inline(self) -> LineConfig:
        remote = self.infer.remote
        if remote.enabled and self.infer.transport != "inline":
            raise ValueError("infer.remote needs infer.transport: inline (a remote worker cannot read this host's "
                             "shared memory)")
        if not remote.enabled and self.cpu_plan.workers == 0:
            raise ValueError("infer.workers is 0 and infer.remote is not enabled: no worker would decide the parts")
        if remote.enabled and remote.port + len(self.cameras) > 65535:
            raise ValueError(f"infer.remote.port {remote.port} leaves no port for camera {len(self.cameras)}")
        taken = {"api.port": self.api.port, **({"plc.port": self.plc.port} if self.plc.enabled else {})}
        for name, port in taken.items():
            if remote.enabled and remote.port <= port <= remote.port + len(self.cameras):
                raise ValueError(f"{name} {port} is one of infer.remote's ports ({remote.port} to "
                                 f"{remote.port + len(self.cameras)}: record's, then one per camera)")
        return self

    @model_validator(mode="after")
    def _recipes_unique(self) -> LineConfig:
        for key in ("name", "job"):
            values = [getattr(r, key) for r in self.recipes]
            dupes = sorted({str(v) for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"recipe {key}s must be unique, repeated: {', '.join(dupes)}")
        if self.recipes and self.recipe not in {r.name for r in self.recipes}:
            names = ", ".join(r.name for r in self.recipes)
            raise ValueError(f"recipe {self.recipe!r} is not among recipes[] ({names})")
        return self

    def find_recipe(self, name: str) -> RecipeConfig | None:
        return next((r for r in self.recipes if r.name == name), None)

    def for_recipe(self, name: str) -> LineConfig:
        """This config as the processes run it under recipe `name`: its model and fail-safe rules in place of the
        line's (a name not among `recipes` keeps the line's)."""
        r = self.find_recipe(name)
        return self.model_copy(update={"recipe": name, "model": (r and r.model) or self.model,
                                       "failsafe": (r and r.failsafe) or self.failsafe})

    @property
    def run_dir(self) -> Path:
        return self.runtime_dir if self.runtime_dir is not None else self.data_dir / "run"

    @property
    def remote_keys_dir(self) -> Path:
        """The line's key pair and the enrolled remote workers' keys (`wire/remote_keys.py`)."""
        return self.infer.remote.keys_dir or self.data_dir / "remote-keys"
