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
DEFAULT_MODEL = REPO_ROOT / "models" / "reference" / "reference.onnx"


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


SourceConfig = Annotated[EmulatorSource, Field(discriminator="type")]


class CameraConfig(_Strict):
    name: str = Field("cam0", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Camera id used in every record.")
    source: SourceConfig = Field(default_factory=EmulatorSource, description="Where frames come from.")
    width: int = Field(256, gt=0, le=16384, description="Frame width in pixels.")
    height: int = Field(256, gt=0, le=16384, description="Frame height in pixels.")
    fps: float = Field(20.0, gt=0, le=2000, description="Frame (part) rate.")
    exposure_us: float = Field(5000.0, gt=0, le=1_000_000, description="Exposure time in microseconds.")
    max_frames: int = Field(0, ge=0, description="Stop acquiring after this many frames (0 = never).")


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


class FailsafeConfig(_Strict):
    """First rule set; the full rules engine builds on the same hook."""

    review_band: tuple[float, float] = Field(
        (0.2, 0.8), description="Defect probability in [low, high) is uncertain and overridden."
    )
    uncertain_verdict: Literal["REVIEW", "FAIL"] = Field("REVIEW", description="Verdict inside the band.")
    model_down_verdict: Literal["FAIL", "REVIEW"] = Field(
        "FAIL", description="Verdict while the model cannot be loaded or run."
    )

    @field_validator("review_band")
    @classmethod
    def _band_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        low, high = v
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"must satisfy 0 <= low <= high <= 1, got [{low}, {high}]")
        return v


class RecordConfig(_Strict):
    deadline_ms: float = Field(2000.0, gt=0, le=600_000, description="Verdict deadline after capture.")
    commit_ms: float = Field(10.0, gt=0, le=10_000, description="Longest wait before a group commit.")
    commit_rows: int = Field(200, ge=1, le=100_000, description="Rows that force a group commit.")
    pass_sample_every: int = Field(20, ge=0, description="Keep one PASS image in N (0 = none).")
    live_view_hz: float = Field(4.0, ge=0, le=60, description="Live image refresh rate for the HMI.")


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
        elif part in ("emulator",):  # discriminated-union tag pydantic inserts
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


def parse_config(data: Any, source: str = "<config>") -> LineConfig:
    """Validate a mapping into a LineConfig, raising ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): must be a mapping, got {type(data).__name__}"])
    try:
        return LineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_format_error(e) for e in exc.errors()]) from None


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
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_config(data, str(path))


def to_json(cfg: LineConfig) -> str:
    return cfg.model_dump_json()


def from_json(text: str) -> LineConfig:
    return LineConfig.model_validate_json(text)
