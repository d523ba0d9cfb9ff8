"""The one typed configuration every process reads.

Every field has a default, so `linewatch run` needs no file; a YAML file overrides any part of it.
Errors are reported with their path in the YAML (`cameras[0].exposure_us: must be > 0 (got -5)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PACKAGE_ROOT = Path(__file__).resolve().parent
#: The repository root when running from a checkout (models/ and cameras/ live there).
REPO_ROOT = PACKAGE_ROOT.parent.parent
#: The registry's link to the model active for the default recipe (`linewatch models promote` moves it).
DEFAULT_MODEL = REPO_ROOT / "models" / "active" / "default.onnx"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every error with its path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmulatorSource(_Strict):
    """Synthetic parts rendered on the fly (no hardware needed)."""

    type: Literal["emulator"] = "emulator"
    seed: int = Field(0, ge=0, description="Seed: the same seed renders the same parts.")
    defect_rate: float = Field(0.2, ge=0.0, le=1.0, description="Share of parts that carry a defect.")
    scene: Path | None = Field(
        None, description="Scene file (cameras/*.yaml): products, defects, camera effects, scenarios. "
        "None renders the default machined round part the reference model was trained on."
    )


class GenicamSource(_Strict):
    """A GenICam camera reached through its vendor's GenTL producer (harvesters)."""

    type: Literal["genicam"] = "genicam"
    producers: list[Path] = Field(
        default_factory=list, max_length=16,
        description="GenTL producer files (.cti); empty: those on GENICAM_GENTL64_PATH.",
    )
    device: str = Field("", max_length=128, description="Serial number, user-defined name or id; empty = first.")
    profile: Path | None = Field(None, description="Camera profile (cameras/*.yaml): features applied in order.")
    buffer_handling: Literal["OldestFirst", "NewestOnly"] = Field(
        "OldestFirst", description="Stream buffer mode: OldestFirst for inspection, NewestOnly for live view."
    )
    num_buffers: int = Field(8, ge=2, le=256, description="Buffers announced to the stream.")
    loss_timeout_s: float = Field(
        1.0, gt=0, le=2.0, description="No frame for this long while free-running means the camera is lost."
    )
    reconnect_backoff_s: tuple[float, float] = Field((0.2, 10.0), description="First and longest reconnect delay.")

    @field_validator("reconnect_backoff_s")
    @classmethod
    def _backoff_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        first, longest = v
        if not 0 < first <= longest <= 300:
            raise ValueError(f"must satisfy 0 < first <= longest <= 300, got [{first}, {longest}]")
        return v


class ReplaySource(_Strict):
    """Frames from a folder of images or a video file, with labels from a manifest when present."""

    type: Literal["replay"] = "replay"
    path: Path = Field(Path("dataset"), description="Folder of PNG/JPEG/TIFF/BMP images, or a video file.")
    loop: bool = Field(False, description="Start again at the end (otherwise the source ends).")
    manifest: Path | None = Field(None, description="Manifest with truth per file (default: path/manifest.jsonl).")


SourceConfig = Annotated[EmulatorSource | GenicamSource | ReplaySource, Field(discriminator="type")]


class CameraConfig(_Strict):
    name: str = Field("cam0", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Camera id used in every record.")
    source: SourceConfig = Field(default_factory=EmulatorSource, description="Where frames come from.")
    width: int = Field(256, gt=0, le=16384, description="Frame width in pixels.")
    height: int = Field(256, gt=0, le=16384, description="Frame height in pixels.")
    fps: float = Field(20.0, gt=0, le=2000, description="Frame (part) rate.")
    exposure_us: float = Field(5000.0, gt=0, le=1_000_000, description="Exposure time in microseconds.")
    max_frames: int = Field(0, ge=0, description="Stop acquiring after this many frames (0 = never).")
    trigger: Literal["free_run", "software", "hardware"] = Field(
        "free_run", description="free_run at `fps`; software: a frame per trigger (REST, HMI, PLC); "
        "hardware: the camera's line/encoder input (set up by the profile, or the emulator's encoder)."
    )
    pixel_format: Literal["Mono8", "RGB8", "BGR8"] = Field(
        "Mono8", description="Layout the camera's frames are converted to before they are sent (the model's)."
    )


class ModelConfig(_Strict):
    path: Path = Field(DEFAULT_MODEL, description="ONNX model file (its metadata carries labels and input).")
    providers: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="ONNX Runtime providers: auto uses CUDA only when its libraries load."
    )
    intra_op_threads: int = Field(1, ge=0, le=64, description="ORT threads per worker (0 = ORT default).")


class InferConfig(_Strict):
    workers: int = Field(1, ge=1, le=32, description="Inference worker processes.")
    max_batch: int = Field(4, ge=1, le=256, description="Frames run together when several are waiting.")
    frame_queue: int = Field(2, ge=1, le=1000, description="Frames queued per worker before acquire drops.")


Verdict2 = Literal["FAIL", "REVIEW"]


def _ordered_pair(v: tuple[float, float], lo: float = 0.0, hi: float = 1.0) -> tuple[float, float]:
    if not lo <= v[0] <= v[1] <= hi:
        raise ValueError(f"must satisfy {lo:g} <= low <= high <= {hi:g}, got [{v[0]}, {v[1]}]")
    return v


class ExposureRuleConfig(_Strict):
    """Blank (lens cap, light off, flat) or saturated frames: the image cannot show a defect."""

    enabled: bool = Field(True, description="Check exposure before the model is trusted.")
    min_mean: float = Field(20.0, ge=0, le=255, description="Mean grey level below this is a dark/blank frame.")
    max_mean: float = Field(220.0, ge=0, le=255, description="Mean grey level above this is overexposed.")
    min_std: float = Field(8.0, ge=0, le=128, description="Grey-level std below this is a flat (blank) frame.")
    max_saturated: float = Field(0.02, ge=0, le=1, description="Largest share of pixels at 255 (saturated).")
    verdict: Verdict2 = Field("FAIL", description="Verdict when exposure is out of bounds.")


class BlurRuleConfig(_Strict):
    """Defocus or motion blur: variance of the Laplacian on a fixed-size copy of the frame."""

    enabled: bool = Field(True, description="Check sharpness before the model is trusted.")
    size: int = Field(128, ge=16, le=2048, description="Side of the square copy the Laplacian is measured on.")
    min_laplacian_var: float = Field(200.0, ge=0, le=1e6, description="Sharpness below this is a blurred frame.")
    verdict: Verdict2 = Field("FAIL", description="Verdict for a blurred frame.")


class PresenceRuleConfig(_Strict):
    """The part located as the largest bright blob: it must be there, whole and in position."""

    enabled: bool = Field(True, description="Check part presence and position (also locates the ROI).")
    threshold: int = Field(120, ge=1, le=254, description="Grey level separating the part from the belt.")
    area: tuple[float, float] = Field((0.15, 0.50), description="Allowed part area as a share of the frame.")
    max_offset: float = Field(0.12, ge=0, le=1, description="Largest centre offset, share of the frame's short side.")
    verdict: Verdict2 = Field("FAIL", description="Verdict when the part is missing or off position.")

    @field_validator("area")
    @classmethod
    def _area_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v)


class StatisticsRuleConfig(_Strict):
    """Frame statistics far from the model's training data: the model is outside what it knows."""

    enabled: bool = Field(True, description="Compare frame statistics to the training reference.")
    reference_mean: tuple[float, float] | None = Field(
        None, description="Training frames' mean grey level [mu, sd]; None = model metadata "
                          "`linewatch.reference_stats` (rule off when neither is set).")
    reference_std: tuple[float, float] | None = Field(
        None, description="Training frames' grey-level std [mu, sd]; None = from the model metadata.")
    max_z: float = Field(6.0, gt=0, le=100, description="Largest distance from the reference, in sd.")
    verdict: Verdict2 = Field("REVIEW", description="Verdict for a frame outside the training reference.")


class DarkSpotRuleConfig(_Strict):
    """Backup check beside the model: a dark blob on the part's face larger than `min_area_px` is FAIL."""

    enabled: bool = Field(True, description="Run threshold + blob analysis beside the model.")
    roi: tuple[float, float] = Field(
        (0.40, 0.92), description="ROI annulus [inner, outer] as shares of the located part's radius.")
    delta: float = Field(35.0, gt=0, le=255, description="A pixel this much darker than the ROI median is dark.")
    min_area_px: int = Field(12, ge=1, le=1_000_000, description="Dark blob area (px²) that fails the part.")

    @field_validator("roi")
    @classmethod
    def _roi_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v, 0.0, 2.0)


class TemplateRuleConfig(_Strict):
    """Backup check: difference to a golden template (aligned on the located part) inside the ROI."""

    path: Path | None = Field(None, description="Golden template image (PNG/NPY, frame-sized); None = off.")
    max_diff: float = Field(45.0, gt=0, le=255, description="Grey-level difference that counts as a deviation.")
    min_area_px: int = Field(30, ge=1, le=1_000_000, description="Deviating area (px²) that fails the part.")


class ModelHealthConfig(_Strict):
    """When the model is not trusted, and how the worker follows its file."""

    latency_budget_ms: float = Field(1000.0, gt=0, le=600_000,
                                     description="A batch slower than this is a model fault (safe verdict).")
    recover_after: int = Field(3, ge=1, le=10_000,
                               description="Healthy batches needed to leave rules-only mode after a run fault.")
    reload_check_s: float = Field(0.5, gt=0, le=3600, description="How often the model file is checked for change.")


class StreakConfig(_Strict):
    """Alarms over committed verdicts: a run of FAILs suggests a process or camera problem."""

    consecutive_fails: int = Field(12, ge=0, le=100_000, description="FAILs in a row (per camera) that alarm; 0 = off.")
    window: int = Field(200, ge=1, le=100_000, description="Verdicts in the FAIL-rate window (per camera).")
    max_fail_rate: float = Field(0.5, ge=0, le=1, description="FAIL rate over a full window that alarms; 1 = off.")
    request_stop: bool = Field(False, description="Streak alarms ask for a line stop (critical alarm for the PLC).")


class FailsafeConfig(_Strict):
    """The rules around and over the model; their parameters are hashed into every verdict's ruleset_hash."""

    review_band: tuple[float, float] = Field(
        (0.2, 0.8), description="Defect probability in [low, high) is uncertain and overridden."
    )
    class_bands: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Per-class uncertain bands {label: [low, high)}; empty = model metadata "
                                          "`linewatch.class_bands`, else review_band on the defect probability.")
    uncertain_verdict: Literal["REVIEW", "FAIL"] = Field("REVIEW", description="Verdict inside the band.")
    model_down_verdict: Literal["FAIL", "REVIEW"] = Field(
        "FAIL", description="Verdict while the model cannot be loaded or run."
    )
    exposure: ExposureRuleConfig = Field(default_factory=ExposureRuleConfig, description="Blank/saturated frames.")
    blur: BlurRuleConfig = Field(default_factory=BlurRuleConfig, description="Blurred frames.")
    presence: PresenceRuleConfig = Field(default_factory=PresenceRuleConfig, description="Part present, in place.")
    statistics: StatisticsRuleConfig = Field(default_factory=StatisticsRuleConfig,
                                             description="Frames unlike the training data.")
    dark_spot: DarkSpotRuleConfig = Field(default_factory=DarkSpotRuleConfig, description="Backup blob check.")
    template: TemplateRuleConfig = Field(default_factory=TemplateRuleConfig, description="Backup template check.")
    model_health: ModelHealthConfig = Field(default_factory=ModelHealthConfig, description="Model faults.")
    streak: StreakConfig = Field(default_factory=StreakConfig, description="Streak alarms (in record).")

    @field_validator("review_band")
    @classmethod
    def _band_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v)

    @field_validator("class_bands")
    @classmethod
    def _class_bands_ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for band in v.values():
            _ordered_pair(band)
        return v


class RecordConfig(_Strict):
    deadline_ms: float = Field(2000.0, gt=0, le=600_000, description="Verdict deadline after capture.")
    commit_ms: float = Field(10.0, gt=0, le=10_000, description="Longest wait before a group commit.")
    commit_rows: int = Field(200, ge=1, le=100_000, description="Rows that force a group commit.")
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
    retention_interval_s: float = Field(30.0, gt=0, le=86_400, description="How often retention checks the archive.")


class ShiftConfig(_Strict):
    """One shift of the schedule; it runs from its start until the next shift's start (local time)."""

    name: str = Field("day", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Shift name stored on each row.")
    start: str = Field("06:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="Local start time, HH:MM.")


def _default_shifts() -> list[ShiftConfig]:
    return [ShiftConfig(name="early", start="06:00"), ShiftConfig(name="late", start="14:00"),
            ShiftConfig(name="night", start="22:00")]


class ApiConfig(_Strict):
    host: str = Field("127.0.0.1", description="Address the web app listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the web app (HMI, REST, /metrics).")


class SupervisorConfig(_Strict):
    restart_backoff_s: tuple[float, float] = Field((0.5, 30.0), description="First and longest restart delay.")
    stop_timeout_s: float = Field(4.0, gt=0, le=60, description="Grace before a child is killed on stop.")


class LineConfig(_Strict):
    """A whole line: cameras, model, fail-safe, store and web app."""

    line: str = Field("line1", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Line name shown in the HMI.")
    recipe: str = Field("default", description="Product recipe recorded with every verdict.")
    data_dir: Path = Field(Path("var"), description="SQLite store and images.")
    runtime_dir: Path | None = Field(None, description="Sockets and metrics files (default data_dir/run).")
    cameras: list[CameraConfig] = Field(default_factory=lambda: [CameraConfig()], min_length=1, max_length=64,
                                        description="Cameras; one acquire process each.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model the workers run.")
    infer: InferConfig = Field(default_factory=InferConfig, description="Inference workers.")
    failsafe: FailsafeConfig = Field(default_factory=FailsafeConfig, description="Rules over the model.")
    record: RecordConfig = Field(default_factory=RecordConfig, description="Store, deadline and images.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="Web app: HMI, REST, metrics.")
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig, description="Restarts and stopping.")
    shifts: list[ShiftConfig] = Field(default_factory=_default_shifts, min_length=1, max_length=24,
                                      description="Shift schedule; each row records the shift it was captured in.")

    @model_validator(mode="after")
    def _shift_starts_unique(self) -> LineConfig:
        starts = [s.start for s in self.shifts]
        if len(set(starts)) != len(starts):
            raise ValueError(f"shift start times must be unique, got {', '.join(starts)}")
        return self

    @model_validator(mode="after")
    def _camera_names_unique(self) -> LineConfig:
        names = [c.name for c in self.cameras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"camera names must be unique, repeated: {', '.join(dupes)}")
        return self

    @property
    def run_dir(self) -> Path:
        return self.runtime_dir if self.runtime_dir is not None else self.data_dir / "run"


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown field",
    "missing": "required field missing",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "must match {pattern}",
    "too_short": "needs at least {min_length} item(s)",
    "too_long": "allows at most {max_length} item(s)",
}


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("emulator", "genicam", "replay"):  # discriminated-union tag pydantic inserts
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format_error(err: Any) -> str:
    ctx = err.get("ctx") or {}
    template = _MESSAGES.get(err["type"])
    msg = template.format(**ctx) if template else str(err["msg"]).removeprefix("Value error, ")
    if err["type"] != "missing" and "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return f"{_format_loc(tuple(err['loc']))}: {msg}"


def _yaml_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Line (1-based) in the YAML file of the value at `loc`, or of the deepest part of it that exists."""
    node = root
    if node is None:
        return None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                if isinstance(part, str) and part in ("emulator", "genicam", "replay"):
                    continue
                break
            node = match[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


def parse_config(data: Any, source: str = "<config>", yaml_root: yaml.Node | None = None) -> LineConfig:
    """Validate a mapping into a LineConfig, raising ConfigError listing every problem (with its YAML line)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): must be a mapping, got {type(data).__name__}"])
    try:
        return LineConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            line = _yaml_line(yaml_root, tuple(e["loc"]))
            problems.append(_format_error(e) + (f" [line {line}]" if line else ""))
        raise ConfigError(source, problems) from None


def load_config(path: Path | str | None) -> LineConfig:
    """The embedded default when path is None, else the validated YAML file."""
    if path is None:
        return LineConfig.model_validate({})
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_config(data, str(path), root)


def to_json(cfg: LineConfig) -> str:
    return cfg.model_dump_json()


def from_json(text: str) -> LineConfig:
    return LineConfig.model_validate_json(text)
